// attention_combine: merges attention_decode's per-chunk partials of each (b, h) into
// out[b, h*D:(h+1)*D] = sum_c 2^(m_c - M) acc_c / sum_c 2^(m_c - M) l_c over the chunks that hold
// live keys (scores in log2 units). Only sequences whose live length len = min(lengths[b] + 1,
// max_T) spans more than one chunk: attention_decode already wrote the others (and the zero rows
// of n_new[b] == 0). Needs -DNG_HEAD_DIM=D. Grid: (H, B); block: D rounded up to 32 threads, thread
// d owns output element d.
#ifndef NG_HEAD_DIM
#error "attention_combine needs -DNG_HEAD_DIM"
#endif
#define HD NG_HEAD_DIM

extern "C" __global__ void ng_attention_combine(st_t* __restrict__ out, const float* __restrict__ part_acc,
                                                const float* __restrict__ part_ml, const int* __restrict__ lengths,
                                                const int* __restrict__ n_new, int H, int max_T, int chunk,
                                                int n_chunks) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int b = blockIdx.y, h = blockIdx.x, d = threadIdx.x;
  if (d >= HD || n_new[b] <= 0) return;
  const int len = min(lengths[b] + 1, max_T);
  const int ns = min((len + chunk - 1) / chunk, n_chunks);
  if (ns <= 1) return;
  const size_t base = ((size_t)b * H + h) * n_chunks;
  float M = NG_NEG_INF;
  for (int c = 0; c < ns; c++) M = fmaxf(M, part_ml[2 * (base + c)]);
  float lsum = 0.0f, a = 0.0f;
  for (int c = 0; c < ns; c++) {
    const float w = exp2f(part_ml[2 * (base + c)] - M);
    lsum += w * part_ml[2 * (base + c) + 1];
    a += w * part_acc[(base + c) * HD + d];
  }
  out[(size_t)b * H * HD + h * HD + d] = from_f32(a / lsum);
}
