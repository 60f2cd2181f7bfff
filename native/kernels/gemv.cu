// gemv: the matmul of small batches (decode: M <= NG_GEMV_MT <= 16 rows of x).
//   out[m, n] = act(x'[m, :] . w[n, :] + bias[n])      or, with accumulate,
//   out[m, n] += x'[m, :] . w[n, :] + bias[n]
// for m < M, n < N, where x' = layernorm(x) over K (times ln_w, plus ln_b) when ln_w is given, else x.
// w is (N, K) row-major; every weight row is read exactly once, for all M rows of x together.
//
// Work split: a row group is NG_GEMV_ROWS consecutive weight rows; `ks` warps share one, splitting K
// (warp s of the group reads 16-byte vectors s*32 + lane + i*32*ks, so each (row, step) is a
// coalesced 512-byte read). A block of 32 * warps threads holds warps / ks row groups: a tile. The
// grid may be smaller than the tiles (blocks loop over tiles with stride gridDim.x).
// Each lane loads a chunk (NG_GEMV_ROWS x U vectors) before using any; it keeps one f32 partial per
// (row, m); a warp reduce-scatter leaves each (row, m) sum on one lane, the ks warps of a group add
// theirs through shared memory, and the first warp's lanes add the bias, apply the activation or
// the residual and store.
// Prologue (while each warp's first chunk of weights is in flight): the block copies x (M rows)
// into dynamic shared memory (M * K st_t) and, with ln, normalizes it there (mean and 1/std per
// row as torch: two passes, biased variance), rounding x' to st_t as the unfused path does.
// Each tile's stores overlap the next tile's first chunk of loads.
// Needs K % NG_VEC == 0, 16-byte aligned x, w, ln_w, ln_b, (M + 2 with ln, 4 at M = 1, else M) * K *
// sizeof(st_t) bytes of dynamic shared memory (x', then the layernorm's weight and bias, at M = 1 then x), and
// blockDim.x = 32 * ks * (row groups per tile) <= 256 (the host checks and sizes).
// flags: bits 0-1 activation (0 none, 1 GELU erf, 2 GELU tanh), bit 2 accumulate, bit 3 f32 out.
// With -DNG_GEMV_W8=1 (weight-only int8, W8A16), w holds int8 values and w_scale one f32 scale per
// row. For M <= 2 a lane's weight vector is still 16 bytes, now 16 int8 values (XPW = 16 / NG_VEC x
// vectors); for larger M, which are bound by arithmetic rather than loads, NG_VEC int8 values (the
// elements of one x vector; 16 values cut the warps per row in half and ran gpt2-xl batch 8 at 5.1
// ms a step against 3.8), and
// each (row, m) sum is multiplied by its row's scale before the bias. Needs K % 16 == 0. w_scale
// is ignored (null) without it. (At M = 1 NG_VEC-byte loads ran gpt2-xl no faster than 16-bit
// weights on an H200, 1.66 ms a step against 1.68: the bytes in flight per lane, not the bytes
// read, bound it; 16-byte loads: 1.24 ms.)
#ifndef NG_GEMV_W8
#define NG_GEMV_W8 0
#endif
// The weights' element type: st_t, or int8 (W8). ng_gemv's is picked by NG_GEMV_W8; decode_fused.cu
// runs both (its LM head stays 16-bit).
template <bool W8>
struct GemvWeight {
  typedef st_t t;
};
template <>
struct GemvWeight<true> {
  typedef signed char t;
};
typedef GemvWeight<NG_GEMV_W8 != 0>::t wt_t;

// Rows per group, warps per block and rows of x: -D options from the kernel table (kernels.ts).
#if !defined(NG_GEMV_MT) || !defined(NG_GEMV_ROWS) || !defined(NG_GEMV_MAX_WARPS)
#error "gemv needs -DNG_GEMV_MT, -DNG_GEMV_ROWS and -DNG_GEMV_MAX_WARPS"
#endif
// The kernel's launch bounds. M > 2: two blocks of NG_GEMV_MAX_WARPS warps must fit an SM, which
// caps registers at 128 per thread (no spills at M <= 4, a few bytes at 8 and 16), as the host's
// persistent grid (gemv_launch in matmul.ts) counts on. M <= 2 needs no cap (about 110 and 126
// registers) and runs in grouped blocks instead.
#if NG_GEMV_MT <= 2
#define NG_GEMV_BOUNDS __launch_bounds__(32 * NG_GEMV_MAX_WARPS)
#else
#define NG_GEMV_BOUNDS __launch_bounds__(32 * NG_GEMV_MAX_WARPS, 2)
#endif
#define NG_GEMV_ACCUMULATE 4
#define NG_GEMV_OUT_F32 8

