//! The CUDA driver API (libcuda.so.1), opened at run time. Holds the function table, the load
//! step (cuInit) and the helpers every entry point uses: making a context current and turning a
//! CUresult into an error message "api: CUDA_ERROR_NAME (description)".
const std = @import("std");
const err = @import("../err.zig");
const dl = @import("dl.zig");

pub const CUresult = c_int;
pub const Handle = ?*anyopaque;
pub const DevPtr = u64;

/// Our own statuses (CUDA's are positive).
pub const status_no_driver: i32 = dl.status_not_found;
pub const status_no_device: i32 = -2;
pub const status_bad_arg: i32 = -3;

/// Function table of the driver entry points we use, resolved by name.
pub const Api = struct {
    cuInit: *const fn (c_uint) callconv(.c) CUresult,
    cuDriverGetVersion: *const fn (*c_int) callconv(.c) CUresult,
    cuGetErrorName: *const fn (CUresult, *?[*:0]const u8) callconv(.c) CUresult,
    cuGetErrorString: *const fn (CUresult, *?[*:0]const u8) callconv(.c) CUresult,
    cuDeviceGetCount: *const fn (*c_int) callconv(.c) CUresult,
    cuDeviceGet: *const fn (*c_int, c_int) callconv(.c) CUresult,
    cuDeviceGetName: *const fn ([*]u8, c_int, c_int) callconv(.c) CUresult,
    cuDeviceGetAttribute: *const fn (*c_int, c_int, c_int) callconv(.c) CUresult,
    cuDevicePrimaryCtxRetain: *const fn (*Handle, c_int) callconv(.c) CUresult,
    cuDevicePrimaryCtxRelease_v2: *const fn (c_int) callconv(.c) CUresult,
    cuCtxSetCurrent: *const fn (Handle) callconv(.c) CUresult,
    cuCtxSynchronize: *const fn () callconv(.c) CUresult,
    cuMemGetInfo_v2: *const fn (*usize, *usize) callconv(.c) CUresult,
    cuMemAlloc_v2: *const fn (*DevPtr, usize) callconv(.c) CUresult,
    cuMemFree_v2: *const fn (DevPtr) callconv(.c) CUresult,
    cuMemHostAlloc: *const fn (*Handle, usize, c_uint) callconv(.c) CUresult,
    cuMemFreeHost: *const fn (Handle) callconv(.c) CUresult,
    cuMemcpyHtoDAsync_v2: *const fn (DevPtr, ?*const anyopaque, usize, Handle) callconv(.c) CUresult,
    cuMemcpyDtoHAsync_v2: *const fn (Handle, DevPtr, usize, Handle) callconv(.c) CUresult,
    cuMemcpyDtoDAsync_v2: *const fn (DevPtr, DevPtr, usize, Handle) callconv(.c) CUresult,
    cuMemsetD8Async: *const fn (DevPtr, u8, usize, Handle) callconv(.c) CUresult,
    cuStreamCreate: *const fn (*Handle, c_uint) callconv(.c) CUresult,
    cuStreamDestroy_v2: *const fn (Handle) callconv(.c) CUresult,
    cuStreamSynchronize: *const fn (Handle) callconv(.c) CUresult,
    cuEventCreate: *const fn (*Handle, c_uint) callconv(.c) CUresult,
    cuEventDestroy_v2: *const fn (Handle) callconv(.c) CUresult,
    cuEventRecord: *const fn (Handle, Handle) callconv(.c) CUresult,
    cuEventQuery: *const fn (Handle) callconv(.c) CUresult,
    cuEventSynchronize: *const fn (Handle) callconv(.c) CUresult,
    cuEventElapsedTime: *const fn (*f32, Handle, Handle) callconv(.c) CUresult,
    cuModuleLoadData: *const fn (*Handle, ?*const anyopaque) callconv(.c) CUresult,
    cuModuleUnload: *const fn (Handle) callconv(.c) CUresult,
    cuModuleGetFunction: *const fn (*Handle, Handle, [*:0]const u8) callconv(.c) CUresult,
    cuFuncSetAttribute: *const fn (Handle, c_int, c_int) callconv(.c) CUresult,
    cuLaunchKernel: *const fn (
        Handle,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Handle,
        ?[*]?*anyopaque,
        ?[*]?*anyopaque,
    ) callconv(.c) CUresult,
    cuLaunchKernelEx: *const fn (*const LaunchConfig, Handle, ?[*]?*anyopaque, ?[*]?*anyopaque) callconv(.c) CUresult,
    cuStreamBeginCapture_v2: *const fn (Handle, c_int) callconv(.c) CUresult,
    cuStreamEndCapture: *const fn (Handle, *Handle) callconv(.c) CUresult,
    cuStreamIsCapturing: *const fn (Handle, *c_int) callconv(.c) CUresult,
    cuGraphInstantiateWithFlags: *const fn (*Handle, Handle, c_ulonglong) callconv(.c) CUresult,
    cuGraphLaunch: *const fn (Handle, Handle) callconv(.c) CUresult,
    cuGraphExecDestroy: *const fn (Handle) callconv(.c) CUresult,
    cuGraphDestroy: *const fn (Handle) callconv(.c) CUresult,
    cuGraphCreate: *const fn (*Handle, c_uint) callconv(.c) CUresult,
    cuGraphConditionalHandleCreate: *const fn (*u64, Handle, Handle, c_uint, c_uint) callconv(.c) CUresult,
    cuGraphAddNode: *const fn (*Handle, Handle, ?[*]const Handle, usize, *GraphNodeParams) callconv(.c) CUresult,
    cuStreamBeginCaptureToGraph: *const fn (Handle, Handle, ?[*]const Handle, ?*const anyopaque, usize, c_int) callconv(.c) CUresult,
    cuProfilerStart: *const fn () callconv(.c) CUresult,
    cuProfilerStop: *const fn () callconv(.c) CUresult,
};

