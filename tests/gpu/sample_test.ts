// CUDA sampling: greedy = argmax (lowest index on ties), untouched idle rows, determinism per
// seed and position, agreement with a TypeScript run of the same algorithm, chi-square of sample
// frequencies against the exact renormalised distribution (temperature / top-k / top-p /
// combined; 20000 rows of the same logits with lengths[b] = b), graphs vs no graphs.
import { assert, assertEquals } from "../helpers/assert.ts";
import type { Buf } from "../../src/backend/backend.ts";
import type { CudaBackend } from "../../src/backend/cuda.ts";
import {
  backend,
  gpu_suite,
  philox4x32_10,
  randn,
  read_i32,
  upload_i32,
  upload_raw_f32,
} from "./gpu_helpers.ts";

interface Params {
  temperature: number[];
  top_k: number[];
  top_p: number[];
  /** (lo, hi) per row. */
  seed: number[];
  lengths: number[];
  n_new: number[];
}

interface Bufs {
  tokens: Buf;
  logits: Buf;
  lengths: Buf;
  n_new: Buf;
  temperature: Buf;
  top_k: Buf;
  top_p: Buf;
  seed: Buf;
}

function put(be: CudaBackend, logits: Float32Array, p: Params, init_token = -7): Bufs {
  const B = p.lengths.length;
  const seed = be.alloc(B * 8, "seed");
  be.write(seed, Uint32Array.from(p.seed));
  return {
    tokens: upload_i32(be, new Array(B).fill(init_token), "tokens"),
    logits: upload_raw_f32(be, logits, "logits"),
    lengths: upload_i32(be, p.lengths, "lengths"),
    n_new: upload_i32(be, p.n_new, "n_new"),
    temperature: upload_raw_f32(be, p.temperature, "temperature"),
    top_k: upload_i32(be, p.top_k, "top_k"),
    top_p: upload_raw_f32(be, p.top_p, "top_p"),
    seed,
  };
}

function sample(be: CudaBackend, b: Bufs, B: number, V: number): Int32Array {
  be.sample({
    tokens_out: b.tokens,
    logits: b.logits,
    lengths: b.lengths,
    n_new: b.n_new,
    temperature: b.temperature,
    top_k: b.top_k,
    top_p: b.top_p,
    seed: b.seed,
    B,
    V,
  });
  return read_i32(be, b.tokens, B);
}

function uniform(B: number, v: number): number[] {
  return new Array(B).fill(v);
}

/** The documented algorithm in f64 (the kernel's f32 sums differ only at rounding boundaries). */
function ref_sample(
  row: ArrayLike<number>,
  temp: number,
  top_k: number,
  top_p: number,
  ctr: number,
  k0: number,
  k1: number,
) {
  const V = row.length;
  let m = -Infinity, am = 0;
  for (let i = 0; i < V; i++) if (row[i] > m) [m, am] = [row[i], i];
  if (!(temp > 0) || top_k === 1) return am;
  const p = Array.from(row, (x) => Math.exp((x - m) / temp));
  const Z = p.reduce((a, b) => a + b, 0);
  const k = top_k > 0 && top_k < V ? top_k : V, P = top_p > 0 && top_p < 1 ? top_p : 1;
  let pivot = -1;
  for (let r = 0;; r++) {
    const u = (philox4x32_10([ctr, r, 0, 0], k0, k1)[0] >>> 8) * 2 ** -24;
    let M = 0, last = -1;
    for (let i = 0; i < V; i++) if (p[i] > pivot) [M, last] = [M + p[i], i];
    let run = 0, j = last;
    for (let i = 0; i < V; i++) {
      if (p[i] > pivot && (run += p[i]) > u * M) {
        j = i;
        break;
      }
    }
    let cnt = 0, mass = 0;
    for (let i = 0; i < V; i++) if (p[i] > p[j]) [cnt, mass] = [cnt + 1, mass + p[i]];
    if ((k >= V || cnt < k) && (P >= 1 || mass < P * Z)) return j;
    pivot = p[j];
  }
}

