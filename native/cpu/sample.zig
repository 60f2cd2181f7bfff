//! Token sampling from f32 logits (see SampleArgs in src/backend/backend.ts). The CUDA kernel
//! implements the same algorithm, so both backends draw the same tokens for the same seeds.
//!
//! For each sequence b with n_new[b] > 0, row = logits[b*ld .. b*ld+V]:
//!   - temperature <= 0 or top_k == 1: argmax (lowest index on ties).
//!   - else counter = lengths[b] + n_new[b] (u32), key = (seed[2b], seed[2b+1]);
//!     m = max(row), p_i = exp((row_i - m) / temperature) (f32), Z = sum p_i (f64);
//!     k = top_k if 0 < top_k < V else V; P = top_p if 0 < top_p < 1 else off.
//!     pivot = -1; for round r = 0, 1, ...:
//!       u = uniform(philox4x32_10((counter, r, 0, 0), key)[0]) = (x0 >> 8) * 2^-24;
//!       M = sum{p_i : p_i > pivot} (f64, index order: Z in round 0, the last round's mass after);
//!       target = u * M;
//!       j = first i (index order, p_i > pivot) where the running f64 sum > target (else the last such i);
//!       cnt = #{i : p_i > p_j}; mass = sum{p_i : p_i > p_j} (f64, index order);
//!       accept j when cnt < k and (P off or mass < f64(P) * Z); else pivot = p_j.
//!   When top_p is off the mass test is skipped (it always holds mathematically; skipping it keeps
//!   f64 rounding from rejecting a token). This is rejection sampling from the top-k and top-p
//!   renormalised distribution: every rejected j is no more likely than any kept token, and the
//!   candidate set strictly shrinks, so it ends within V rounds.
const std = @import("std");
const err = @import("../err.zig");
const pool = @import("pool.zig");
const philox = @import("philox.zig");

const Job = struct {
    tokens_out: [*]i32,
    logits: [*]const f32,
    lengths: [*]const i32,
    n_new: [*]const i32,
    temperature: [*]const f32,
    top_k: [*]const i32,
    top_p: [*]const f32,
    seed: [*]const u32,
    B: usize,
    V: usize,
    /// Floats between consecutive rows of logits (>= V).
    ld: usize,
    rows_per_task: usize,
    scratch: []f32,
    n_scratch: usize,
    /// Lowest sequence whose logits were not finite (maxInt when none).
    failed: *std.atomic.Value(usize),
};

fn argmax(row: []const f32) usize {
    var best: usize = 0;
    for (row, 0..) |x, i| {
        if (x > row[best]) best = i;
    }
    return best;
}

/// Draws from one row; null when the row's maximum is not finite (NaN or inf logits).
pub fn sample_row(row: []const f32, temperature: f32, top_k: i32, top_p: f32, counter: u32, key: [2]u32, p: []f32) ?usize {
    const V = row.len;
    std.debug.assert(p.len >= V and V > 0);
    if (!(temperature > 0) or top_k == 1) return argmax(row);
    var m = row[0];
    for (row) |x| {
        if (std.math.isNan(x)) return null;
        m = @max(m, x);
    }
    if (!std.math.isFinite(m)) return null;
    var z: f64 = 0;
    for (row, 0..) |x, i| {
        p[i] = @exp((x - m) / temperature);
        z += p[i];
    }
    const k: usize = if (top_k > 0 and top_k < V) @intCast(top_k) else V;
    const p_on = top_p > 0 and top_p < 1;
    const p_mass: f64 = @as(f64, top_p) * z;
    var pivot: f32 = -1;
    // M of round 0 is Z (every p_i > -1); M of a later round is the previous round's `mass`
    // (the same sum over p_i > pivot = p_j, in the same order).
    var total: f64 = z;
    var round: u32 = 0;
    while (true) : (round += 1) {
        const u: f64 = philox.uniform(philox.philox4x32_10(.{ counter, round, 0, 0 }, key)[0]);
        const target = u * total;
        var run: f64 = 0;
        var j: ?usize = null;
        var last: ?usize = null;
        for (p[0..V], 0..) |pi, i| {
            if (!(pi > pivot)) continue;
            run += pi;
            last = i;
            if (run > target) {
                j = i;
                break;
            }
        }
        const pick = j orelse last orelse unreachable; // a rejected pick always leaves a larger p
        const pj = p[pick];
        var cnt: usize = 0;
        var mass: f64 = 0;
        for (p[0..V]) |pi| {
            if (pi > pj) {
                cnt += 1;
                mass += pi;
            }
        }
        if (cnt < k and (!p_on or mass < p_mass)) return pick;
        pivot = pj;
        total = mass;
    }
}