/// CUDA_ERROR_NOT_READY: an event or stream query whose work has not finished.
pub const CUDA_ERROR_NOT_READY: CUresult = 600;

var mutex: std.Thread.Mutex = .{};
/// The table, valid once `loaded` (a successful `load`).
var table: Api = undefined;
var loaded: bool = false;
var load_status: i32 = 0;
var load_msg: [600]u8 = undefined;
var load_msg_len: usize = 0;

/// CUlaunchAttribute: an id, padding to 8 bytes, then a 64-byte value union.
pub const LaunchAttribute = extern struct {
    id: c_int,
    pad: [4]u8 = .{ 0, 0, 0, 0 },
    value: [64]u8 align(8),
};

/// CUlaunchConfig of cuLaunchKernelEx.
pub const LaunchConfig = extern struct {
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    smem: c_uint,
    stream: Handle,
    attrs: ?[*]LaunchAttribute,
    num_attrs: c_uint,
};

/// CUgraphNodeParams (256 bytes) with the CUDA_CONDITIONAL_NODE_PARAMS arm of its union.
pub const GraphNodeParams = extern struct {
    type: c_int,
    reserved0: [3]c_int = .{ 0, 0, 0 },
    handle: u64,
    cond_type: c_int,
    size: c_uint,
    graph_out: ?*Handle,
    ctx: Handle,
    pad: [232 - 32]u8 = [_]u8{0} ** (232 - 32),
    reserved2: i64 = 0,
};
/// CU_GRAPH_NODE_TYPE_CONDITIONAL, CU_GRAPH_COND_TYPE_WHILE, CU_GRAPH_COND_ASSIGN_DEFAULT.
pub const graph_node_conditional: c_int = 13;
pub const graph_cond_while: c_int = 1;
pub const graph_cond_assign_default: c_uint = 1;

/// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION.
pub const attr_programmatic_serialization: c_int = 6;

comptime {
    if (@sizeOf(GraphNodeParams) != 256) @compileError("CUgraphNodeParams must be 256 bytes");
}

pub fn api() ?*const Api {
    return if (@atomicLoad(bool, &loaded, .acquire)) &table else null;
}

fn load_failed(status: i32, comptime fmt: []const u8, args: anytype) i32 {
    const s = std.fmt.bufPrint(&load_msg, fmt, args) catch load_msg[0..];
    load_msg_len = s.len;
    load_status = status;
    return err.set(status, "{s}", .{s});
}

/// Opens libcuda.so.1 and calls cuInit(0) once per process; later calls return the first outcome
/// (with the same message when it failed): "no CUDA driver (libcuda.so.1 not found: ...)".
pub fn load() i32 {
    mutex.lock();
    defer mutex.unlock();
    if (loaded) return 0;
    if (load_status != 0) return err.set(load_status, "{s}", .{load_msg[0..load_msg_len]});
    const handle = std.c.dlopen("libcuda.so.1", .{ .NOW = true }) orelse
        return load_failed(status_no_driver, "no CUDA driver (libcuda.so.1 not found: {s})", .{dl.dl_error()});
    if (dl.resolve(Api, handle, &table)) |missing| {
        return load_failed(status_no_driver, "no CUDA driver (libcuda.so.1 lacks {s}: driver too old)", .{missing});
    }
    const r = table.cuInit(0);
    if (r != 0) {
        var name: ?[*:0]const u8 = null;
        var text: ?[*:0]const u8 = null;
        _ = table.cuGetErrorName(r, &name);
        _ = table.cuGetErrorString(r, &text);
        const n = if (name) |p| std.mem.span(p) else "CUDA_ERROR_UNKNOWN";
        const t = if (text) |p| std.mem.span(p) else "unrecognised error code";
        if (r == 100) return load_failed(status_no_device, "no CUDA device (cuInit: {s} ({s}))", .{ n, t });
        return load_failed(r, "cuInit: {s} ({s}) [code {d}]", .{ n, t, r });
    }
    @atomicStore(bool, &loaded, true, .release);
    return 0;
}

/// Records "api: CUDA_ERROR_X (text)" for a failed driver call and returns its CUresult.
pub fn fail(r: CUresult, comptime api_name: []const u8) i32 {
    var name: ?[*:0]const u8 = null;
    var text: ?[*:0]const u8 = null;
    if (api()) |a| {
        _ = a.cuGetErrorName(r, &name);
        _ = a.cuGetErrorString(r, &text);
    }
    const n = if (name) |p| std.mem.span(p) else "CUDA_ERROR_UNKNOWN";
    const t = if (text) |p| std.mem.span(p) else "unrecognised error code";
    return err.set(r, "{s}: {s} ({s}) [code {d}]", .{ api_name, n, t, r });
}

/// Makes `ctx` current on the calling thread (see cuda.zig: calls never rely on the last one's).
/// Returns 0, or a status with the error set.
pub fn bind(ctx: u64) i32 {
    const a = api() orelse return err.set(status_no_driver, "CUDA driver not loaded: call ng_cuda_init first", .{});
    if (ctx == 0) return err.set(status_bad_arg, "CUDA context is null: call ng_cuda_ctx_retain first", .{});
    const r = a.cuCtxSetCurrent(@ptrFromInt(ctx));
    if (r != 0) return fail(r, "cuCtxSetCurrent");
    return 0;
}

/// A handle passed from TypeScript as u64.
pub inline fn h(x: u64) Handle {
    return @ptrFromInt(x);
}

/// A handle returned to TypeScript as u64.
pub inline fn u(x: Handle) u64 {
    return @intFromPtr(x);
}
