//! Modules (CUBIN images), kernel functions and kernel launches.
const std = @import("std");
const err = @import("../err.zig");
const drv = @import("driver.zig");

/// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;

/// Loads a CUBIN image (`image`, `bytes` long) into the context; module handle into out[0].
export fn ng_cuda_module_load(ctx: u64, image: [*]const u8, bytes: u64, out: *u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    if (bytes < 16) return err.set(drv.status_bad_arg, "cuModuleLoadData: image of {d} bytes is too small", .{bytes});
    var m: drv.Handle = null;
    const r = drv.api().?.cuModuleLoadData(&m, image);
    if (r != 0) return drv.fail(r, "cuModuleLoadData");
    out.* = drv.u(m);
    return 0;
}

/// Unloads a module from ng_cuda_module_load.
export fn ng_cuda_module_unload(ctx: u64, module: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuModuleUnload(drv.h(module));
    if (r != 0) return drv.fail(r, "cuModuleUnload");
    return 0;
}

/// Looks up kernel `name` (NUL-terminated) in `module`; function handle into out[0].
export fn ng_cuda_module_function(ctx: u64, module: u64, name: [*:0]const u8, out: *u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    var f: drv.Handle = null;
    const r = drv.api().?.cuModuleGetFunction(&f, drv.h(module), name);
    if (r != 0) return drv.fail(r, "cuModuleGetFunction");
    out.* = drv.u(f);
    return 0;
}

/// Allows `func` up to `bytes` of dynamic shared memory (needed above 48 KiB).
export fn ng_cuda_func_set_smem(ctx: u64, func: u64, bytes: u32) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuFuncSetAttribute(drv.h(func), CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, @intCast(bytes));
    if (r != 0) return drv.fail(r, "cuFuncSetAttribute");
    return 0;
}

/// Launches `func` on `stream` with a grid of (gx, gy, gz) blocks of (bx, by, bz) threads and
/// `smem` bytes of dynamic shared memory. Its `count` parameters are packed in `args`, parameter
/// i at byte offset offsets[i]; the driver copies them at launch, so the buffers may be reused
/// at once (and a graph capture keeps its own copy). With `flags` bit 0 (programmatic dependent
/// launch) the kernel may start before the previous kernel on the stream finishes: it must execute
/// griddepcontrol.wait (ng_grid_dep_wait in common.cuh) before it reads what that kernel wrote.
export fn ng_cuda_launch(
    ctx: u64,
    func: u64,
    gx: u32,
    gy: u32,
    gz: u32,
    bx: u32,
    by: u32,
    bz: u32,
    smem: u32,
    stream: u64,
    args: [*]u8,
    offsets: [*]const u32,
    count: u32,
    flags: u32,
) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    var params: [max_params]?*anyopaque = undefined;
    if (count > max_params) return err.set(drv.status_bad_arg, "cuLaunchKernel: {d} parameters (at most {d})", .{ count, max_params });
    for (0..count) |i| params[i] = @ptrCast(args + offsets[i]);
    if (flags & launch_pdl == 0) {
        const r = drv.api().?.cuLaunchKernel(drv.h(func), gx, gy, gz, bx, by, bz, smem, drv.h(stream), &params, null);
        if (r != 0) return drv.fail(r, "cuLaunchKernel");
        return 0;
    }
    var attr = drv.LaunchAttribute{ .id = drv.attr_programmatic_serialization, .value = @splat(0) };
    std.mem.writeInt(c_int, attr.value[0..4], 1, .little);
    const cfg = drv.LaunchConfig{
        .grid_x = gx,
        .grid_y = gy,
        .grid_z = gz,
        .block_x = bx,
        .block_y = by,
        .block_z = bz,
        .smem = smem,
        .stream = drv.h(stream),
        .attrs = @ptrCast(&attr),
        .num_attrs = 1,
    };
    const r = drv.api().?.cuLaunchKernelEx(&cfg, drv.h(func), &params, null);
    if (r != 0) return drv.fail(r, "cuLaunchKernelEx");
    return 0;
}

/// ng_cuda_launch flag: programmatic dependent launch.
const launch_pdl: u32 = 1;

const max_params = 32;