// A 16-byte load of weights that are read once: through the non-coherent path, not kept in L1.
__device__ __forceinline__ uint4 gemv_load_stream(const st_t* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}


// A weight vector of WVEC values: 16 bytes, or (int8, WVEC = NG_VEC) NG_VEC bytes in its low words.
template <bool W8, int WVEC>
__device__ __forceinline__ uint4 gemv_load_w(const typename GemvWeight<W8>::t* p) {
  if constexpr (!W8 || WVEC == 16) {
    return gemv_load_stream(reinterpret_cast<const st_t*>(p));
  } else if constexpr (WVEC == 8) {
    uint4 r = make_uint4(0, 0, 0, 0);
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
    return r;
  } else {
    uint4 r = make_uint4(0, 0, 0, 0);
    asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r.x) : "l"(p));
    return r;
  }
}

// The NG_VEC weights of x vector j (< XPW) of a weight vector, as f32 (int8: common.cuh's
// ng_i8x4_to_f32, a byte permute and a subtraction per weight).
template <bool W8>
__device__ __forceinline__ void gemv_unpack_w(uint4 u, int j, float* f) {
  if constexpr (W8) {
  const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < NG_VEC / 4; i++) ng_i8x4_to_f32(w[j * (NG_VEC / 4) + i], f + 4 * i);
  } else {
    (void)j;
    unpack_vec(u, f);
  }
}

// Warp reduce-scatter of C values per lane over the lanes differing in bits O, O/2, ..., 1: while
// more than one value is left, each step swaps half of them with the partner lane (lane ^ O) and
// adds, so lanes with bit O set keep the upper half. Afterwards, with NV = the starting C (a power
// of two): if NV >= 32, lane l holds the sums of values l * NV/32 + j in v[j]; else v[0] of lane l
// holds the sum of value l / (32/NV), the same on all 32/NV lanes of a run.
template <int C, int O>
struct GemvReduce {
  static __device__ __forceinline__ void run(float* v, int lane) {
    if constexpr (O > 0) {
      if constexpr (C >= 2) {
        constexpr int H = C / 2;
        const bool upper = (lane & O) != 0;
#pragma unroll
        for (int i = 0; i < H; i++) {
          const float send = upper ? v[i] : v[i + H];
          const float keep = upper ? v[i + H] : v[i];
          v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
        }
        GemvReduce<H, O / 2>::run(v, lane);
      } else {
        v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
        GemvReduce<1, O / 2>::run(v, lane);
      }
    }
  }
};

// Loads a chunk: vectors v0 + i * step (i < U) of the R weight rows from n0 (rows past N repeat
// row N - 1; vectors past the row are zeros).
template <int U, bool W8, int WVEC>
__device__ __forceinline__ void gemv_issue(uint4 (&raw)[U][NG_GEMV_ROWS],
                                           const typename GemvWeight<W8>::t* __restrict__ w, int n0, int v0, int step,
                                           int N, int K) {
  const int nvec = K / WVEC;
#pragma unroll
  for (int r = 0; r < NG_GEMV_ROWS; r++) {
    const typename GemvWeight<W8>::t* row = w + (size_t)(n0 + r < N ? n0 + r : N - 1) * K;
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int v = v0 + u * step;
      raw[u][r] = v < nvec ? gemv_load_w<W8, WVEC>(row + (size_t)v * WVEC) : make_uint4(0, 0, 0, 0);
    }
  }
}

// The layernorm's weight and bias (zeros without one) into lns (2 x K st_t of shared memory, after
// x), as asynchronous copies that gemv_stage_x waits for. Weights are never written by a step, so the
// unfused kernels call it before their programmatic-launch wait: gemv_stage_x's normalize pass then
// does not wait on the L2 for them after x arrives (one round trip of the few microseconds a
// gpt2 kernel takes).
__device__ __forceinline__ void gemv_stage_ln(st_t* lns, const st_t* __restrict__ ln_w, const st_t* __restrict__ ln_b,
                                              int K) {
  const int nvec = K / NG_VEC;
  uint4* l4 = reinterpret_cast<uint4*>(lns);
  for (int v = threadIdx.x; v < nvec; v += blockDim.x) {
    cp_async16(smem_addr(l4 + v), ln_w + (size_t)v * NG_VEC, 16);
    if (ln_b) {
      cp_async16(smem_addr(l4 + nvec + v), ln_b + (size_t)v * NG_VEC, 16);
    } else {
      l4[nvec + v] = make_uint4(0, 0, 0, 0);
    }
  }
  cp_async_commit();
}

