//! scatter: dst[idx[i]] = src[i] for i < n where idx[i] >= 0 (a prefill's sampled tokens into the
//! decode slots of the sequences it finished).
const std = @import("std");
const err = @import("../err.zig");

/// Scatters n int32 values; fails (writing nothing) when an index is >= dst_len.
export fn ng_cpu_scatter(dst: u64, src: u64, idx: u64, n: u32, dst_len: u32) i32 {
    if (n == 0) return 0;
    const d: [*]i32 = @ptrFromInt(dst);
    const s: [*]const i32 = @ptrFromInt(src);
    const ix: [*]const i32 = @ptrFromInt(idx);
    for (0..n) |i| {
        if (ix[i] >= dst_len) return err.set(1, "ng_cpu_scatter: index {d} is {d}, past {d}", .{ i, ix[i], dst_len });
    }
    for (0..n) |i| {
        if (ix[i] >= 0) d[@intCast(ix[i])] = s[i];
    }
    return 0;
}
