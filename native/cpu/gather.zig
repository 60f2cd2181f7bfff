//! gather_last: out[b, :] = x[b*T + max(n_new[b]-1, 0), :], the last valid row of each sequence.
const std = @import("std");
const err = @import("../err.zig");

/// Copies the last valid row of each of B sequences (see GatherLastArgs); fails when an n_new is
/// outside 0..T.
export fn ng_cpu_gather_last(out: u64, x: u64, n_new: u64, B: u32, T: u32, C: u32) i32 {
    if (B == 0 or C == 0) return 0;
    const nn: [*]const i32 = @ptrFromInt(n_new);
    for (0..B) |b| {
        if (nn[b] < 0 or nn[b] > T) return err.set(1, "ng_cpu_gather_last: sequence {d} has n_new {d} outside 0..T {d}", .{ b, nn[b], T });
    }
    if (T == 0) return err.set(1, "ng_cpu_gather_last: T is 0", .{});
    const o: [*]f32 = @ptrFromInt(out);
    const xs: [*]const f32 = @ptrFromInt(x);
    for (0..B) |b| {
        const t: usize = @intCast(@max(nn[b] - 1, 0));
        const src = (b * T + t) * C;
        @memcpy(o[b * C .. (b + 1) * C], xs[src .. src + C]);
    }
    return 0;
}
