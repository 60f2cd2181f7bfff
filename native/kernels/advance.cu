// advance: lengths[b] += n_new[b]. Any grid covering B.
extern "C" __global__ void ng_advance(int* __restrict__ lengths, const int* __restrict__ n_new, int B) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < B) lengths[b] += n_new[b];
}
