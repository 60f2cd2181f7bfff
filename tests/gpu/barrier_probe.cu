// barrier_probe: what a grid barrier costs on this GPU, apart from any decode work. The fused decode
// (native/kernels/decode_fused.cu) pays one barrier a phase and measured no phase under about 3 us
// on an H200; this separates the barrier from the phase's own chain of loads and stores.
// One 256-thread block an SM, `iters` iterations, block 0's global timer around them; an iteration
// is one barrier of these kinds:
//   flags      decode_fused's barrier: a release store of the block's count, every thread polls a
//              share of the flags (acquire loads) until none is behind
//   flags-w0   the same, but only warp 0 polls, then __syncthreads
//   counter    one counter: thread 0 adds with release semantics and polls it with acquire loads
//   coop       cooperative groups' grid.sync() (a cooperative launch)
// With `chain`, an iteration is a phase's skeleton instead: each block stores a word, barrier, loads
// its neighbour's word (the dependence every phase has: its input was written by other blocks in the
// phase before), barrier (so no word is overwritten before it is read).
// Build and run on the GPU machine: nvcc -O3 -arch=sm_90 -o barrier_probe barrier_probe.cu && ./barrier_probe
#include <cooperative_groups.h>
#include <cstdio>
#include <cuda_runtime.h>

namespace cg = cooperative_groups;

__device__ __forceinline__ unsigned long long gtimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ void st_release(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

template <int V>
__device__ __forceinline__ void barrier(unsigned* flags, unsigned* counter, unsigned& count) {
  count++;
  if (V == 3) {
    cg::this_grid().sync();
    return;
  }
  __syncthreads();
  if (V == 2) {
    if (threadIdx.x == 0) {
      asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
      while (ld_acquire(counter) < count * gridDim.x) {
      }
    }
    __syncthreads();
    return;
  }
  if (threadIdx.x == 0) st_release(flags + blockIdx.x, count);
  if (V == 0) {
    bool behind;
    do {
      behind = false;
      for (int i = threadIdx.x; i < (int)gridDim.x; i += blockDim.x) behind |= (int)(ld_acquire(flags + i) - count) < 0;
    } while (__syncthreads_or(behind));
  } else {
    if (threadIdx.x < 32) {
      bool behind;
      do {
        behind = false;
        for (int i = threadIdx.x; i < (int)gridDim.x; i += 32) behind |= (int)(ld_acquire(flags + i) - count) < 0;
      } while (__any_sync(0xffffffffu, behind));
    }
    __syncthreads();
  }
}

template <int V>
__global__ void __launch_bounds__(256, 1)
probe(unsigned* flags, unsigned* counter, int* data, int iters, int chain, unsigned long long* out, int* bad) {
  unsigned count = 0;
  const unsigned long long t0 = gtimer();
  for (int i = 1; i <= iters; i++) {
    if (chain && threadIdx.x == 0) *(volatile int*)(data + blockIdx.x) = i;
    barrier<V>(flags, counter, count);
    if (chain) {
      __shared__ int seen;
      if (threadIdx.x == 0) seen = *(volatile int*)(data + (blockIdx.x + 1) % gridDim.x);
      __syncthreads();
      if (threadIdx.x == 0 && seen < i) atomicAdd(bad, 1);
      barrier<V>(flags, counter, count);  // nobody overwrites data before its neighbour read it
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = gtimer() - t0;
}

#define CHECK(x)                                                                   \
  do {                                                                             \
    cudaError_t e = (x);                                                           \
    if (e != cudaSuccess) {                                                        \
      fprintf(stderr, "%s: %s (line %d)\n", #x, cudaGetErrorString(e), __LINE__); \
      return 1;                                                                    \
    }                                                                              \
  } while (0)

template <int V>
int run(const char* name, int sms, int chain, unsigned* flags, unsigned* counter, int* data, unsigned long long* out,
        int* bad) {
  const int iters = 2000;
  double best = 1e30;
  for (int rep = 0; rep < 5; rep++) {
    CHECK(cudaMemset(flags, 0, 4 * sms));
    CHECK(cudaMemset(counter, 0, 4));
    CHECK(cudaMemset(data, 0, 4 * sms));
    void* args[] = {&flags, &counter, &data, (void*)&iters, &chain, &out, &bad};
    CHECK(cudaLaunchCooperativeKernel((void*)probe<V>, dim3(sms), dim3(256), args, 0, 0));
    CHECK(cudaDeviceSynchronize());
    unsigned long long ns;
    CHECK(cudaMemcpy(&ns, out, 8, cudaMemcpyDeviceToHost));
    const double per = (double)ns / iters;
    if (per < best) best = per;
  }
  int b;
  CHECK(cudaMemcpy(&b, bad, 4, cudaMemcpyDeviceToHost));
  printf("{\"barrier\":\"%s\",\"chain\":%d,\"blocks\":%d,\"us_per_iter\":%.3f,\"stale_reads\":%d}\n", name, chain, sms,
         best / 1000.0, b);
  return 0;
}

int main() {
  cudaDeviceProp p;
  CHECK(cudaGetDeviceProperties(&p, 0));
  const int sms = p.multiProcessorCount;
  unsigned *flags, *counter;
  int *data, *bad;
  unsigned long long* out;
  CHECK(cudaMalloc(&flags, 4 * sms));
  CHECK(cudaMalloc(&counter, 4));
  CHECK(cudaMalloc(&data, 4 * sms));
  CHECK(cudaMalloc(&bad, 4));
  CHECK(cudaMalloc(&out, 8));
  CHECK(cudaMemset(bad, 0, 4));
  printf("# %s, %d SMs\n", p.name, sms);
  for (int chain = 0; chain < 2; chain++) {
    if (run<0>("flags", sms, chain, flags, counter, data, out, bad)) return 1;
    if (run<1>("flags-w0", sms, chain, flags, counter, data, out, bad)) return 1;
    if (run<2>("counter", sms, chain, flags, counter, data, out, bad)) return 1;
    if (run<3>("coop", sms, chain, flags, counter, data, out, bad)) return 1;
  }
  return 0;
}
