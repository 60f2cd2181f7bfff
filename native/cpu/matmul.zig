//! out[M, N] = act(x[M, K] @ w[N, K]^T + bias[N]), or out += x @ w^T + bias (accumulate).
//! With per-row scales, w is int8 (weight-only quantization, W8A16's CPU reference): each dot
//! product runs over the int8 values widened to f32 and is multiplied by its row's scale before
//! the bias.
//!
//! Both operands are read along K, so each output is a dot product of two contiguous rows. The
//! work is split into (row block of x) x (row block of w) tasks; a task walks groups of 4 w rows
//! and, for each, every group of 4 x rows of its block, keeping a 4 x 4 tile of vector
//! accumulators in registers (FMA via @mulAdd). The x block is sized to stay in L2, so each w row
//! is read from memory once per x block (once in all for decode, M = 1).
const std = @import("std");
const err = @import("../err.zig");
const pool = @import("pool.zig");
const vec = @import("vec.zig");

const F32v = vec.F32v;
const L = vec.lanes;
/// Register tile: rows of x by rows of w.
const MR: usize = 4;
const NR: usize = 4;

/// Epilogue activation codes shared with TypeScript.
pub const Act = enum(u32) { none = 0, gelu_erf = 1, gelu_tanh = 2 };

const Job = struct {
    out: [*]f32,
    x: [*]const f32,
    /// Address of the (N, K) weights: f32 (scale null) or int8 (scale set).
    w: usize,
    scale: ?[*]const f32,
    bias: ?[*]const f32,
    M: usize,
    N: usize,
    K: usize,
    act: Act,
    accumulate: bool,
    /// Rows of x per task block and rows of w per task block (multiples of MR / NR).
    mb: usize,
    nb: usize,
    n_nblocks: usize,
};

inline fn load_n(comptime n: usize, p: [*]const f32) @Vector(n, f32) {
    return @as(*align(1) const [n]f32, @ptrCast(p)).*;
}

inline fn store_n(comptime n: usize, p: [*]f32, v: @Vector(n, f32)) void {
    @as(*align(1) [n]f32, @ptrCast(p)).* = v;
}

inline fn epilogue(comptime nr: usize, j: *const Job, m: usize, n0: usize, r: @Vector(nr, f32)) void {
    var v = r;
    if (j.bias) |b| v += load_n(nr, b + n0);
    const o = j.out + m * j.N + n0;
    if (j.accumulate) v += load_n(nr, o);
    store_n(nr, o, v);
}

/// Applies the activation in place to out[m_lo..m_hi, n_lo..n_hi] with full-width vectors
/// (done per task block after its tiles, while the block is still in cache).
fn activate_block(j: *const Job, m_lo: usize, m_hi: usize, n_lo: usize, n_hi: usize) void {
    switch (j.act) {
        .none => {},
        inline else => |a| for (m_lo..m_hi) |m| {
            const o = j.out + m * j.N;
            var n = n_lo;
            while (n + L <= n_hi) : (n += L) vec.store(o + n, act_v(a, vec.load(o + n)));
            if (n < n_hi) vec.store_partial(o + n, act_v(a, vec.load_partial(o + n, n_hi - n)), n_hi - n);
        },
    }
}

inline fn act_v(comptime a: Act, v: F32v) F32v {
    return switch (a) {
        .none => v,
        .gelu_erf => vec.gelu_erf(v),
        .gelu_tanh => vec.gelu_tanh(v),
    };
}

inline fn load_i8(p: [*]const i8) F32v {
    const v: @Vector(L, i8) = @as(*align(1) const [L]i8, @ptrCast(p)).*;
    return @floatFromInt(v);
}

inline fn load_i8_partial(p: [*]const i8, n: usize) F32v {
    var a: [L]i8 = @splat(0);
    for (0..n) |i| a[i] = p[i];
    const v: @Vector(L, i8) = a;
    return @floatFromInt(v);
}

