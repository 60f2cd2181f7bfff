// gemv_mma: gemv.cu's matmul of small batches (M <= NG_GEMV_MT, 8 or 16) on tensor cores, for the
// 16-bit storage types, over 16-bit or (-DNG_GEMV_W8=1) int8 weights with per-row scales. The same
// arguments and result as ng_gemv (out = act(x' . w[n, :] + bias[n]) or out += ..., x' the
// layernormed x when ln_w is given, flags as there), and K a multiple of 64.
// Why: gemv.cu spends M FMAs per weight, so from M = 4 up it is bound by arithmetic, not by the
// weights it reads (gpt2-xl's int8 weights at batch 8: 3.8 ms a step against 1.24 at batch 1);
// one mma.sync m16n8k16 does 16 x 8 x 16 multiply-adds.
//
// The mma's A is 16 rows of x' (rows past M: zeros, or with MT = 8 not loaded at all), its B 8
// weight rows (a row group) x 16 k, C (16 x 8, f32) the partial dot products. Lane l (g = l / 4,
// q = l % 4) of a warp loads weight row g of its group, 16 of each 64-k block's k, with 16-byte
// loads of which the 4 lanes of a row read 64 contiguous bytes: 16-bit weights k 8q .. 8q+7 and
// 32 + 8q .. 32 + 8q+7, int8 weights k 16q .. 16q+15. A dot product may sum its k in any order as
// long as A and B agree, so mma step s (0..3) of a block gives the four k slots that the fragment
// layout assigns to lanes q (2q, 2q+1, 2q+8, 2q+9) to this lane's k 4s .. 4s+3 of its 16, and the
// lane reads x' rows g and g + 8 at the same k from shared memory. Int8 weights are widened with
// common.cuh's byte permute and packed to the storage type (exact: |w| <= 128); their row scale
// multiplies the sum before the bias.
// Work split as gemv.cu's grouped shape: `ks` warps share a row group, warp s taking k blocks s,
// s + ks, ...; a block holds blockDim.x / 32 / ks groups (a tile); blocks loop over tiles with
// stride gridDim.x. Each lane keeps MMA_U k blocks of loads in flight (256 bytes), the first chunk
// issued before the PDL wait; the ks warps add their C through shared memory and the first one
// stores. x' is staged as in gemv.cu (gemv_stage_x), (M + 2 with a layernorm, 4 at M = 1, else M) * K st_t of
// dynamic shared memory; or, with K split across blocks (S > 1, see ng_gemv_mma; no layernorm), only
// the block's K slice of x.
#if NG_DTYPE == 0
#error "gemv_mma needs a 16-bit storage type (NG_DTYPE 1 or 2)"
#endif
#if NG_GEMV_MT != 8 && NG_GEMV_MT != 16
#error "gemv_mma needs -DNG_GEMV_MT=8 or 16"
#endif
#if !defined(NG_GEMV_SPLIT)
#error "gemv_mma needs -DNG_GEMV_SPLIT=0 or 1"
#endif
#if NG_GEMV_MMA_ROWS != 8 || NG_GEMV_MMA_KB != 64 || !defined(NG_GEMV_MMA_CHUNK)
#error "gemv_mma needs -DNG_GEMV_MMA_ROWS=8, -DNG_GEMV_MMA_KB=64 and -DNG_GEMV_MMA_CHUNK (kernels.ts)"
#endif
#define MMA_ROWS NG_GEMV_MMA_ROWS  // weight rows of a row group (the mma's N)
#define MMA_KB NG_GEMV_MMA_KB      // k of a block: 16 a lane
// 16-byte vectors a lane loads per block (one row, 16 k), and blocks a chunk (NG_GEMV_MMA_CHUNK
// bytes in flight a lane).
#define MMA_WV (NG_GEMV_W8 ? 1 : 2)
#define MMA_U (NG_GEMV_MMA_CHUNK / (16 * MMA_WV))

