//! The root of libngpt: every exported C-ABI symbol is reached from here.
//! Conventions (see README "Native library"):
//!   - names are prefix-first: ng_<area>_<verb>, e.g. ng_cpu_matmul, ng_cuda_mem_alloc;
//!   - a function that can fail returns i32: 0 on success, else a nonzero status, with a message
//!     naming the failed API kept for ng_last_error;
//!   - pointers to backend memory travel as u64 addresses.
const std = @import("std");
pub const err = @import("err.zig");

comptime {
    _ = err;
    _ = @import("host.zig");
    _ = @import("cpu/pool.zig");
    _ = @import("cpu/convert.zig");
    _ = @import("cpu/embed.zig");
    _ = @import("cpu/layernorm.zig");
    _ = @import("cpu/matmul.zig");
    _ = @import("cpu/attention.zig");
    _ = @import("cpu/gather.zig");
    _ = @import("cpu/scatter.zig");
    _ = @import("cpu/logprobs.zig");
    _ = @import("cpu/sample.zig");
    _ = @import("cpu/advance.zig");
    _ = @import("cpu/philox.zig");
    _ = @import("cpu/vec.zig");
    _ = @import("cuda/cuda.zig");
}

/// The ABI version: a hash of every exported signature (native/abi.zig, generated with
/// src/native/symbols.ts); src/native/lib.ts refuses a library whose version differs.
export fn ng_version() u32 {
    return @import("abi.zig").version;
}

test {
    std.testing.refAllDecls(@This());
}
