//! Causal self-attention over a KV cache, with the cache append (see AttentionArgs in
//! src/backend/backend.ts). qkv is (B*T, 3C) = [q | k | v]; caches are (B, n_head, max_T, D).
//!
//! First k and v of every valid slot (t < n_new[b]) are copied to the caches at position
//! lengths[b] + t; then each valid query attends to positions 0..lengths[b]+t with an online
//! (streaming, flash-style) softmax in f32 over blocks of keys. Tasks are (sequence, head, block
//! of query slots); each worker has a small scratch (queries, accumulators, scores, a transposed
//! key block) allocated per call. Padding rows of out are zeroed.
const std = @import("std");
const err = @import("../err.zig");
const pool = @import("pool.zig");
const vec = @import("vec.zig");

const F32v = vec.F32v;
const L = vec.lanes;
/// The largest head_dim supported.
pub const max_head_dim: usize = 512;
/// Keys scored per block of the online softmax.
const key_block: usize = 64;
/// Query slots per task.
const query_block: usize = 8;

const Job = struct {
    out: [*]f32,
    qkv: [*]const f32,
    k_cache: [*]f32,
    v_cache: [*]f32,
    lengths: [*]const i32,
    n_new: [*]const i32,
    B: usize,
    T: usize,
    H: usize,
    D: usize,
    max_T: usize,
    q_blocks: usize,
    scale: f32,
    scratch: []f32,
    scratch_per_worker: usize,
    n_scratch: usize,
};

/// Cache append: one task per (b, t) slot.
fn append_task(j: *const Job, r: usize, _: usize) void {
    const b = r / j.T;
    const t = r % j.T;
    if (t >= @as(usize, @intCast(j.n_new[b]))) return;
    const C = j.H * j.D;
    const pos = @as(usize, @intCast(j.lengths[b])) + t;
    const row = j.qkv + r * 3 * C;
    for (0..j.H) |h| {
        const dst = ((b * j.H + h) * j.max_T + pos) * j.D;
        @memcpy(j.k_cache[dst .. dst + j.D], row[C + h * j.D .. C + (h + 1) * j.D]);
        @memcpy(j.v_cache[dst .. dst + j.D], row[2 * C + h * j.D .. 2 * C + (h + 1) * j.D]);
    }
}

fn round_up(x: usize, m: usize) usize {
    return (x + m - 1) / m * m;
}

/// Per-worker scratch, in floats: q (QB x Dp), acc (QB x Dp), scores (QB x KB), K^T block (Dp x KB).
fn scratch_floats(D: usize) usize {
    const dp = round_up(D, L);
    return 2 * query_block * dp + query_block * key_block + dp * key_block;
}

/// acc[0..D] = acc * corr + sum_kk p[kk] * v[kk*D .. kk*D+D] for kk < n, with the accumulators
/// in registers (nv vectors; the last one may be partial).
fn pv_update(comptime nv: usize, acc: [*]f32, corr: f32, p: [*]const f32, v: [*]const f32, n: usize, D: usize) void {
    const tail = D - (nv - 1) * L;
    var a: [nv]F32v = undefined;
    const cv: F32v = @splat(corr);
    inline for (0..nv) |c| a[c] = vec.load(acc + c * L) * cv;
    if (tail == L) {
        for (0..n) |kk| {
            const pv: F32v = @splat(p[kk]);
            const row = v + kk * D;
            inline for (0..nv) |c| a[c] = @mulAdd(F32v, pv, vec.load(row + c * L), a[c]);
        }
    } else {
        for (0..n) |kk| {
            const pv: F32v = @splat(p[kk]);
            const row = v + kk * D;
            inline for (0..nv - 1) |c| a[c] = @mulAdd(F32v, pv, vec.load(row + c * L), a[c]);
            a[nv - 1] = @mulAdd(F32v, pv, vec.load_partial(row + (nv - 1) * L, tail), a[nv - 1]);
        }
    }
    inline for (0..nv) |c| vec.store(acc + c * L, a[c]);
}

