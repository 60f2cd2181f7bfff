// decode_fused: a whole decode step's forward (embed, every block, ln_f and the LM head) in one
// persistent kernel for small batches (M <= NG_GEMV_MT rows, one per slot). Compiled after gemv.cu
// and attention_decode.cu (kernels.ts `includes`), whose device functions it shares:
//   embed                 x = wte[token] + wpe[position]                      (blocks b < M)
//   per layer l:
//     qkv                 qkv = c_attn(ln_1(x))                              gemv phase
//     attention           att = attend(qkv) with the KV append, one (b, head) per block at a time
//     proj                x += c_proj(att)                                   gemv phase
//     fc                  fc = gelu(c_fc(ln_2(x)))                           gemv phase
//     fc2                 x += c_proj(fc)                                    gemv phase
//   head                  logits = lm_head(ln_f(x)) (f32)                    gemv phase
// Phases are separated by a grid barrier through flags in global memory, so the grid must be
// co-resident (the host launches one 256-thread block per SM).
// Weights stream through rings in shared memory (FusedRing), one a warp: a warp's rows of every gemv
// phase, requested in the order the phases read them. Weights never change during a step, so a ring
// runs a few chunks ahead of the barriers: while a block waits for a phase's input, the weights of
// that phase and the next are on their way, and a phase's own cost is its barrier, staging x and
// arithmetic out of shared memory.
// Measured on an H200 (docs/perf-notes.md). Before the rings (v4, each phase loading its weights
// after its barrier, as the unfused gemv does), a phase cost 3-6 us however little it read, about
// what a kernel boundary costs the unfused step. Tried and dropped: two blocks an SM (gpt2 b1 307 ->
// 400 us a step), prefetching the next phase's weights into the L2 (a third slower), one ring a block
// (v5: 8 x 26 KB slots, all warps on one chunk: the LM head at 2.2 TB/s, gpt2 b1 420 us).
// Dynamic shared memory: x' staging of M * 4C st_t, then 8 warps x NG_FUSED_SLOTS x `slot_bytes` (a
// multiple of 16; the host sizes both: fused_ring_plan).
#ifndef NG_FUSED
#error "decode_fused needs -DNG_FUSED (gemv.cu and attention_decode.cu then read activations coherently)"
#endif

// One block's weights, in the order of the host's table (src/model/gpt.ts FUSED_LAYER_FIELDS); scales
// are null with 16-bit weights.
struct FusedLayer {
  const st_t* ln1_w;
  const st_t* ln1_b;
  const wt_t* attn_w;
  const float* attn_s;
  const st_t* attn_b;
  const wt_t* proj_w;
  const float* proj_s;
  const st_t* proj_b;
  const st_t* ln2_w;
  const st_t* ln2_b;
  const wt_t* fc_w;
  const float* fc_s;
  const st_t* fc_b;
  const wt_t* fc2_w;
  const float* fc2_s;
  const st_t* fc2_b;
};

// The row after the blocks' (FUSED_MODEL_FIELDS): embeddings, ln_f and the LM head.
struct FusedModel {
  const st_t* wte;
  const st_t* wpe;
  const st_t* lnf_w;
  const st_t* lnf_b;
  const st_t* lm_head;
};

// One layer's KV pools (src/engine/device_state.ts kv_table); scales are null with a 16-bit cache.
struct FusedKv {
  kv_t* k;
  kv_t* v;
  float* k_scale;
  float* v_scale;
};

// A grid barrier over one flag per block (`flags`: gridDim.x words, each the count of barriers its
// block has passed; every launch passes the same number, so they start equal): a block publishes
// its new count with a release store, then its threads poll all the flags (acquire loads, a share
// each) until none is behind: the arrival is a plain store, not an add queued with every other
// block's at one L2 slice. On an H200 the smallest phases (attention, attn.c_proj of gpt2 at batch
// 1) took 4.6-5.4 us with a single counter and 264 blocks, 3.1-3.8 us with these flags and 132.
__device__ __forceinline__ void fused_barrier(unsigned int* flags, unsigned int& count) {
  count++;
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flags + blockIdx.x), "r"(count) : "memory");
  }
  bool behind;
  do {
    behind = false;
    for (int i = threadIdx.x; i < (int)gridDim.x; i += blockDim.x) {
      unsigned int v;
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flags + i) : "memory");
      behind |= (int)(v - count) < 0;
    }
  } while (__syncthreads_or(behind));
}

#ifndef NG_FUSED_SLOTS
#error "decode_fused needs -DNG_FUSED_SLOTS, the slots of a warp's ring (kernels.ts FUSED_SLOTS)"
#endif
#define NG_FUSED_WARPS 8  // 256 threads a block

