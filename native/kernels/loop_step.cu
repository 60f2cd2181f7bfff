// loop_step: the last kernel of a device-side decode loop's body (a CUDA graph WHILE node). After
// iteration i (the device counter) of n it copies the B sampled tokens into row first + i of the
// token log (rows of `stride` int32), then counts the iteration; after the n-th it resets the counter
// (ready for the next launch) and stops the loop. With handle 0 (no graph) it only logs and counts.
// One block.
typedef __device_builtin__ unsigned long long ng_cond_handle;
extern "C" __device__ __cudart_builtin__ void cudaGraphSetConditional(ng_cond_handle handle, unsigned int value);

extern "C" __global__ void ng_loop_step(int* __restrict__ log, const int* __restrict__ tokens, int* counter,
                                        ng_cond_handle handle, int B, int stride, int first, int n) {
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int i = *counter;
  for (int b = threadIdx.x; b < B; b += blockDim.x) log[(size_t)(first + i) * stride + b] = tokens[b];
  __syncthreads();  // every thread has read the counter before it changes
  if (threadIdx.x == 0) {
    const bool more = i + 1 < n;
    *counter = more ? i + 1 : 0;
    if (handle != 0) cudaGraphSetConditional(handle, more ? 1u : 0u);
  }
}