/// The same for any D, with the accumulators in memory (acc is padded to whole vectors).
fn pv_update_any(acc: [*]f32, corr: f32, p: [*]const f32, v: [*]const f32, n: usize, D: usize) void {
    for (0..D) |d| acc[d] *= corr;
    for (0..n) |kk| {
        const pv: F32v = @splat(p[kk]);
        const row = v + kk * D;
        var d: usize = 0;
        while (d + L <= D) : (d += L) vec.store(acc + d, @mulAdd(F32v, pv, vec.load(row + d), vec.load(acc + d)));
        while (d < D) : (d += 1) acc[d] += p[kk] * row[d];
    }
}

const max_nv: usize = 8;

/// Queries t0..t0+nq of sequence b, head h (all valid): flash-style online softmax over blocks
/// of `key_block` keys. With several queries the key block is transposed once into scratch so
/// that each query scores it with broadcast FMAs; a single query (decode) uses dot products.
fn attend_queries(j: *const Job, ws: []f32, b: usize, h: usize, t0: usize, nq: usize) void {
    const D = j.D;
    const dp = round_up(D, L);
    const C = j.H * D;
    const len: usize = @intCast(j.lengths[b]);
    const q = ws.ptr;
    const acc = q + query_block * dp;
    const s = acc + query_block * dp;
    const kt = s + query_block * key_block;
    const kc = j.k_cache + (b * j.H + h) * j.max_T * D;
    const vc = j.v_cache + (b * j.H + h) * j.max_T * D;
    var m: [query_block]f32 = undefined;
    var l: [query_block]f32 = undefined;
    for (0..nq) |qi| {
        const src = j.qkv + (b * j.T + t0 + qi) * 3 * C + h * D;
        for (0..D) |d| q[qi * dp + d] = src[d] * j.scale;
        @memset(q[qi * dp + D .. qi * dp + dp], 0);
        @memset(acc[qi * dp .. qi * dp + dp], 0);
        m[qi] = -std.math.inf(f32);
        l[qi] = 0;
    }
    // Query qi sees keys 0..len+t0+qi (inclusive).
    const n_keys = len + t0 + nq;
    const nv = dp / L;
    var k0: usize = 0;
    while (k0 < n_keys) : (k0 += key_block) {
        const nk = @min(key_block, n_keys - k0);
        if (nq == 1) {
            for (0..nk) |kk| s[kk] = vec.dot(q, kc + (k0 + kk) * D, D);
        } else {
            for (0..D) |d| {
                for (0..nk) |kk| kt[d * key_block + kk] = kc[(k0 + kk) * D + d];
                @memset(kt[d * key_block + nk .. (d + 1) * key_block], 0);
            }
            for (0..nq) |qi| {
                if (k0 > len + t0 + qi) continue;
                var sv: [key_block / L]F32v = undefined;
                inline for (0..key_block / L) |c| sv[c] = @splat(0);
                for (0..D) |d| {
                    const qd: F32v = @splat(q[qi * dp + d]);
                    inline for (0..key_block / L) |c| sv[c] = @mulAdd(F32v, qd, vec.load(kt + d * key_block + c * L), sv[c]);
                }
                inline for (0..key_block / L) |c| vec.store(s + qi * key_block + c * L, sv[c]);
            }
        }
        for (0..nq) |qi| {
            const limit = len + t0 + qi;
            if (k0 > limit) continue;
            const n = @min(nk, limit - k0 + 1);
            const sq = s + qi * key_block;
            var bm: f32 = -std.math.inf(f32);
            for (0..n) |kk| bm = @max(bm, sq[kk]);
            const new_m = @max(m[qi], bm);
            const corr: f32 = if (m[qi] == -std.math.inf(f32)) 0 else @exp(m[qi] - new_m);
            const mv: F32v = @splat(new_m);
            var kk: usize = 0;
            while (kk < n) : (kk += L) vec.store(sq + kk, vec.exp(vec.load(sq + kk) - mv));
            var bsum: f32 = 0;
            for (0..n) |i| bsum += sq[i];
            l[qi] = l[qi] * corr + bsum;
            m[qi] = new_m;
            const a = acc + qi * dp;
            const v = vc + k0 * D;
            if (nv <= max_nv) {
                switch (nv) {
                    inline 1...max_nv => |cnv| pv_update(cnv, a, corr, sq, v, n, D),
                    else => unreachable,
                }
            } else pv_update_any(a, corr, sq, v, n, D);
        }
    }
    for (0..nq) |qi| {
        const out = j.out + (b * j.T + t0 + qi) * C + h * D;
        const inv = 1.0 / l[qi];
        for (0..D) |d| out[d] = acc[qi * dp + d] * inv;
    }
}

