//! Element type conversion between f32, f16 and bf16 (any to any), optionally transposing a
//! matrix. Used by the CPU backend for weights and by the CUDA backend to fill a host staging
//! buffer, so it is not CPU-backend specific. f32 -> f16 and f32 -> bf16 round to nearest even
//! (NaN stays NaN, overflow goes to inf); f16 -> bf16 and bf16 -> f16 go through f32 (exact),
//! so they are rounded once.
const std = @import("std");
const err = @import("../err.zig");
const pool = @import("pool.zig");

/// Element type codes shared with TypeScript: 0 = f32, 1 = f16, 2 = bf16.
pub const DType = enum(u32) { f32 = 0, f16 = 1, bf16 = 2 };

fn size_of(d: DType) usize {
    return if (d == .f32) 4 else 2;
}

/// Rounds an f32 to bf16 bits, nearest even; NaN becomes a quiet NaN.
pub fn f32_to_bf16(x: f32) u16 {
    const bits: u32 = @bitCast(x);
    if (std.math.isNan(x)) return @intCast((bits >> 16) | 0x40);
    const rounding: u32 = 0x7fff + ((bits >> 16) & 1);
    return @intCast((bits +% rounding) >> 16);
}

/// Widens bf16 bits to f32 (exact).
pub fn bf16_to_f32(b: u16) f32 {
    return @bitCast(@as(u32, b) << 16);
}

inline fn read_f32(src: [*]const u8, dtype: DType, i: usize) f32 {
    return switch (dtype) {
        .f32 => @as([*]align(1) const f32, @ptrCast(src))[i],
        .f16 => @floatCast(@as([*]align(1) const f16, @ptrCast(src))[i]),
        .bf16 => bf16_to_f32(@as([*]align(1) const u16, @ptrCast(src))[i]),
    };
}

inline fn write_f32(dst: [*]u8, dtype: DType, i: usize, x: f32) void {
    switch (dtype) {
        .f32 => @as([*]align(1) f32, @ptrCast(dst))[i] = x,
        .f16 => @as([*]align(1) f16, @ptrCast(dst))[i] = @floatCast(x),
        .bf16 => @as([*]align(1) u16, @ptrCast(dst))[i] = f32_to_bf16(x),
    }
}

const Job = struct {
    dst: [*]u8,
    src: [*]const u8,
    dst_dtype: DType,
    src_dtype: DType,
    n: usize,
    rows: usize,
    cols: usize,
    chunk: usize,
};

/// Elements per task of a flat conversion; tiles of a transposed one.
const flat_chunk: usize = 1 << 16;
const tile: usize = 32;

fn flat_task(j: *const Job, task: usize, _: usize) void {
    const lo = task * j.chunk;
    const hi = @min(lo + j.chunk, j.n);
    if (j.src_dtype == j.dst_dtype) {
        const s = size_of(j.src_dtype);
        @memcpy(j.dst[lo * s .. hi * s], j.src[lo * s .. hi * s]);
        return;
    }
    switch (j.src_dtype) {
        inline else => |sd| switch (j.dst_dtype) {
            inline else => |dd| for (lo..hi) |i| write_f32(j.dst, dd, i, read_f32(j.src, sd, i)),
        },
    }
}

/// One task = one band of `tile` source rows; dst[c * rows + r] = src[r * cols + c].
fn transpose_task(j: *const Job, task: usize, _: usize) void {
    const r0 = task * tile;
    const r1 = @min(r0 + tile, j.rows);
    switch (j.src_dtype) {
        inline else => |sd| switch (j.dst_dtype) {
            inline else => |dd| {
                var c0: usize = 0;
                while (c0 < j.cols) : (c0 += tile) {
                    const c1 = @min(c0 + tile, j.cols);
                    for (c0..c1) |c| {
                        for (r0..r1) |r| write_f32(j.dst, dd, c * j.rows + r, read_f32(j.src, sd, r * j.cols + c));
                    }
                }
            },
        },
    }
}

