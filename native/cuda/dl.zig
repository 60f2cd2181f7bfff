//! Run-time loading of the CUDA libraries with dlopen/dlsym: the library links only libc, so a
//! machine without CUDA still loads it (and the CPU backend still works).
const std = @import("std");
const err = @import("../err.zig");

/// Status for "a library could not be opened or lacks a symbol" (our own, not a CUDA code).
pub const status_not_found: i32 = -1;

/// Text of the last dlerror(), or a fallback.
pub fn dl_error() []const u8 {
    const e = std.c.dlerror() orelse return "unknown dlopen error";
    return std.mem.span(e);
}

/// Opens the first loadable library among `candidates`: NUL-separated paths or names, ending at
/// an empty entry or `len`. On failure sets an error naming `what` and every reason and returns null.
pub fn open_first(what: []const u8, candidates: [*]const u8, len: usize) ?*anyopaque {
    var reasons: [768]u8 = undefined;
    var w: usize = 0;
    var i: usize = 0;
    while (i < len) {
        var j = i;
        while (j < len and candidates[j] != 0) j += 1;
        if (j == i) break;
        var path_z: [512]u8 = undefined;
        const n = @min(j - i, path_z.len - 1);
        @memcpy(path_z[0..n], candidates[i .. i + n]);
        path_z[n] = 0;
        const h = std.c.dlopen(@ptrCast(&path_z), .{ .NOW = true, .GLOBAL = false });
        if (h) |handle| return handle;
        const line = std.fmt.bufPrint(reasons[w..], "{s}{s}", .{ if (w > 0) "; " else "", dl_error() }) catch "";
        w += line.len;
        i = j + 1;
    }
    _ = err.set(status_not_found, "{s} not found: {s}", .{ what, if (w > 0) reasons[0..w] else "no candidates given" });
    return null;
}

/// Opens every library in a NUL-separated list (`len` bytes), ignoring failures; the handles stay
/// open for the life of the process.
pub fn preload(list: [*]const u8, len: usize) void {
    var i: usize = 0;
    while (i < len) {
        var j = i;
        while (j < len and list[j] != 0) j += 1;
        if (j == i) break;
        var path_z: [512]u8 = undefined;
        const n = @min(j - i, path_z.len - 1);
        @memcpy(path_z[0..n], list[i .. i + n]);
        path_z[n] = 0;
        _ = std.c.dlopen(@ptrCast(&path_z), .{ .NOW = true });
        i = j + 1;
    }
}

/// Fills every field of `table` (a struct of function pointers named after their symbols) from
/// `handle`. Optional fields may be missing; returns the name of a missing required one, or null.
pub fn resolve(comptime T: type, handle: *anyopaque, table: *T) ?[]const u8 {
    inline for (std.meta.fields(T)) |f| {
        const sym = std.c.dlsym(handle, f.name ++ "");
        const optional = @typeInfo(f.type) == .optional;
        if (sym) |p| {
            @field(table, f.name) = @ptrCast(@alignCast(p));
        } else if (optional) {
            @field(table, f.name) = null;
        } else {
            return f.name;
        }
    }
    return null;
}

/// Splits a NUL-separated list of `count` strings into `out` as C string pointers.
pub fn split_strings(buf: [*]const u8, len: usize, count: usize, out: [][*:0]const u8) bool {
    if (count > out.len) return false;
    var i: usize = 0;
    var k: usize = 0;
    while (k < count) : (k += 1) {
        if (i >= len) return false;
        out[k] = @ptrCast(buf + i);
        while (i < len and buf[i] != 0) i += 1;
        if (i >= len) return false;
        i += 1;
    }
    return true;
}
