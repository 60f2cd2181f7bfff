// gemm_mma: the matmul of large batches on tensor cores, gemv.cu's contract at any M (kernels.ts
// includes gemv.cu first):
//   out[m, n] = act(x'[m, :] . w[n, :] + bias[n])      or, with accumulate,
//   out[m, n] += x'[m, :] . w[n, :] + bias[n]           or, f32 out, the sum plus bias as f32,
// x' = layernorm(x) over K (ln_w given; ln_b may be null) rounded to st_t as the unfused path does,
// else x.
// w is (N, K) row-major, 16-bit. The layernorm runs in the prologue (each block's rows' statistics,
// one pass over x: biased variance as torch, from the sum of squares) and on each A tile as it lands,
// so no separate layernorm kernel and no x' in memory.
// Off by default (CudaBackend.gemm, $NGPT_GEMM=1): at M = 256 on an H200 it runs 2-4x slower than
// cuBLASLt with its layernorm kernel (tests/gpu/gemv_bench.ts --gemm: gpt2's c_attn 16.0 us against
// 6.6, c_fc 17.2 against 10.0, LM head 193 against 43). Nsight Compute: the tensor pipe is busy 11-17%
// of the time, the schedulers issue 19-46%, the warps wait on shared memory (ldmatrix), global loads
// and the k-tile barrier, and the 64 x 64 tiles move 4x the L2 bytes of cuBLASLt's kernel (53 MB
// against 13 for c_attn: its 96 x 64 tiles share operands across clusters of 8 blocks through TMA and
// wgmma). Deeper rings and 128-wide k-tiles changed nothing (docs/perf-notes.md, ninth round).
//
// Block (mb, nb): rows mb*BM .. +BM-1 of out, columns nb*BN .. +BN-1. The M tiles are the grid's x, so
// the blocks that share a weight tile run together and the weights come from DRAM once (M tiles as y
// read gpt2's LM head 4 times at M = 256). 8 warps: two K groups of 2 x 2 warps, each warp a 32 x 32
// tile (2 m16 x 4 n8 mma.sync m16n8k16 tiles, f32 accumulators) over half of each k-tile; the groups'
// sums meet in shared memory at the end. (The first version, 4 warps over the whole k-tile, ran 1 warp
// a scheduler at 8.8 cycles an instruction: gpt2's attn.c_proj at M = 256 took 16.6 us against
// cuBLASLt's 4.2, H200, gemv_bench.ts --gemm.) K runs in BK-wide tiles through a STAGES-deep cp.async
// ring of A (x) and B (w) tiles in dynamic shared memory (rows padded by 16 bytes: ldmatrix
// conflict-free). Each thread copies the same two 16-byte chunks of every A and B tile, from pointers
// it computes once, and applies the layernorm to its own A chunks as soon as its copies land, before
// the k-tile's one barrier. The weight tiles of the first stages are requested before the
// programmatic-launch wait (no kernel writes weights), x's after it. Rows past M load zeros and are not
// stored. The epilogue stages the f32 tile in shared memory and writes whole 16-byte vectors (the first
// version's per-element stores, unrolled over every flag, made 23k instructions of code).
// Split K (grid z = S > 1, where M and N make too few tiles to fill the SMs): slice z of the grid
// takes k-tiles z * KT / S .. (z + 1) * KT / S - 1 and writes its f32 tile to part (S x the padded M x
// N); the tile's last block to arrive sums the S slices in slice order and runs the epilogue. Without
// it, S is 1 and part and count unused. Why: gpt2's c_proj shapes at M = 256 make 48 tiles for 132 SMs.
// Needs 16-bit storage, N % BN == 0, K % BK == 0, 16-byte aligned out, x, w, bias, ln_w, ln_b (the
// host checks: matmul.ts gemm_fits) and matmul.ts gemm_smem_bytes of dynamic shared memory.
#if NG_DTYPE == 0
#error "gemm_mma needs a 16-bit storage type"
#endif
#if !defined(NG_GEMM_TILE) || !defined(NG_GEMM_KB) || !defined(NG_GEMM_STAGES) || !defined(NG_GEMM_THREADS)
#error "gemm_mma needs -DNG_GEMM_TILE=64, -DNG_GEMM_KB=64, -DNG_GEMM_STAGES and -DNG_GEMM_THREADS=256 (kernels.ts)"
#endif
#define NT NG_GEMM_THREADS
#define BM NG_GEMM_TILE
#define BN NG_GEMM_TILE
#define BK NG_GEMM_KB
#define STAGES NG_GEMM_STAGES
static_assert(NT == 256 && BM == 64 && BK % 64 == 0, "gemm_mma: 2 K groups of 2 x 2 warps of 32 x 32, k16 steps");
#define PITCH (BK + 8)            // a tile row's elements, 16 bytes of padding (gemm_smem_bytes)
#define TILE_ELEMS (BM * PITCH)   // one A or B tile (BM == BN)
#define CHUNKS (BK / 8)           // 16-byte chunks of a tile row
#define PASS_ROWS (NT / CHUNKS)   // a thread's chunks of a tile are this many rows apart
#define CPT (BM / PASS_ROWS)      // chunks a thread copies of each tile
#define OUT_ROWS (NT / (BN / 8))  // the epilogue's: a thread's vectors of out are this many rows apart
#define OUT_PITCH (BN + 8)        // the epilogue's f32 rows: float2 stores of a half-warp conflict-free
static_assert(CPT * PASS_ROWS == BM && 2 * OUT_ROWS == BM, "whole passes of a tile; two vectors of out a thread");
static_assert(BM * OUT_PITCH * 4 <= STAGES * 2 * TILE_ELEMS * NG_DTYPE_BYTES, "the f32 tile fits in the ring");

