//! Causal self-attention over a paged KV cache, with the cache append (see AttentionArgs in
//! src/backend/backend.ts). qkv rows are [q | k | v]; a layer's K and V pools are
//! (num_blocks, n_head, block_size, D), and position p of sequence b lives in pool block
//! block_table[b * max_blocks + p / block_size], row p % block_size.
//!
//! Sequence b owns query rows start_b .. start_b + n_b - 1 at positions lengths[b] + t: with
//! seq_start given (a packed prefill) start_b = seq_start[b] and n_b = seq_start[b+1] - start_b;
//! without it (a decode step) start_b = b and n_b = n_new[b] (0 or 1), and a sequence with n_b = 0
//! gets a zero output row. First the k and v of every owned row are written to the pools; then each
//! query attends to positions 0..lengths[b]+t with an online (flash-style) softmax in f32 over
//! blocks of keys gathered into per-worker scratch. Tasks are (sequence, head, block of queries).
//!
//! With scale pools (an int8 KV cache) the pools hold int8 values and k_scale / v_scale one f32
//! scale per (block, head, row): a row is appended as round(x / s) with s = max |x| / 127, and
//! read back as q * s when gathered.
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
/// Query rows per task.
const query_block: usize = 8;

const Job = struct {
    out: [*]f32,
    qkv: [*]const f32,
    /// Pool addresses: f32 rows, or int8 rows when the scales are set.
    k_pool: usize,
    v_pool: usize,
    k_scale: ?[*]f32,
    v_scale: ?[*]f32,
    table: [*]const i32,
    lengths: [*]const i32,
    n_new: ?[*]const i32,
    seq_start: ?[*]const i32,
    B: usize,
    H: usize,
    D: usize,
    block_size: usize,
    max_blocks: usize,
    q_blocks: usize,
    scale: f32,
    scratch: []f32,
    scratch_per_worker: usize,
    n_scratch: usize,

    fn start(j: *const Job, b: usize) usize {
        return if (j.seq_start) |s| @intCast(s[b]) else b;
    }
    fn count(j: *const Job, b: usize) usize {
        if (j.seq_start) |s| return @intCast(s[b + 1] - s[b]);
        return @intCast(j.n_new.?[b]);
    }
    /// Offset (in floats) of position p's row of head h of sequence b in a pool.
    fn row(j: *const Job, b: usize, h: usize, p: usize) usize {
        const blk: usize = @intCast(j.table[b * j.max_blocks + p / j.block_size]);
        return ((blk * j.H + h) * j.block_size + p % j.block_size) * j.D;
    }
};

/// Writes D values at element offset r of a pool (f32, or int8 with its row's scale).
fn put_row(pool_addr: usize, scale: ?[*]f32, r: usize, src: [*]const f32, D: usize) void {
    if (scale) |sc| {
        const q: [*]i8 = @ptrFromInt(pool_addr);
        var m: f32 = 0;
        for (0..D) |d| m = @max(m, @abs(src[d]));
        const s = m / 127.0;
        sc[r / D] = s;
        for (0..D) |d| q[r + d] = if (s == 0) 0 else @intFromFloat(@max(-127.0, @min(127.0, @round(src[d] / s))));
    } else {
        const f: [*]f32 = @ptrFromInt(pool_addr);
        @memcpy(f[r .. r + D], src[0..D]);
    }
}

/// Value d of the row at element offset r of a pool.
inline fn get(pool_addr: usize, scale: ?[*]const f32, r: usize, d: usize, D: usize) f32 {
    if (scale) |sc| {
        const q: [*]const i8 = @ptrFromInt(pool_addr);
        return @as(f32, @floatFromInt(q[r + d])) * sc[r / D];
    }
    const f: [*]const f32 = @ptrFromInt(pool_addr);
    return f[r + d];
}

/// Cache append of sequence b's rows.
fn append_task(j: *const Job, b: usize, _: usize) void {
    const C = j.H * j.D;
    const len: usize = @intCast(j.lengths[b]);
    const s = j.start(b);
    for (0..j.count(b)) |t| {
        const src = j.qkv + (s + t) * 3 * C;
        for (0..j.H) |h| {
            const dst = j.row(b, h, len + t);
            put_row(j.k_pool, j.k_scale, dst, src + C + h * j.D, j.D);
            put_row(j.v_pool, j.v_scale, dst, src + 2 * C + h * j.D, j.D);
        }
    }
}

