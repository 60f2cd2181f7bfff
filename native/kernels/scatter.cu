// scatter: dst[idx[i]] = src[i] (int32) for i < n where idx[i] >= 0: a prefill's sampled tokens
// into the decode slots of the sequences whose prompt it finished. Any grid covering n.
extern "C" __global__ void ng_scatter(int* __restrict__ dst, const int* __restrict__ src, const int* __restrict__ idx,
                                      int n) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && idx[i] >= 0) dst[idx[i]] = src[i];
}
