//! advance: lengths[b] += n_new[b], after a step has appended its tokens to the KV cache.
const std = @import("std");
const err = @import("../err.zig");

/// Adds n_new to lengths for B sequences; fails (changing nothing) on a negative n_new or when a
/// length would overflow i32.
export fn ng_cpu_advance(lengths: u64, n_new: u64, B: u32) i32 {
    if (B == 0) return 0;
    const len: [*]i32 = @ptrFromInt(lengths);
    const nn: [*]const i32 = @ptrFromInt(n_new);
    for (0..B) |b| {
        if (nn[b] < 0) return err.set(1, "ng_cpu_advance: sequence {d} has negative n_new {d}", .{ b, nn[b] });
        if (@as(i64, len[b]) + nn[b] > std.math.maxInt(i32)) {
            return err.set(1, "ng_cpu_advance: sequence {d} length {d} + n_new {d} overflows", .{ b, len[b], nn[b] });
        }
    }
    for (0..B) |b| len[b] += nn[b];
    return 0;
}
