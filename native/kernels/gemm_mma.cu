// gemm_mma: the matmul of large batches on tensor cores, gemv.cu's contract and epilogue at any M
// (kernels.ts includes gemv.cu first):
//   out[m, n] = act(x'[m, :] . w[n, :] + bias[n])      or, with accumulate,
//   out[m, n] += x'[m, :] . w[n, :] + bias[n]           or, f32 out, the sum plus bias as f32,
// x' = layernorm(x) over K (ln_w given; ln_b may be null) rounded to st_t as the unfused path does,
// else x.
// w is (N, K) row-major, 16-bit. The layernorm runs in the prologue (each block's rows' statistics,
// one pass over x: biased variance as torch, from the sum of squares) and on each A tile as it lands, so no separate
// layernorm kernel and no x' in memory. What it replaces at M = 256 on an H200 (tests/gpu/gemv_bench.ts
// --ms 256, docs/perf-notes.md eighth round): cuBLASLt 4-10 us a matmul plus a 3.8 us layernorm.
//
// Block (nb, mb): rows mb*BM .. +BM-1 of out, columns nb*BN .. +BN-1; 4 warps in 2 x 2, each a 32 x 32
// tile: 2 m16 x 4 n8 mma.sync m16n8k16 tiles, f32 accumulators. K runs in BK-wide tiles through a
// STAGES-deep cp.async ring of A (x) and B (w) tiles in dynamic shared memory (rows padded by 16 bytes:
// ldmatrix conflict-free); the weight tiles of the first stages are requested before the
// programmatic-launch wait (no kernel writes weights), x's after it. Rows past M load zeros and are
// not stored.
// Needs 16-bit storage, N % BN == 0, K % BK == 0, 16-byte aligned x, w, ln_w, ln_b (the host checks)
// and matmul.ts gemm_smem_bytes of dynamic shared memory (STAGES A and B tiles). NOT YET RUN ON A GPU (eighth round: written after the
// round's device time was spent; tests/gpu/ops_test.ts's gemm cases are its first check).
#if NG_DTYPE == 0
#error "gemm_mma needs a 16-bit storage type"
#endif
#if !defined(NG_GEMM_TILE) || !defined(NG_GEMM_KB) || !defined(NG_GEMM_STAGES) || !defined(NG_GEMM_THREADS)
#error "gemm_mma needs -DNG_GEMM_TILE=64, -DNG_GEMM_KB, -DNG_GEMM_STAGES and -DNG_GEMM_THREADS=128 (kernels.ts)"
#endif
#define NT NG_GEMM_THREADS
static_assert(NT == 128, "gemm_mma's 4 warps cover the tile 2 x 2");
#define BM NG_GEMM_TILE
#define BN NG_GEMM_TILE
#define BK NG_GEMM_KB
#define STAGES NG_GEMM_STAGES
static_assert(BM == 64, "gemm_mma's warps cover a 64 x 64 tile (2 x 2 warps of 32 x 32)");
#define PITCH (BK + 8)                          // a tile row's elements, 16 bytes of padding (gemm_smem_bytes)
#define TILE_ELEMS (BM * PITCH)                 // one A or B tile (BM == BN)
#define CHUNKS (BK / 8)                         // 16-byte chunks of a tile row

// Requests rows r0 .. r0+BM-1 (clipped to `rows`; zeros past it) of a row-major (rows, K) matrix,
// columns k0 .. k0+BK-1, into `tile`: NT threads, BM * CHUNKS / NT 16-byte copies each.
__device__ __forceinline__ void gemm_load_tile(st_t* tile, const st_t* __restrict__ src, int r0, int rows, int K,
                                               int k0) {
#pragma unroll
  for (int i = 0; i < BM * CHUNKS / NT; i++) {
    const int c = threadIdx.x + NT * i, r = c / CHUNKS, ch = c - r * CHUNKS;
    const bool ok = r0 + r < rows;
    const st_t* s = src + (size_t)(ok ? r0 + r : 0) * K + k0 + ch * 8;
    cp_async16(smem_addr(tile + r * PITCH + ch * 8), s, ok ? 16 : 0);
  }
}