/// Computes the mr x nr outputs at rows m0.., columns n0.. (q: int8 weights with row scales).
fn tile(comptime q8: bool, comptime mr: usize, comptime nr: usize, j: *const Job, m0: usize, n0: usize) void {
    const K = j.K;
    var acc: [mr][nr]F32v = undefined;
    inline for (0..mr) |i| inline for (0..nr) |q| {
        acc[i][q] = @splat(0);
    };
    var xp: [mr][*]const f32 = undefined;
    inline for (0..mr) |i| xp[i] = j.x + (m0 + i) * K;
    const W = if (q8) i8 else f32;
    const w: [*]const W = @ptrFromInt(j.w);
    var k: usize = 0;
    while (k + L <= K) : (k += L) {
        var xv: [mr]F32v = undefined;
        inline for (0..mr) |i| xv[i] = vec.load(xp[i] + k);
        inline for (0..nr) |q| {
            const wv = if (q8) load_i8(w + (n0 + q) * K + k) else vec.load(w + (n0 + q) * K + k);
            inline for (0..mr) |i| acc[i][q] = @mulAdd(F32v, xv[i], wv, acc[i][q]);
        }
    }
    if (k < K) {
        const rest = K - k;
        var xv: [mr]F32v = undefined;
        inline for (0..mr) |i| xv[i] = vec.load_partial(xp[i] + k, rest);
        inline for (0..nr) |q| {
            const wv = if (q8) load_i8_partial(w + (n0 + q) * K + k, rest) else vec.load_partial(w + (n0 + q) * K + k, rest);
            inline for (0..mr) |i| acc[i][q] = @mulAdd(F32v, xv[i], wv, acc[i][q]);
        }
    }
    inline for (0..mr) |i| {
        var r: @Vector(nr, f32) = undefined;
        inline for (0..nr) |q| r[q] = @reduce(.Add, acc[i][q]);
        if (q8) r *= load_n(nr, j.scale.? + n0);
        epilogue(nr, j, m0 + i, n0, r);
    }
}

fn tile_any(comptime q8: bool, mr: usize, nr: usize, j: *const Job, m0: usize, n0: usize) void {
    switch (mr) {
        inline 1...MR => |cm| switch (nr) {
            inline 1...NR => |cn| tile(q8, cm, cn, j, m0, n0),
            else => unreachable,
        },
        else => unreachable,
    }
}

fn task(j: *const Job, t: usize, _: usize) void {
    if (j.scale != null) task_q(true, j, t) else task_q(false, j, t);
}

fn task_q(comptime q8: bool, j: *const Job, t: usize) void {
    const m_lo = (t / j.n_nblocks) * j.mb;
    const n_lo = (t % j.n_nblocks) * j.nb;
    const m_hi = @min(m_lo + j.mb, j.M);
    const n_hi = @min(n_lo + j.nb, j.N);
    var n0 = n_lo;
    while (n0 < n_hi) : (n0 += NR) {
        const nr = @min(NR, n_hi - n0);
        var m0 = m_lo;
        if (nr == NR) {
            while (m0 + MR <= m_hi) : (m0 += MR) tile(q8, MR, NR, j, m0, n0);
        }
        while (m0 < m_hi) : (m0 += MR) tile_any(q8, @min(MR, m_hi - m0), nr, j, m0, n0);
    }
    activate_block(j, m_lo, m_hi, n_lo, n_hi);
}

fn round_up(x: usize, m: usize) usize {
    return (x + m - 1) / m * m;
}

