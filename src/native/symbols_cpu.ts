/**
 * FFI signatures of the CPU backend's kernels (native/cpu/) and of the generic dtype converter.
 *
 * Addresses of host memory (from ng_host_alloc) are `u64` BigInts; every call that can fail returns
 * an i32 status (0 = ok) whose message NativeLib.check reports. Dtype codes: 0 f32, 1 f16, 2 bf16.
 * Activation codes: 0 none, 1 gelu_erf, 2 gelu_tanh.
 * @module
 */
export const cpu_symbols = {
  /** (n_threads) -> status: starts/resizes the thread pool; 0 = one thread per core. */
  ng_cpu_init: { parameters: ["u32"], result: "i32" },
  /** () -> threads the pool runs on, the caller included. */
  ng_cpu_threads: { parameters: [], result: "u32" },
  /** (dst, dst_dtype, src, src_dtype, n, rows, cols) -> status; src is a host address. */
  ng_convert: { parameters: ["u64", "u32", "u64", "u32", "u64", "u64", "u64"], result: "i32" },
  /** (dst, dst_dtype, src, src_dtype, n, rows, cols) -> status; src is a caller's typed array. */
  ng_convert_buf: { parameters: ["u64", "u32", "buffer", "u32", "u64", "u64", "u64"], result: "i32" },
  /** (out, tokens, lengths, wte, wpe, B, T, C, max_pos) -> status. */
  ng_cpu_embed: {
    parameters: ["u64", "u64", "u64", "u64", "u64", "u32", "u32", "u32", "u32"],
    result: "i32",
  },
  /** (out, x, weight, bias or 0, rows, C, eps) -> status. */
  ng_cpu_layernorm: { parameters: ["u64", "u64", "u64", "u64", "u32", "u32", "f32"], result: "i32" },
  /** (out, x, w, bias or 0, M, N, K, act, accumulate) -> status. */
  ng_cpu_matmul: {
    parameters: ["u64", "u64", "u64", "u64", "u32", "u32", "u32", "u32", "u32"],
    result: "i32",
  },
  /** (out, qkv, k_cache, v_cache, lengths, n_new, B, T, n_head, head_dim, max_T) -> status. */
  ng_cpu_attention: {
    parameters: ["u64", "u64", "u64", "u64", "u64", "u64", "u32", "u32", "u32", "u32", "u32"],
    result: "i32",
  },
  /** (out, x, n_new, B, T, C) -> status. */
  ng_cpu_gather_last: { parameters: ["u64", "u64", "u64", "u32", "u32", "u32"], result: "i32" },
  /** (tokens_out, logits, lengths, n_new, temperature, top_k, top_p, seed, B, V, ld) -> status. */
  ng_cpu_sample: {
    parameters: ["u64", "u64", "u64", "u64", "u64", "u64", "u64", "u64", "u32", "u32", "u32"],
    result: "i32",
  },
  /** (lengths, n_new, B) -> status. */
  ng_cpu_advance: { parameters: ["u64", "u64", "u32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
