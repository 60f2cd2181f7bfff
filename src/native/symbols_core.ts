/** FFI signatures of native/root.zig, native/err.zig and native/host.zig. */
export const core_symbols = {
  ng_version: { parameters: [], result: "u32" },
  ng_last_error: { parameters: ["buffer", "usize"], result: "usize" },
  ng_host_alloc: { parameters: ["u64", "buffer"], result: "i32" },
  ng_host_free: { parameters: ["u64", "u64"], result: "void" },
  ng_host_write: { parameters: ["u64", "buffer", "u64"], result: "void" },
  ng_host_read: { parameters: ["u64", "buffer", "u64"], result: "void" },
  ng_host_copy: { parameters: ["u64", "u64", "u64"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;