// One gemv phase's matrix: N rows of K weights of `bytes` each.
struct FusedMatrix {
  const unsigned char* w;
  int N, K, bytes;
};

// Gemv phase q of a step: four a layer (c_attn, attn.c_proj, c_fc, mlp.c_proj), then the LM head,
// 16-bit whatever the blocks' weights (tied to wte).
__device__ __forceinline__ FusedMatrix fused_matrix(const FusedLayer* layers, int n_layer, int q, int C, int Vp) {
  typedef const unsigned char* bytes_t;
  if (q >= 4 * n_layer) {
    const FusedModel* mw = reinterpret_cast<const FusedModel*>(layers + n_layer);
    return {reinterpret_cast<bytes_t>(mw->lm_head), Vp, C, (int)sizeof(st_t)};
  }
  const FusedLayer& L = layers[q >> 2];
  const int wb = sizeof(wt_t);
  switch (q & 3) {
    case 0: return {reinterpret_cast<bytes_t>(L.attn_w), 3 * C, C, wb};
    case 1: return {reinterpret_cast<bytes_t>(L.proj_w), C, C, wb};
    case 2: return {reinterpret_cast<bytes_t>(L.fc_w), 4 * C, C, wb};
    default: return {reinterpret_cast<bytes_t>(L.fc2_w), C, 4 * C, wb};
  }
}

// Block b's rows of an N-row phase start at fused_row(N, b) and end at fused_row(N, b + 1); warp w's
// share of them (lo to hi) at fused_split(lo, hi, w) to fused_split(lo, hi, w + 1).
__device__ __forceinline__ int fused_row(int N, int b) { return (int)((unsigned)N * (unsigned)b / gridDim.x); }
__device__ __forceinline__ int fused_split(int lo, int hi, int w) { return lo + (hi - lo) * w / NG_FUSED_WARPS; }

// Pulls the 128-byte lines of [p, p + bytes) into the L1, one a lane of the `lanes` calling.
__device__ __forceinline__ void fused_prefetch(const void* p, int bytes, int lane, int lanes) {
  const char* c = reinterpret_cast<const char*>(reinterpret_cast<size_t>(p) & ~(size_t)127);
  const char* end = reinterpret_cast<const char*>(p) + bytes;
  for (c += 128 * lane; c < end; c += 128 * lanes) asm volatile("prefetch.global.L1 [%0];" ::"l"(c));
}

// The ring's copies, a warp's own, into NG_FUSED_SLOTS slots. On sm_90 lane 0 requests a chunk as
// one bulk copy (the TMA unit), which signals the slot's mbarrier with its bytes. Before sm_90,
// 16-byte cp.async by every lane, one commit group a chunk (empty past the step's last) so that at
// each wait exactly NG_FUSED_SLOTS groups are pending and wait_group<NG_FUSED_SLOTS - 1> completes
// the oldest.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__shared__ unsigned long long fused_ring_bar[NG_FUSED_WARPS][NG_FUSED_SLOTS];  // an mbarrier a slot

__device__ __forceinline__ void fused_ring_setup() {
  if (threadIdx.x == 0) {
    for (int i = 0; i < NG_FUSED_WARPS * NG_FUSED_SLOTS; i++) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&fused_ring_bar[0][0] + i)) : "memory");
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
}
// The warp's slot `slot` gets `bytes` from src (0 past the step's last chunk: nothing).
__device__ __forceinline__ void fused_ring_copy(unsigned dst, const unsigned char* src, int bytes, int slot) {
  if ((threadIdx.x & 31) == 0 && bytes > 0) {
    const unsigned bar = smem_addr(&fused_ring_bar[threadIdx.x >> 5][slot]);
    // The slot was last read through the generic proxy (ordered by the caller's __syncwarp).
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
  }
}
// Waits until the warp's chunk `chunk` (its slot's use chunk / NG_FUSED_SLOTS) has landed.
__device__ __forceinline__ void fused_ring_wait(int chunk) {
  const unsigned bar = smem_addr(&fused_ring_bar[threadIdx.x >> 5][chunk % NG_FUSED_SLOTS]);
  const unsigned parity = (chunk / NG_FUSED_SLOTS) & 1;
  asm volatile(
      "{\n.reg .pred done;\nwait:\nmbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n@!done bra wait;\n}"
      ::"r"(bar), "r"(parity) : "memory");
}
#else
__device__ __forceinline__ void fused_ring_setup() {}
__device__ __forceinline__ void fused_ring_copy(unsigned dst, const unsigned char* src, int bytes, int slot) {
  (void)slot;
  for (int i = threadIdx.x & 31; i < bytes / 16; i += 32) cp_async16(dst + 16 * i, src + (size_t)16 * i, 16);
  cp_async_commit();
}
__device__ __forceinline__ void fused_ring_wait(int chunk) {
  (void)chunk;
  cp_async_wait<NG_FUSED_SLOTS - 1>();
  __syncwarp();
}
#endif