/** The exact distribution the algorithm samples: p restricted to its kept set, renormalised. */
function exact(row: ArrayLike<number>, temp: number, top_k: number, top_p: number): number[] {
  const V = row.length, m = Math.max(...Array.from(row));
  const p = Array.from(row, (x) => Math.exp((x - m) / temp));
  const Z = p.reduce((a, b) => a + b, 0);
  const k = top_k > 0 && top_k < V ? top_k : V, P = top_p > 0 && top_p < 1 ? top_p : 1;
  const kept = p.map((pj) => {
    const above = p.filter((pi) => pi > pj);
    return above.length < k && above.reduce((a, b) => a + b, 0) < P * Z;
  });
  const kz = p.reduce((a, pi, i) => a + (kept[i] ? pi : 0), 0);
  return p.map((pi, i) => kept[i] ? pi / kz : 0);
}

/** Chi-square critical value at tail probability ~1e-5 (Wilson-Hilferty). */
function chi2_critical(df: number): number {
  const z = 4.26, a = 2 / (9 * df);
  return df * (1 - a + z * Math.sqrt(a)) ** 3;
}

/** Cumulative probability of the tokens ranked above each rank (descending probability). */
function mass_above_ranks(row: ArrayLike<number>, temp: number): number[] {
  const m = Math.max(...Array.from(row));
  const p = Array.from(row, (x) => Math.exp((x - m) / temp)).sort((a, b) => b - a);
  const Z = p.reduce((a, b) => a + b, 0);
  const out = [0];
  for (let i = 0; i < p.length; i++) out.push(out[i] + p[i] / Z);
  return out;
}