fn convert(dst: [*]u8, dst_dtype: u32, src: [*]const u8, src_dtype: u32, n: u64, rows: u64, cols: u64, comptime api: []const u8) i32 {
    const dd = std.meta.intToEnum(DType, dst_dtype) catch
        return err.set(1, api ++ ": dst_dtype {d} is not a dtype code (0 f32, 1 f16, 2 bf16)", .{dst_dtype});
    const sd = std.meta.intToEnum(DType, src_dtype) catch
        return err.set(1, api ++ ": src_dtype {d} is not a dtype code (0 f32, 1 f16, 2 bf16)", .{src_dtype});
    const transposed = rows != 0 or cols != 0;
    if (transposed and (rows == 0 or cols == 0 or rows * cols != n)) {
        return err.set(1, api ++ ": transpose shape ({d}, {d}) does not hold n = {d} elements", .{ rows, cols, n });
    }
    if (n == 0) return 0;
    var j = Job{
        .dst = dst,
        .src = src,
        .dst_dtype = dd,
        .src_dtype = sd,
        .n = @intCast(n),
        .rows = @intCast(rows),
        .cols = @intCast(cols),
        .chunk = flat_chunk,
    };
    if (!transposed) {
        pool.run_typed(Job, (j.n + flat_chunk - 1) / flat_chunk, &j, flat_task);
    } else {
        j.chunk = tile;
        pool.run_typed(Job, (j.rows + tile - 1) / tile, &j, transpose_task);
    }
    return 0;
}

/// Converts `n` elements at host address `src` (dtype code `src_dtype`) into `dst` (`dst_dtype`).
/// With rows * cols > 0 (and = n) the source is a (rows, cols) matrix written transposed as
/// (cols, rows); pass rows = cols = 0 for a flat conversion. Regions must not overlap.
export fn ng_convert(dst: u64, dst_dtype: u32, src: u64, src_dtype: u32, n: u64, rows: u64, cols: u64) i32 {
    if (n > 0 and (dst == 0 or src == 0)) return err.set(1, "ng_convert: null dst or src address", .{});
    return convert(@ptrFromInt(@max(dst, 1)), dst_dtype, @ptrFromInt(@max(src, 1)), src_dtype, n, rows, cols, "ng_convert");
}

/// As ng_convert, but the source is a caller's buffer (a Deno `buffer` argument such as a
/// Uint8Array; no alignment needed) instead of a host address.
export fn ng_convert_buf(dst: u64, dst_dtype: u32, src: ?[*]const u8, src_dtype: u32, n: u64, rows: u64, cols: u64) i32 {
    if (n > 0 and (dst == 0 or src == null)) return err.set(1, "ng_convert_buf: null dst or src buffer", .{});
    const s: [*]const u8 = src orelse @ptrFromInt(1);
    return convert(@ptrFromInt(@max(dst, 1)), dst_dtype, s, src_dtype, n, rows, cols, "ng_convert_buf");
}

test "bf16 rounding is nearest even" {
    try std.testing.expectEqual(@as(u16, 0x3f80), f32_to_bf16(1.0));
    // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
    try std.testing.expectEqual(@as(u16, 0x3f80), f32_to_bf16(1.00390625));
    // 1 + 3 * 2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): goes up.
    try std.testing.expectEqual(@as(u16, 0x3f82), f32_to_bf16(1.01171875));
    try std.testing.expect(std.math.isNan(bf16_to_f32(f32_to_bf16(std.math.nan(f32)))));
    try std.testing.expectEqual(std.math.inf(f32), bf16_to_f32(f32_to_bf16(std.math.floatMax(f32))));
}

test "convert transposes and round-trips" {
    var src: [6]f32 = .{ 1, 2, 3, 4, 5, 6 };
    var half: [6]f16 = undefined;
    var back: [6]f32 = undefined;
    try std.testing.expectEqual(@as(i32, 0), ng_convert(@intFromPtr(&half), 1, @intFromPtr(&src), 0, 6, 2, 3));
    try std.testing.expectEqual(@as(i32, 0), ng_convert(@intFromPtr(&back), 0, @intFromPtr(&half), 1, 6, 0, 0));
    try std.testing.expectEqualSlices(f32, &.{ 1, 4, 2, 5, 3, 6 }, &back);
    try std.testing.expect(ng_convert(@intFromPtr(&back), 0, @intFromPtr(&half), 1, 6, 4, 2) != 0);
    try std.testing.expect(ng_convert(@intFromPtr(&back), 7, @intFromPtr(&half), 1, 6, 0, 0) != 0);
}
