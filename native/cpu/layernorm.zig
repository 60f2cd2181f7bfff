//! LayerNorm over the last dimension: out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * weight + bias,
//! with the biased variance, in two passes in f32. out may be the same buffer as x.
const std = @import("std");
const err = @import("../err.zig");
const pool = @import("pool.zig");
const vec = @import("vec.zig");

const F32v = vec.F32v;
const L = vec.lanes;

const Job = struct {
    out: [*]f32,
    x: [*]const f32,
    weight: [*]const f32,
    bias: ?[*]const f32,
    rows: usize,
    C: usize,
    eps: f32,
    rows_per_task: usize,
};

fn row_sum(x: [*]const f32, C: usize) f32 {
    var acc: F32v = @splat(0);
    var c: usize = 0;
    while (c + L <= C) : (c += L) acc += vec.load(x + c);
    var s = @reduce(.Add, acc);
    while (c < C) : (c += 1) s += x[c];
    return s;
}

fn row_sq_dev(x: [*]const f32, C: usize, mean: f32) f32 {
    const m: F32v = @splat(mean);
    var acc: F32v = @splat(0);
    var c: usize = 0;
    while (c + L <= C) : (c += L) {
        const d = vec.load(x + c) - m;
        acc += d * d;
    }
    var s = @reduce(.Add, acc);
    while (c < C) : (c += 1) s += (x[c] - mean) * (x[c] - mean);
    return s;
}

fn task(j: *const Job, t: usize, _: usize) void {
    const r0 = t * j.rows_per_task;
    const r1 = @min(r0 + j.rows_per_task, j.rows);
    const C = j.C;
    const n: f32 = @floatFromInt(C);
    for (r0..r1) |r| {
        const x = j.x + r * C;
        const o = j.out + r * C;
        const mean = row_sum(x, C) / n;
        const variance = row_sq_dev(x, C, mean) / n;
        const rstd = 1.0 / @sqrt(variance + j.eps);
        const m: F32v = @splat(mean);
        const s: F32v = @splat(rstd);
        var c: usize = 0;
        while (c + L <= C) : (c += L) {
            var y = (vec.load(x + c) - m) * s * vec.load(j.weight + c);
            if (j.bias) |bias| y += vec.load(bias + c);
            vec.store(o + c, y);
        }
        while (c < C) : (c += 1) {
            var y = (x[c] - mean) * rstd * j.weight[c];
            if (j.bias) |bias| y += bias[c];
            o[c] = y;
        }
    }
}

/// LayerNorm of `rows` rows of C floats (see LayerNormArgs); `bias` 0 means no bias.
export fn ng_cpu_layernorm(out: u64, x: u64, weight: u64, bias: u64, rows: u32, C: u32, eps: f32) i32 {
    if (!(eps >= 0) or !std.math.isFinite(eps)) return err.set(1, "ng_cpu_layernorm: eps {d} is not a finite number >= 0", .{eps});
    if (rows == 0 or C == 0) return 0;
    const threads = pool.threads();
    const per = pool.chunk_size(rows, threads * 4, 4);
    const j = Job{
        .out = @ptrFromInt(out),
        .x = @ptrFromInt(x),
        .weight = @ptrFromInt(weight),
        .bias = if (bias == 0) null else @ptrFromInt(bias),
        .rows = rows,
        .C = C,
        .eps = eps,
        .rows_per_task = per,
    };
    pool.run_typed(Job, (rows + per - 1) / per, &j, task);
    return 0;
}
