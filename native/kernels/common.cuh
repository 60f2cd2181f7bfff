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

// The qualifier of pointers to activations a kernel reads: __restrict__ (the compiler may then read
// them through the non-coherent cache), except in the fused decode kernel (-DNG_FUSED), which reads
// activations that its own other blocks wrote earlier in the launch; the non-coherent path is only
// safe for data no one writes while the kernel runs.
#ifdef NG_FUSED
#define NG_ACT_RESTRICT
#else
#define NG_ACT_RESTRICT __restrict__
#endif

// Bytes of st_t (usable in #if) and elements of st_t in one 16-byte vector.
#define NG_DTYPE_BYTES (NG_DTYPE == 0 ? 4 : 2)
#define NG_VEC (16 / NG_DTYPE_BYTES)

#define NG_NEG_INF (__int_as_float(0xff800000))

// The NG_VEC elements of a 16-byte vector as f32.
__device__ __forceinline__ void unpack_vec(uint4 u, float* out) {
#if NG_DTYPE == 0
  out[0] = __uint_as_float(u.x);
  out[1] = __uint_as_float(u.y);
  out[2] = __uint_as_float(u.z);
  out[3] = __uint_as_float(u.w);
#else
  const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    out[2 * i] = to_f32((st_t)(w[i] & 0xffffu));
    out[2 * i + 1] = to_f32((st_t)(w[i] >> 16));
  }
#endif
}

// Loads NG_VEC consecutive elements (16-byte aligned) as f32.
__device__ __forceinline__ void load_vec(const st_t* p, float* out) { unpack_vec(*reinterpret_cast<const uint4*>(p), out); }

// NG_VEC f32 values rounded to st_t, as one 16-byte vector.
__device__ __forceinline__ uint4 pack_vec(const float* f) {
#if NG_DTYPE == 0
  return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
#else
  unsigned int w[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    w[i] = (unsigned int)from_f32(f[2 * i]) | ((unsigned int)from_f32(f[2 * i + 1]) << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
#endif
}

// The layernorm's per-thread partial sums (gemv.cu's statistics, layernorm.cu's layernorm_vec): over
// the J vectors a thread holds in r, vector j being row vector first + j * stride, the sum of f(e)
// over its NG_VEC elements e, counting only vectors < nvec (the rest were loaded at clamped
// addresses so that all J loads are in flight at once).
template <int J, typename F>
__device__ __forceinline__ float ng_held_vec_sum(const uint4* r, int first, int stride, int nvec, F f) {
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < J; j++) {
    float x[NG_VEC];
    unpack_vec(r[j], x);
    float t = 0.0f;
#pragma unroll
    for (int e = 0; e < NG_VEC; e++) t += f(x[e]);
    s += first + j * stride < nvec ? t : 0.0f;
  }
  return s;
}

// GELU by activation code (src/backend/backend.ts ACTIVATION_CODE): 1 exact erf (nanoGPT's
// nn.GELU()), 2 tanh approximation (HF gelu_new); anything else is the identity.
__device__ __forceinline__ float ng_gelu(float v, int act) {
  if (act == 1) return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
  if (act == 2) {
    const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    return 0.5f * v * (1.0f + tanhf(u));
  }
  return v;
}

// Reduction operators for block_reduce.
struct OpSum {
  template <typename T>
  static __device__ __forceinline__ T op(T a, T b) { return a + b; }
};
struct OpMax {
  static __device__ __forceinline__ float op(float a, float b) { return fmaxf(a, b); }
  static __device__ __forceinline__ int op(int a, int b) { return max(a, b); }
};
struct OpMin {
  static __device__ __forceinline__ float op(float a, float b) { return fminf(a, b); }
  static __device__ __forceinline__ int op(int a, int b) { return min(a, b); }
};

template <typename Op, typename T>
__device__ __forceinline__ T warp_reduce(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = Op::op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The one block-wide reduction of every kernel, for blockDim.x a multiple of 32 (<= 1024); every
// thread gets the result. `scratch` holds 32 values; the leading barrier lets callers reuse it
// back to back.
template <typename Op, typename T>
__device__ __forceinline__ T block_reduce(T v, T identity, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_reduce<Op>(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : identity;
  return warp_reduce<Op>(v);
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<OpSum>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<OpMax>(v); }
__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce<OpSum>(v, 0.0f, scratch); }
__device__ __forceinline__ float block_max(float v, float* scratch) {
  return block_reduce<OpMax>(v, NG_NEG_INF, scratch);
}

// Argmax with the lowest index on ties, over a warp then a block; every thread gets (value, index).
__device__ __forceinline__ void warp_argmax(float& bv, int& bi) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
}
__device__ __forceinline__ void block_argmax(float& bv, int& bi, float* fs, int* is) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  warp_argmax(bv, bi);
  __syncthreads();
  if (lane == 0) {
    fs[warp] = bv;
    is[warp] = bi;
  }
  __syncthreads();
  bv = lane < nwarps ? fs[lane] : NG_NEG_INF;
  bi = lane < nwarps ? is[lane] : 0x7fffffff;
  warp_argmax(bv, bi);
}