fn round_up(x: usize, m: usize) usize {
    return (x + m - 1) / m * m;
}

/// Per-worker scratch, in floats: q and acc (QB x Dp), scores (QB x KB), K^T block (Dp x KB), V block (KB x D).
fn scratch_floats(D: usize) usize {
    const dp = round_up(D, L);
    return 2 * query_block * dp + query_block * key_block + dp * key_block + key_block * D;
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
            const r = v + kk * D;
            inline for (0..nv) |c| a[c] = @mulAdd(F32v, pv, vec.load(r + c * L), a[c]);
        }
    } else {
        for (0..n) |kk| {
            const pv: F32v = @splat(p[kk]);
            const r = v + kk * D;
            inline for (0..nv - 1) |c| a[c] = @mulAdd(F32v, pv, vec.load(r + c * L), a[c]);
            a[nv - 1] = @mulAdd(F32v, pv, vec.load_partial(r + (nv - 1) * L, tail), a[nv - 1]);
        }
    }
    inline for (0..nv) |c| vec.store(acc + c * L, a[c]);
}

/// The same for any D, with the accumulators in memory (acc is padded to whole vectors).
fn pv_update_any(acc: [*]f32, corr: f32, p: [*]const f32, v: [*]const f32, n: usize, D: usize) void {
    for (0..D) |d| acc[d] *= corr;
    for (0..n) |kk| {
        const pv: F32v = @splat(p[kk]);
        const r = v + kk * D;
        var d: usize = 0;
        while (d + L <= D) : (d += L) vec.store(acc + d, @mulAdd(F32v, pv, vec.load(r + d), vec.load(acc + d)));
        while (d < D) : (d += 1) acc[d] += p[kk] * r[d];
    }
}

const max_nv: usize = 8;

/// Queries t0..t0+nq of sequence b, head h: flash-style online softmax over blocks of
/// `key_block` keys, each block's K (transposed) and V rows gathered from the pools into scratch.
fn attend_queries(j: *const Job, ws: []f32, b: usize, h: usize, t0: usize, nq: usize) void {
    const D = j.D;
    const dp = round_up(D, L);
    const C = j.H * D;
    const len: usize = @intCast(j.lengths[b]);
    const s0 = j.start(b);
    const q = ws.ptr;
    const acc = q + query_block * dp;
    const s = acc + query_block * dp;
    const kt = s + query_block * key_block;
    const vb = kt + dp * key_block;
    var m: [query_block]f32 = undefined;
    var l: [query_block]f32 = undefined;
    for (0..nq) |qi| {
        const src = j.qkv + (s0 + t0 + qi) * 3 * C + h * D;
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
        for (0..nk) |kk| {
            const r = j.row(b, h, k0 + kk);
            if (j.v_scale == null) {
                const vp: [*]const f32 = @ptrFromInt(j.v_pool);
                @memcpy(vb[kk * D .. (kk + 1) * D], vp[r .. r + D]);
            } else for (0..D) |d| {
                vb[kk * D + d] = get(j.v_pool, j.v_scale, r, d, D);
            }
            for (0..D) |d| kt[d * key_block + kk] = get(j.k_pool, j.k_scale, r, d, D);
        }
        for (0..D) |d| @memset(kt[d * key_block + nk .. (d + 1) * key_block], 0);
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
            if (nv <= max_nv) {
                switch (nv) {
                    inline 1...max_nv => |cnv| pv_update(cnv, a, corr, sq, vb, n, D),
                    else => unreachable,
                }
            } else pv_update_any(a, corr, sq, vb, n, D);
        }
    }
    for (0..nq) |qi| {
        const out = j.out + (s0 + t0 + qi) * C + h * D;
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
    const n = j.count(b);
    const t0 = qb * query_block;
    if (n == 0 and qb == 0 and j.seq_start == null) {
        const out = j.out + b * j.H * j.D + h * j.D;
        @memset(out[0..j.D], 0);
    }
    if (t0 < n) {
        const ws = j.scratch[worker * j.scratch_per_worker .. (worker + 1) * j.scratch_per_worker];
        attend_queries(j, ws, b, h, t0, @min(t0 + query_block, n) - t0);
    }
}

