//! NVRTC (libnvrtc.so.13 / .12), opened at run time: compiles CUDA C++ source to CUBIN. Works
//! without a GPU and without libcuda (CI compiles every kernel this way).
const std = @import("std");
const err = @import("../err.zig");
const dl = @import("dl.zig");

const Result = c_int;
const Prog = ?*anyopaque;

const Api = struct {
    nvrtcGetErrorString: *const fn (Result) callconv(.c) ?[*:0]const u8,
    nvrtcVersion: *const fn (*c_int, *c_int) callconv(.c) Result,
    nvrtcCreateProgram: *const fn (*Prog, [*:0]const u8, ?[*:0]const u8, c_int, ?[*]const [*:0]const u8, ?[*]const [*:0]const u8) callconv(.c) Result,
    nvrtcDestroyProgram: *const fn (*Prog) callconv(.c) Result,
    nvrtcCompileProgram: *const fn (Prog, c_int, ?[*]const [*:0]const u8) callconv(.c) Result,
    nvrtcGetProgramLogSize: *const fn (Prog, *usize) callconv(.c) Result,
    nvrtcGetProgramLog: *const fn (Prog, [*]u8) callconv(.c) Result,
    nvrtcGetCUBINSize: *const fn (Prog, *usize) callconv(.c) Result,
    nvrtcGetCUBIN: *const fn (Prog, [*]u8) callconv(.c) Result,
    nvrtcGetNumSupportedArchs: ?*const fn (*c_int) callconv(.c) Result,
    nvrtcGetSupportedArchs: ?*const fn ([*]c_int) callconv(.c) Result,
};

const status_not_loaded: i32 = -1;
const status_bad_arg: i32 = -3;

var mutex: std.Thread.Mutex = .{};
var table: Api = undefined;
var loaded: bool = false;

fn api() ?*const Api {
    return if (@atomicLoad(bool, &loaded, .acquire)) &table else null;
}

fn fail(r: Result, comptime name: []const u8) i32 {
    const text = if (api()) |a| (if (a.nvrtcGetErrorString(r)) |p| std.mem.span(p) else "unknown") else "unknown";
    return err.set(r, "{s}: {s} [code {d}]", .{ name, text, r });
}

fn not_loaded() i32 {
    return err.set(status_not_loaded, "NVRTC not loaded: call ng_nvrtc_load first", .{});
}

/// Opens the first loadable NVRTC among `paths` (NUL-separated candidates, `len` bytes) and
/// resolves its symbols; once loaded, later calls return 0. The error lists every failed try.
/// `preload` (NUL-separated, `preload_len` bytes) names libraries opened first, best effort: the
/// pip wheel's libnvrtc-builtins.so.X.Y, which libnvrtc finds by soname but has no RUNPATH for.
export fn ng_nvrtc_load(paths: [*]const u8, len: u64, preload: [*]const u8, preload_len: u64) i32 {
    mutex.lock();
    defer mutex.unlock();
    if (loaded) return 0;
    dl.preload(preload, @intCast(preload_len));
    const handle = dl.open_first("NVRTC (libnvrtc)", paths, @intCast(len)) orelse return status_not_loaded;
    if (dl.resolve(Api, handle, &table)) |missing| {
        return err.set(status_not_loaded, "NVRTC: symbol {s} not found in the loaded libnvrtc", .{missing});
    }
    @atomicStore(bool, &loaded, true, .release);
    return 0;
}

/// Writes NVRTC's version (major, minor) into out[0], out[1].
export fn ng_nvrtc_version(out: *[2]i32) i32 {
    const a = api() orelse return not_loaded();
    var major: c_int = 0;
    var minor: c_int = 0;
    const r = a.nvrtcVersion(&major, &minor);
    if (r != 0) return fail(r, "nvrtcVersion");
    out[0] = major;
    out[1] = minor;
    return 0;
}

