//! logprobs: log-softmax values of chosen tokens and each row's most likely tokens, from f32
//! logits (rows of V values, ld apart). For row r with w = 1 + 2 * top_n floats of output:
//! out[r*w] = log_softmax(row)[targets[r]] (NaN for a target < 0), then top_n (id, logprob) pairs,
//! the most likely first, the lowest id first on ties. Logprobs are of the model's own distribution
//! (no temperature), as OpenAI's API reports them.
const std = @import("std");
const err = @import("../err.zig");
const pool = @import("pool.zig");

/// The most alternatives per row.
pub const max_top_n: usize = 20;

const Job = struct {
    out: [*]f32,
    logits: [*]const f32,
    targets: [*]const i32,
    V: usize,
    ld: usize,
    top_n: usize,
};

fn task(j: *const Job, r: usize, _: usize) void {
    const x = j.logits + r * j.ld;
    var m: f32 = -std.math.inf(f32);
    for (0..j.V) |i| m = @max(m, x[i]);
    var sum: f64 = 0;
    for (0..j.V) |i| sum += @exp(@as(f64, x[i] - m));
    const lse: f32 = m + @as(f32, @floatCast(@log(sum)));
    const w = 1 + 2 * j.top_n;
    const o = j.out + r * w;
    const t = j.targets[r];
    o[0] = if (t >= 0) x[@intCast(t)] - lse else std.math.nan(f32);
    if (j.top_n == 0) return;
    var ids: [max_top_n]usize = undefined;
    var n: usize = 0;
    for (0..j.V) |i| {
        // Insert i into the sorted top list (descending value, ascending id).
        if (n == j.top_n and x[i] <= x[ids[n - 1]]) continue;
        var k = if (n < j.top_n) n else n - 1;
        while (k > 0 and x[ids[k - 1]] < x[i]) : (k -= 1) ids[k] = ids[k - 1];
        ids[k] = i;
        if (n < j.top_n) n += 1;
    }
    for (0..j.top_n) |k| {
        o[1 + 2 * k] = @floatFromInt(ids[k]);
        o[2 + 2 * k] = x[ids[k]] - lse;
    }
}

/// Log-probabilities of `rows` rows (see the file comment); fails when top_n > max_top_n or
/// V < top_n, or a target is >= V.
export fn ng_cpu_logprobs(out: u64, logits: u64, targets: u64, rows: u32, V: u32, ld: u32, top_n: u32) i32 {
    if (top_n > max_top_n) return err.set(1, "ng_cpu_logprobs: top_n {d} is above {d}", .{ top_n, max_top_n });
    if (V == 0 or V < top_n or ld < V) return err.set(1, "ng_cpu_logprobs: V {d}, ld {d}, top_n {d} do not fit", .{ V, ld, top_n });
    if (rows == 0) return 0;
    const tg: [*]const i32 = @ptrFromInt(targets);
    for (0..rows) |r| {
        if (tg[r] >= V) return err.set(1, "ng_cpu_logprobs: row {d} target {d} is not below V {d}", .{ r, tg[r], V });
    }
    const j = Job{ .out = @ptrFromInt(out), .logits = @ptrFromInt(logits), .targets = tg, .V = V, .ld = ld, .top_n = top_n };
    pool.run_typed(Job, rows, &j, task);
    return 0;
}
