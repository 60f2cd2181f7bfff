// attention_prefill_mma: attention_prefill (same arguments, same result) on tensor cores, for
// f16/bf16 and head sizes that are multiples of 16 (flash-attention 2 style). For row s_b + t of
// sequence b (s_b = seq_start[b]): out[s_b + t, h*D:(h+1)*D] = softmax(q . K[0..L+t] * scale) V,
// L = lengths[b], over the paged KV cache read after kv_append wrote the new tokens.
// A block takes BQ = 64 query rows of one (b, h); each of its 4 warps owns 16 rows and keeps their
// Q fragments in registers. The block walks the keys in tiles of BK = 64, staged in shared memory
// with cp.async (double-buffered when two stages fit in 48 KiB); per tile a warp computes S = Q K^T
// (16 x 64) with mma.sync m16n8k16 (f32 accumulate), updates its online softmax in f32 registers
// (each thread holds 2 rows x 16 keys; a row's 4 threads reduce by shuffles), converts P to the
// storage type in registers and accumulates O += P V with mma. Needs -DNG_HEAD_DIM=D (16..128,
// multiple of 16), -DNG_DTYPE 1 or 2, and -DNG_PREFILL_MMA_BQ (64: 4 warps x 16 rows) from the
// kernel table.
// Grid: (ceil(max rows of a sequence / BQ), H, B), x reversed so the longest (last) query tiles
// start first; block: 128.
#ifndef NG_HEAD_DIM
#error "attention_prefill_mma needs -DNG_HEAD_DIM"
#endif
#if NG_HEAD_DIM < 16 || NG_HEAD_DIM > 128 || NG_HEAD_DIM % 16 != 0
#error "attention_prefill_mma supports head_dim 16..128, a multiple of 16"
#endif
#if NG_DTYPE != 1 && NG_DTYPE != 2
#error "attention_prefill_mma needs NG_DTYPE 1 (f16) or 2 (bf16)"
#endif
#if NG_PREFILL_MMA_BQ != 64
#error "attention_prefill_mma needs -DNG_PREFILL_MMA_BQ=64 (4 warps of 16 rows)"
#endif
#define HD NG_HEAD_DIM
#define BQ NG_PREFILL_MMA_BQ
#define BK 64
#define NWARPS 4
// Row pitch of the shared K/V tiles in elements: 16 bytes of padding keep ldmatrix conflict-free.
#define PITCH (HD + 8)
// Pipeline stages that fit in 48 KiB of static shared memory (K and V tiles).
#define NSTAGE ((2 * 2 * BK * PITCH * 2) <= 48 * 1024 ? 2 : 1)
#define KSTEPS (HD / 16)  // k-steps of S = Q K^T
#define NT_S (BK / 8)     // 8-key column tiles of S
#define NT_O (HD / 8)     // 8-dim column tiles of O
#define CHUNKS (HD / 8)   // 16-byte chunks per K/V row

// 2^x (ex2.approx: relative error ~2^-22; -inf gives 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

extern "C" __global__ void __launch_bounds__(128)
ng_attention_prefill_mma(st_t* __restrict__ out, const st_t* __restrict__ qkv,
                         const st_t* __restrict__ k_pool, const st_t* __restrict__ v_pool,
                         const int* __restrict__ block_table, const int* __restrict__ lengths,
                         const int* __restrict__ seq_start, int H, float scale, int bs_log2, int mb) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  __shared__ __align__(16) st_t k_s[NSTAGE][BK][PITCH];
  __shared__ __align__(16) st_t v_s[NSTAGE][BK][PITCH];
  const int b = blockIdx.z, h = blockIdx.y, t0 = (gridDim.x - 1 - blockIdx.x) * BQ;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tq = lane & 3;  // mma fragment row group and column pair
  const int C = H * HD;
  const int L = lengths[b];
  const int s0 = seq_start[b], nn = seq_start[b + 1] - s0;
  const int rows = min(BQ, nn - t0);
  if (rows <= 0) return;
  const int* table = block_table + (size_t)b * mb;
  // Q fragments (A operand, 16 x HD per warp): rows g and g + 8, columns 2tq.. and 2tq + 8..
  const int r0 = warp * 16 + g, r1 = r0 + 8;  // this thread's two rows within the block
  unsigned qa[KSTEPS][4];
  {
    // Rows past the sequence read row s0 instead (their values are discarded).
    const unsigned* q0 = reinterpret_cast<const unsigned*>(qkv + ((size_t)s0 + (r0 < rows ? t0 + r0 : 0)) * 3 * C + h * HD);
    const unsigned* q1 = reinterpret_cast<const unsigned*>(qkv + ((size_t)s0 + (r1 < rows ? t0 + r1 : 0)) * 3 * C + h * HD);
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
      const int c = kk * 8 + tq;  // in pairs of elements
      qa[kk][0] = r0 < rows ? q0[c] : 0u;
      qa[kk][1] = r1 < rows ? q1[c] : 0u;
      qa[kk][2] = r0 < rows ? q0[c + 4] : 0u;
      qa[kk][3] = r1 < rows ? q1[c + 4] : 0u;
    }
  }
  float o[NT_O][4];
