//! Device memory, pinned host memory and asynchronous copies on a stream.
const err = @import("../err.zig");
const drv = @import("driver.zig");

/// Writes the context's free and total device memory in bytes into out[0], out[1].
export fn ng_cuda_mem_info(ctx: u64, out: *[2]u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    var free: usize = 0;
    var total: usize = 0;
    const r = drv.api().?.cuMemGetInfo_v2(&free, &total);
    if (r != 0) return drv.fail(r, "cuMemGetInfo_v2");
    out[0] = free;
    out[1] = total;
    return 0;
}

/// Allocates `bytes` of device memory; its address goes into out[0]. Status 2 is
/// CUDA_ERROR_OUT_OF_MEMORY.
export fn ng_cuda_mem_alloc(ctx: u64, bytes: u64, out: *u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    if (bytes == 0) return err.set(drv.status_bad_arg, "cuMemAlloc_v2: 0 bytes requested", .{});
    var p: drv.DevPtr = 0;
    const r = drv.api().?.cuMemAlloc_v2(&p, @intCast(bytes));
    if (r != 0) return drv.fail(r, "cuMemAlloc_v2");
    out.* = p;
    return 0;
}

/// Frees device memory from ng_cuda_mem_alloc.
export fn ng_cuda_mem_free(ctx: u64, ptr: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuMemFree_v2(ptr);
    if (r != 0) return drv.fail(r, "cuMemFree_v2");
    return 0;
}

/// Allocates `bytes` of page-locked host memory (cuMemHostAlloc); its address goes into out[0].
export fn ng_cuda_host_alloc(ctx: u64, bytes: u64, out: *u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    if (bytes == 0) return err.set(drv.status_bad_arg, "cuMemHostAlloc: 0 bytes requested", .{});
    var p: drv.Handle = null;
    const r = drv.api().?.cuMemHostAlloc(&p, @intCast(bytes), 0);
    if (r != 0) return drv.fail(r, "cuMemHostAlloc");
    out.* = drv.u(p);
    return 0;
}

/// Frees pinned host memory from ng_cuda_host_alloc.
export fn ng_cuda_host_free(ctx: u64, ptr: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuMemFreeHost(drv.h(ptr));
    if (r != 0) return drv.fail(r, "cuMemFreeHost");
    return 0;
}

/// Enqueues a host-to-device copy of `bytes` from host address `src` on `stream`.
export fn ng_cuda_memcpy_htod(ctx: u64, dst: u64, src: u64, bytes: u64, stream: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuMemcpyHtoDAsync_v2(dst, @ptrFromInt(src), @intCast(bytes), drv.h(stream));
    if (r != 0) return drv.fail(r, "cuMemcpyHtoDAsync_v2");
    return 0;
}

/// Enqueues a device-to-host copy of `bytes` into host address `dst` on `stream`.
export fn ng_cuda_memcpy_dtoh(ctx: u64, dst: u64, src: u64, bytes: u64, stream: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuMemcpyDtoHAsync_v2(drv.h(dst), src, @intCast(bytes), drv.h(stream));
    if (r != 0) return drv.fail(r, "cuMemcpyDtoHAsync_v2");
    return 0;
}

/// Enqueues setting `bytes` bytes at `dst` to `value` on `stream`.
export fn ng_cuda_memset8(ctx: u64, dst: u64, value: u32, bytes: u64, stream: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuMemsetD8Async(dst, @truncate(value), @intCast(bytes), drv.h(stream));
    if (r != 0) return drv.fail(r, "cuMemsetD8Async");
    return 0;
}
