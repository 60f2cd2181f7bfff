// logprobs: log-probabilities under the model's own distribution (log_softmax of f32 logits, no
// temperature), as the CPU's native/cpu/logprobs.zig computes them. For row r (V logits at
// logits + r * ld), with w = 1 + 2 * top_n floats of output at out + r * w:
//   out[0] = logits[t] - logsumexp(logits), t = targets[r] (NaN when t < 0);
//   then top_n (id, logprob) pairs, the most likely first, the lowest id first on ties: pass k
//   picks the block argmax among the tokens ordered after pick k - 1 (lower value, or equal value
//   and higher id).
// Grid: rows blocks; block: NG_LOGPROBS_THREADS threads (the kernel table's).
#ifndef NG_LOGPROBS_THREADS
#error "logprobs needs -DNG_LOGPROBS_THREADS"
#endif

extern "C" __global__ void __launch_bounds__(NG_LOGPROBS_THREADS)
ng_logprobs(float* __restrict__ out, const float* __restrict__ logits, const int* __restrict__ targets, int V,
            int ld, int top_n) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  __shared__ float fs[32];
  __shared__ int is[32];
  const int r = blockIdx.x, tid = threadIdx.x;
  const float* x = logits + (size_t)r * ld;
  float m = NG_NEG_INF;
  for (int i = tid; i < V; i += blockDim.x) m = fmaxf(m, x[i]);
  m = block_max(m, fs);
  float s = 0.0f;
  for (int i = tid; i < V; i += blockDim.x) s += expf(x[i] - m);
  const float lse = m + logf(block_sum(s, fs));
  float* o = out + (size_t)r * (1 + 2 * top_n);
  const int t = targets[r];
  if (tid == 0) o[0] = t >= 0 && t < V ? x[t] - lse : __int_as_float(0x7fc00000);
  float pv = __int_as_float(0x7f800000);  // the previous pick: +inf, index -1
  int pi = -1;
  for (int k = 0; k < top_n; k++) {
    float bv = NG_NEG_INF;
    int bi = 0x7fffffff;
    for (int i = tid; i < V; i += blockDim.x) {
      const float v = x[i];
      const bool after = v < pv || (v == pv && i > pi);
      if (after && (v > bv || (v == bv && i < bi))) {
        bv = v;
        bi = i;
      }
    }
    block_argmax(bv, bi, fs, is);
    if (tid == 0) {
      o[1 + 2 * k] = (float)bi;
      o[2 + 2 * k] = bv - lse;
    }
    pv = bv;
    pi = bi;
  }
}
