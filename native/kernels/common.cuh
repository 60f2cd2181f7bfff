// Shared helpers prepended to every kernel file (no CUDA headers: NVRTC may run without an
// include path). Storage type by -DNG_DTYPE: 0 f32, 1 f16, 2 bf16 (raw 16-bit values); all
// arithmetic in f32.
#ifndef NG_DTYPE
#define NG_DTYPE 0
#endif

#if NG_DTYPE == 0
typedef float st_t;
__device__ __forceinline__ float to_f32(st_t x) { return x; }
__device__ __forceinline__ st_t from_f32(float x) { return x; }
#elif NG_DTYPE == 1
typedef unsigned short st_t;
__device__ __forceinline__ float to_f32(st_t x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
  return f;
}
__device__ __forceinline__ st_t from_f32(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#elif NG_DTYPE == 2
typedef unsigned short st_t;
__device__ __forceinline__ float to_f32(st_t x) { return __uint_as_float(((unsigned int)x) << 16); }
__device__ __forceinline__ st_t from_f32(float f) {
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#else
#error "NG_DTYPE must be 0 (f32), 1 (f16) or 2 (bf16)"
#endif

// Bytes of st_t (usable in #if) and elements of st_t in one 16-byte vector.
#define NG_DTYPE_BYTES (NG_DTYPE == 0 ? 4 : 2)
#define NG_VEC (16 / NG_DTYPE_BYTES)

#define NG_NEG_INF (__int_as_float(0xff800000))

// Loads NG_VEC consecutive elements (16-byte aligned) as f32.
__device__ __forceinline__ void load_vec(const st_t* p, float* out) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
#if NG_DTYPE == 0
  out[0] = __uint_as_float(u.x);
  out[1] = __uint_as_float(u.y);
  out[2] = __uint_as_float(u.z);
  out[3] = __uint_as_float(u.w);
#else
  unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    out[2 * i] = to_f32((st_t)(w[i] & 0xffffu));
    out[2 * i + 1] = to_f32((st_t)(w[i] >> 16));
  }
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
// `scratch` holds 32 floats; the leading barrier lets callers reuse it back to back.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// Block-wide max, as block_sum.
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : NG_NEG_INF;
  return warp_max(v);
}

// A prefill attention block whose query rows are all padding (t >= n_new): zeros for rows t0 ..
// t0+rows-1 below T of sequence b, in columns col .. col+width-1 of out (B*T rows of C).
__device__ __forceinline__ void prefill_zero_rows(st_t* out, int b, int T, int C, int col, int width, int t0,
                                                  int rows) {
  for (int i = threadIdx.x; i < rows * width; i += blockDim.x) {
    const int r = i / width, d = i - r * width, t = t0 + r;
    if (t < T) out[((size_t)b * T + t) * C + col + d] = from_f32(0.0f);
  }
}

// Programmatic dependent launch (sm_90+): every kernel is launched allowed to start while the
// previous kernel on the stream finishes. ng_grid_dep_wait() blocks until that kernel (and so every
// earlier one) has completed and its writes are visible: call it before reading anything an earlier
// kernel of the step wrote, and before writing anything an earlier kernel may still read.
// ng_grid_dep_launch() lets the next kernel start now (its own wait still protects it).
__device__ __forceinline__ void ng_grid_dep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void ng_grid_dep_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