// Position p of a sequence in a paged KV pool (num_blocks, H, 2^bs_log2, D): the offset (in
// elements) of head h's row, through the sequence's block-table row `table`.
__device__ __forceinline__ size_t kv_row(const int* table, int p, int h, int H, int bs_log2, int D) {
  const int blk = table[p >> bs_log2];
  return ((((size_t)blk * H + h) << bs_log2) + (p & ((1 << bs_log2) - 1))) * D;
}

// The four int8 values of a word as f32. Byte b ^ 128 placed under the exponent bits of 2^23 is
// 2^23 + (b + 128) (one byte permute), minus 2^23 + 128 (exact): two cheap instructions where an
// int-to-float conversion runs at an eighth of the FMA rate (gemv.cu's and gemv_mma.cu's int8
// weights).
__device__ __forceinline__ void ng_i8x4_to_f32(unsigned int word, float* f) {
  const unsigned int biased = word ^ 0x80808080u;
#pragma unroll
  for (int b = 0; b < 4; b++) f[b] = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7650 + b)) - 8388736.0f;
}

// One row of an int8 KV cache: the D values of src as round(x / s), s = max |x| / 127 (0 for an
// all-zero row), into dst, and s into *scale, as the CPU backend's attention.zig stores them. Every
// lane of a warp calls it (lane: its lane).
__device__ __forceinline__ void ng_kv8_store_row(signed char* dst, float* scale, const st_t* src, int D, int lane) {
  float m = 0.0f;
  for (int d = lane; d < D; d += 32) m = fmaxf(m, fabsf(to_f32(src[d])));
  m = warp_max(m);
  const float s = m / 127.0f;
  for (int d = lane; d < D; d += 32) {
    dst[d] = s == 0.0f ? 0 : (signed char)fmaxf(-127.0f, fminf(127.0f, roundf(to_f32(src[d]) / s)));
  }
  if (lane == 0) *scale = s;
}

// Shared-memory addresses and 16-byte asynchronous copies into shared memory (sm_80+):
// attention_prefill_mma.cu's K/V tiles, gemv.cu's staging of x.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}

// 16-byte async copy global -> shared; src_bytes 0 fills the 16 bytes with zeros.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