/// Appends the k, v of every row a sequence owns into its pool blocks and computes causal
/// attention for those rows (see the file comment). `seq_start` 0: one row per sequence, n_new[b]
/// of them (a decode step); else B + 1 row offsets (a packed prefill) and n_new unused.
/// k_scale / v_scale 0: f32 pools; else int8 pools with one f32 scale per (block, head, row).
/// Fails (writing nothing) when a length or count is negative, a sequence runs past its
/// max_blocks * block_size positions or names a block outside the pool, or head_dim is 0 or above
/// max_head_dim.
export fn ng_cpu_attention(out: u64, qkv: u64, k_pool: u64, v_pool: u64, k_scale: u64, v_scale: u64, block_table: u64, lengths: u64, n_new: u64, seq_start: u64, B: u32, n_head: u32, head_dim: u32, block_size: u32, max_blocks: u32, num_blocks: u32) i32 {
    if (head_dim == 0 or head_dim > max_head_dim) {
        return err.set(1, "ng_cpu_attention: head_dim {d} is not in 1..{d}", .{ head_dim, max_head_dim });
    }
    if (block_size == 0) return err.set(1, "ng_cpu_attention: block_size is 0", .{});
    if (B == 0 or n_head == 0) return 0;
    var j = Job{
        .out = @ptrFromInt(out),
        .qkv = @ptrFromInt(qkv),
        .k_pool = k_pool,
        .v_pool = v_pool,
        .k_scale = if (k_scale == 0) null else @ptrFromInt(k_scale),
        .v_scale = if (v_scale == 0) null else @ptrFromInt(v_scale),
        .table = @ptrFromInt(block_table),
        .lengths = @ptrFromInt(lengths),
        .n_new = if (n_new == 0) null else @ptrFromInt(n_new),
        .seq_start = if (seq_start == 0) null else @ptrFromInt(seq_start),
        .B = B,
        .H = n_head,
        .D = head_dim,
        .block_size = block_size,
        .max_blocks = max_blocks,
        .q_blocks = 1,
        .scale = 1.0 / @sqrt(@as(f32, @floatFromInt(head_dim))),
        .scratch = &.{},
        .scratch_per_worker = 0,
        .n_scratch = 0,
    };
    if (j.seq_start == null and j.n_new == null) return err.set(1, "ng_cpu_attention: needs n_new or seq_start", .{});
    if ((j.k_scale == null) != (j.v_scale == null)) return err.set(1, "ng_cpu_attention: k_scale and v_scale go together", .{});
    var longest: usize = 0;
    const cap = @as(i64, max_blocks) * block_size;
    for (0..B) |b| {
        const len = j.lengths[b];
        const n: i64 = if (j.seq_start) |s| @as(i64, s[b + 1]) - s[b] else j.n_new.?[b];
        if (len < 0) return err.set(1, "ng_cpu_attention: sequence {d} has negative length {d}", .{ b, len });
        if (n < 0 or (j.seq_start == null and n > 1)) return err.set(1, "ng_cpu_attention: sequence {d} owns {d} rows", .{ b, n });
        if (len + n > cap) return err.set(1, "ng_cpu_attention: sequence {d} reaches position {d}, past its {d} cache positions", .{ b, len + n, cap });
        const used: usize = @intCast(@divFloor(len + n + block_size - 1, block_size));
        for (0..used) |i| {
            const blk = j.table[b * max_blocks + i];
            if (blk < 0 or blk >= num_blocks) return err.set(1, "ng_cpu_attention: sequence {d} block {d} is {d}, outside the pool of {d}", .{ b, i, blk, num_blocks });
        }
        longest = @max(longest, @as(usize, @intCast(n)));
    }
    j.q_blocks = @max(1, (longest + query_block - 1) / query_block);
    const threads = pool.threads();
    const per_worker = scratch_floats(head_dim);
    const scratch = std.heap.c_allocator.alloc(f32, threads * per_worker) catch
        return err.set(2, "ng_cpu_attention: out of memory for {d} x {d} floats of scratch", .{ threads, per_worker });
    defer std.heap.c_allocator.free(scratch);
    j.scratch = scratch;
    j.scratch_per_worker = per_worker;
    j.n_scratch = threads;
    if (longest * B * head_dim * n_head < 65536) {
        for (0..B) |b| append_task(&j, b, 0);
    } else pool.run_typed(Job, B, &j, append_task);
    pool.run_typed(Job, @as(usize, B) * n_head * j.q_blocks, &j, attend_task);
    return 0;
}
