// attention_prefill: causal attention of a packed prefill's rows over the paged KV cache, read
// after kv_append wrote them. Sequence b owns rows s_b = seq_start[b] .. seq_start[b+1] - 1; for row
// s_b + t: out[s_b + t, h*D:(h+1)*D] = softmax(q . K[0..L+t] * scale) V with L = lengths[b]; key j
// of head h lives in pool block table[b * mb + (j >> bs_log2)] (common.cuh kv_row). Rows outside
// every sequence are not written. Flash-style: a block takes BQ query rows of one (b, h), walks the
// keys in tiles of BK staged in shared memory (f32) and keeps an online softmax per row (each warp
// owns BQ / 4 rows; lane j scores key j of the tile; lane d accumulates output dims d, d + 32, ...).
// Needs -DNG_HEAD_DIM=D (1..128), -DNG_PREFILL_BQ and -DNG_PREFILL_THREADS (the kernel table's).
// Grid: (ceil(max rows of a sequence / BQ), H, B); block: NG_PREFILL_THREADS threads.
// With -DNG_KV8=1 the pools hold int8 with one f32 scale per row (k_scale, v_scale): a key's values
// are read as q * s.
#ifndef NG_KV8
#define NG_KV8 0
#endif
#if NG_KV8
typedef signed char kv_t;
#define NG_KV_GET(pool, sc, off) ((float)(pool)[off] * (sc)[(off) / HD])
#else
typedef st_t kv_t;
#define NG_KV_GET(pool, sc, off) to_f32((pool)[off])
#endif
#ifndef NG_HEAD_DIM
#error "attention_prefill needs -DNG_HEAD_DIM"
#endif
#if NG_HEAD_DIM < 1 || NG_HEAD_DIM > 128
#error "attention_prefill supports head_dim 1..128"
#endif
#if !defined(NG_PREFILL_BQ) || !defined(NG_PREFILL_THREADS)
#error "attention_prefill needs -DNG_PREFILL_BQ and -DNG_PREFILL_THREADS"
#endif
#define HD NG_HEAD_DIM
#define BQ NG_PREFILL_BQ
#define BK 32
#define NWARPS (NG_PREFILL_THREADS / 32)
#define RPW (BQ / NWARPS)
#define DPL ((HD + 31) / 32)

extern "C" __global__ void __launch_bounds__(NG_PREFILL_THREADS)
ng_attention_prefill(st_t* __restrict__ out, const st_t* __restrict__ qkv, const kv_t* __restrict__ k_pool,
                     const kv_t* __restrict__ v_pool, const int* __restrict__ block_table,
                     const int* __restrict__ lengths, const int* __restrict__ seq_start, int H, float scale,
                     int bs_log2, int mb
#if NG_KV8
                     , const float* __restrict__ k_scale, const float* __restrict__ v_scale
#endif
) {
  NG_TRACE_KERNEL;
#if !NG_KV8
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;
#endif
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  __shared__ float q_s[BQ][HD];
  __shared__ float k_s[BK][HD + 1];
  __shared__ float v_s[BK][HD];
  __shared__ float p_s[NWARPS][BK];
  const int b = blockIdx.z, h = blockIdx.y, t0 = blockIdx.x * BQ;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int C = H * HD;
  const int L = lengths[b];
  const int s0 = seq_start[b], nn = seq_start[b + 1] - s0;
  const int rows = min(BQ, nn - t0);
  if (rows <= 0) return;
  const int* table = block_table + (size_t)b * mb;
  for (int i = tid; i < BQ * HD; i += blockDim.x) {
    const int r = i / HD, d = i - r * HD;
    q_s[r][d] = r < rows ? to_f32(qkv[((size_t)s0 + t0 + r) * 3 * C + h * HD + d]) * scale : 0.0f;
  }
  float m[RPW], l[RPW], acc[RPW][DPL];
#pragma unroll
  for (int rr = 0; rr < RPW; rr++) {
    m[rr] = NG_NEG_INF;
    l[rr] = 0.0f;
#pragma unroll
    for (int k = 0; k < DPL; k++) acc[rr][k] = 0.0f;
  }
  const int kv_len = L + t0 + rows;
  for (int j0 = 0; j0 < kv_len; j0 += BK) {
    __syncthreads();
    for (int i = tid; i < BK * HD; i += blockDim.x) {
      const int j = i / HD, d = i - j * HD;
      const bool ok = j0 + j < kv_len;
      const size_t off = ok ? kv_row(table, j0 + j, h, H, bs_log2, HD) + d : 0;
      k_s[j][d] = ok ? NG_KV_GET(k_pool, k_scale, off) : 0.0f;
      v_s[j][d] = ok ? NG_KV_GET(v_pool, v_scale, off) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
      const int r = warp * RPW + rr;
      const int qpos = L + t0 + r;
      if (r < rows && j0 <= qpos) {  // warp-uniform
        const int j = j0 + lane;
        float s = NG_NEG_INF;
        if (j <= qpos) {
          float a = 0.0f;
#pragma unroll 8
          for (int d = 0; d < HD; d++) a += q_s[r][d] * k_s[lane][d];
          s = a;
        }
        const float m_new = fmaxf(m[rr], warp_max(s));
        const float p = j <= qpos ? expf(s - m_new) : 0.0f;
        const float corr = expf(m[rr] - m_new);
        l[rr] = l[rr] * corr + warp_sum(p);
        p_s[warp][lane] = p;
        __syncwarp();
#pragma unroll
        for (int k = 0; k < DPL; k++) {
          const int d = lane + 32 * k;
          if (d < HD) {
            float a = acc[rr][k] * corr;
#pragma unroll 8
            for (int jj = 0; jj < BK; jj++) a += p_s[warp][jj] * v_s[jj][d];
            acc[rr][k] = a;
          }
        }
        __syncwarp();
        m[rr] = m_new;
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < RPW; rr++) {
    const int r = warp * RPW + rr;
    if (r >= rows) continue;
    const float inv = 1.0f / l[rr];
#pragma unroll
    for (int k = 0; k < DPL; k++) {
      const int d = lane + 32 * k;
      if (d < HD) out[((size_t)s0 + t0 + r) * C + h * HD + d] = from_f32(acc[rr][k] * inv);
    }
  }
}
