// gather_rows: out[i, :] = x[idx[i], :] for i < n (each sequence's last row after a packed
// prefill). Grid: n blocks; block: threads striding over C.
extern "C" __global__ void ng_gather_rows(st_t* __restrict__ out, const st_t* __restrict__ x,
                                          const int* __restrict__ idx, int C) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int i = blockIdx.x;
  const st_t* src = x + (size_t)idx[i] * C;
  st_t* dst = out + (size_t)i * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}