fn attend_task(j: *const Job, task: usize, worker: usize) void {
    std.debug.assert(worker < j.n_scratch);
    // Later query blocks attend to more keys: hand them out first.
    const qb = j.q_blocks - 1 - task % j.q_blocks;
    const bh = task / j.q_blocks;
    const b = bh / j.H;
    const h = bh % j.H;
    const C = j.H * j.D;
    const n_new: usize = @intCast(j.n_new[b]);
    const t0 = qb * query_block;
    const t1 = @min(t0 + query_block, j.T);
    for (@min(@max(t0, n_new), t1)..t1) |t| {
        const out = j.out + (b * j.T + t) * C + h * j.D;
        @memset(out[0..j.D], 0);
    }
    if (t0 < n_new) {
        const ws = j.scratch[worker * j.scratch_per_worker .. (worker + 1) * j.scratch_per_worker];
        attend_queries(j, ws, b, h, t0, @min(t1, n_new) - t0);
    }
}

/// Appends k, v of the valid slots to the caches and computes causal attention for them.
/// Fails (writing nothing) when a length or n_new is negative, n_new > T, lengths + n_new > max_T,
/// or head_dim is 0 or above max_head_dim.
export fn ng_cpu_attention(out: u64, qkv: u64, k_cache: u64, v_cache: u64, lengths: u64, n_new: u64, B: u32, T: u32, n_head: u32, head_dim: u32, max_T: u32) i32 {
    if (head_dim == 0 or head_dim > max_head_dim) {
        return err.set(1, "ng_cpu_attention: head_dim {d} is not in 1..{d}", .{ head_dim, max_head_dim });
    }
    if (B == 0 or T == 0 or n_head == 0) return 0;
    const len: [*]const i32 = @ptrFromInt(lengths);
    const nn: [*]const i32 = @ptrFromInt(n_new);
    for (0..B) |b| {
        if (len[b] < 0) return err.set(1, "ng_cpu_attention: sequence {d} has negative length {d}", .{ b, len[b] });
        if (nn[b] < 0 or nn[b] > T) return err.set(1, "ng_cpu_attention: sequence {d} has n_new {d} outside 0..T {d}", .{ b, nn[b], T });
        if (@as(i64, len[b]) + nn[b] > max_T) {
            return err.set(1, "ng_cpu_attention: sequence {d} has lengths {d} + n_new {d} > max_T {d}", .{ b, len[b], nn[b], max_T });
        }
    }
    const q_blocks = (@as(usize, T) + query_block - 1) / query_block;
    const threads = pool.threads();
    const per_worker = scratch_floats(head_dim);
    const scratch = std.heap.c_allocator.alloc(f32, threads * per_worker) catch
        return err.set(2, "ng_cpu_attention: out of memory for {d} x {d} floats of scratch", .{ threads, per_worker });
    defer std.heap.c_allocator.free(scratch);
    const j = Job{
        .out = @ptrFromInt(out),
        .qkv = @ptrFromInt(qkv),
        .k_cache = @ptrFromInt(k_cache),
        .v_cache = @ptrFromInt(v_cache),
        .lengths = len,
        .n_new = nn,
        .B = B,
        .T = T,
        .H = n_head,
        .D = head_dim,
        .max_T = max_T,
        .q_blocks = q_blocks,
        .scale = 1.0 / @sqrt(@as(f32, @floatFromInt(head_dim))),
        .scratch = scratch,
        .scratch_per_worker = per_worker,
        .n_scratch = threads,
    };
    const rows = @as(usize, B) * T;
    if (rows * head_dim * n_head < 65536) {
        for (0..rows) |r| append_task(&j, r, 0);
    } else pool.run_typed(Job, rows, &j, append_task);
    pool.run_typed(Job, @as(usize, B) * n_head * q_blocks, &j, attend_task);
    return 0;
}
