// sample: the next token of each sequence b with n_new[b] > 0 from f32 logits row b (V values at
// logits + b * ld), one block per sequence, no sorting (the CPU backend implements the same algorithm):
//   greedy (temperature <= 0 or top_k == 1): argmax, lowest index on ties.
//   else p_i = exp((x_i - max) / temperature), Z = sum p_i, k = top_k if 0 < top_k < V else V,
//   P = top_p if 0 < top_p < 1 else 1; pivot = -1; for round r = 0, 1, ...: u = (x0 >> 8) * 2^-24
//   with x0 the first word of Philox4x32-10(counter = (lengths[b] + n_new[b], r, 0, 0), key =
//   (seed[2b], seed[2b+1])); j = the first i in index order over {p_i > pivot} whose running sum
//   of p exceeds u * (sum of p over that set) (the last such i if rounding leaves none);
//   accept j if #{p_i > p_j} < k and sum{p_i > p_j} < P * Z, else pivot = p_j.
// The running sum is hierarchical: each thread owns a contiguous chunk; a block scan of chunk sums
// gives each chunk's starting sum; every thread walks its chunk; the lowest hit wins.
// Grid: B blocks; block: NT threads (-DNG_SAMPLE_THREADS, from the kernel table in kernels.ts).
#ifndef NG_SAMPLE_THREADS
#error "sample needs -DNG_SAMPLE_THREADS"
#endif
#define NT NG_SAMPLE_THREADS
#define NWARPS (NT / 32)
#define INT_BIG 0x7fffffff

__device__ __forceinline__ void philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
#pragma unroll
  for (int i = 0; i < 10; i++) {
    const unsigned int lo0 = 0xD2511F53u * c[0], hi0 = __umulhi(0xD2511F53u, c[0]);
    const unsigned int lo1 = 0xCD9E8D57u * c[2], hi1 = __umulhi(0xCD9E8D57u, c[2]);
    const unsigned int n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// The unnormalised probability of token i; every pass computes it with the same expression, so
// the comparisons between passes see identical values.
__device__ __forceinline__ float prob(const float* row, int i, float m, float temp) {
  return expf((row[i] - m) / temp);
}

extern "C" __global__ void __launch_bounds__(NT)
ng_sample(int* __restrict__ tokens_out, const float* __restrict__ logits, const int* __restrict__ lengths,
          const int* __restrict__ n_new, const float* __restrict__ temperature, const int* __restrict__ top_k,
          const float* __restrict__ top_p, const unsigned int* __restrict__ seed, int V, int ld) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  __shared__ float fs[32];
  __shared__ int is[32];
  __shared__ float scan_s[32];
  const int b = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (n_new[b] <= 0) return;
  const float* row = logits + (size_t)b * ld;
  const float temp = temperature[b];
  const int tk = top_k[b];

  float bv = NG_NEG_INF;
  int bi = INT_BIG;
  for (int i = tid; i < V; i += NT) {
    const float v = row[i];
    if (v > bv || bi == INT_BIG) {
      bv = v;
      bi = i;
    }
  }
  block_argmax(bv, bi, fs, is);
  if (!(temp > 0.0f) || tk == 1) {
    if (tid == 0) tokens_out[b] = bi;
    return;
  }
  const float m = bv;
  float z = 0.0f;
  for (int i = tid; i < V; i += NT) z += prob(row, i, m, temp);
  const float Z = block_sum(z, fs);
  const int k = (tk > 0 && tk < V) ? tk : V;
  const float tp = top_p[b];
  const float P = (tp > 0.0f && tp < 1.0f) ? tp : 1.0f;
  const bool use_k = k < V, use_p = P < 1.0f;
  const unsigned int ctr0 = (unsigned int)(lengths[b] + n_new[b]);
  const unsigned int key0 = seed[2 * b], key1 = seed[2 * b + 1];
  const int chunk = (V + NT - 1) / NT;
  const int lo = min(tid * chunk, V), hi = min(lo + chunk, V);
  float pivot = -1.0f;
  for (unsigned int r = 0;; r++) {
    unsigned int c[4] = {ctr0, r, 0u, 0u};
    philox4x32_10(c, key0, key1);
    const float u = (float)(c[0] >> 8) * (1.0f / 16777216.0f);
    float cs = 0.0f;
    int last_el = -1;
    for (int i = lo; i < hi; i++) {
      const float p = prob(row, i, m, temp);
      if (p > pivot) {
        cs += p;
        last_el = i;
      }
    }
    // Block scan of the chunk sums: incl = sum of chunks 0..tid, excl = sum of chunks 0..tid-1.
    float incl = cs;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    const float prev = __shfl_up_sync(0xffffffffu, incl, 1);
    __syncthreads();
    if (lane == 31) scan_s[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      float w = scan_s[lane];
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(0xffffffffu, w, o);
        if (lane >= o) w += y;
      }
      scan_s[lane] = w;
    }
    __syncthreads();
    const float woff = warp > 0 ? scan_s[warp - 1] : 0.0f;
    const float M = scan_s[NWARPS - 1];
    const float excl = woff + (lane > 0 ? prev : 0.0f);
    const float target = u * M;
    int found = INT_BIG;
    if (cs > 0.0f) {
      float run = excl;
      for (int i = lo; i < hi; i++) {
        const float p = prob(row, i, m, temp);
        if (p > pivot) {
          run += p;
          if (run > target) {
            found = i;
            break;
          }
        }
      }
    }
    int j = block_reduce<OpMin>(found, INT_BIG, is);
    if (j == INT_BIG) j = block_reduce<OpMax>(last_el, -1, is);
    if (j < 0) {  // nothing eligible (NaN logits): fall back to the argmax
      if (tid == 0) tokens_out[b] = bi;
      return;
    }
    const float pj = prob(row, j, m, temp);
    int cnt = 0;
    float mass = 0.0f;
    for (int i = tid; i < V; i += NT) {
      const float p = prob(row, i, m, temp);
      if (p > pj) {
        cnt++;
        mass += p;
      }
    }
    if (use_k) cnt = block_reduce<OpSum>(cnt, 0, is);
    if (use_p) mass = block_sum(mass, fs);
    if ((!use_k || cnt < k) && (!use_p || mass < P * Z)) {
      if (tid == 0) tokens_out[b] = j;
      return;
    }
    pivot = pj;
  }
}
