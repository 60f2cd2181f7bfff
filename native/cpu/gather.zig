//! gather_rows: out[i, :] = x[idx[i], :] for i < n (each sequence's last row after a packed prefill).
const std = @import("std");
const err = @import("../err.zig");

/// Copies rows idx[0..n] of x (rows of C floats; `x_rows` of them) into out; fails when an index is
/// outside 0..x_rows.
export fn ng_cpu_gather_rows(out: u64, x: u64, idx: u64, n: u32, C: u32, x_rows: u32) i32 {
    if (n == 0 or C == 0) return 0;
    const ix: [*]const i32 = @ptrFromInt(idx);
    for (0..n) |i| {
        if (ix[i] < 0 or ix[i] >= x_rows) return err.set(1, "ng_cpu_gather_rows: index {d} is {d}, outside 0..{d}", .{ i, ix[i], x_rows });
    }
    const o: [*]f32 = @ptrFromInt(out);
    const xs: [*]const f32 = @ptrFromInt(x);
    for (0..n) |i| {
        const src = @as(usize, @intCast(ix[i])) * C;
        @memcpy(o[i * C .. (i + 1) * C], xs[src .. src + C]);
    }
    return 0;
}