// Out's 8 columns n .. n+7 of row m from their f32 sums: plus the bias, then GELU or the residual (out
// += ...), or stored as f32 (flags) — gemv.cu's gemv_store_with a vector at a time.
__device__ __forceinline__ void gemm_store_vec(void* out, float* y, const st_t* __restrict__ bias, int m, int n,
                                               int N, int flags) {
  if (bias) {
    float b[NG_VEC];
    load_vec(bias + n, b);
#pragma unroll
    for (int e = 0; e < NG_VEC; e++) y[e] += b[e];
  }
  const size_t i = (size_t)m * N + n;
  if (flags & NG_GEMV_OUT_F32) {
    float4* o = reinterpret_cast<float4*>(reinterpret_cast<float*>(out) + i);
    o[0] = make_float4(y[0], y[1], y[2], y[3]);
    o[1] = make_float4(y[4], y[5], y[6], y[7]);
    return;
  }
  st_t* o = reinterpret_cast<st_t*>(out) + i;
  if (flags & NG_GEMV_ACCUMULATE) {
    float r[NG_VEC];
    load_vec(o, r);
#pragma unroll
    for (int e = 0; e < NG_VEC; e++) y[e] += r[e];
  } else if (flags & 3) {
#pragma unroll
    for (int e = 0; e < NG_VEC; e++) y[e] = ng_gelu(y[e], flags & 3);
  }
  *reinterpret_cast<uint4*>(o) = pack_vec(y);
}

