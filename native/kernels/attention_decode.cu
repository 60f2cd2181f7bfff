// attention_decode (one token per sequence): flash-decoding over the paged KV cache with the KV
// append fused in. Block (c, y, b) takes sequence b, heads y*hpb .. y*hpb+hpb-1 (hpb = warps / wph,
// wph warps per head), and the keys of chunk c: positions c*chunk .. c*chunk+chunk-1 clipped to the
// live length len = min(pos + 1, max_T), where pos = lengths[b] is the new token's position.
// Position p of head h lives in pool block table[b * mb + (p >> bs_log2)] (common.cuh kv_row). The
// new token's k and v are read from qkv (not from the cache), and the block whose chunk holds pos
// writes them into the pools; blocks past len, and sequences with n_new[b] == 0, read nothing.
//
// A warp reads K and V rows with vector loads of VB bytes (16 when the row allows): LPK lanes share
// one key, lane i of a group holding vectors i, i + LPK, ... of the row (VPL of them), so a warp
// covers KPI = 32 / LPK keys per load and keeps U such key groups in flight, K and V together. The
// ws-th warp of a head takes keys j0 + (ws + k * wph) * KPI * U .. +KPI*U-1. Each key group keeps
// its own online softmax (fp32, scores in log2 units); at the end the groups of a warp merge through
// shuffles, then the warps of a head through shared memory. With one live chunk the block writes
// out[b, h*D:(h+1)*D]; otherwise it writes its unnormalised partial to part_acc[(b*H + h) * n_chunks
// + c, :D] and (max, sum) to part_ml, which attention_combine merges. For n_new[b] == 0 the blocks of
// chunk 0 write zero rows. Needs -DNG_HEAD_DIM=D (1..128).
// Grid: (n_chunks, ceil(H / hpb), B); block: 32 * warps threads, warps <= MAXW, wph dividing warps.
//
// With -DNG_KV8=1 (an int8 cache, one f32 scale per pool row in k_scale / v_scale) a lane's K or V
// vector is the W int8 values of the elements its q vector holds (W bytes), and each key group also
// loads its key's two scales: the score is (q . k) * s_k and the value adds p * s_v * v. The new
// token's k and v are quantized into the pools first (the block whose chunk holds pos, one warp per
// head row, common.cuh ng_kv8_store_row) and, after a block barrier, read back from them like any
// other key, so every key is the quantized one (as the CPU backend's attention.zig reads them).
#ifndef NG_KV8
#define NG_KV8 0
#endif
#ifndef NG_HEAD_DIM
#error "attention_decode needs -DNG_HEAD_DIM"
#endif
#if NG_HEAD_DIM < 1 || NG_HEAD_DIM > 128
#error "attention_decode supports head_dim 1..128"
#endif
#define HD NG_HEAD_DIM
#define MAXW 8
#define FULL 0xffffffffu

// Row bytes, the vector size that divides them, elements per vector and vectors per row.
#define RB (HD * NG_DTYPE_BYTES)
#if RB % 16 == 0
#define VB 16
typedef uint4 vec_t;
#elif RB % 8 == 0
#define VB 8
typedef uint2 vec_t;
#elif RB % 4 == 0
#define VB 4
typedef unsigned int vec_t;
#else
#define VB 2
typedef unsigned short vec_t;
#endif
#define W (VB / NG_DTYPE_BYTES)
#define NV (RB / VB)

// Lanes per key: the fewest (a power of two) that keep each lane at <= 16 elements of the row.
#define VPL_MAX (16 / W)
#define FITS(l) ((NV + (l) - 1) / (l) <= VPL_MAX)
#if FITS(1)
#define LPK 1
#elif FITS(2)
#define LPK 2
#elif FITS(4)
#define LPK 4
#elif FITS(8)
#define LPK 8
#elif FITS(16)
#define LPK 16
#else
#define LPK 32
#endif
#define VPL ((NV + LPK - 1) / LPK)
#define KPI (32 / LPK)
// Key groups in flight per warp: up to NG_DECODE_KG vectors of K and as many of V per lane (8 by
// default; the int8 cache's variant takes 4, kernels.ts).
#ifndef NG_DECODE_KG
#define NG_DECODE_KG 8
#endif
#define U (VPL >= NG_DECODE_KG ? 1 : NG_DECODE_KG / VPL)

