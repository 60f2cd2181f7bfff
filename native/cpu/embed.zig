//! Token + position embedding: out[r, :] = wte[tokens[r], :] + wpe[min(positions[r], max_pos-1), :].
const std = @import("std");
const err = @import("../err.zig");
const pool = @import("pool.zig");
const vec = @import("vec.zig");

const Job = struct {
    out: [*]f32,
    tokens: [*]const i32,
    positions: [*]const i32,
    wte: [*]const f32,
    wpe: [*]const f32,
    C: usize,
    max_pos: usize,
    rows_per_task: usize,
    rows: usize,
};

fn task(j: *const Job, t: usize, _: usize) void {
    const r0 = t * j.rows_per_task;
    const r1 = @min(r0 + j.rows_per_task, j.rows);
    for (r0..r1) |r| {
        const pos = @min(@as(usize, @intCast(j.positions[r])), j.max_pos - 1);
        const tok: usize = @intCast(j.tokens[r]);
        const o = j.out + r * j.C;
        const e = j.wte + tok * j.C;
        const p = j.wpe + pos * j.C;
        var c: usize = 0;
        while (c + vec.lanes <= j.C) : (c += vec.lanes) vec.store(o + c, vec.load(e + c) + vec.load(p + c));
        while (c < j.C) : (c += 1) o[c] = e[c] + p[c];
    }
}

/// Embeds `rows` token rows (see EmbedArgs in src/backend/backend.ts). Positions past max_pos-1
/// (padding rows) are clamped. Fails on a negative token id or position, or an id >= vocab.
export fn ng_cpu_embed(out: u64, tokens: u64, positions: u64, wte: u64, wpe: u64, rows: u32, C: u32, max_pos: u32, vocab: u32) i32 {
    if (max_pos == 0) return err.set(1, "ng_cpu_embed: max_pos is 0", .{});
    if (rows == 0 or C == 0) return 0;
    const tok: [*]const i32 = @ptrFromInt(tokens);
    const pos: [*]const i32 = @ptrFromInt(positions);
    for (0..rows) |r| {
        if (pos[r] < 0) return err.set(1, "ng_cpu_embed: row {d} has negative position {d}", .{ r, pos[r] });
        if (tok[r] < 0 or tok[r] >= vocab) return err.set(1, "ng_cpu_embed: row {d} has token id {d} outside 0..{d}", .{ r, tok[r], vocab });
    }
    const threads = pool.threads();
    const per = pool.chunk_size(rows, threads * 4, 8);
    const j = Job{
        .out = @ptrFromInt(out),
        .tokens = tok,
        .positions = pos,
        .wte = @ptrFromInt(wte),
        .wpe = @ptrFromInt(wpe),
        .C = C,
        .max_pos = max_pos,
        .rows_per_task = per,
        .rows = rows,
    };
    pool.run_typed(Job, (rows + per - 1) / per, &j, task);
    return 0;
}