#if NG_DTYPE != 0
// Tensor cores (16-bit storage types): attention_prefill_mma.cu, gemv_mma.cu, gemm_mma.cu.
// d += a (16x16, row) * b (16x8, col), f32 accumulate.
#if NG_DTYPE == 2
#define NG_MMA_AB "bf16"  // the mma's A and B type in PTX
#else
#define NG_MMA_AB "f16"
#endif
__device__ __forceinline__ void mma16816(float* d, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." NG_MMA_AB "." NG_MMA_AB
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 matrices of 16-bit elements from shared memory (lanes 8i..8i+7 address matrix i's rows),
// as mma fragments; _trans transposes each (attention_prefill_mma.cu, gemm_mma.cu).
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Two f32 as a pair of the storage type: `lo` in the low half (the lower column).
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
  unsigned r;
#if NG_DTYPE == 2
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
  return r;
}
#endif

// The step trace (tests/gpu/step_trace.ts, src/backend/cuda/step_trace.ts; only with
// -DNG_TRACE=<device address>, which the backend bakes in when NGPT_TRACE is set, with the record
// size NG_TRACE_WORDS and NG_TRACE_MARKS): thread 0 of every block takes the next record of the
// buffer (NG_TRACE_KERNEL opens each kernel) and logs the global timer (ns) at entry, around
// ng_grid_dep_wait, at ng_trace_mark(i) and when it leaves. The buffer: a u64 record count, the
// rest of a record's words unused, then records of NG_TRACE_WORDS u64:
//   [0] tag << 48 | blocks << 32 | block << 16 | smid (the grid's blocks, this block's linear index)
//   [1] entry, [2] the wait's start, [3] its end, [4] exit, [5 + i] mark i (i < NG_TRACE_MARKS).
// Slots are taken in arrival order, so a launch's blocks all come before the next launch's (which
// cannot start before they have all passed their wait). Records past NG_TRACE_CAP are dropped.
#ifdef NG_TRACE
__device__ __forceinline__ unsigned int ng_smid() {
  unsigned int s;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
  return s;
}
__device__ __forceinline__ unsigned long long*& ng_trace_slot() {
  __shared__ unsigned long long* rec;  // thread 0's own: no barrier needed
  return rec;
}
// Word i of thread 0's record := the global timer.
__device__ __forceinline__ void ng_trace_put(int i) {
  if (threadIdx.x != 0) return;
  unsigned long long* r = ng_trace_slot();
  if (r == nullptr) return;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  r[i] = t;
}
struct NgTraceScope {
  __device__ NgTraceScope() {
    if (threadIdx.x != 0) return;
    unsigned long long* buf = reinterpret_cast<unsigned long long*>(NG_TRACE);
    const unsigned long long i = atomicAdd(buf, 1ull);
    unsigned long long* r = i < (unsigned long long)NG_TRACE_CAP ? buf + NG_TRACE_WORDS * (i + 1) : nullptr;
    ng_trace_slot() = r;
    if (r == nullptr) return;
    const unsigned int blocks = gridDim.x * gridDim.y * gridDim.z;
    const unsigned int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    r[0] = ((unsigned long long)NG_TRACE_TAG << 48) | ((unsigned long long)(blocks & 0xffff) << 32) |
           ((unsigned long long)(b & 0xffff) << 16) | ng_smid();
    ng_trace_put(1);
  }
  __device__ ~NgTraceScope() { ng_trace_put(4); }
};
#define NG_TRACE_KERNEL NgTraceScope ng_trace_scope_
__device__ __forceinline__ void ng_trace_mark(int i) {
  if (i < NG_TRACE_MARKS) ng_trace_put(5 + i);
}
#else
#define NG_TRACE_KERNEL
__device__ __forceinline__ void ng_trace_mark(int) {}
#endif

// Programmatic dependent launch (sm_90+): every kernel is launched allowed to start while the
// previous kernel on the stream finishes. ng_grid_dep_wait() blocks until that kernel (and so every
// earlier one) has completed and its writes are visible: call it before reading anything an earlier
// kernel of the step wrote, and before writing anything an earlier kernel may still read.
// ng_grid_dep_launch() lets the next kernel start now (its own wait still protects it).
__device__ __forceinline__ void ng_grid_dep_wait() {
#ifdef NG_TRACE
  ng_trace_put(2);
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#ifdef NG_TRACE
  ng_trace_put(3);
#endif
}
__device__ __forceinline__ void ng_grid_dep_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