gpu_suite("sample_test", () => {
  Deno.test("cuda sample: greedy is the argmax (lowest index on ties); idle rows untouched", () => {
    using be = backend("f32");
    const B = 6, V = 50257;
    const logits = randn(B * V, 7, 3);
    logits[2 * V + 30000] = 50; // row 2: tie between 10 and 30000 -> 10
    logits[2 * V + 10] = 50;
    const p: Params = {
      temperature: [0, 0, 0, 1, -1, 0],
      top_k: [0, 0, 0, 1, 0, 0],
      top_p: uniform(B, 1),
      seed: new Array(2 * B).fill(3),
      lengths: uniform(B, 4),
      n_new: [1, 1, 1, 1, 1, 0],
    };
    const bufs = put(be, logits, p);
    const got = sample(be, bufs, B, V);
    for (let b = 0; b < 5; b++) {
      let best = 0;
      for (let i = 1; i < V; i++) if (logits[b * V + i] > logits[b * V + best]) best = i;
      assertEquals(got[b], best, `row ${b}`);
    }
    assertEquals(got[2], 10);
    assertEquals(got[5], -7, "a row with n_new = 0 keeps its token");
  });

  Deno.test("cuda sample: same seed and position give the same tokens; matches the TS algorithm", () => {
    using be = backend("f32");
    for (
      const [V, B, temp, tk, tp] of [[50, 2000, 1.0, 0, 1], [50, 2000, 0.8, 10, 0.9], [
        50257,
        48,
        1.0,
        50,
        0.9,
      ]]
    ) {
      const logits = randn(B * V, V, 2);
      const seed: number[] = [];
      for (let b = 0; b < B; b++) seed.push((b * 7919) >>> 0, 0xdeadbeef);
      const p: Params = {
        temperature: uniform(B, temp),
        top_k: uniform(B, tk),
        top_p: uniform(B, tp),
        seed,
        lengths: Array.from({ length: B }, (_, b) => b % 13),
        n_new: uniform(B, 1),
      };
      const bufs = put(be, logits, p);
      const a = sample(be, bufs, B, V), again = sample(be, bufs, B, V);
      assertEquals(Array.from(again), Array.from(a), "same inputs, different tokens");
      let mismatches = 0;
      for (let b = 0; b < B; b++) {
        const want = ref_sample(
          logits.subarray(b * V, (b + 1) * V),
          temp,
          tk,
          tp,
          p.lengths[b] + 1,
          seed[2 * b],
          seed[2 * b + 1],
        );
        if (want !== a[b]) mismatches++;
      }
      assert(
        mismatches <= Math.max(2, B / 200),
        `V=${V}: ${mismatches} of ${B} rows differ from the TS algorithm`,
      );
      // Another seed changes most draws.
      be.write(bufs.seed, Uint32Array.from(seed.map((s, i) => i % 2 ? s ^ 1 : s)));
      const other = sample(be, bufs, B, V);
      assert(
        other.filter((t, b) => t !== a[b]).length > B / 10,
        "changing the seed barely changed the tokens",
      );
    }
  });

  Deno.test("cuda sample: frequencies match the exact distribution (chi-square)", () => {
    using be = backend("f32");
    const B = 20000, V = 20;
    const row = Array.from(randn(V, 99, 1.2));
    const logits = new Float32Array(B * V);
    for (let b = 0; b < B; b++) logits.set(row, b * V);
    const above = (t: number) => mass_above_ranks(row, t);
    const configs: [string, number, number, number][] = [
      ["temperature 1", 1, 0, 1],
      ["temperature 0.7, top_k 5", 0.7, 5, 1],
      ["top_p keeping 5", 1, 0, (above(1)[4] + above(1)[5]) / 2],
      ["temperature 1.3, top_k 8, top_p keeping 6", 1.3, 8, (above(1.3)[5] + above(1.3)[6]) / 2],
      ["temperature 1.3, top_k 4, top_p keeping 6", 1.3, 4, (above(1.3)[5] + above(1.3)[6]) / 2],
    ];
    for (const [name, temp, tk, tp] of configs) {
      const p: Params = {
        temperature: uniform(B, temp),
        top_k: uniform(B, tk),
        top_p: uniform(B, tp),
        seed: Array.from({ length: 2 * B }, (_, i) => i % 2 ? 77 : 12345),
        lengths: Array.from({ length: B }, (_, b) => b),
        n_new: uniform(B, 1),
      };
      const bufs = put(be, logits, p);
      const got = sample(be, bufs, B, V);
      const probs = exact(row, temp, tk, tp);
      const counts = new Array(V).fill(0);
      for (const t of got) {
        assert(t >= 0 && t < V && probs[t] > 0, `${name}: drew token ${t}, outside the kept set`);
        counts[t]++;
      }
      // Bins with expected counts >= 5; the rest pooled.
      let chi2 = 0, bins = 0, pool_e = 0, pool_o = 0;
      for (let i = 0; i < V; i++) {
        if (probs[i] === 0) continue;
        const e = probs[i] * B;
        if (e >= 5) {
          chi2 += (counts[i] - e) ** 2 / e;
          bins++;
        } else {
          pool_e += e;
          pool_o += counts[i];
        }
      }
      if (pool_e > 0) {
        chi2 += (pool_o - pool_e) ** 2 / pool_e;
        bins++;
      }
      const kept = probs.filter((x) => x > 0).length;
      const crit = chi2_critical(Math.max(1, bins - 1));
      assert(
        chi2 < crit,
        `${name}: chi-square ${chi2.toFixed(1)} >= ${crit.toFixed(1)} (${bins} bins, ${kept} kept)`,
      );
      for (const x of Object.values(bufs)) be.free(x);
    }
  });

  Deno.test("cuda sample: graphs and no graphs give identical tokens, replays read fresh inputs", () => {
    const B = 300, V = 1000;
    const logits = randn(B * V, 5, 2);
    const p: Params = {
      temperature: Array.from({ length: B }, (_, b) => [0, 0.5, 1, 1.5][b % 4]),
      top_k: Array.from({ length: B }, (_, b) => [0, 1, 20, 200][(b >> 2) % 4]),
      top_p: Array.from({ length: B }, (_, b) => [1, 0.5, 0.95][b % 3]),
      seed: Array.from({ length: 2 * B }, (_, i) => i * 31),
      lengths: Array.from({ length: B }, (_, b) => b),
      n_new: Array.from({ length: B }, (_, b) => b % 11 === 0 ? 0 : 1),
    };
    const runs: number[][][] = [];
    for (const graphs of [true, false]) {
      using be = backend("f32", graphs);
      const bufs = put(be, logits, p);
      const out: number[][] = [];
      for (let step = 0; step < 3; step++) {
        be.write(bufs.seed, Uint32Array.from(p.seed.map((s) => s + step)));
        be.run_step("sample", () => {
          be.sample({ ...bufs, tokens_out: bufs.tokens, B, V });
          be.advance({ lengths: bufs.lengths, n_new: bufs.n_new, B });
        });
        out.push(Array.from(read_i32(be, bufs.tokens, B)));
      }
      assertEquals(be.graph_count(), graphs ? 1 : 0);
      runs.push(out);
    }
    assertEquals(runs[0], runs[1]);
    assert(runs[0][0].some((t, b) => t !== runs[0][1][b]), "replays with new seeds drew the same tokens");
  });
});
