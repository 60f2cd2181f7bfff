//! Token + position embedding: out[b*T+t, :] = wte[tokens[b*T+t], :] + wpe[min(lengths[b]+t, max_pos-1), :].
const std = @import("std");
const err = @import("../err.zig");
const pool = @import("pool.zig");
const vec = @import("vec.zig");

const Job = struct {
    out: [*]f32,
    tokens: [*]const i32,
    lengths: [*]const i32,
    wte: [*]const f32,
    wpe: [*]const f32,
    T: usize,
    C: usize,
    max_pos: usize,
    rows_per_task: usize,
    rows: usize,
};

fn task(j: *const Job, t: usize, _: usize) void {
    const r0 = t * j.rows_per_task;
    const r1 = @min(r0 + j.rows_per_task, j.rows);
    for (r0..r1) |r| {
        const b = r / j.T;
        const slot = r % j.T;
        const pos = @min(@as(usize, @intCast(j.lengths[b])) + slot, j.max_pos - 1);
        const tok: usize = @intCast(j.tokens[r]);
        const o = j.out + r * j.C;
        const e = j.wte + tok * j.C;
        const p = j.wpe + pos * j.C;
        var c: usize = 0;
        while (c + vec.lanes <= j.C) : (c += vec.lanes) vec.store(o + c, vec.load(e + c) + vec.load(p + c));
        while (c < j.C) : (c += 1) o[c] = e[c] + p[c];
    }
}

/// Embeds B*T token slots (see EmbedArgs in src/backend/backend.ts). Positions past max_pos-1
/// (padding slots) are clamped. Fails on a negative token id or length.
export fn ng_cpu_embed(out: u64, tokens: u64, lengths: u64, wte: u64, wpe: u64, B: u32, T: u32, C: u32, max_pos: u32) i32 {
    if (max_pos == 0) return err.set(1, "ng_cpu_embed: max_pos is 0", .{});
    const rows = @as(usize, B) * T;
    if (rows == 0 or C == 0) return 0;
    const tok: [*]const i32 = @ptrFromInt(tokens);
    const len: [*]const i32 = @ptrFromInt(lengths);
    for (0..B) |b| {
        if (len[b] < 0) return err.set(1, "ng_cpu_embed: sequence {d} has negative length {d}", .{ b, len[b] });
    }
    for (0..rows) |r| {
        if (tok[r] < 0) return err.set(1, "ng_cpu_embed: token slot {d} (sequence {d}, slot {d}) has negative id {d}", .{ r, r / T, r % T, tok[r] });
    }
    const threads = pool.threads();
    const per = pool.chunk_size(rows, threads * 4, 8);
    const j = Job{
        .out = @ptrFromInt(out),
        .tokens = tok,
        .lengths = len,
        .wte = @ptrFromInt(wte),
        .wpe = @ptrFromInt(wpe),
        .T = T,
        .C = C,
        .max_pos = max_pos,
        .rows_per_task = per,
        .rows = rows,
    };
    pool.run_typed(Job, (rows + per - 1) / per, &j, task);
    return 0;
}