extern "C" __global__ void __launch_bounds__(NT)
ng_gemm_mma(void* __restrict__ out, const st_t* __restrict__ x, const st_t* __restrict__ w,
            const st_t* __restrict__ bias, const st_t* __restrict__ ln_w, const st_t* __restrict__ ln_b, int M,
            int N, int K, float eps, int flags) {
  NG_TRACE_KERNEL;
  extern __shared__ __align__(16) st_t gemm_smem[];
  __shared__ float s_mul[BM], s_add[BM];  // x' = x * mul + add, before the layernorm's weight and bias
  st_t* a_s = gemm_smem;                       // STAGES A tiles
  st_t* b_s = gemm_smem + STAGES * TILE_ELEMS;  // STAGES B tiles
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM, KT = K / BK;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;  // this warp's tile in the block's
  const bool ln = ln_w != nullptr;
  // The weight tiles of the first STAGES - 1 k-tiles: one group, before the wait.
  for (int s = 0; s < STAGES - 1 && s < KT; s++) gemm_load_tile(b_s + s * TILE_ELEMS, w, n0, N, K, s * BK);
  cp_async_commit();
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  // x's tiles of the first stages, one group each.
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < KT) gemm_load_tile(a_s + s * TILE_ELEMS, x, m0, M, K, s * BK);
    cp_async_commit();
  }
  // The layernorm's statistics of the block's rows while the first tiles land: two threads a row, each
  // every other 16-byte vector of it, all of a thread's loads independent (one pass: the sum and the sum
  // of squares in f32; a warp per row in two passes would put 2 K / 32 dependent loads a row ahead of
  // the first mma).
  if (ln) {
    const int r = tid >> 1, h = tid & 1;
    float s = 0.0f, q = 0.0f;
    if (m0 + r < M) {
      const uint4* row = reinterpret_cast<const uint4*>(x + (size_t)(m0 + r) * K);
#pragma unroll 4
      for (int v = h; v < K / 8; v += 2) {
        float f[8];
        unpack_vec(row[v], f);
#pragma unroll
        for (int e = 0; e < 8; e++) {
          s += f[e];
          q += f[e] * f[e];
        }
      }
    }
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    q += __shfl_xor_sync(0xffffffffu, q, 1);
    if (h == 0) {
      const float mean = s / K, rstd = m0 + r < M ? rsqrtf(fmaxf(q / K - mean * mean, 0.0f) + eps) : 0.0f;
      s_mul[r] = rstd;
      s_add[r] = -mean * rstd;
    }
  }
  float acc[2][4][4] = {};
  for (int kt = 0; kt < KT; kt++) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // k-tile kt landed for every thread; stage (kt - 1) % STAGES is free
    const int nk = kt + STAGES - 1;
    if (nk < KT) {
      gemm_load_tile(a_s + (nk % STAGES) * TILE_ELEMS, x, m0, M, K, nk * BK);
      gemm_load_tile(b_s + (nk % STAGES) * TILE_ELEMS, w, n0, N, K, nk * BK);
    }
    cp_async_commit();
    st_t* at = a_s + (kt % STAGES) * TILE_ELEMS;
    const st_t* bt = b_s + (kt % STAGES) * TILE_ELEMS;
    if (ln) {  // x' in place, a 16-byte vector at a time, through gemv.cu's gemv_ln_apply
#pragma unroll
      for (int i = 0; i < BM * CHUNKS / NT; i++) {
        const int c = tid + NT * i, r = c / CHUNKS, k = kt * BK + (c - r * CHUNKS) * 8;
        uint4* p = reinterpret_cast<uint4*>(at + r * PITCH + (c - r * CHUNKS) * 8);
        const uint4 g = *reinterpret_cast<const uint4*>(ln_w + k);
        const uint4 b = ln_b ? *reinterpret_cast<const uint4*>(ln_b + k) : make_uint4(0, 0, 0, 0);
        *p = gemv_ln_apply(*p, g, b, s_mul[r], s_add[r]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      unsigned af[2][4], bf[4][2];
#pragma unroll
      for (int mt = 0; mt < 2; mt++) {
        ldmatrix_x4(af[mt], smem_addr(at + (wm + mt * 16 + (lane & 15)) * PITCH + kk + (lane >> 4) * 8));
      }
#pragma unroll
      for (int np = 0; np < 2; np++) {  // two n8 tiles a load
        unsigned r[4];
        ldmatrix_x4(r, smem_addr(bt + (wn + np * 16 + (lane & 7) + ((lane >> 4) << 3)) * PITCH + kk +
                                       ((lane >> 3) & 1) * 8));
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < 2; mt++) {
#pragma unroll
        for (int nt = 0; nt < 4; nt++) mma16816(acc[mt][nt], af[mt], bf[nt][0], bf[nt][1]);
      }
    }
  }
  // The epilogue: each accumulator through gemv.cu's store (bias, activation or residual, f32 out).
#pragma unroll
  for (int mt = 0; mt < 2; mt++) {
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
#pragma unroll
      for (int h = 0; h < 4; h++) {
        const int m = m0 + wm + mt * 16 + (lane >> 2) + (h >> 1) * 8;
        const int n = n0 + wn + nt * 8 + 2 * (lane & 3) + (h & 1);
        if (m >= M) continue;
        GemvOperands o;
        gemv_load_consts<false>(o, nullptr, bias, n);
        gemv_load_residual(o, out, m, n, N, flags);
        gemv_store_with<false>(out, acc[mt][nt][h], o, m, n, N, flags);
      }
    }
  }
}