// The elements of a 32-bit word (one f32 or two 16-bit values) as f32.
__device__ __forceinline__ void unpack_word(unsigned int w, float* f) {
#if NG_DTYPE == 0
  f[0] = __uint_as_float(w);
#else
  f[0] = to_f32((st_t)(w & 0xffffu));
  f[1] = to_f32((st_t)(w >> 16));
#endif
}

// The W elements of a vector as f32 (16-byte vectors: common.cuh's unpack_vec).
__device__ __forceinline__ void unpack(const vec_t& v, float* f) {
#if VB == 16
  unpack_vec(v, f);
#elif VB == 8
  unpack_word(v.x, f);
  unpack_word(v.y, f + W / 2);
#elif VB == 4
  unpack_word(v, f);
#else
  f[0] = to_f32(v);
#endif
}

// The pools' element and vector types: st_t and vec_t, or (int8 caches) int8 and W of them.
#if NG_KV8
typedef signed char kv_t;
#if W == 8
typedef uint2 kvec_t;
#elif W == 4
typedef unsigned int kvec_t;
#elif W == 2
typedef unsigned short kvec_t;
#else
typedef unsigned char kvec_t;
#endif
// The W int8 values of a pool vector as f32: whole words through common.cuh's ng_i8x4_to_f32 (a
// byte permute and a subtraction each). With one int-to-float conversion a value, gpt2's batch 256
// step spent 311 us in this kernel against 282 for the 16-bit cache's twice the bytes (Nsight
// Compute: 18% of DRAM throughput): 128 conversions a key, at an eighth of the FMA rate, bound it.
__device__ __forceinline__ void unpack_kv(const kvec_t& v, float* f) {
#if W == 8
  ng_i8x4_to_f32(v.x, f);
  ng_i8x4_to_f32(v.y, f + 4);
#elif W == 4
  ng_i8x4_to_f32(v, f);
#else
#pragma unroll
  for (int e = 0; e < W; e++) f[e] = (float)(signed char)((unsigned int)v >> (8 * e));
#endif
}
#else
typedef st_t kv_t;
typedef vec_t kvec_t;
__device__ __forceinline__ void unpack_kv(const kvec_t& v, float* f) { unpack(v, f); }
#endif

// The pools, and where one head of one sequence finds its positions.
struct KvHead {
  const kv_t* k;
  const kv_t* v;
  const float* k_scale;  // int8 caches: one scale per pool row
  const float* v_scale;
  const int* table;
  int h, H, bs_log2;
  __device__ __forceinline__ size_t row(int j) const { return kv_row(table, j, h, H, bs_log2, HD); }
};

// Loads the key group of this lane for keys jb + u * KPI + g (u < U) of [.., j1): K and V rows from
// the pools, except key pos, which comes from k_new / v_new (the new token, in qkv) or, when those
// are null (before the PDL wait, while qkv may still be being written), is left zero for the caller to
// fill in afterwards. Lanes past j1 or past the row get zeros.
// (int8 caches: every key from the pools, key pos included once it is written, i.e. unless
// `before_append`; its scales into ks / vs, 0 where nothing is loaded.)
__device__ __forceinline__ void load_keys(kvec_t (&kr)[U][VPL], kvec_t (&vr)[U][VPL], float (&ks)[U],
                                          float (&vs)[U], const KvHead& kv, const vec_t* k_new,
                                          const vec_t* v_new, int jb, int j1, int pos, int g, int i,
                                          bool before_append) {
#pragma unroll
  for (int u = 0; u < U; u++) {
    const int j = jb + u * KPI + g;
#if NG_KV8
    const bool is_new = false;
    const bool load = j < j1 && !(before_append && j == pos);
    const size_t off = load ? kv.row(j) : 0;
    ks[u] = load ? kv.k_scale[off / HD] : 0.0f;
    vs[u] = load ? kv.v_scale[off / HD] : 0.0f;
    const kvec_t* kp = load ? reinterpret_cast<const kvec_t*>(kv.k + off) : nullptr;
    const kvec_t* vp = reinterpret_cast<const kvec_t*>(kv.v + off);
#else
    const bool is_new = j == pos;
    const size_t off = j < j1 && !is_new ? kv.row(j) : 0;
    const kvec_t* kp = is_new ? k_new : reinterpret_cast<const kvec_t*>(kv.k + off);
    const kvec_t* vp = is_new ? v_new : reinterpret_cast<const kvec_t*>(kv.v + off);
#endif
#pragma unroll
    for (int v = 0; v < VPL; v++) {
      const int vi = i + v * LPK;
      kr[u][v] = kvec_t{};
      vr[u][v] = kvec_t{};
      if (j < j1 && vi < NV && kp != nullptr) {
        kr[u][v] = kp[vi];
        vr[u][v] = vp[vi];
      }
    }
    (void)is_new;
  }
}

