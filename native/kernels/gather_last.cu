// gather_last: out[b, :] = x[b*T + max(n_new[b] - 1, 0), :]. Grid: B blocks; block: threads over C.
extern "C" __global__ void ng_gather_last(st_t* __restrict__ out, const st_t* __restrict__ x,
                                          const int* __restrict__ n_new, int T, int C) {
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int b = blockIdx.x;
  int t = n_new[b] - 1;
  t = t < 0 ? 0 : (t >= T ? T - 1 : t);
  const st_t* src = x + ((size_t)b * T + t) * C;
  st_t* dst = out + (size_t)b * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}