// A warp's weight ring: NG_FUSED_SLOTS slots of `slot_bytes`. A warp's rows of a phase are
// contiguous in memory, so its chunks are simply the next slot_bytes of them (a row may straddle two
// chunks), phase after phase. The warps stream and compute independently (v5's block-wide chunks,
// every warp waiting on the slowest, ran the LM head at half the copy rate on an H200). Every lane
// of the warp calls every method.
struct FusedRing {
  unsigned char* base;  // the warp's first slot
  int slot_bytes;
  const FusedLayer* layers;
  int n_layer, C, Vp;
  int q;                            // the phase of the next chunk to request
  const unsigned char *src, *end;   // its bytes left in phase q
  FusedMatrix ahead;                // phase q + 1's matrix, loaded a phase early
  int issued, taken;                // chunks requested and consumed

  __device__ void init(unsigned char* ring, int slot_bytes_, const FusedLayer* layers_, int n_layer_, int C_, int Vp_) {
    slot_bytes = slot_bytes_, layers = layers_, n_layer = n_layer_, C = C_, Vp = Vp_;
    base = ring + (size_t)(threadIdx.x >> 5) * NG_FUSED_SLOTS * slot_bytes;
    issued = taken = 0;
    ahead = fused_matrix(layers, n_layer, 0, C, Vp);
    begin_phase(0);
    for (int i = 0; i < NG_FUSED_SLOTS; i++) issue();
  }
  __device__ void begin_phase(int q_) {
    q = q_;
    if (q > 4 * n_layer) return;
    const FusedMatrix mat = ahead;
    if (q < 4 * n_layer) ahead = fused_matrix(layers, n_layer, q + 1, C, Vp);
    const int lo = fused_row(mat.N, blockIdx.x), hi = fused_row(mat.N, blockIdx.x + 1), w = threadIdx.x >> 5;
    const size_t row_bytes = (size_t)mat.K * mat.bytes;
    src = mat.w + fused_split(lo, hi, w) * row_bytes;
    end = mat.w + fused_split(lo, hi, w + 1) * row_bytes;
  }
  // Requests the next chunk into slot issued % NG_FUSED_SLOTS.
  __device__ void issue() {
    while (q <= 4 * n_layer && src >= end) begin_phase(q + 1);
    const int bytes = q <= 4 * n_layer ? (int)min((size_t)slot_bytes, (size_t)(end - src)) : 0;
    const int slot = issued % NG_FUSED_SLOTS;
    fused_ring_copy(smem_addr(base + (size_t)slot * slot_bytes), src, bytes, slot);
    src += bytes;
    issued++;
  }
  // The oldest chunk not taken, once it has landed.
  __device__ const uint4* take() {
    fused_ring_wait(taken);
    return reinterpret_cast<const uint4*>(base + (size_t)(taken % NG_FUSED_SLOTS) * slot_bytes);
  }
  // Frees the chunk taken last (every lane is done with it) and requests the next into its slot.
  __device__ void give_back() {
    __syncwarp();
    taken++;
    issue();
  }
};

// out[m, n] for m < M (as gemv.cu's: bias, activation or accumulate, f32 out) from a row's sums,
// GemvReduce<MT>'s layout: lane l holds row m = l / (32 / MT).
template <int MT, bool W8>
__device__ __forceinline__ void fused_store(void* out, float sum, const float* __restrict__ w_scale,
                                            const st_t* __restrict__ bias, int n, int M, int N, int flags) {
  constexpr int LANES = 32 / MT;
  const int lane = threadIdx.x & 31, m = lane / LANES;
  if (lane % LANES != 0 || m >= M) return;
  float y = (W8 ? sum * w_scale[n] : sum) + (bias ? to_f32(bias[n]) : 0.0f);
  const size_t o = (size_t)m * N + n;
  if (flags & NG_GEMV_OUT_F32) {
    reinterpret_cast<float*>(out)[o] = y;
  } else {
    st_t* op = reinterpret_cast<st_t*>(out) + o;
    if (flags & NG_GEMV_ACCUMULATE) {
      y += to_f32(*op);
    } else if (flags & 3) {
      y = ng_gelu(y, flags & 3);
    }
    *op = from_f32(y);
  }
}

