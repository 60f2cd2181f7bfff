// attention_decode (T == 1): one query per (b, h) over the cache positions 0..lengths[b] (the new
// token's k/v already appended), split over the KV length: block `sp` takes keys
// sp*S .. sp*S+S-1 (S = NG_DECODE_SPLIT, one per thread), so only live positions are read and
// blocks past the length exit at once. Each writes its partial softmax numerator
// part_acc[(b*H + h)*n_split + sp, :D] and (max, sum) into part_ml; attention_combine merges them.
// Needs -DNG_HEAD_DIM=D (1..128). Grid: (n_split, H, B); block: S = 128 threads.
#ifndef NG_HEAD_DIM
#error "attention_decode needs -DNG_HEAD_DIM"
#endif
#if NG_HEAD_DIM < 1 || NG_HEAD_DIM > 128
#error "attention_decode supports head_dim 1..128"
#endif
#define HD NG_HEAD_DIM
#define S NG_DECODE_SPLIT
#define G (S / HD)

extern "C" __global__ void __launch_bounds__(NG_DECODE_SPLIT)
ng_attention_decode(float* __restrict__ part_acc, float* __restrict__ part_ml, const st_t* __restrict__ qkv,
                    const st_t* __restrict__ k_cache, const st_t* __restrict__ v_cache,
                    const int* __restrict__ lengths, const int* __restrict__ n_new, int H, int max_T,
                    int n_split, float scale) {
  __shared__ float q_s[HD];
  __shared__ float p_s[S];
  __shared__ float red[32];
  __shared__ float acc_s[G][HD];
  const int b = blockIdx.z, h = blockIdx.y, sp = blockIdx.x, tid = threadIdx.x;
  if (n_new[b] <= 0) return;
  const int len = min(lengths[b] + 1, max_T);
  const int j0 = sp * S;
  if (j0 >= len) return;
  const int C = H * HD;
  for (int d = tid; d < HD; d += blockDim.x) q_s[d] = to_f32(qkv[(size_t)b * 3 * C + h * HD + d]) * scale;
  __syncthreads();
  const size_t base = ((size_t)b * H + h) * (size_t)max_T * HD;
  const int j = j0 + tid;
  float s = NG_NEG_INF;
  if (j < len) {
    const st_t* kr = k_cache + base + (size_t)j * HD;
    float a = 0.0f;
#if (NG_HEAD_DIM * NG_DTYPE_BYTES) % 16 == 0
#pragma unroll
    for (int d0 = 0; d0 < HD; d0 += NG_VEC) {
      float v[NG_VEC];
      load_vec(kr + d0, v);
#pragma unroll
      for (int e = 0; e < NG_VEC; e++) a += q_s[d0 + e] * v[e];
    }
#else
#pragma unroll 8
    for (int d = 0; d < HD; d++) a += q_s[d] * to_f32(kr[d]);
#endif
    s = a;
  }
  const float m = block_max(s, red);
  const float p = j < len ? expf(s - m) : 0.0f;
  const float l = block_sum(p, red);
  p_s[tid] = p;
  __syncthreads();
  const int nk = min(S, len - j0);
  const int g = tid / HD, d = tid - g * HD;
  if (g < G) {
    const st_t* vb = v_cache + base + (size_t)j0 * HD + d;
    float a = 0.0f;
    for (int jj = g; jj < nk; jj += G) a += p_s[jj] * to_f32(vb[(size_t)jj * HD]);
    acc_s[g][d] = a;
  }
  __syncthreads();
  const size_t o = ((size_t)b * H + h) * n_split + sp;
  if (tid < HD) {
    float a = 0.0f;
#pragma unroll
    for (int gg = 0; gg < G; gg++) a += acc_s[gg][tid];
    part_acc[o * HD + tid] = a;
  }
  if (tid == 0) {
    part_ml[2 * o] = m;
    part_ml[2 * o + 1] = l;
  }
}
