// attention_combine: merges attention_decode's per-split partials of each (b, h) into
// out[b, h*D:(h+1)*D] = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s over the splits that hold
// live keys; sequences with n_new[b] == 0 get zeros. Needs -DNG_HEAD_DIM=D.
// Grid: (H, B); block: D rounded up to a multiple of 32 threads.
#ifndef NG_HEAD_DIM
#error "attention_combine needs -DNG_HEAD_DIM"
#endif
#define HD NG_HEAD_DIM

extern "C" __global__ void ng_attention_combine(st_t* __restrict__ out, const float* __restrict__ part_acc,
                                                const float* __restrict__ part_ml, const int* __restrict__ lengths,
                                                const int* __restrict__ n_new, int H, int max_T, int n_split) {
  const int b = blockIdx.y, h = blockIdx.x, d = threadIdx.x;
  if (d >= HD) return;
  st_t* o = out + (size_t)b * H * HD + h * HD;
  if (n_new[b] <= 0) {
    o[d] = from_f32(0.0f);
    return;
  }
  const int len = min(lengths[b] + 1, max_T);
  const int ns = min((len + NG_DECODE_SPLIT - 1) / NG_DECODE_SPLIT, n_split);
  const size_t base = ((size_t)b * H + h) * n_split;
  float M = NG_NEG_INF;
  for (int s = 0; s < ns; s++) M = fmaxf(M, part_ml[2 * (base + s)]);
  float lsum = 0.0f, a = 0.0f;
  for (int s = 0; s < ns; s++) {
    const float w = expf(part_ml[2 * (base + s)] - M);
    lsum += w * part_ml[2 * (base + s) + 1];
    a += w * part_acc[(base + s) * HD + d];
  }
  o[d] = from_f32(a / lsum);
}
