//! Host memory for the CPU backend: 64-byte aligned, addressed by u64 like device memory.
const std = @import("std");
const err = @import("err.zig");

const alignment = std.mem.Alignment.@"64";

/// Allocates `bytes` of 64-byte aligned host memory into `out_ptr[0]`; status 0 or 1 (out of memory).
export fn ng_host_alloc(bytes: u64, out_ptr: *u64) i32 {
    const n: usize = @intCast(@max(bytes, 1));
    const mem = std.heap.c_allocator.rawAlloc(n, alignment, @returnAddress()) orelse
        return err.set(1, "ng_host_alloc: out of host memory allocating {d} bytes", .{bytes});
    out_ptr.* = @intFromPtr(mem);
    return 0;
}

/// Frees memory from ng_host_alloc; `bytes` must be the size it was allocated with.
export fn ng_host_free(ptr: u64, bytes: u64) void {
    if (ptr == 0) return;
    const n: usize = @intCast(@max(bytes, 1));
    const p: [*]u8 = @ptrFromInt(ptr);
    std.heap.c_allocator.rawFree(p[0..n], alignment, @returnAddress());
}

/// Copies `bytes` from a caller's buffer into host memory at `dst`.
export fn ng_host_write(dst: u64, src: [*]const u8, bytes: u64) void {
    const d: [*]u8 = @ptrFromInt(dst);
    @memcpy(d[0..@intCast(bytes)], src[0..@intCast(bytes)]);
}

/// Copies `bytes` from host memory at `src` into a caller's buffer.
export fn ng_host_read(src: u64, dst: [*]u8, bytes: u64) void {
    const s: [*]const u8 = @ptrFromInt(src);
    @memcpy(dst[0..@intCast(bytes)], s[0..@intCast(bytes)]);
}

/// Copies `bytes` between two host addresses (regions must not overlap).
export fn ng_host_copy(dst: u64, src: u64, bytes: u64) void {
    const d: [*]u8 = @ptrFromInt(dst);
    const s: [*]const u8 = @ptrFromInt(src);
    @memcpy(d[0..@intCast(bytes)], s[0..@intCast(bytes)]);
}