// The layernorm's statistics of one row of K elements (nvec vectors) in shared memory, as torch
// (two passes, biased variance), computed by a whole warp: every lane returns mul = 1/std and
// add = -mean/std. A lane's first VPL vectors are loaded together (beyond them, a loop): one round
// trip to shared memory a pass rather than one a vector, where the row's statistics are on the
// critical path (M = 1: GEMV_LN_VPL); with M > 1, 0 (the loop only, as before 4767e8a).
#define GEMV_LN_VPL 4  // vectors a lane loads at once: K <= 1024 (16-bit) in one round trip
// A lane's sum over its vectors v = lane + 32j of a row (f(e) of each element e; the vectors past
// nvec add nothing): the first VPL loaded at clamped addresses with no branch between them, so they
// are all in flight at once (loads under `if (v < nvec)` were issued one after another).
template <int VPL, typename F>
__device__ __forceinline__ float gemv_ln_lane_sum(const uint4* row, int nvec, F f) {
  const int lane = threadIdx.x & 31;
  uint4 r[VPL > 0 ? VPL : 1];
#pragma unroll
  for (int j = 0; j < VPL; j++) r[j] = row[min(lane + 32 * j, nvec - 1)];
  float s = ng_held_vec_sum<VPL>(r, lane, 32, nvec, f);
  for (int v = lane + 32 * VPL; v < nvec; v += 32) {
    float x[NG_VEC];
    unpack_vec(row[v], x);
#pragma unroll
    for (int e = 0; e < NG_VEC; e++) s += f(x[e]);
  }
  return s;
}

template <int VPL>
__device__ __forceinline__ void gemv_ln_stats(const uint4* row, int nvec, int K, float eps, float& mul, float& add) {
  const float mean = warp_sum(gemv_ln_lane_sum<VPL>(row, nvec, [](float x) { return x; })) / (float)K;
  const float var =
      warp_sum(gemv_ln_lane_sum<VPL>(row, nvec, [=](float x) { return (x - mean) * (x - mean); })) / (float)K;
  mul = rsqrtf(var + eps);
  add = -mean * mul;
}

// x' = (x * mul + add) * g + b for the NG_VEC values of one vector, rounded to st_t.
__device__ __forceinline__ uint4 gemv_ln_apply(uint4 xv, uint4 gv, uint4 bv, float mul, float add) {
  float f[NG_VEC], g[NG_VEC], b[NG_VEC];
  unpack_vec(xv, f);
  unpack_vec(gv, g);
  unpack_vec(bv, b);
#pragma unroll
  for (int e = 0; e < NG_VEC; e++) f[e] = fmaf(fmaf(f[e], mul, add), g[e], b[e]);
  return pack_vec(f);
}

