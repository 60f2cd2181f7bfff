//! SIMD helpers shared by the CPU kernels: the native f32 vector, loads and stores, dot products,
//! and vectorised exp / erf / tanh-based GELU in f32 (branch-free, so they work on whole vectors).
const std = @import("std");

/// f32 lanes per native vector (16 with AVX-512, 8 with AVX2).
pub const lanes: usize = std.simd.suggestVectorLength(f32) orelse 4;
/// The native f32 vector.
pub const F32v = @Vector(lanes, f32);

/// Loads `lanes` floats from `p` (no alignment needed).
pub inline fn load(p: [*]const f32) F32v {
    return @as(*align(1) const [lanes]f32, @ptrCast(p)).*;
}

/// Stores a vector to `p` (no alignment needed).
pub inline fn store(p: [*]f32, v: F32v) void {
    @as(*align(1) [lanes]f32, @ptrCast(p)).* = v;
}

/// Loads `n` < lanes floats, zero-filling the rest.
pub inline fn load_partial(p: [*]const f32, n: usize) F32v {
    var tmp: [lanes]f32 = @splat(0);
    for (0..n) |i| tmp[i] = p[i];
    return tmp;
}

/// Stores the first `n` < lanes lanes of `v` to `p`.
pub inline fn store_partial(p: [*]f32, v: F32v, n: usize) void {
    const tmp: [lanes]f32 = v;
    for (0..n) |i| p[i] = tmp[i];
}

/// Sum of a[0..n] * b[0..n].
pub fn dot(a: [*]const f32, b: [*]const f32, n: usize) f32 {
    var acc0: F32v = @splat(0);
    var acc1: F32v = @splat(0);
    var i: usize = 0;
    while (i + 2 * lanes <= n) : (i += 2 * lanes) {
        acc0 = @mulAdd(F32v, load(a + i), load(b + i), acc0);
        acc1 = @mulAdd(F32v, load(a + i + lanes), load(b + i + lanes), acc1);
    }
    if (i + lanes <= n) {
        acc0 = @mulAdd(F32v, load(a + i), load(b + i), acc0);
        i += lanes;
    }
    var s = @reduce(.Add, acc0 + acc1);
    while (i < n) : (i += 1) s += a[i] * b[i];
    return s;
}

fn splat(comptime T: type, c: f32) T {
    return @splat(c);
}

/// e^x for each lane (Cephes expf polynomial, ~1 ulp); the input is clamped to [-87, 88], so
/// very negative inputs give ~1.6e-38 rather than 0 and large ones ~1.7e38 rather than inf.
pub inline fn exp(x_in: anytype) @TypeOf(x_in) {
    const T = @TypeOf(x_in);
    const n_lanes = @typeInfo(T).vector.len;
    const I = @Vector(n_lanes, i32);
    const x = @min(@max(x_in, splat(T, -87.0)), splat(T, 88.0));
    const n = @round(x * splat(T, std.math.log2e));
    var r = x - n * splat(T, 0.693359375);
    r = r - n * splat(T, -2.12194440e-4);
    var p = splat(T, 1.9875691500e-4);
    p = p * r + splat(T, 1.3981999507e-3);
    p = p * r + splat(T, 8.3334519073e-3);
    p = p * r + splat(T, 4.1665795894e-2);
    p = p * r + splat(T, 1.6666665459e-1);
    p = p * r + splat(T, 5.0000001201e-1);
    p = p * r * r + r + splat(T, 1.0);
    const ni: I = @intFromFloat(n);
    const bits: I = (ni + @as(I, @splat(127))) << @splat(23);
    return p * @as(T, @bitCast(bits));
}

/// erf(x) for each lane, absolute error about 1e-7: erfc(|x|) = t exp(-x^2 + P(t)),
/// t = 1 / (1 + |x|/2) (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7), for
/// |x| >= 0.5 and an odd Taylor/minimax polynomial below, where cancellation would dominate.
pub inline fn erf(x: anytype) @TypeOf(x) {
    const T = @TypeOf(x);
    const z = @abs(x);
    const t = splat(T, 1.0) / (splat(T, 1.0) + splat(T, 0.5) * z);
    var p = splat(T, 0.17087277);
    p = p * t + splat(T, -0.82215223);
    p = p * t + splat(T, 1.48851587);
    p = p * t + splat(T, -1.13520398);
    p = p * t + splat(T, 0.27886807);
    p = p * t + splat(T, -0.18628806);
    p = p * t + splat(T, 0.09678418);
    p = p * t + splat(T, 0.37409196);
    p = p * t + splat(T, 1.00002368);
    p = p * t + splat(T, -1.26551223);
    const erfc = t * exp(p - z * z);
    const big = splat(T, 1.0) - erfc;
    // Small |x|: Maclaurin series of erf to x^13 (truncation < 2e-9 at |x| = 0.5).
    const small = x * small_erf_poly(T, x * x);
    const signed_big = @select(f32, x < splat(T, 0.0), -big, big);
    return @select(f32, z < splat(T, 0.5), small, signed_big);
}