#pragma unroll
  for (int n = 0; n < NT_O; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m0 = NG_NEG_INF, m1 = NG_NEG_INF, l0 = 0.0f, l1 = 0.0f;  // l: this thread's partial sums
  const float scale_log2 = scale * 1.4426950408889634f;
  const int kv_len = L + t0 + rows;
  const int qpos0 = L + t0 + r0, qpos1 = L + t0 + r1;  // the last key each row sees
  const int n_tiles = (kv_len + BK - 1) / BK;

  // Stages key tile `it` into stage `st`: each thread copies 16-byte chunks of K and V rows;
  // rows past kv_len are zero-filled.
  auto load_tile = [&](int it, int st) {
    const int j0 = it * BK;
#pragma unroll
    for (int k = 0; k < BK * CHUNKS / 128; k++) {
      const int i = tid + k * 128, j = i / CHUNKS, c = i - j * CHUNKS;
      const bool ok = j0 + j < kv_len;
      const size_t off = ok ? kv_row(table, j0 + j, h, H, bs_log2, HD) + c * 8 : 0;
      cp_async16(smem_addr(&k_s[st][j][c * 8]), k_pool + off, ok ? 16 : 0);
      cp_async16(smem_addr(&v_s[st][j][c * 8]), v_pool + off, ok ? 16 : 0);
    }
    cp_async_commit();
  };

  load_tile(0, 0);
  for (int it = 0; it < n_tiles; it++) {
    const int st = NSTAGE == 2 ? (it & 1) : 0;
    if (NSTAGE == 2 && it + 1 < n_tiles) {
      load_tile(it + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      if (NSTAGE == 1 && it > 0) load_tile(it, 0);
      cp_async_wait<0>();
    }
    __syncthreads();
    const int j0 = it * BK;
    // S = Q K^T: ldmatrix x4 gives the B fragments of two 8-key column tiles for one k-step.
    float s[NT_S][4];
#pragma unroll
    for (int n = 0; n < NT_S; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
      for (int jp = 0; jp < NT_S / 2; jp++) {
        unsigned kf[4];
        ldmatrix_x4(kf, smem_addr(&k_s[st][jp * 16 + (lane & 7) + ((lane >> 4) << 3)]
                                       [kk * 16 + ((lane >> 3) & 1) * 8]));
        mma16816(s[2 * jp], qa[kk], kf[0], kf[1]);
        mma16816(s[2 * jp + 1], qa[kk], kf[2], kf[3]);
      }
    }
    // Scale (to log2 units) and mask: key j is seen by a row when j <= its position and j < kv_len.
    const bool edge = j0 + BK > L + t0;  // block-uniform: some key of the tile may be masked
    float mx0 = NG_NEG_INF, mx1 = NG_NEG_INF;
#pragma unroll
    for (int n = 0; n < NT_S; n++) {
#pragma unroll
      for (int c = 0; c < 4; c++) {
        float x = s[n][c] * scale_log2;
        if (edge) {
          const int j = j0 + n * 8 + 2 * tq + (c & 1);
          const int qpos = c < 2 ? qpos0 : qpos1;
          if (j > qpos || j >= kv_len) x = NG_NEG_INF;
        }
        s[n][c] = x;
      }
      mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
      mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    // A row with no key seen yet keeps m = -inf: use 0 as the base so exp2 gives 0, not NaN.
    const float base0 = mn0 == NG_NEG_INF ? 0.0f : mn0, base1 = mn1 == NG_NEG_INF ? 0.0f : mn1;
    const float corr0 = fast_exp2(m0 - base0), corr1 = fast_exp2(m1 - base1);
    m0 = mn0;
    m1 = mn1;
    l0 *= corr0;
    l1 *= corr1;
#pragma unroll
    for (int n = 0; n < NT_O; n++) {
      o[n][0] *= corr0;
      o[n][1] *= corr0;
      o[n][2] *= corr1;
      o[n][3] *= corr1;
    }
    // P = exp2(S - m), packed as A fragments: k-step ks covers column tiles 2ks and 2ks + 1.
    unsigned pa[BK / 16][4];
#pragma unroll
    for (int n = 0; n < NT_S; n++) {
      const float p0 = fast_exp2(s[n][0] - base0), p1 = fast_exp2(s[n][1] - base0);
      const float p2 = fast_exp2(s[n][2] - base1), p3 = fast_exp2(s[n][3] - base1);
      l0 += p0 + p1;
      l1 += p2 + p3;
      pa[n >> 1][(n & 1) * 2 + 0] = pack2(p0, p1);
      pa[n >> 1][(n & 1) * 2 + 1] = pack2(p2, p3);
    }
    // O += P V: ldmatrix x4 trans gives the B fragments of two 8-dim column tiles for one k-step.
#pragma unroll
    for (int ks = 0; ks < BK / 16; ks++) {
#pragma unroll
      for (int dp = 0; dp < NT_O / 2; dp++) {
        unsigned vf[4];
        ldmatrix_x4_trans(vf, smem_addr(&v_s[st][ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8]
                                            [dp * 16 + (lane >> 4) * 8]));
        mma16816(o[2 * dp], pa[ks], vf[0], vf[1]);
        mma16816(o[2 * dp + 1], pa[ks], vf[2], vf[3]);
      }
    }
    __syncthreads();  // the next iteration's copy overwrites the stage just read
  }
  // Final 1/l (the row's 4 threads sum their partial l) and store; padding rows get zeros.
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = r0 < rows ? 1.0f / l0 : 0.0f, inv1 = r1 < rows ? 1.0f / l1 : 0.0f;
  unsigned* oa = reinterpret_cast<unsigned*>(out + ((size_t)s0 + t0 + r0) * C + h * HD);
  unsigned* ob = reinterpret_cast<unsigned*>(out + ((size_t)s0 + t0 + r1) * C + h * HD);
#pragma unroll
  for (int n = 0; n < NT_O; n++) {
    if (r0 < rows) oa[n * 4 + tq] = pack2(o[n][0] * inv0, o[n][1] * inv0);
    if (r1 < rows) ob[n * 4 + tq] = pack2(o[n][2] * inv1, o[n][3] * inv1);
  }
}