// A gemv phase (gemv.cu's arguments, N x K weights from the rings). Before the barrier (`wait`),
// the block pulls the ln weights and each warp its rows' biases and scales into the L1 (they are
// weights: no phase writes them); after it, the warp pulls its rows of out when accumulating, the
// block stages x' (layernormed with ln_w) into xs, and each warp computes its rows from its chunks:
// each lane keeps one partial sum a row of x' (the lanes take the row's vectors in turn, wherever a
// chunk cuts it), the warp adds them when the row ends.
template <int MT, bool W8, typename Wait>
__device__ __forceinline__ void fused_gemv(FusedRing& ring, st_t* xs, void* out, const st_t* x,
                                           const float* __restrict__ w_scale, const st_t* __restrict__ bias,
                                           const st_t* __restrict__ ln_w, const st_t* __restrict__ ln_b, int M,
                                           int N, int K, float eps, int flags, Wait wait) {
  constexpr int WVEC = 16 / sizeof(typename GemvWeight<W8>::t);  // weights a 16-byte vector
  constexpr int XPW = WVEC / NG_VEC;                                  // x vectors a weight vector
  const int lo = fused_row(N, blockIdx.x), end = fused_row(N, blockIdx.x + 1);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_lo = fused_split(lo, end, warp), n_hi = fused_split(lo, end, warp + 1);
  if (lo < end && ln_w) {
    fused_prefetch(ln_w, K * sizeof(st_t), threadIdx.x, blockDim.x);
    if (ln_b) fused_prefetch(ln_b, K * sizeof(st_t), threadIdx.x, blockDim.x);
  }
  if (n_lo < n_hi) {
    if (bias) fused_prefetch(bias + n_lo, (n_hi - n_lo) * sizeof(st_t), lane, 32);
    if (W8) fused_prefetch(w_scale + n_lo, (n_hi - n_lo) * sizeof(float), lane, 32);
  }
  wait();
  if (lo >= end) return;  // no rows here: the rings skipped this phase too
  if ((flags & NG_GEMV_ACCUMULATE) && n_lo < n_hi) {
    for (int m = 0; m < M; m++) {
      fused_prefetch(reinterpret_cast<const st_t*>(out) + (size_t)m * N + n_lo, (n_hi - n_lo) * sizeof(st_t), lane, 32);
    }
  }
  gemv_stage_x(xs, x, ln_w, ln_b, M, K, eps);
  int xoff[MT];
#pragma unroll
  for (int m = 0; m < MT; m++) xoff[m] = (m < M ? m : M - 1) * K;
  const int nvec = K / WVEC, wb = sizeof(typename GemvWeight<W8>::t);
  const int chunks = ((n_hi - n_lo) * K * wb + ring.slot_bytes - 1) / ring.slot_bytes;
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; m++) acc[m] = 0.0f;
  int n = n_lo, kv = 0;  // the row being summed, and its vectors summed so far
  for (int c = 0; c < chunks; c++) {
    const uint4* w = ring.take();
    const int cv = min(ring.slot_bytes, (n_hi - n) * K * wb - kv * 16) / 16;  // vectors in this chunk
    for (int pos = 0; pos < cv;) {  // a segment: the chunk's part of row n
      const int seg = min(cv - pos, nvec - kv);
      for (int v = lane; v < seg; v += 32) {
        const uint4 u = w[pos + v];
#pragma unroll
        for (int j = 0; j < XPW; j++) {
          float wf[NG_VEC];
          gemv_unpack_w<W8>(u, j, wf);
#pragma unroll
          for (int m = 0; m < MT; m++) {
            float xv[NG_VEC];
            unpack_vec(*reinterpret_cast<const uint4*>(xs + xoff[m] + ((kv + v) * XPW + j) * NG_VEC), xv);
#pragma unroll
            for (int e = 0; e < NG_VEC; e++) acc[m] = fmaf(wf[e], xv[e], acc[m]);
          }
        }
      }
      pos += seg;
      kv += seg;
      if (kv == nvec) {  // row n is complete
        GemvReduce<MT, 16>::run(acc, lane);
        fused_store<MT, W8>(out, acc[0], w_scale, bias, n, M, N, flags);
#pragma unroll
        for (int m = 0; m < MT; m++) acc[m] = 0.0f;
        n++;
        kv = 0;
      }
    }
    ring.give_back();
  }
}

