// decode_fused: a whole decode step's forward (embed, every block, ln_f and the LM head) in one
// persistent kernel for small batches (M <= NG_GEMV_MT rows, one per slot). Compiled after gemv.cu
// and attention_decode.cu (kernels.ts `includes`), whose device functions do each phase's work:
//   embed                 x = wte[token] + wpe[position]                      (blocks b < M)
//   per layer l:
//     qkv                 qkv = c_attn(ln_1(x))                              gemv over every block
//     attention           att = attend(qkv) with the KV append, one (b, head) per block at a time
//     proj                x += c_proj(att)                                   gemv
//     fc                  fc = gelu(c_fc(ln_2(x)))                           gemv
//     fc2                 x += c_proj(fc)                                    gemv
//   head                  logits = lm_head(ln_f(x)) (f32)                    gemv
// as the unfused step runs them (the same device code, so the same roundings). Phases are separated
// by a grid barrier through a counter in global memory, so the grid must be co-resident (the host
// launches one 256-thread block per SM). Each gemv phase requests its first weights before waiting
// at the barrier, as the unfused gemv does before its PDL wait.
// Measured on an H200 (docs/perf-notes.md): a phase costs 3-5 us however little it reads (gpt2's
// attention phase, under 1 MB: 3.1 us), about what a kernel boundary costs the unfused step, so this
// path is not the default (NGPT_FUSED_DECODE=1 turns it on). The barrier and the load after it take
// about 1 us of that (tests/gpu/barrier_probe.cu); Nsight Compute finds the 8 warps of a block at a
// CTA barrier 55% of the time. Tried and dropped: two blocks an SM (gpt2 b1 307 -> 400 us a step),
// prefetching the next phase's weights into the L2 (a third slower), streaming them into shared
// memory ahead of the barriers (v5-v7, commit ae330e4: 351 us against 296; the weights were never
// the floor).
// Needs blockDim.x = 256 and dynamic shared memory of M * 4C st_t (gemv's staging of x).
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

// A grid barrier over one arrival counter (`flags[gridDim.x]`): thread 0 of each block adds 1 with
// release semantics and polls the counter with acquire loads until every block has arrived, then
// the block's other threads pass its __syncthreads. `count` is the barriers this block has passed,
// kept between launches in flags[blockIdx.x] (every launch passes the same number, so all blocks
// agree on it); the wait compares modulo 2^32, so the counter may wrap.
// tests/gpu/barrier_probe.cu on an H200 (132 blocks of 256 threads, 2,000 barriers): 0.90 us a
// barrier; v4's one flag per block, stored and then polled by every thread, 1.28 us; cooperative
// groups' grid.sync() 0.98 us. (v1 and v2's counter measured slower only because they ran 264
// blocks.)
__device__ __forceinline__ void fused_barrier(unsigned int* flags, unsigned int& count) {
  count++;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned int* arrived = flags + gridDim.x;
    const unsigned int target = count * gridDim.x;
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(arrived) : "memory");
    unsigned int v;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(arrived) : "memory");
    } while ((int)(v - target) < 0);
  }
  __syncthreads();
}

extern "C" __global__ void __launch_bounds__(256, 1)
ng_decode_fused(const FusedLayer* __restrict__ layers, const FusedKv* __restrict__ kvs, int n_layer,
                st_t* x, st_t* qkv, st_t* att, st_t* hid, float* logits, const int* __restrict__ tokens,
                const int* __restrict__ lengths, const int* __restrict__ n_new,
                const int* __restrict__ block_table, int M, int C, int H, int Vp, int max_pos, float eps, int act,
                int max_T, float scale_log2, int bs_log2, int mb, int ks_all, unsigned int* flags,
                unsigned long long* trace) {
  NG_TRACE_KERNEL;
  const FusedModel mw = *reinterpret_cast<const FusedModel*>(layers + n_layer);
  const st_t *wte = mw.wte, *wpe = mw.wpe, *lm_head = mw.lm_head;
  // Warps splitting K in each gemv phase, four bits each (the host's fused_ks).
  const int ks_qkv = ks_all & 15, ks_proj = (ks_all >> 4) & 15, ks_fc = (ks_all >> 8) & 15;
  const int ks_fc2 = (ks_all >> 12) & 15, ks_head = (ks_all >> 16) & 15;
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

  ng_grid_dep_wait();  // the previous step's sample and advance wrote tokens and lengths
  for (int r = blockIdx.x; r < M; r += gridDim.x) {  // embed, as embed.cu
    int tok = tokens[r], pos = lengths[r];
    tok = tok < 0 ? 0 : (tok >= Vp ? Vp - 1 : tok);
    pos = pos < 0 ? 0 : (pos >= max_pos ? max_pos - 1 : pos);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      x[(size_t)r * C + c] = from_f32(to_f32(wte[(size_t)tok * C + c]) + to_f32(wpe[(size_t)pos * C + c]));
    }
  }
  const int items = M * H;  // attention: (b, head) pairs, 8 warps on each
  for (int l = 0; l < n_layer; l++) {
    const FusedLayer& L = layers[l];
    const FusedKv kv = kvs[l];
    gemv<NG_GEMV_MT, NG_GEMV_W8 != 0>(qkv, x, L.attn_w, L.attn_s, L.attn_b, L.ln1_w, L.ln1_b, M, 3 * C, C, eps, 0,
                                      ks_qkv, barrier);
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
    gemv<NG_GEMV_MT, NG_GEMV_W8 != 0>(x, att, L.proj_w, L.proj_s, L.proj_b, nullptr, nullptr, M, C, C, eps,
                                      NG_GEMV_ACCUMULATE, ks_proj, barrier);
    gemv<NG_GEMV_MT, NG_GEMV_W8 != 0>(hid, x, L.fc_w, L.fc_s, L.fc_b, L.ln2_w, L.ln2_b, M, 4 * C, C, eps, act,
                                      ks_fc, barrier);
    gemv<NG_GEMV_MT, NG_GEMV_W8 != 0>(x, hid, L.fc2_w, L.fc2_s, L.fc2_b, nullptr, nullptr, M, C, 4 * C, eps,
                                      NG_GEMV_ACCUMULATE, ks_fc2, barrier);
  }
  // The LM head: 16-bit weights whatever the blocks' (tied to wte), so the 16-bit gemv body.
  gemv<NG_GEMV_MT, false>(logits, x, lm_head, nullptr, nullptr, mw.lnf_w, mw.lnf_b, M, Vp, C, eps, NG_GEMV_OUT_F32,
                          ks_head, [&] {
    barrier();
    ng_grid_dep_launch();  // the sample kernel may start once every block is here
  });
  __syncthreads();
  if (threadIdx.x == 0) flags[blockIdx.x] = count;  // the next launch's starting count
  stamp();
  if (tracing) {
    unsigned long long t1;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
    trace[phase] = t0;
    trace[phase + 1] = t1;
  }
}
