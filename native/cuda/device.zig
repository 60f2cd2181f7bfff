//! Driver load, devices and primary contexts.
const std = @import("std");
const err = @import("../err.zig");
const drv = @import("driver.zig");

/// Opens libcuda.so.1 and runs cuInit. Status 0, or nonzero with "no CUDA driver (...)" /
/// "no CUDA device (...)" / "cuInit: ..." set.
export fn ng_cuda_init() i32 {
    return drv.load();
}

/// Writes the number of CUDA devices into out[0] (0 is not an error here).
export fn ng_cuda_device_count(out: *i32) i32 {
    const s = drv.load();
    if (s != 0) {
        if (s == drv.status_no_device) {
            out.* = 0;
            return 0;
        }
        return s;
    }
    const a = drv.api().?;
    var n: c_int = 0;
    const r = a.cuDeviceGetCount(&n);
    if (r != 0) return drv.fail(r, "cuDeviceGetCount");
    out.* = n;
    return 0;
}

fn get_device(ordinal: i32, out: *c_int) i32 {
    const s = drv.load();
    if (s != 0) return s;
    const a = drv.api().?;
    var n: c_int = 0;
    var r = a.cuDeviceGetCount(&n);
    if (r != 0) return drv.fail(r, "cuDeviceGetCount");
    if (n == 0) return err.set(drv.status_no_device, "no CUDA device (cuDeviceGetCount found none)", .{});
    if (ordinal < 0 or ordinal >= n) {
        return err.set(drv.status_bad_arg, "cuDeviceGet: device {d} does not exist ({d} CUDA devices)", .{ ordinal, n });
    }
    r = a.cuDeviceGet(out, ordinal);
    if (r != 0) return drv.fail(r, "cuDeviceGet");
    return 0;
}

/// Copies device `ordinal`'s name (NUL-terminated, at most `cap` bytes) into `out`.
export fn ng_cuda_device_name(ordinal: i32, out: [*]u8, cap: u64) i32 {
    var dev: c_int = 0;
    const s = get_device(ordinal, &dev);
    if (s != 0) return s;
    if (cap == 0) return err.set(drv.status_bad_arg, "ng_cuda_device_name: empty output buffer", .{});
    const r = drv.api().?.cuDeviceGetName(out, @intCast(@min(cap, 1 << 20)), dev);
    if (r != 0) return drv.fail(r, "cuDeviceGetName");
    return 0;
}

/// Writes attribute `attr` (a CUdevice_attribute code) of device `ordinal` into out[0].
export fn ng_cuda_device_attribute(ordinal: i32, attr: i32, out: *i32) i32 {
    var dev: c_int = 0;
    const s = get_device(ordinal, &dev);
    if (s != 0) return s;
    var v: c_int = 0;
    const r = drv.api().?.cuDeviceGetAttribute(&v, attr, dev);
    if (r != 0) return drv.fail(r, "cuDeviceGetAttribute");
    out.* = v;
    return 0;
}

/// Retains device `ordinal`'s primary context, writes it into out[0] and makes it current.
export fn ng_cuda_ctx_retain(ordinal: i32, out: *u64) i32 {
    var dev: c_int = 0;
    const s = get_device(ordinal, &dev);
    if (s != 0) return s;
    const a = drv.api().?;
    var ctx: drv.Handle = null;
    var r = a.cuDevicePrimaryCtxRetain(&ctx, dev);
    if (r != 0) return drv.fail(r, "cuDevicePrimaryCtxRetain");
    r = a.cuCtxSetCurrent(ctx);
    if (r != 0) {
        _ = a.cuDevicePrimaryCtxRelease_v2(dev);
        return drv.fail(r, "cuCtxSetCurrent");
    }
    out.* = drv.u(ctx);
    return 0;
}

/// Releases the primary context of device `ordinal` (one retain each), unbinding it first.
export fn ng_cuda_ctx_release(ordinal: i32) i32 {
    var dev: c_int = 0;
    const s = get_device(ordinal, &dev);
    if (s != 0) return s;
    const a = drv.api().?;
    _ = a.cuCtxSetCurrent(null);
    const r = a.cuDevicePrimaryCtxRelease_v2(dev);
    if (r != 0) return drv.fail(r, "cuDevicePrimaryCtxRelease_v2");
    return 0;
}

/// Starts (on != 0) or stops the profiled range: with `ncu --profile-from-start off`, only kernels
/// launched inside it are profiled.
export fn ng_cuda_profiler(ctx: u64, on: i32) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const a = drv.api().?;
    if (on != 0) {
        const r = a.cuProfilerStart();
        if (r != 0) return drv.fail(r, "cuProfilerStart");
    } else {
        const r = a.cuProfilerStop();
        if (r != 0) return drv.fail(r, "cuProfilerStop");
    }
    return 0;
}

