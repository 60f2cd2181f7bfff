//! The library's last error: a message naming the API that failed and why. One process-wide
//! slot: every exported function is called from the JavaScript thread (no symbol is bound
//! `nonblocking`), and the CPU pool's workers never set errors.
const std = @import("std");

var buf: [1024]u8 = undefined;
var len: usize = 0;

/// Records a formatted message and returns `status` (nonzero), for `return err.set(...)`.
pub fn set(status: i32, comptime fmt: []const u8, args: anytype) i32 {
    std.debug.assert(status != 0);
    const s = std.fmt.bufPrint(&buf, fmt, args) catch blk: {
        break :blk buf[0..buf.len];
    };
    len = s.len;
    return status;
}

/// Copies the last error message into `out` (at most `cap` bytes); returns its full length.
export fn ng_last_error(out: [*]u8, cap: usize) usize {
    const n = @min(cap, len);
    @memcpy(out[0..n], buf[0..n]);
    return len;
}