// 2^(m - m_max): the weight of a partial softmax with max m (log2 units) under the max m_max; 0
// for an empty one (m == -inf).
__device__ __forceinline__ float rescale(float m, float m_max) {
  return m == NG_NEG_INF ? 0.0f : exp2f(m - m_max);
}

// The work of block (c, y, b) of the grid described above (n_chunks: the grid's x), callable from a
// persistent kernel (decode_fused.cu) that loops over such blocks. `wait` is called once, where the
// block must wait for the kernel (or phase) that wrote qkv: every thread calls it, before any return.
template <typename Wait>
__device__ __forceinline__ void attention_decode_block(
    st_t* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
    const st_t* NG_ACT_RESTRICT qkv, kv_t* __restrict__ k_pool, kv_t* __restrict__ v_pool,
    const int* __restrict__ block_table, const int* __restrict__ lengths, const int* __restrict__ n_new, int H,
    int max_T, int chunk, int wph, float scale_log2, int bs_log2, int mb, float* __restrict__ k_scale,
    float* __restrict__ v_scale, int c, int y, int b, int n_chunks, Wait wait) {
  __shared__ float acc_s[MAXW][NV * W];
  __shared__ float m_s[MAXW], l_s[MAXW];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, warps = blockDim.x >> 5;
  const int hpb = warps / wph, h0 = y * hpb;  // heads of this block: h0 .. h0+hpb-1
  const int C = H * HD;
  // Before the PDL wait: lengths, n_new, the block table and the cached keys (rows < pos) were
  // written by earlier steps or copies, not by the kernel still running (the qkv matmul), so this
  // warp's first chunk of cached K and V goes out now, hiding its latency behind that kernel's tail.
  const int nn = n_new[b], pos = lengths[b];
  const int len = min(pos + 1, max_T);
  const int j0 = c * chunk, j1 = min(j0 + chunk, len);
  // This warp: head h (warp ws of the wph on it), key group g, lane i of the group.
  const int ws = warp % wph, h = h0 + warp / wph;
  const int g = lane / LPK, i = lane - g * LPK;
  const bool active = h < H;  // warp-uniform
  const int* table = block_table + (size_t)b * mb;
  const KvHead kv = {k_pool, v_pool, k_scale, v_scale, table, h, H, bs_log2};
  const int j_end = active && nn > 0 ? j1 : j0;
  const int jb0 = j0 + ws * (KPI * U);
  kvec_t kr[U][VPL], vr[U][VPL];
  float ks[U], vs[U];  // int8 caches: the keys' scales
  if (jb0 < j_end) load_keys(kr, vr, ks, vs, kv, nullptr, nullptr, jb0, j1, pos, g, i, true);
  wait();
  if (nn <= 0) {
    if (c == 0) {
      for (int x = tid; x < hpb * HD; x += blockDim.x) {
        if (h0 + x / HD < H) out[(size_t)b * C + h0 * HD + x] = from_f32(0.0f);
      }
    }
    return;
  }
  if (j0 >= len) return;
  const st_t* qkv_b = qkv + (size_t)b * 3 * C;
#if NG_KV8
  // The append, quantized (one warp per head row), then a barrier: key pos is read from the pools.
  if (pos >= j0 && pos < j1) {  // block-uniform
    for (int w = warp; w < 2 * hpb; w += warps) {  // warp-uniform
      const bool is_v = w >= hpb;
      const int hh = h0 + (is_v ? w - hpb : w);
      if (hh >= H) continue;
      const size_t row = kv_row(table, pos, hh, H, bs_log2, HD);
      ng_kv8_store_row((is_v ? v_pool : k_pool) + row, (is_v ? v_scale : k_scale) + row / HD,
                       qkv_b + (is_v ? 2 : 1) * C + hh * HD, HD, lane);
    }
    __syncthreads();
  }
#else
  // The append (nothing below reads cache row pos: key pos comes from qkv).
  if (pos >= j0 && pos < j1) {
    for (int x = tid; x < hpb * NV; x += blockDim.x) {
      const int hh = h0 + x / NV, vi = x - (x / NV) * NV;
      if (hh >= H) continue;
      const size_t row = kv_row(table, pos, hh, H, bs_log2, HD);
      reinterpret_cast<vec_t*>(k_pool + row)[vi] = reinterpret_cast<const vec_t*>(qkv_b + C + hh * HD)[vi];
      reinterpret_cast<vec_t*>(v_pool + row)[vi] = reinterpret_cast<const vec_t*>(qkv_b + 2 * C + hh * HD)[vi];
    }
  }
#endif
  const st_t* q_row = qkv_b + h * HD;
  const vec_t* k_new = reinterpret_cast<const vec_t*>(q_row + C);
  const vec_t* v_new = reinterpret_cast<const vec_t*>(q_row + 2 * C);
  float q[VPL][W], acc[VPL][W];
#pragma unroll
  for (int v = 0; v < VPL; v++) {
    const int vi = i + v * LPK;
    vec_t t = {};
    if (active && vi < NV) t = reinterpret_cast<const vec_t*>(q_row)[vi];
    unpack(t, q[v]);
#pragma unroll
    for (int e = 0; e < W; e++) {
      q[v][e] *= scale_log2;
      acc[v][e] = 0.0f;
    }
  }
  float m = NG_NEG_INF, l = 0.0f;
  for (int jb = jb0; jb < j_end; jb += wph * (KPI * U)) {  // warp-uniform
    if (jb != jb0) {
      load_keys(kr, vr, ks, vs, kv, k_new, v_new, jb, j1, pos, g, i, false);
    } else if (pos >= jb && pos < min(jb + KPI * U, j1)) {  // the first chunk holds the new key: fill it in
#pragma unroll
      for (int u = 0; u < U; u++) {
        if (jb + u * KPI + g != pos) continue;
#if NG_KV8
        const size_t off = kv.row(pos);
        ks[u] = kv.k_scale[off / HD];
        vs[u] = kv.v_scale[off / HD];
#endif
#pragma unroll
        for (int v = 0; v < VPL; v++) {
          const int vi = i + v * LPK;
          if (vi < NV) {
#if NG_KV8
            kr[u][v] = reinterpret_cast<const kvec_t*>(kv.k + off)[vi];
            vr[u][v] = reinterpret_cast<const kvec_t*>(kv.v + off)[vi];
#else
            kr[u][v] = k_new[vi];
            vr[u][v] = v_new[vi];
#endif
          }
        }
      }
    }
    float s[U];
    float m_new = m;
#pragma unroll
    for (int u = 0; u < U; u++) {
      float a = 0.0f;
#pragma unroll
      for (int v = 0; v < VPL; v++) {
        float kf[W];
        unpack_kv(kr[u][v], kf);
#pragma unroll
        for (int e = 0; e < W; e++) a += q[v][e] * kf[e];
      }
#pragma unroll
      for (int off = LPK / 2; off > 0; off >>= 1) a += __shfl_xor_sync(FULL, a, off);
#if NG_KV8
      a *= ks[u];
#endif
      s[u] = jb + u * KPI + g < j1 ? a : NG_NEG_INF;
      m_new = fmaxf(m_new, s[u]);
    }
    if (m_new != NG_NEG_INF) {
      const float corr = rescale(m, m_new);
      l *= corr;
#pragma unroll
      for (int v = 0; v < VPL; v++) {
#pragma unroll
        for (int e = 0; e < W; e++) acc[v][e] *= corr;
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
        const float p = exp2f(s[u] - m_new);
        l += p;
#if NG_KV8
        const float pv = p * vs[u];
#else
        const float pv = p;
#endif
#pragma unroll
        for (int v = 0; v < VPL; v++) {
          float vf[W];
          unpack_kv(vr[u][v], vf);
#pragma unroll
          for (int e = 0; e < W; e++) acc[v][e] += pv * vf[e];
        }
      }
      m = m_new;
    }
  }
  // Merge the key groups of the warp (a butterfly: every group ends with the warp's result).
#pragma unroll
  for (int off = LPK; off < 32; off <<= 1) {
    const float m_o = __shfl_xor_sync(FULL, m, off), l_o = __shfl_xor_sync(FULL, l, off);
    const float m_new = fmaxf(m, m_o);
    const float a = rescale(m, m_new), bo = rescale(m_o, m_new);
    l = l * a + l_o * bo;
#pragma unroll
    for (int v = 0; v < VPL; v++) {
#pragma unroll
      for (int e = 0; e < W; e++) acc[v][e] = acc[v][e] * a + __shfl_xor_sync(FULL, acc[v][e], off) * bo;
    }
    m = m_new;
  }
  if (lane < LPK) {
#pragma unroll
    for (int v = 0; v < VPL; v++) {
      const int vi = i + v * LPK;
      if (vi < NV) {
#pragma unroll
        for (int e = 0; e < W; e++) acc_s[warp][vi * W + e] = acc[v][e];
      }
    }
    if (lane == 0) {
      m_s[warp] = m;
      l_s[warp] = l;
    }
  }
  __syncthreads();
  ng_trace_mark(1);
  // Merge the wph warps of each head (the chunk is not empty, so the head's first warp holds a key
  // and M is finite).
  const bool single = j0 == 0 && j1 == len;
  for (int x = tid; x < hpb * HD; x += blockDim.x) {
    const int hl = x / HD, d = x - hl * HD, hh = h0 + hl, w0 = hl * wph;
    if (hh >= H) continue;
    float M = NG_NEG_INF;
    for (int w = w0; w < w0 + wph; w++) M = fmaxf(M, m_s[w]);
    float L = 0.0f, a = 0.0f;
    for (int w = w0; w < w0 + wph; w++) {
      const float r = rescale(m_s[w], M);
      L += l_s[w] * r;
      a += acc_s[w][d] * r;
    }
    const size_t part = ((size_t)b * H + hh) * n_chunks + c;
    if (single) {
      out[(size_t)b * C + hh * HD + d] = from_f32(a / L);
    } else {
      part_acc[part * HD + d] = a;
      if (d == 0) {
        part_ml[2 * part] = M;
        part_ml[2 * part + 1] = L;
      }
    }
  }
}