/// Writes up to `cap` supported SM architectures (e.g. 90) into `out`, their count into count[0].
export fn ng_nvrtc_supported_archs(out: [*]i32, cap: u64, count: *i32) i32 {
    const a = api() orelse return not_loaded();
    const num_fn = a.nvrtcGetNumSupportedArchs orelse {
        count.* = 0;
        return 0;
    };
    var n: c_int = 0;
    var r = num_fn(&n);
    if (r != 0) return fail(r, "nvrtcGetNumSupportedArchs");
    var buf: [256]c_int = undefined;
    if (n > buf.len) n = buf.len;
    r = a.nvrtcGetSupportedArchs.?(&buf);
    if (r != 0) return fail(r, "nvrtcGetSupportedArchs");
    const k: usize = @min(@as(usize, @intCast(n)), @as(usize, @intCast(cap)));
    for (0..k) |i| out[i] = buf[i];
    count.* = @intCast(k);
    return 0;
}

/// Creates a program from NUL-terminated `source` named `name`; its handle goes into out[0].
export fn ng_nvrtc_create(source: [*:0]const u8, name: [*:0]const u8, out: *u64) i32 {
    const a = api() orelse return not_loaded();
    var p: Prog = null;
    const r = a.nvrtcCreateProgram(&p, source, name, 0, null, null);
    if (r != 0) return fail(r, "nvrtcCreateProgram");
    out.* = @intFromPtr(p);
    return 0;
}

/// Compiles a program with `count` options given NUL-separated in `opts` (`len` bytes). On
/// NVRTC_ERROR_COMPILATION (6) the program's log holds the compiler's messages.
export fn ng_nvrtc_compile(prog: u64, opts: [*]const u8, len: u64, count: u32) i32 {
    const a = api() orelse return not_loaded();
    var ptrs: [64][*:0]const u8 = undefined;
    if (!dl.split_strings(opts, @intCast(len), count, &ptrs)) {
        return err.set(status_bad_arg, "nvrtcCompileProgram: {d} options do not fit the {d}-byte list (64 at most)", .{ count, len });
    }
    const r = a.nvrtcCompileProgram(@ptrFromInt(prog), @intCast(count), &ptrs);
    if (r != 0) return fail(r, "nvrtcCompileProgram");
    return 0;
}

/// Writes the size of the program's compile log (with its terminating NUL) into out[0].
export fn ng_nvrtc_log_size(prog: u64, out: *u64) i32 {
    const a = api() orelse return not_loaded();
    var n: usize = 0;
    const r = a.nvrtcGetProgramLogSize(@ptrFromInt(prog), &n);
    if (r != 0) return fail(r, "nvrtcGetProgramLogSize");
    out.* = n;
    return 0;
}

/// Copies the compile log into `out`, which must hold ng_nvrtc_log_size bytes.
export fn ng_nvrtc_log(prog: u64, out: [*]u8) i32 {
    const a = api() orelse return not_loaded();
    const r = a.nvrtcGetProgramLog(@ptrFromInt(prog), out);
    if (r != 0) return fail(r, "nvrtcGetProgramLog");
    return 0;
}

/// Writes the size of the compiled CUBIN into out[0].
export fn ng_nvrtc_cubin_size(prog: u64, out: *u64) i32 {
    const a = api() orelse return not_loaded();
    var n: usize = 0;
    const r = a.nvrtcGetCUBINSize(@ptrFromInt(prog), &n);
    if (r != 0) return fail(r, "nvrtcGetCUBINSize");
    out.* = n;
    return 0;
}

/// Copies the CUBIN into `out`, which must hold ng_nvrtc_cubin_size bytes.
export fn ng_nvrtc_cubin(prog: u64, out: [*]u8) i32 {
    const a = api() orelse return not_loaded();
    const r = a.nvrtcGetCUBIN(@ptrFromInt(prog), out);
    if (r != 0) return fail(r, "nvrtcGetCUBIN");
    return 0;
}

/// Destroys a program from ng_nvrtc_create.
export fn ng_nvrtc_destroy(prog: u64) i32 {
    const a = api() orelse return not_loaded();
    var p: Prog = @ptrFromInt(prog);
    const r = a.nvrtcDestroyProgram(&p);
    if (r != 0) return fail(r, "nvrtcDestroyProgram");
    return 0;
}