// Issues a chunk of this lane's loads: k blocks kb0 + u * step (u < MMA_U) of weight row n (rows
// past N repeat row N - 1; blocks from kb_end on are zeros).
__device__ __forceinline__ void mma_issue(uint4 (&raw)[MMA_U][MMA_WV], const wt_t* __restrict__ w, int n, int q,
                                          int kb0, int step, int kb_end, int N, int K) {
  const wt_t* row = w + (size_t)(n < N ? n : N - 1) * K;
#pragma unroll
  for (int u = 0; u < MMA_U; u++) {
    const int kb = kb0 + u * step;
#pragma unroll
    for (int j = 0; j < MMA_WV; j++) {
      // 16-bit: k 8q + 32j .. +7; int8: k 16q .. 16q+15.
      const int k = kb * MMA_KB + (NG_GEMV_W8 ? 16 * q : 8 * q + 32 * j);
      raw[u][j] = kb < kb_end ? gemv_load_w<NG_GEMV_W8 != 0, NG_GEMV_W8 ? 16 : NG_VEC>(row + k) : make_uint4(0, 0, 0, 0);
    }
  }
}

// The two words of B (this lane's weight row, k 4s .. 4s+3 of its 16) for mma step s.
__device__ __forceinline__ void mma_b(const uint4 (&v)[MMA_WV], int s, unsigned& b0, unsigned& b1) {
#if NG_GEMV_W8
  const unsigned int word = s == 0 ? v[0].x : s == 1 ? v[0].y : s == 2 ? v[0].z : v[0].w;
  float f[4];
  ng_i8x4_to_f32(word, f);
  b0 = pack2(f[0], f[1]);
  b1 = pack2(f[2], f[3]);
#else
  const uint4& h = v[s >> 1];
  b0 = (s & 1) ? h.z : h.x;
  b1 = (s & 1) ? h.w : h.y;
#endif
}

// The 8 words of x' row `xr` (shared memory) at this lane's 16 k of block kb.
__device__ __forceinline__ void mma_x(unsigned (&a)[8], const st_t* xr, int kb, int q) {
  const st_t* p = xr + kb * MMA_KB;
  const uint4 lo = *reinterpret_cast<const uint4*>(p + (NG_GEMV_W8 ? 16 * q : 8 * q));
  const uint4 hi = *reinterpret_cast<const uint4*>(p + (NG_GEMV_W8 ? 16 * q + 8 : 8 * q + 32));
  a[0] = lo.x, a[1] = lo.y, a[2] = lo.z, a[3] = lo.w, a[4] = hi.x, a[5] = hi.y, a[6] = hi.z, a[7] = hi.w;
}

// The K slice kb_lo .. kb_hi (64-k blocks) of x's M rows into xs (M x (kb_hi - kb_lo) * 64 st_t),
// all of a thread's copies in flight at once. Ends with a barrier.
__device__ __forceinline__ void mma_stage_slice(st_t* xs, const st_t* NG_ACT_RESTRICT x, int M, int K, int kb_lo,
                                                int kb_hi) {
  const int row_vec = (kb_hi - kb_lo) * (MMA_KB / NG_VEC), total = M * row_vec;
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int m = i / row_vec, v = i - m * row_vec;
    cp_async16(smem_addr(xs + (size_t)i * NG_VEC), x + (size_t)m * K + kb_lo * MMA_KB + v * NG_VEC, 16);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
}

// The split launch's epilogue for one tile (every slice written): adds the S slices' sums in slice
// order and stores.
__device__ __forceinline__ void mma_split_store(void* out, const float* __restrict__ part,
                                                const float* __restrict__ w_scale, const st_t* __restrict__ bias,
                                                int tile, int per_tile, int M, int N, int S, int flags) {
  const int t0 = tile * per_tile * MMA_ROWS, rows = min(per_tile * MMA_ROWS, N - t0);
  for (int i = threadIdx.x; i < M * rows; i += blockDim.x) {
    const int m = i / rows, n = t0 + i - m * rows;
    float sum = 0.0f;
    for (int sl = 0; sl < S; sl++) sum += __ldcg(part + ((size_t)sl * 16 + m) * N + n);
    gemv_store<NG_GEMV_W8 != 0>(out, sum, w_scale, bias, m, n, N, flags);
  }
}

