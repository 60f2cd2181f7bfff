// loop_step: the last kernel of a device-side decode loop's body (a CUDA graph WHILE node). After
// iteration i (the device counter) of n it copies `words` 32-bit words from src into row first + i
// of log (rows of `stride` words), and likewise src2 into log2 when words2 > 0 (the logprobs), then
// counts the iteration; after the n-th it resets the counter (ready for the next launch) and stops
// the loop. With handle 0 (no graph) it only logs and counts. One block.
typedef __device_builtin__ unsigned long long ng_cond_handle;
extern "C" __device__ __cudart_builtin__ void cudaGraphSetConditional(ng_cond_handle handle, unsigned int value);

extern "C" __global__ void ng_loop_step(int* __restrict__ log, const int* __restrict__ src, int words, int stride,
                                        int* __restrict__ log2, const int* __restrict__ src2, int words2,
                                        int stride2, int* counter, ng_cond_handle handle, int first, int n) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int i = *counter;
  for (int w = threadIdx.x; w < words; w += blockDim.x) log[(size_t)(first + i) * stride + w] = src[w];
  for (int w = threadIdx.x; w < words2; w += blockDim.x) log2[(size_t)(first + i) * stride2 + w] = src2[w];
  __syncthreads();  // every thread has read the counter before it changes
  if (threadIdx.x == 0) {
    const bool more = i + 1 < n;
    *counter = more ? i + 1 : 0;
    if (handle != 0) cudaGraphSetConditional(handle, more ? 1u : 0u);
  }
}