#ifndef NG_FUSED
// -DNG_DECODE_MIN_BLOCKS=n: registers capped for n blocks of 8 warps an SM (the int8 cache's variant,
// kernels.ts); without it the compiler's choice (128 a thread at head size 64).
#ifdef NG_DECODE_MIN_BLOCKS
#define NG_DECODE_BOUNDS __launch_bounds__(32 * MAXW, NG_DECODE_MIN_BLOCKS)
#else
#define NG_DECODE_BOUNDS __launch_bounds__(32 * MAXW)
#endif
extern "C" __global__ void NG_DECODE_BOUNDS
ng_attention_decode(st_t* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
                    const st_t* __restrict__ qkv, kv_t* __restrict__ k_pool, kv_t* __restrict__ v_pool,
                    const int* __restrict__ block_table, const int* __restrict__ lengths,
                    const int* __restrict__ n_new, int H, int max_T, int chunk, int wph, float scale_log2,
                    int bs_log2, int mb
#if NG_KV8
                    , float* __restrict__ k_scale, float* __restrict__ v_scale
#endif
) {
  NG_TRACE_KERNEL;
#if !NG_KV8
  float* k_scale = nullptr;
  float* v_scale = nullptr;
#endif
  attention_decode_block(out, part_acc, part_ml, qkv, k_pool, v_pool, block_table, lengths, n_new, H, max_T, chunk,
                         wph, scale_log2, bs_log2, mb, k_scale, v_scale, blockIdx.x, blockIdx.y, blockIdx.z,
                         gridDim.x, [] {
                           ng_grid_dep_wait();
                           ng_grid_dep_launch();
                         });
}
#endif