// The prologue: x rows m < M into xs (M x K st_t in shared memory), layernormed when lns (staged by
// gemv_stage_ln) is given. Every thread of the block must call it; it ends with a barrier.
// With a layernorm and M = 1, x lands after the layernorm's vectors (lns + 2K: K more st_t, which
// the host sizes) and x' is written into xs, so no warp waits on another between the staging and the
// normalize pass: each warp that normalizes vectors of the row takes its statistics itself (warp 0
// taking them alone, behind one more barrier, cost gpt2's c_attn 1.22 us of staging against 1.00
// now: H200, step trace). With M > 1 warp w takes rows w, w + warps, ... and shares them through
// shared memory (every warp taking all M rows ran gpt2-xl batch 8 at 2.90 ms a step against 2.16).
__device__ __forceinline__ void gemv_stage_x(st_t* xs, const st_t* NG_ACT_RESTRICT x, const st_t* lns, int M, int K,
                                             float eps) {
  const int nvec = K / NG_VEC, total = M * nvec;
  uint4* xs4 = reinterpret_cast<uint4*>(xs);
  // x staged apart from x' (M = 1; known at compile time in gemv_m1: one shared path for both
  // cases cost gpt2 batch 1 6 us a step and gpt2-xl 80, H200).
  const bool apart = lns != nullptr && (NG_GEMV_MT == 1 || M == 1);
  uint4* raw4 = apart ? reinterpret_cast<uint4*>(const_cast<st_t*>(lns) + 2 * (size_t)K) : xs4;
  const uint4* x4 = reinterpret_cast<const uint4*>(x);
#if NG_GEMV_MT > 2
  // Asynchronous copies, all of a thread's in flight at once: a plain loop waits for each load in
  // turn (at M = 8 and K = 6400, 25 round trips to the L2 per thread before any arithmetic). H200,
  // gpt2 / gpt2-xl batch 8 on tensor cores: 396 -> 324 and 2726 -> 2586 us a step.
  for (int i = threadIdx.x; i < total; i += blockDim.x) cp_async16(smem_addr(raw4 + i), x4 + i, 16);
  cp_async_commit();
#else
  // M <= 2: a thread copies 1 to 4 vectors, and the plain loads' L1 copy serves the SM's other
  // blocks (cp.async.cg bypasses the L1: gpt2 batch 1 went from 216 to 236 us a step, H200).
  for (int i = threadIdx.x; i < total; i += blockDim.x) raw4[i] = x4[i];
#endif
  cp_async_wait<0>();  // this thread's copies (x, the layernorm's vectors); the barrier: everyone's
  __syncthreads();
  if (lns == nullptr) return;
  const uint4* l4 = reinterpret_cast<const uint4*>(lns);
  if (apart) {
    // Per warp: one with no vectors to normalize skips the statistics.
    float mul = 0.0f, add = 0.0f;
    if ((threadIdx.x & ~31) < nvec) gemv_ln_stats<GEMV_LN_VPL>(raw4, nvec, K, eps, mul, add);
    for (int v = threadIdx.x; v < nvec; v += blockDim.x) xs4[v] = gemv_ln_apply(raw4[v], l4[v], l4[nvec + v], mul, add);
  }
#if NG_GEMV_MT > 1
  else {
    __shared__ float s_mul[NG_GEMV_MT], s_add[NG_GEMV_MT];
    for (int m = threadIdx.x >> 5; m < M; m += blockDim.x >> 5) {
      float mul, add;
      gemv_ln_stats<0>(xs4 + (size_t)m * nvec, nvec, K, eps, mul, add);
      if ((threadIdx.x & 31) == 0) s_mul[m] = mul, s_add[m] = add;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
      const int m = i / nvec, v = i - m * nvec;
      xs4[i] = gemv_ln_apply(xs4[i], l4[v], l4[nvec + v], s_mul[m], s_add[m]);
    }
  }
#endif
  __syncthreads();
}

// What out[m, n]'s store needs besides its dot product, loaded into registers well before it: the
// row's scale (int8 weights) and bias, which no kernel writes (loaded before the programmatic-launch
// wait), and, where the store accumulates, the residual out[m, n] (right after the wait). Loaded at
// the store instead, they were one or two round trips to the L2 after the reduction (H200, gpt2
// batch 1: attn.c_proj's reduction and stores took 1.1 us, c_fc's 0.4).
struct GemvOperands {
  float scale, bias, residual;
};
template <bool W8>
__device__ __forceinline__ void gemv_load_consts(GemvOperands& o, const float* __restrict__ w_scale,
                                                 const st_t* __restrict__ bias, int n) {
  o.scale = W8 ? w_scale[n] : 1.0f;
  o.bias = bias ? to_f32(bias[n]) : 0.0f;
}
__device__ __forceinline__ void gemv_load_residual(GemvOperands& o, const void* out, int m, int n, int N, int flags) {
  const bool acc = (flags & NG_GEMV_ACCUMULATE) && !(flags & NG_GEMV_OUT_F32);
  o.residual = acc ? to_f32(reinterpret_cast<const st_t*>(out)[(size_t)m * N + n]) : 0.0f;
}

// Out[m, n] from its dot product: times the row's scale (int8 weights), plus the bias, then the
// activation or the residual (accumulate), or as f32 (flags).
template <bool W8>
__device__ __forceinline__ void gemv_store_with(void* out, float dot, const GemvOperands& o, int m, int n, int N,
                                                int flags) {
  float y = (W8 ? dot * o.scale : dot) + o.bias;
  const size_t i = (size_t)m * N + n;
  if (flags & NG_GEMV_OUT_F32) {
    reinterpret_cast<float*>(out)[i] = y;
  } else {
    if (flags & NG_GEMV_ACCUMULATE) {
      y += o.residual;
    } else if (flags & 3) {
      y = ng_gelu(y, flags & 3);
    }
    reinterpret_cast<st_t*>(out)[i] = from_f32(y);
  }
}