extern "C" __global__ void __launch_bounds__(256, 1)
ng_decode_fused(const FusedLayer* __restrict__ layers, const FusedKv* __restrict__ kvs, int n_layer,
                st_t* x, st_t* qkv, st_t* att, st_t* hid, float* logits, const int* __restrict__ tokens,
                const int* __restrict__ lengths, const int* __restrict__ n_new,
                const int* __restrict__ block_table, int M, int C, int H, int Vp, int max_pos, float eps, int act,
                int max_T, float scale_log2, int bs_log2, int mb, int slot_bytes, unsigned int* flags,
                unsigned long long* trace) {
  extern __shared__ uint4 fused_smem[];
  st_t* xs = reinterpret_cast<st_t*>(fused_smem);
  const FusedModel mw = *reinterpret_cast<const FusedModel*>(layers + n_layer);
  const st_t *wte = mw.wte, *wpe = mw.wpe;
  // With a trace buffer, block 0 logs its SM clock at the start, after each barrier (5 a layer, then
  // the LM head's) and at the end, then the global timer at the start and the end (to convert).
  int phase = 0;
  const bool tracing = trace != nullptr && blockIdx.x == 0 && threadIdx.x == 0;
  auto stamp = [&] {
    if (tracing) trace[phase] = clock64();
    phase++;
  };
  unsigned int count = flags[blockIdx.x];
  auto barrier = [&] {
    fused_barrier(flags, count);
    stamp();
  };
  unsigned long long t0 = 0;
  if (tracing) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  stamp();

  // Weights are never written by a step: the ring's first chunks go out before the PDL wait.
  fused_ring_setup();
  FusedRing ring;
  ring.init(reinterpret_cast<unsigned char*>(xs + (size_t)M * 4 * C), slot_bytes, layers, n_layer, C, Vp);
  ng_grid_dep_wait();  // the previous step's sample and advance wrote tokens and lengths
  for (int r = blockIdx.x; r < M; r += gridDim.x) {  // embed, as embed.cu
    int tok = tokens[r], pos = lengths[r];
    tok = tok < 0 ? 0 : (tok >= Vp ? Vp - 1 : tok);
    pos = pos < 0 ? 0 : (pos >= max_pos ? max_pos - 1 : pos);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      x[(size_t)r * C + c] = from_f32(to_f32(wte[(size_t)tok * C + c]) + to_f32(wpe[(size_t)pos * C + c]));
    }
  }
  constexpr bool W8 = NG_GEMV_W8 != 0;
  const int items = M * H;  // attention: (b, head) pairs, 8 warps on each
  for (int l = 0; l < n_layer; l++) {
    const FusedLayer& L = layers[l];
    const FusedKv kv = kvs[l];
    fused_gemv<NG_GEMV_MT, W8>(ring, xs, qkv, x, L.attn_s, L.attn_b, L.ln1_w, L.ln1_b, M, 3 * C, C, eps, 0, barrier);
    if (blockIdx.x < items) {
      for (int it = blockIdx.x; it < items; it += gridDim.x) {
        // Only the first item waits (its cached keys are requested before the barrier).
        const bool first = it == (int)blockIdx.x;
        attention_decode_block(att, nullptr, nullptr, qkv, kv.k, kv.v, block_table, lengths, n_new, H, max_T, max_T,
                               8, scale_log2, bs_log2, mb, kv.k_scale, kv.v_scale, 0, it % H, it / H, 1, [&] {
                                 if (first) barrier();
                               });
        __syncthreads();  // the next item reuses the block's shared memory
      }
    } else {
      barrier();
    }
    fused_gemv<NG_GEMV_MT, W8>(ring, xs, x, att, L.proj_s, L.proj_b, nullptr, nullptr, M, C, C, eps,
                               NG_GEMV_ACCUMULATE, barrier);
    fused_gemv<NG_GEMV_MT, W8>(ring, xs, hid, x, L.fc_s, L.fc_b, L.ln2_w, L.ln2_b, M, 4 * C, C, eps, act, barrier);
    fused_gemv<NG_GEMV_MT, W8>(ring, xs, x, hid, L.fc2_s, L.fc2_b, nullptr, nullptr, M, C, 4 * C, eps,
                               NG_GEMV_ACCUMULATE, barrier);
  }
  fused_gemv<NG_GEMV_MT, false>(ring, xs, logits, x, nullptr, nullptr, mw.lnf_w, mw.lnf_b, M, Vp, C, eps,
                                NG_GEMV_OUT_F32, [&] {
                                  barrier();
                                  ng_grid_dep_launch();  // the sample kernel may start once every block is here
                                });
  __syncthreads();
  stamp();
  if (tracing) {
    unsigned long long t1;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
    trace[phase] = t0;
    trace[phase + 1] = t1;
  }
}