// `S` > 1 (split K, -DNG_GEMV_SPLIT=1; no layernorm, the host checks): block b takes K slice b % S
// of the tiles b / S, b / S + gridDim.x / S, ... (gridDim.x a multiple of S, at most 32 tiles a
// block), stages only that slice of x, and writes each tile's sums to part[slice][m][n] (f32, 16
// rows a slice); the tile's last block to finish (count[tile], which it sets back to 0) adds the S
// slices in order and stores, after its loop over tiles. Why: at M = 8 a block's x is as large as
// its weights (gpt2-xl's mlp.c_proj: 100 KB each), and N / 8 row groups leave SMs idle where N is
// small (gpt2's 768). A separate kernel: with the split code in the same function as the unsplit
// path, gpt2-xl at batch 8 ran 3133 us a step against 2586 (H200). Without it, S is 1 and part and
// count unused.
extern "C" __global__ void __launch_bounds__(32 * NG_GEMV_MAX_WARPS, 2)
ng_gemv_mma(void* __restrict__ out, const st_t* __restrict__ x, const wt_t* __restrict__ w,
            const float* __restrict__ w_scale, const st_t* __restrict__ bias, const st_t* __restrict__ ln_w,
            const st_t* __restrict__ ln_b, int M, int N, int K, float eps, int flags, int ks,
            float* __restrict__ part, unsigned int* __restrict__ count, int S) {
  NG_TRACE_KERNEL;
  constexpr bool SPLIT = NG_GEMV_SPLIT != 0;
  constexpr bool HI = NG_GEMV_MT > 8;  // x' rows 8..15 exist
  extern __shared__ uint4 gemv_smem[];
  __shared__ float red[NG_GEMV_MAX_WARPS - 1][32][4];  // K slices 1.. of each group (3.5 KB)
  __shared__ unsigned int s_arrived;
  st_t* xs = reinterpret_cast<st_t*>(gemv_smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int per_tile = (blockDim.x >> 5) / ks, ksi = warp % ks;
  const int nkb = K / MMA_KB, groups = (N + MMA_ROWS - 1) / MMA_ROWS;
  const int tiles = (groups + per_tile - 1) / per_tile;
  const int slice = SPLIT ? blockIdx.x % S : 0, stride = SPLIT ? gridDim.x / S : gridDim.x;
  const int kb_lo = SPLIT ? slice * nkb / S : 0, kb_hi = SPLIT ? (slice + 1) * nkb / S : nkb;
  const int kx = (kb_hi - kb_lo) * MMA_KB;  // x's staged row
  const int tile0 = SPLIT ? blockIdx.x / S : blockIdx.x;
  int tile = tile0, grp = tile * per_tile + warp / ks;
  unsigned int last = 0;  // SPLIT: bit i set when this block completed tile tile0 + i * stride
  st_t* lns = !SPLIT && ln_w ? xs + (size_t)M * K : nullptr;  // the layernorm's vectors, after x
  // The first warp of a group stores C (x' rows g, g + 8; weight rows n0 + 2q, + 1) and holds the
  // stores' other operands (gemv.cu's GemvOperands; the split's last block stores elsewhere).
  GemvOperands ops[4];
  const auto load_ops = [&](int gr, bool consts, bool residual) {
    if (SPLIT || ksi != 0 || gr >= groups) return;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int m = g + (i >> 1) * 8, n = gr * MMA_ROWS + 2 * q + (i & 1);
      if (m >= M || n >= N) continue;
      if (consts) gemv_load_consts<NG_GEMV_W8 != 0>(ops[i], w_scale, bias, n);
      if (residual) gemv_load_residual(ops[i], out, m, n, N, flags);
    }
  };
  uint4 raw[MMA_U][MMA_WV];
  if (tile < tiles && grp < groups) mma_issue(raw, w, grp * MMA_ROWS + g, q, kb_lo + ksi, ks, kb_hi, N, K);
  // Weights (and the layernorm's, the biases and scales) are never written by a step: they are
  // requested before waiting for x's writer.
  if (tile < tiles) load_ops(grp, true, false);
  if (lns) gemv_stage_ln(lns, ln_w, ln_b, K);
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  if (tile < tiles) load_ops(grp, false, true);
  if (SPLIT) {
    mma_stage_slice(xs, x, M, K, kb_lo, kb_hi);
  } else {
    gemv_stage_x(xs, x, lns, M, K, eps);
  }
  ng_trace_mark(0);
  const st_t* x_lo = xs + (size_t)min(g, M - 1) * kx;  // A rows g and g + 8 (rows >= M: zero, below)
  const st_t* x_hi = xs + (size_t)min(g + 8, M - 1) * kx;
  const bool lo_live = g < M, hi_live = HI && g + 8 < M;
  for (int it = 0; tile < tiles; it++) {  // uniform over the block: the barriers below are safe
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int n0 = grp * MMA_ROWS;
    if (grp < groups) {
      for (int kb0 = kb_lo + ksi; kb0 < kb_hi; kb0 += MMA_U * ks) {
        if (kb0 != kb_lo + ksi) mma_issue(raw, w, n0 + g, q, kb0, ks, kb_hi, N, K);  // the first was issued ahead
#pragma unroll
        for (int u = 0; u < MMA_U; u++) {
          const int kb = kb0 + u * ks;
          if (kb >= kb_hi) break;
          unsigned xa[8], xb[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          mma_x(xa, x_lo, kb - kb_lo, q);
          if (HI) mma_x(xb, x_hi, kb - kb_lo, q);
#pragma unroll
          for (int s = 0; s < 4; s++) {
            unsigned b0, b1;
            mma_b(raw[u], s, b0, b1);
            const unsigned a[4] = {lo_live ? xa[2 * s] : 0u, hi_live ? xb[2 * s] : 0u, lo_live ? xa[2 * s + 1] : 0u,
                                   hi_live ? xb[2 * s + 1] : 0u};
            mma16816(c, a, b0, b1);
          }
        }
      }
    }
    ng_trace_mark(1);
    // The next tile's first chunk is in flight during the reduction and the stores.
    const int tile_now = tile;
    tile += stride;
    const int grp_next = tile * per_tile + warp / ks;
    if (tile < tiles && grp_next < groups) mma_issue(raw, w, grp_next * MMA_ROWS + g, q, kb_lo + ksi, ks, kb_hi, N, K);
    if (ks > 1) {  // add the other K slices' C into the first warp of the group
      __syncthreads();  // red is free (the previous tile has read it)
      if (ksi != 0) {
#pragma unroll
        for (int i = 0; i < 4; i++) red[warp - 1][lane][i] = c[i];
      }
      __syncthreads();
      if (ksi == 0) {
        for (int s = 1; s < ks; s++) {
#pragma unroll
          for (int i = 0; i < 4; i++) c[i] += red[warp + s - 1][lane][i];
        }
      }
    }
    // C[i]: x' row m = g (+ 8 for i >= 2), weight row n = n0 + 2q + (i & 1).
    if (ksi == 0 && grp < groups) {
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int m = g + (i >> 1) * 8, n = n0 + 2 * q + (i & 1);
        if (m < M && n < N) {
          if (SPLIT) {
            __stcg(part + ((size_t)slice * 16 + m) * N + n, c[i]);
          } else {
            gemv_store_with<NG_GEMV_W8 != 0>(out, c[i], ops[i], m, n, N, flags);
          }
        }
      }
    }
    if (SPLIT) {  // count this slice's arrival; the last of a tile's S stores it after the loop
      __threadfence();  // this block's sums are visible before its arrival is
      __syncthreads();
      if (threadIdx.x == 0) s_arrived = atomicAdd(count + tile_now, 1u);
      __syncthreads();
      if (s_arrived == (unsigned)(S - 1)) last |= 1u << it;
    }
    ng_trace_mark(2);
    if (tile < tiles) load_ops(grp_next, true, true);  // used after the next tile's mma steps
    grp = grp_next;
  }
  if (SPLIT && last != 0) {  // after the loop, which then differs from the unsplit one only in its stores
    __threadfence();
    for (int it = 0; it < 32; it++) {
      if (!(last >> it & 1u)) continue;
      const int t = tile0 + it * stride;
      mma_split_store(out, part, w_scale, bias, t, per_tile, M, N, S, flags);
      if (threadIdx.x == 0) count[t] = 0;  // ready for the next launch
    }
  }
}