// The same with its operands loaded now.
template <bool W8>
__device__ __forceinline__ void gemv_store(void* out, float dot, const float* __restrict__ w_scale,
                                           const st_t* __restrict__ bias, int m, int n, int N, int flags) {
  GemvOperands o;
  gemv_load_consts<W8>(o, w_scale, bias, n);
  gemv_load_residual(o, out, m, n, N, flags);
  gemv_store_with<W8>(out, dot, o, m, n, N, flags);
}

// The whole kernel for M <= MT (rows m >= M repeat row M - 1 and are not stored). `wait` is called
// once by every thread, after the first weights are requested and before x is read: where the block
// must wait for the kernel (or the phase of a persistent kernel) that wrote x and out.
template <int MT, bool W8, typename Wait>
__device__ __forceinline__ void gemv(void* __restrict__ out, const st_t* NG_ACT_RESTRICT x,
                                     const typename GemvWeight<W8>::t* __restrict__ w,
                                     const float* __restrict__ w_scale, const st_t* __restrict__ bias,
                                     const st_t* __restrict__ ln_w, const st_t* __restrict__ ln_b, int M,
                                     int N, int K, float eps, int flags, int ks, Wait wait) {
  constexpr int R = NG_GEMV_ROWS;
  constexpr int WVEC = W8 && MT <= 2 ? 16 : NG_VEC;  // weights per vector a lane loads
  constexpr int XPW = WVEC / NG_VEC;      // x vectors per weight vector
  constexpr int U = MT >= 16 ? 1 : MT >= 4 ? 2 : 4;  // vectors per row per chunk (gemv_launch in matmul.ts)
  constexpr int NV = R * MT;                          // partial sums per lane (a power of two)
  constexpr int LANES = NV >= 32 ? 1 : 32 / NV;       // after the reduce-scatter: lanes holding one sum
  constexpr int HELD = NV >= 32 ? NV / 32 : 1;        // and sums held per lane
  extern __shared__ uint4 gemv_smem[];
  __shared__ float red[NG_GEMV_MAX_WARPS][HELD * 32];
  st_t* xs = reinterpret_cast<st_t*>(gemv_smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int per_tile = (blockDim.x >> 5) / ks;  // row groups per tile
  const int ksi = warp % ks;                    // this warp's K slice
  const int nvec = K / WVEC, step = 32 * ks, v_first = ksi * 32 + lane;  // weight vectors per row
  const int groups = (N + R - 1) / R, tiles = (groups + per_tile - 1) / per_tile;
  st_t* lns = ln_w ? xs + (size_t)M * K : nullptr;  // the layernorm's vectors, after x
  int tile = blockIdx.x;
  int g = tile * per_tile + warp / ks;
  // The lanes that store a group's outputs (after the reduce-scatter) hold their other operands
  // (not at M > 4, whose kernels have no registers to spare: they load them at the store).
  constexpr bool HOLD = MT <= 4;
  const bool storer = ksi == 0 && lane % LANES == 0;
  GemvOperands ops[HELD];
  const auto load_ops = [&](int gg, bool consts, bool residual) {
    if (!HOLD || !storer || gg >= groups) return;
#pragma unroll
    for (int j = 0; j < HELD; j++) {
      const int i = (lane / LANES) * HELD + j, m = i % MT, n = gg * R + i / MT;
      if (m >= M || n >= N) continue;
      if (consts) gemv_load_consts<W8>(ops[j], w_scale, bias, n);
      if (residual) gemv_load_residual(ops[j], out, m, n, N, flags);
    }
  };
  uint4 raw[U][R];
  if (tile < tiles && g < groups) gemv_issue<U, W8, WVEC>(raw, w, g * R, v_first, step, N, K);
  // Weights (and the layernorm's, the biases and scales) are never written by a step: they are
  // requested before waiting for the kernel that produced x (programmatic dependent launch), hiding
  // their latency behind its tail. (The fused decode's shared memory may still be in use by the
  // phase before its barrier.)
  if (tile < tiles) load_ops(g, true, false);
#ifndef NG_FUSED
  if (lns) gemv_stage_ln(lns, ln_w, ln_b, K);
#endif
  wait();
#ifdef NG_FUSED
  if (lns) gemv_stage_ln(lns, ln_w, ln_b, K);
#endif
  if (tile < tiles) load_ops(g, false, true);
  gemv_stage_x(xs, x, lns, M, K, eps);
  ng_trace_mark(0);
  int xoff[MT];  // offset of row m of x' in xs
#pragma unroll
  for (int m = 0; m < MT; m++) xoff[m] = (m < M ? m : M - 1) * K;
  while (tile < tiles) {  // uniform over the block: the barriers below are safe
    float acc[NV];
#pragma unroll
    for (int i = 0; i < NV; i++) acc[i] = 0.0f;
    const int n0 = g * R;
    if (g < groups) {
      for (int v0 = v_first; v0 < nvec; v0 += U * step) {
        if (v0 != v_first) gemv_issue<U, W8, WVEC>(raw, w, n0, v0, step, N, K);  // the first chunk was issued ahead
#pragma unroll
        for (int u = 0; u < U; u++) {
          const int v = v0 + u * step;
          if (v >= nvec) break;
#pragma unroll
          for (int j = 0; j < XPW; j++) {
            float wf[R][NG_VEC];
#pragma unroll
            for (int r = 0; r < R; r++) gemv_unpack_w<W8>(raw[u][r], j, wf[r]);
#pragma unroll
            for (int m = 0; m < MT; m++) {
              float xv[NG_VEC];
              unpack_vec(*reinterpret_cast<const uint4*>(xs + xoff[m] + (v * XPW + j) * NG_VEC), xv);
#pragma unroll
              for (int r = 0; r < R; r++) {
#pragma unroll
                for (int e = 0; e < NG_VEC; e++) acc[r * MT + m] = fmaf(wf[r][e], xv[e], acc[r * MT + m]);
              }
            }
          }
        }
      }
    }
    ng_trace_mark(1);
    // The next tile's first chunk is in flight during the reduction and the stores.
    tile += gridDim.x;
    const int g_next = tile * per_tile + warp / ks;
    if (tile < tiles && g_next < groups) gemv_issue<U, W8, WVEC>(raw, w, g_next * R, v_first, step, N, K);
    GemvReduce<NV, 16>::run(acc, lane);
    if (ks > 1) {  // add the other K slices' sums into the first warp of the group
      __syncthreads();  // red is free (the previous tile has read it)
      if (ksi != 0 && lane % LANES == 0) {
#pragma unroll
        for (int j = 0; j < HELD; j++) red[warp][(lane / LANES) * HELD + j] = acc[j];
      }
      __syncthreads();
      if (ksi == 0 && lane % LANES == 0) {
        for (int s = 1; s < ks; s++) {
#pragma unroll
          for (int j = 0; j < HELD; j++) acc[j] += red[warp + s][(lane / LANES) * HELD + j];
        }
      }
    }
    if (ksi == 0 && g < groups && lane % LANES == 0) {
#pragma unroll
      for (int j = 0; j < HELD; j++) {
        const int i = (lane / LANES) * HELD + j;
        const int r = i / MT, m = i % MT, n = n0 + r;
        if (m >= M || n >= N) continue;
        if (HOLD) {
          gemv_store_with<W8>(out, acc[j], ops[j], m, n, N, flags);
        } else {
          gemv_store<W8>(out, acc[j], w_scale, bias, m, n, N, flags);
        }
      }
    }
    ng_trace_mark(2);
    if (tile < tiles) load_ops(g_next, true, true);  // used after the next tile's dot products
    g = g_next;
  }
}

// (decode_fused.cu, gemv_mma.cu and gemm_mma.cu include this file for its device functions.)
#if !defined(NG_FUSED) && !defined(NG_GEMV_MMA) && !defined(NG_GEMM)
extern "C" __global__ void NG_GEMV_BOUNDS
ng_gemv(void* __restrict__ out, const st_t* __restrict__ x, const wt_t* __restrict__ w,
        const float* __restrict__ w_scale, const st_t* __restrict__ bias, const st_t* __restrict__ ln_w,
        const st_t* __restrict__ ln_b, int M, int N, int K, float eps, int flags, int ks) {
  NG_TRACE_KERNEL;
  gemv<NG_GEMV_MT, NG_GEMV_W8 != 0>(out, x, w, w_scale, bias, ln_w, ln_b, M, N, K, eps, flags, ks, [] {
    ng_grid_dep_wait();
    ng_grid_dep_launch();
  });
}
#endif