/// erf(x)/x as a polynomial in x^2 (Maclaurin coefficients 2/sqrt(pi) (-1)^n / (n! (2n+1))).
inline fn small_erf_poly(comptime T: type, x2: T) T {
    const c = 1.1283791670955126; // 2/sqrt(pi)
    var s = splat(T, c * (1.0 / (720.0 * 13.0)));
    s = s * x2 + splat(T, c * (-1.0 / (120.0 * 11.0)));
    s = s * x2 + splat(T, c * (1.0 / (24.0 * 9.0)));
    s = s * x2 + splat(T, c * (-1.0 / (6.0 * 7.0)));
    s = s * x2 + splat(T, c * (1.0 / (2.0 * 5.0)));
    s = s * x2 + splat(T, c * (-1.0 / 3.0));
    s = s * x2 + splat(T, c);
    return s;
}

/// GELU with the exact erf: 0.5 x (1 + erf(x / sqrt 2)).
pub inline fn gelu_erf(x: anytype) @TypeOf(x) {
    const T = @TypeOf(x);
    return splat(T, 0.5) * x * (splat(T, 1.0) + erf(x * splat(T, std.math.sqrt1_2)));
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
pub inline fn gelu_tanh(x: anytype) @TypeOf(x) {
    const T = @TypeOf(x);
    const y = splat(T, 0.7978845608028654) * (x + splat(T, 0.044715) * x * x * x);
    // (1 + tanh(y)) / 2 = sigmoid(2y), computed from e = exp(-2|y|) <= 1: no overflow, no cancellation.
    const e = exp(splat(T, -2.0) * @abs(y));
    const r = splat(T, 1.0) / (splat(T, 1.0) + e);
    return x * @select(f32, y >= splat(T, 0.0), r, e * r);
}

/// erf in f64 by the everywhere-convergent series e^{-x^2} sum 2^n x^{2n+1} / (2n+1)!!, for tests.
pub fn erf_f64(x: f64) f64 {
    if (x > 6) return 1;
    if (x < -6) return -1;
    var term = x;
    var sum = x;
    var n: f64 = 0;
    while (@abs(term) > 1e-17 * @abs(sum)) {
        n += 1;
        term *= 2 * x * x / (2 * n + 1);
        sum += term;
    }
    return 2.0 / @sqrt(std.math.pi) * @exp(-x * x) * sum;
}

test "vector exp is accurate" {
    var x: f32 = -80;
    while (x < 80) : (x += 0.37) {
        const v: F32v = @splat(x);
        const got = exp(v)[0];
        const want = @exp(@as(f64, x));
        try std.testing.expect(@abs(got - want) <= 3e-7 * want);
    }
}

test "vector erf and gelu match f64 references" {
    var max_err: f64 = 0;
    var x: f32 = -7;
    while (x < 7) : (x += 0.001) {
        const v: @Vector(1, f32) = @splat(x);
        const got: f64 = erf(v)[0];
        max_err = @max(max_err, @abs(got - erf_f64(x)));
        const g: f64 = gelu_erf(v)[0];
        const g_want = 0.5 * @as(f64, x) * (1 + erf_f64(@as(f64, x) / std.math.sqrt2));
        try std.testing.expect(@abs(g - g_want) <= 3e-7 * @max(1.0, @abs(g_want)));
        const xd: f64 = x;
        const th_want = 0.5 * xd * (1 + std.math.tanh(0.7978845608028654 * (xd + 0.044715 * xd * xd * xd)));
        const th: f64 = gelu_tanh(v)[0];
        try std.testing.expect(@abs(th - th_want) <= 3e-7 * @max(1.0, @abs(th_want)));
    }
    try std.testing.expect(max_err < 2.5e-7);
}