/// Matrix multiply with bias and activation epilogue (see MatmulArgs in src/backend/backend.ts).
/// act: 0 none, 1 gelu_erf, 2 gelu_tanh; accumulate != 0 adds into out (act must be 0);
/// bias 0 = none; scale 0 = f32 weights, else w is int8 (N, K) and scale (N) f32 per-row scales.
/// out must not overlap x or w.
export fn ng_cpu_matmul(out: u64, x: u64, w: u64, scale: u64, bias: u64, M: u32, N: u32, K: u32, act: u32, accumulate: u32) i32 {
    const a = std.meta.intToEnum(Act, act) catch
        return err.set(1, "ng_cpu_matmul: act {d} is not an activation code (0 none, 1 gelu_erf, 2 gelu_tanh)", .{act});
    if (accumulate != 0 and a != .none) {
        return err.set(1, "ng_cpu_matmul: accumulate needs act none, got {s}", .{@tagName(a)});
    }
    if (M == 0 or N == 0) return 0;
    if (K == 0) return err.set(1, "ng_cpu_matmul: K is 0 (M {d}, N {d})", .{ M, N });
    const threads = pool.threads();
    // Keep an x block within ~512 KiB of L2.
    const mb_cap = @max(MR, (131072 / @as(usize, K)) / MR * MR);
    const n_mblocks = (M + mb_cap - 1) / mb_cap;
    const mb = round_up((M + n_mblocks - 1) / n_mblocks, MR);
    // Enough w blocks that all threads get several tasks.
    const want_tasks = threads * 6;
    const n_nblocks_want = @max(1, (want_tasks + n_mblocks - 1) / n_mblocks);
    const nb = @max(NR * 2, round_up((N + n_nblocks_want - 1) / n_nblocks_want, NR));
    const n_nblocks = (N + nb - 1) / nb;
    const j = Job{
        .out = @ptrFromInt(out),
        .x = @ptrFromInt(x),
        .w = w,
        .scale = if (scale == 0) null else @ptrFromInt(scale),
        .bias = if (bias == 0) null else @ptrFromInt(bias),
        .M = M,
        .N = N,
        .K = K,
        .act = a,
        .accumulate = accumulate != 0,
        .mb = mb,
        .nb = nb,
        .n_nblocks = n_nblocks,
    };
    pool.run_typed(Job, n_mblocks * n_nblocks, &j, task);
    return 0;
}

test "matmul matches a naive loop on odd shapes" {
    const M = 7;
    const N = 9;
    const K = 37;
    var prng = std.Random.DefaultPrng.init(1);
    const r = prng.random();
    var xs: [M * K]f32 = undefined;
    var ws: [N * K]f32 = undefined;
    var bs: [N]f32 = undefined;
    for (&xs) |*v| v.* = r.float(f32) - 0.5;
    for (&ws) |*v| v.* = r.float(f32) - 0.5;
    for (&bs) |*v| v.* = r.float(f32) - 0.5;
    var out: [M * N]f32 = undefined;
    try std.testing.expectEqual(@as(i32, 0), ng_cpu_matmul(@intFromPtr(&out), @intFromPtr(&xs), @intFromPtr(&ws), 0, @intFromPtr(&bs), M, N, K, 0, 0));
    for (0..M) |m| for (0..N) |n| {
        var s: f64 = bs[n];
        for (0..K) |k| s += @as(f64, xs[m * K + k]) * ws[n * K + k];
        try std.testing.expectApproxEqAbs(@as(f32, @floatCast(s)), out[m * N + n], 1e-5);
    };
}

test "int8 weights with row scales match the dequantized f32 product" {
    const M = 5;
    const N = 11;
    const K = 45;
    var prng = std.Random.DefaultPrng.init(2);
    const r = prng.random();
    var xs: [M * K]f32 = undefined;
    var qs: [N * K]i8 = undefined;
    var ws: [N * K]f32 = undefined;
    var sc: [N]f32 = undefined;
    var bs: [N]f32 = undefined;
    for (&xs) |*v| v.* = r.float(f32) - 0.5;
    for (&sc) |*v| v.* = r.float(f32) * 0.01;
    for (&bs) |*v| v.* = r.float(f32) - 0.5;
    for (0..N) |n| for (0..K) |k| {
        qs[n * K + k] = r.intRangeAtMost(i8, -127, 127);
        ws[n * K + k] = @as(f32, @floatFromInt(qs[n * K + k])) * sc[n];
    };
    var out_q: [M * N]f32 = undefined;
    var out_f: [M * N]f32 = undefined;
    try std.testing.expectEqual(@as(i32, 0), ng_cpu_matmul(@intFromPtr(&out_q), @intFromPtr(&xs), @intFromPtr(&qs), @intFromPtr(&sc), @intFromPtr(&bs), M, N, K, 1, 0));
    try std.testing.expectEqual(@as(i32, 0), ng_cpu_matmul(@intFromPtr(&out_f), @intFromPtr(&xs), @intFromPtr(&ws), 0, @intFromPtr(&bs), M, N, K, 1, 0));
    for (0..M * N) |i| try std.testing.expectApproxEqAbs(out_f[i], out_q[i], 1e-5);
}
