/**
 * The one reference of paged attention for the tests of both backends: a random problem (pools
 * of random content, a shuffled block table, ragged cached lengths and new rows, a decode step or
 * a packed prefill with padding rows) and its expected result in f64 (the pools after the append,
 * and every owned row's output).
 */

import type { AttentionArgs, Buf, KvLayer } from "../../src/backend/backend.ts";

/** What a case is made of. */
export interface PagedSpec {
  H: number;
  D: number;
  block_size: number;
  /** Positions each sequence holds at most (its block-table row covers them). */
  max_len: number;
  /** Cached positions per sequence. */
  lengths: number[];
  /** New rows per sequence (a decode step: 0 or 1 each). */
  counts: number[];
  decode: boolean;
  /** Padding rows after the last sequence's (prefill only). */
  padding?: number;
}

/** A paged attention problem. */
export interface PagedCase extends PagedSpec {
  B: number;
  C: number;
  num_blocks: number;
  max_blocks: number;
  /** Token rows: B for a decode step, else the sequences' rows plus the padding. */
  rows: number;
  /** (B + 1) row offsets (prefill). */
  seq_start: Int32Array;
  /** Per row: its sequence (-1 for padding) and position (prefill). */
  row_seq: Int32Array;
  positions: Int32Array;
  /** (B, max_blocks) block ids: each sequence's blocks, shuffled across the pool. */
  table: Int32Array;
  /** (rows, 3C) q|k|v; the pools (num_blocks, H, block_size, D) before the step. */
  qkv: Float32Array;
  k: Float32Array;
  v: Float32Array;
}

/** A random case for `spec`, drawing from `r` (uniform in [0, 1)). */
export function make_paged_case(spec: PagedSpec, r: () => number): PagedCase {
  const B = spec.lengths.length, C = spec.H * spec.D;
  const max_blocks = Math.ceil(spec.max_len / spec.block_size);
  const num_blocks = B * max_blocks + 3; // a few blocks no sequence uses
  const ids = Array.from({ length: num_blocks }, (_, i) => i);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  const table = new Int32Array(B * max_blocks).fill(-1);
  let next = 0;
  for (let b = 0; b < B; b++) {
    const used = Math.ceil((spec.lengths[b] + spec.counts[b]) / spec.block_size);
    for (let i = 0; i < used; i++) table[b * max_blocks + i] = ids[next++];
    for (let i = used; i < max_blocks; i++) table[b * max_blocks + i] = 0; // unused entries stay in range
  }
  const rows = spec.decode ? B : spec.counts.reduce((a, n) => a + n, 0) + (spec.padding ?? 0);
  const seq_start = new Int32Array(B + 1),
    row_seq = new Int32Array(rows).fill(-1),
    positions = new Int32Array(rows);
  if (!spec.decode) {
    let row = 0;
    for (let b = 0; b < B; b++) {
      seq_start[b] = row;
      for (let t = 0; t < spec.counts[b]; t++, row++) {
        row_seq[row] = b;
        positions[row] = spec.lengths[b] + t;
      }
    }
    seq_start[B] = row;
  }
  const rand = (n: number) => Float32Array.from({ length: n }, () => r() * 2 - 1);
  const pool = num_blocks * spec.H * spec.block_size * spec.D;
  return {
    ...spec,
    B,
    C,
    num_blocks,
    max_blocks,
    rows,
    seq_start,
    row_seq,
    positions,
    table,
    qkv: rand(rows * 3 * C),
    k: rand(pool),
    v: rand(pool),
  };
}

/** Offset of position p of head h of sequence b in a pool. */
export function pool_row(c: PagedCase, b: number, h: number, p: number): number {
  const blk = c.table[b * c.max_blocks + Math.floor(p / c.block_size)];
  return ((blk * c.H + h) * c.block_size + (p % c.block_size)) * c.D;
}

/** The rows sequence b owns in `c`. */
export function owned_rows(c: PagedCase, b: number): number[] {
  if (c.decode) return c.counts[b] ? [b] : [];
  return Array.from({ length: c.counts[b] }, (_, t) => c.seq_start[b] + t);
}

/**
 * The expected result: the pools after the append, and each owned row's output (rows not owned:
 * NaN, except a decode step's idle sequence, whose row is zeros).
 */
export function attention_reference(c: PagedCase): { out: Float64Array; k: Float32Array; v: Float32Array } {
  const { H, D, C } = c;
  const k = c.k.slice(), v = c.v.slice();
  for (let b = 0; b < c.B; b++) {
    owned_rows(c, b).forEach((row, t) => {
      for (let h = 0; h < H; h++) {
        const dst = pool_row(c, b, h, c.lengths[b] + t);
        for (let d = 0; d < D; d++) {
          k[dst + d] = c.qkv[row * 3 * C + C + h * D + d];
          v[dst + d] = c.qkv[row * 3 * C + 2 * C + h * D + d];
        }
      }
    });
  }
  const out = new Float64Array(c.rows * C).fill(NaN);
  const scale = 1 / Math.sqrt(D);
  for (let b = 0; b < c.B; b++) {
    if (c.decode && c.counts[b] === 0) out.fill(0, b * C, (b + 1) * C);
    owned_rows(c, b).forEach((row, t) => {
      const n_keys = c.lengths[b] + t + 1;
      for (let h = 0; h < H; h++) {
        const s = new Float64Array(n_keys);
        let m = -Infinity;
        for (let j = 0; j < n_keys; j++) {
          const kr = pool_row(c, b, h, j);
          let a = 0;
          for (let d = 0; d < D; d++) a += c.qkv[row * 3 * C + h * D + d] * k[kr + d];
          s[j] = a * scale;
          m = Math.max(m, s[j]);
        }
        let z = 0;
        for (let j = 0; j < n_keys; j++) z += s[j] = Math.exp(s[j] - m);
        for (let d = 0; d < D; d++) {
          let o = 0;
          for (let j = 0; j < n_keys; j++) o += s[j] * v[pool_row(c, b, h, j) + d];
          out[row * C + h * D + d] = o / z;
        }
      }
    });
  }
  return { out, k, v };
}

/** The device buffers of a case's attention call. */
export interface PagedBufs {
  out: Buf;
  qkv: Buf;
  cache: KvLayer;
  table: Buf;
  lengths: Buf;
  n_new: Buf;
  seq_start: Buf;
  row_seq: Buf;
  positions: Buf;
}

/** A case's attention call over its buffers: a decode step or a packed prefill, as the case says. */
export function paged_attention_args(c: PagedCase, b: PagedBufs): AttentionArgs {
  return {
    out: b.out,
    qkv: b.qkv,
    cache: b.cache,
    layout: {
      num_blocks: c.num_blocks,
      block_size: c.block_size,
      n_head: c.H,
      head_dim: c.D,
      max_blocks: c.max_blocks,
    },
    block_table: b.table,
    lengths: b.lengths,
    B: c.B,
    ...(c.decode ? { n_new: b.n_new, max_len: c.max_len } : {
      seq_start: b.seq_start,
      row_seq: b.row_seq,
      positions: b.positions,
      rows: c.rows,
      max_seq_rows: Math.max(1, ...c.counts),
    }),
  };
}