extern "C" __global__ void __launch_bounds__(NT)
ng_gemm_mma(void* __restrict__ out, const st_t* __restrict__ x, const st_t* __restrict__ w,
            const st_t* __restrict__ bias, const st_t* __restrict__ ln_w, const st_t* __restrict__ ln_b, int M,
            int N, int K, float eps, int flags, float* __restrict__ part, unsigned int* __restrict__ count, int S) {
  NG_TRACE_KERNEL;
  extern __shared__ __align__(16) st_t gemm_smem[];
  __shared__ float s_mul[BM], s_add[BM];  // x' = x * mul + add, before the layernorm's weight and bias
  st_t* a_s = gemm_smem;                        // STAGES A tiles
  st_t* b_s = gemm_smem + STAGES * TILE_ELEMS;  // STAGES B tiles
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, slice = blockIdx.z;
  // This block's k-tiles: slice `slice` of S near-equal ones.
  const int kt0 = (int)((long long)(K / BK) * slice / S), KT = (int)((long long)(K / BK) * (slice + 1) / S) - kt0;
  const bool ln = ln_w != nullptr;
  // This thread's chunks of every tile: rows r, r + PASS_ROWS, ..., columns ch*8 .. ch*8+7 of the k-tile.
  const int r = tid / CHUNKS, ch = tid % CHUNKS, s_off = r * PITCH + ch * 8;
  const st_t* w_src = w + (size_t)(n0 + r) * K + kt0 * BK + ch * 8;  // N % BN == 0: every weight row exists
  int a_bytes[CPT];  // 16, or 0 past M (zeros)
  const st_t* x_src[CPT];
#pragma unroll
  for (int i = 0; i < CPT; i++) {
    const int m = m0 + r + i * PASS_ROWS;
    a_bytes[i] = m < M ? 16 : 0;
    x_src[i] = x + (size_t)(m < M ? m : 0) * K + kt0 * BK + ch * 8;
  }
  const auto load_w = [&](int stage, int kt) {
    st_t* t = b_s + stage * TILE_ELEMS + s_off;
#pragma unroll
    for (int i = 0; i < CPT; i++) cp_async16(smem_addr(t + i * PASS_ROWS * PITCH), w_src + (size_t)i * PASS_ROWS * K + kt * BK, 16);
  };
  const auto load_x = [&](int stage, int kt) {
    st_t* t = a_s + stage * TILE_ELEMS + s_off;
#pragma unroll
    for (int i = 0; i < CPT; i++) cp_async16(smem_addr(t + i * PASS_ROWS * PITCH), x_src[i] + kt * BK, a_bytes[i]);
  };
  // The weight tiles of the first STAGES - 1 k-tiles: one group, before the wait; the layernorm's
  // weight and bias for this thread's columns of k-tile 0.
  for (int s = 0; s < STAGES - 1 && s < KT; s++) load_w(s, s);
  cp_async_commit();
  const uint4 zero = make_uint4(0, 0, 0, 0);
  uint4 g = zero, b = zero;
  // This thread's columns of the layernorm's weight and bias.
  const st_t* ln_w8 = ln ? ln_w + kt0 * BK + ch * 8 : nullptr;
  const st_t* ln_b8 = ln_b ? ln_b + kt0 * BK + ch * 8 : nullptr;
  if (ln) g = *reinterpret_cast<const uint4*>(ln_w8), b = ln_b ? *reinterpret_cast<const uint4*>(ln_b8) : zero;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  // x's tiles of the first stages, one group each.
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < KT) load_x(s, s);
    cp_async_commit();
  }
  // The layernorm's statistics of the block's rows while the first tiles land: four threads a row, each
  // every fourth 16-byte vector of it, all of a thread's loads independent (one pass: the sum and the
  // sum of squares in f32).
  float mul[CPT] = {}, add[CPT] = {};  // this thread's A rows' x * mul + add
  if (ln) {
    const int sr = tid >> 2, q4 = tid & 3;
    float s = 0.0f, q = 0.0f;
    if (m0 + sr < M) {
      const uint4* row = reinterpret_cast<const uint4*>(x + (size_t)(m0 + sr) * K);
#pragma unroll 4
      for (int v = q4; v < K / 8; v += 4) {
        float f[8];
        unpack_vec(row[v], f);
#pragma unroll
        for (int e = 0; e < 8; e++) {
          s += f[e];
          q += f[e] * f[e];
        }
      }
    }
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
      s += __shfl_xor_sync(0xffffffffu, s, o);
      q += __shfl_xor_sync(0xffffffffu, q, o);
    }
    if (q4 == 0) {
      const float mean = s / K, rstd = m0 + sr < M ? rsqrtf(fmaxf(q / K - mean * mean, 0.0f) + eps) : 0.0f;
      s_mul[sr] = rstd;
      s_add[sr] = -mean * rstd;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < CPT; i++) mul[i] = s_mul[r + i * PASS_ROWS], add[i] = s_add[r + i * PASS_ROWS];
  }
  // This warp's part: K group kg (k-tile columns kg*BK/2 ..), tile rows wm .., columns wn ...
  const int kg = warp >> 2, wm = ((warp >> 1) & 1) * 32, wn = (warp & 1) * 32;
  float acc[2][4][4] = {};
  // Shared-memory byte addresses: this lane's ldmatrix rows in stage 0's A and B tiles (its K group's
  // half of the k-tile), and stage strides, computed once (the loop adds constants).
  constexpr unsigned TILE_BYTES = TILE_ELEMS * NG_DTYPE_BYTES, ROW16 = 16 * PITCH * NG_DTYPE_BYTES;
  const unsigned a_ld = smem_addr(a_s + (wm + (lane & 15)) * PITCH + kg * (BK / 2) + (lane >> 4) * 8);
  const unsigned b_ld = smem_addr(b_s + (wn + (lane & 7) + ((lane >> 4) << 3)) * PITCH + kg * (BK / 2) +
                                  ((lane >> 3) & 1) * 8);
  int stage = 0, next_stage = STAGES - 1;  // k-tile kt's stage; the stage k-tile kt + STAGES - 1 loads into
  for (int kt = 0; kt < KT; kt++) {
    cp_async_wait<STAGES - 2>();  // this thread's copies of k-tile kt landed
    if (ln) {  // x' over this thread's own chunks (gemv.cu's gemv_ln_apply), then the next columns' g, b
      st_t* at = a_s + stage * TILE_ELEMS;
#pragma unroll
      for (int i = 0; i < CPT; i++) {
        uint4* p = reinterpret_cast<uint4*>(at + s_off + i * PASS_ROWS * PITCH);
        *p = gemv_ln_apply(*p, g, b, mul[i], add[i]);
      }
      if (kt + 1 < KT) {
        g = *reinterpret_cast<const uint4*>(ln_w8 + (kt + 1) * BK);
        if (ln_b) b = *reinterpret_cast<const uint4*>(ln_b8 + (kt + 1) * BK);
      }
    }
    __syncthreads();  // k-tile kt landed (and normalized) for every thread; stage (kt - 1) % STAGES is free
    if (kt + STAGES - 1 < KT) load_w(next_stage, kt + STAGES - 1), load_x(next_stage, kt + STAGES - 1);
    cp_async_commit();
    const unsigned a_addr = a_ld + stage * TILE_BYTES, b_addr = b_ld + stage * TILE_BYTES;
#pragma unroll
    for (int j = 0; j < BK / 2 / 16; j++) {  // this K group's k16 steps
      unsigned af[2][4], bf[4][2];
#pragma unroll
      for (int mt = 0; mt < 2; mt++) ldmatrix_x4(af[mt], a_addr + mt * ROW16 + j * 32);
#pragma unroll
      for (int np = 0; np < 2; np++) {  // two n8 tiles a load
        unsigned q[4];
        ldmatrix_x4(q, b_addr + np * ROW16 + j * 32);
        bf[2 * np][0] = q[0];
        bf[2 * np][1] = q[1];
        bf[2 * np + 1][0] = q[2];
        bf[2 * np + 1][1] = q[3];
      }
#pragma unroll
      for (int mt = 0; mt < 2; mt++) {
#pragma unroll
        for (int nt = 0; nt < 4; nt++) mma16816(acc[mt][nt], af[mt], bf[nt][0], bf[nt][1]);
      }
    }
    stage = stage == STAGES - 1 ? 0 : stage + 1;
    next_stage = next_stage == STAGES - 1 ? 0 : next_stage + 1;
  }
  // The two K groups' sums into one f32 tile over the (drained) ring: group 1 stores, group 0 adds.
  cp_async_wait<0>();
  __syncthreads();
  float* ot = reinterpret_cast<float*>(gemm_smem);
  const int er = tid / (BN / 8), ech = tid % (BN / 8);  // this thread's vectors of out: rows er, er + OUT_ROWS
  for (int pass = 1; pass >= 0; pass--) {
    if (kg == pass) {
#pragma unroll
      for (int mt = 0; mt < 2; mt++) {
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
#pragma unroll
          for (int h = 0; h < 2; h++) {  // rows lane / 4 and lane / 4 + 8 of the m16 tile
            float2* p = reinterpret_cast<float2*>(ot + (wm + mt * 16 + (lane >> 2) + h * 8) * OUT_PITCH + wn + nt * 8 +
                                                  2 * (lane & 3));
            float2 v = make_float2(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
            if (pass == 0) v.x += p->x, v.y += p->y;
            *p = v;
          }
        }
      }
    }
    __syncthreads();
  }
  // Split K: this slice's tile to part[slice] (rows of the padded M), counted; the tile's last block to
  // arrive (count[tile], which it sets back to 0) adds the S slices in order (the sum does not depend
  // on which block is last) and stores.
  if (S > 1) {
    const int tile = blockIdx.y * gridDim.x + blockIdx.x, M_pad = gridDim.x * BM;
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const int vr = er + i * OUT_ROWS;
      float4* dst = reinterpret_cast<float4*>(part + ((size_t)slice * M_pad + m0 + vr) * N + n0 + ech * 8);
      const float4* src = reinterpret_cast<const float4*>(ot + vr * OUT_PITCH + ech * 8);
      __stcg(dst, src[0]);
      __stcg(dst + 1, src[1]);
    }
    __threadfence();  // this block's sums are visible before its arrival is
    __syncthreads();
    __shared__ unsigned int s_arrived;
    if (tid == 0) s_arrived = atomicAdd(count + tile, 1u);
    __syncthreads();
    if (s_arrived != (unsigned)(S - 1)) return;
    __threadfence();
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const int vr = er + i * OUT_ROWS;
      float4 lo = make_float4(0.0f, 0.0f, 0.0f, 0.0f), hi = lo;
      for (int sl = 0; sl < S; sl++) {
        const float4* src = reinterpret_cast<const float4*>(part + ((size_t)sl * M_pad + m0 + vr) * N + n0 + ech * 8);
        const float4 a = __ldcg(src), c = __ldcg(src + 1);
        lo.x += a.x, lo.y += a.y, lo.z += a.z, lo.w += a.w, hi.x += c.x, hi.y += c.y, hi.z += c.z, hi.w += c.w;
      }
      float4* o = reinterpret_cast<float4*>(ot + vr * OUT_PITCH + ech * 8);
      o[0] = lo, o[1] = hi;  // this thread's own vectors: no barrier before the epilogue reads them
    }
    if (tid == 0) count[tile] = 0;  // ready for the next launch
  }
  // The epilogue: 16-byte vectors of out, two a thread.
#pragma unroll
  for (int i = 0; i < 2; i++) {
    const int vr = er + i * OUT_ROWS, m = m0 + vr;
    if (m >= M) continue;
    float y[NG_VEC];
    const float4* src = reinterpret_cast<const float4*>(ot + vr * OUT_PITCH + ech * 8);
    const float4 lo = src[0], hi = src[1];
    y[0] = lo.x, y[1] = lo.y, y[2] = lo.z, y[3] = lo.w, y[4] = hi.x, y[5] = hi.y, y[6] = hi.z, y[7] = hi.w;
    gemm_store_vec(out, y, bias, m, n0 + ech * 8, N, flags);
  }
}