fn task(j: *const Job, t: usize, worker: usize) void {
    std.debug.assert(worker < j.n_scratch);
    const p = j.scratch[worker * j.V .. (worker + 1) * j.V];
    const b0 = t * j.rows_per_task;
    const b1 = @min(b0 + j.rows_per_task, j.B);
    for (b0..b1) |b| {
        if (j.n_new[b] == 0) continue;
        const counter: u32 = @bitCast(j.lengths[b] +% j.n_new[b]);
        const row = j.logits[b * j.ld .. b * j.ld + j.V];
        const key = [2]u32{ j.seed[2 * b], j.seed[2 * b + 1] };
        if (sample_row(row, j.temperature[b], j.top_k[b], j.top_p[b], counter, key, p)) |tok| {
            j.tokens_out[b] = @intCast(tok);
        } else {
            _ = j.failed.fetchMin(b, .monotonic);
        }
    }
}

/// Samples the next token of each of B sequences from f32 logits (B rows of V, `ld` floats apart)
/// into tokens_out (int32).
/// Fails on a negative length or n_new, a NaN temperature or top_p, or non-finite logits (the
/// lowest such sequence is named).
export fn ng_cpu_sample(tokens_out: u64, logits: u64, lengths: u64, n_new: u64, temperature: u64, top_k: u64, top_p: u64, seed: u64, B: u32, V: u32, ld: u32) i32 {
    if (B == 0) return 0;
    if (V == 0) return err.set(1, "ng_cpu_sample: V is 0", .{});
    if (ld < V) return err.set(1, "ng_cpu_sample: row stride {d} < V {d}", .{ ld, V });
    const len: [*]const i32 = @ptrFromInt(lengths);
    const nn: [*]const i32 = @ptrFromInt(n_new);
    const temp: [*]const f32 = @ptrFromInt(temperature);
    const tp: [*]const f32 = @ptrFromInt(top_p);
    for (0..B) |b| {
        if (len[b] < 0) return err.set(1, "ng_cpu_sample: sequence {d} has negative length {d}", .{ b, len[b] });
        if (nn[b] < 0) return err.set(1, "ng_cpu_sample: sequence {d} has negative n_new {d}", .{ b, nn[b] });
        if (std.math.isNan(temp[b])) return err.set(1, "ng_cpu_sample: sequence {d} has temperature NaN", .{b});
        if (std.math.isNan(tp[b])) return err.set(1, "ng_cpu_sample: sequence {d} has top_p NaN", .{b});
    }
    const threads = pool.threads();
    const scratch = std.heap.c_allocator.alloc(f32, threads * @as(usize, V)) catch
        return err.set(2, "ng_cpu_sample: out of memory for {d} x {d} floats of scratch", .{ threads, V });
    defer std.heap.c_allocator.free(scratch);
    var failed = std.atomic.Value(usize).init(std.math.maxInt(usize));
    const per = pool.chunk_size(B, threads * 4, 1);
    const j = Job{
        .tokens_out = @ptrFromInt(tokens_out),
        .logits = @ptrFromInt(logits),
        .lengths = len,
        .n_new = nn,
        .temperature = temp,
        .top_k = @ptrFromInt(top_k),
        .top_p = tp,
        .seed = @ptrFromInt(seed),
        .B = B,
        .V = V,
        .ld = ld,
        .rows_per_task = per,
        .scratch = scratch,
        .n_scratch = threads,
        .failed = &failed,
    };
    pool.run_typed(Job, (@as(usize, B) + per - 1) / per, &j, task);
    const f = failed.load(.monotonic);
    if (f != std.math.maxInt(usize)) {
        return err.set(3, "ng_cpu_sample: sequence {d} has non-finite logits (NaN or inf)", .{f});
    }
    return 0;
}

test "sample_row: greedy, top_k = 1 and a peaked row" {
    const row = [_]f32{ 0.5, 3.0, 3.0, -1.0 };
    var p: [4]f32 = undefined;
    try std.testing.expectEqual(@as(?usize, 1), sample_row(&row, 0, 0, 1, 5, .{ 1, 2 }, &p));
    try std.testing.expectEqual(@as(?usize, 1), sample_row(&row, 1.0, 1, 1, 5, .{ 1, 2 }, &p));
    const peaked = [_]f32{ 0, 100, 0, 0 };
    for (0..50) |c| try std.testing.expectEqual(@as(?usize, 1), sample_row(&peaked, 1.0, 0, 0.9, @intCast(c), .{ 7, 8 }, &p));
    const bad = [_]f32{ 0, std.math.nan(f32), 0, 0 };
    try std.testing.expectEqual(@as(?usize, null), sample_row(&bad, 1.0, 0, 1, 0, .{ 0, 0 }, &p));
}
