/**
 * Tests of the CPU backend: memory bookkeeping, dtype conversion, and every op against a naive
 * TypeScript reference on random data; sampling by exact replay of the algorithm and a chi-square
 * test. Random inputs come from a seeded generator with a fixed seed (printed on failure; set
 * NGPT_TEST_SEED to try another).
 */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import type { Buf } from "../src/backend/backend.ts";
import { create_cpu_backend } from "../src/backend/cpu.ts";
import { native } from "../src/native/lib.ts";
import { rng, test_seed } from "./helpers/rng.ts";
import { rel_l2 } from "./helpers/compare.ts";
import {
  attention_reference,
  make_paged_case,
  paged_attention_args,
  type PagedCase,
  type PagedSpec,
} from "./helpers/attention_ref.ts";

const run_seed = test_seed();
const be = create_cpu_backend({ threads: 2 });

function randn_array(r: () => number, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

function upload(data: Float32Array | Int32Array | Uint32Array, label: string): Buf {
  const b = be.alloc(data.byteLength, label);
  be.write(b, data);
  return b;
}

function download_f32(b: Buf, n: number): Float32Array {
  const out = new Float32Array(n);
  be.read(b, out);
  return out;
}

function download_i32(b: Buf, n: number): Int32Array {
  const out = new Int32Array(n);
  be.read(b, out);
  return out;
}

function assert_close(got: ArrayLike<number>, want: ArrayLike<number>, what: string, tol = 1e-5): void {
  const e = rel_l2(got, want);
  assert(e < tol, `${what}: relative L2 error ${e} >= ${tol} (seed ${run_seed})`);
}

/** erf in f64: e^{-x^2} sum 2^n x^{2n+1} / (2n+1)!! (converges everywhere, no cancellation). */
function erf(x: number): number {
  if (x > 6) return 1;
  if (x < -6) return -1;
  let term = x;
  let sum = x;
  for (let n = 1; Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
    term *= (2 * x * x) / (2 * n + 1);
    sum += term;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-x * x) * sum;
}

function free_all(...bufs: Buf[]): void {
  for (const b of bufs) be.free(b);
}

Deno.test("cpu: alloc, free, bounds and leak accounting", () => {
  const before = be.allocated_bytes();
  const a = be.alloc(100, "test a");
  const b = be.alloc(0, "test empty");
  assertEquals(be.allocated_bytes() - before, 100);
  assertEquals(a.ptr % 64n, 0n);
  be.write(a, new Uint8Array([1, 2, 3]), 97);
  assertThrows(() => be.write(a, new Uint8Array(4), 97), Error, "test a");
  assertThrows(() => be.read(a, new Uint8Array(101)), Error, "test a");
  const back = new Uint8Array(3);
  be.read(a, back, 97);
  assertEquals([...back], [1, 2, 3]);
  be.free(a);
  assertThrows(() => be.free(a), Error, "double free");
  assertThrows(() => be.write(a, new Uint8Array(1)), Error, "test a");
  be.free(b);
  assertEquals(be.allocated_bytes(), before);
  assertThrows(() => be.alloc(-1, "negative"), Error, "negative");
  assert(be.device_name.startsWith("CPU ("), be.device_name);
  assertEquals(be.kind, "cpu");
  assertEquals(be.dtype, "f32");

  using other = create_cpu_backend({ threads: 2 });
  other.alloc(64, "left over 1");
  other.alloc(128, "left over 2");
  assertEquals(other.allocated_bytes(), 192);
  other[Symbol.dispose]();
  assertEquals(other.allocated_bytes(), 0);
});

/** f32 -> bf16 bits with round to nearest even (NaN kept quiet). */
function bf16_bits(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0];
  if (Number.isNaN(x)) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

Deno.test("cpu: convert f32 <-> f16 <-> bf16 round trips and transpose", () => {
  const { ng_convert_buf, ng_convert } = native().symbols;
  const lib = native();
  const r = rng(run_seed ^ 0x1111);
  const n = 1000;
  const src = new Float32Array(n);
  for (let i = 0; i < n; i++) src[i] = (r() * 2 - 1) * 10 ** Math.floor(r() * 8 - 4);
  src[0] = 65520; // rounds to inf in f16
  src[1] = 1 + 2 ** -11; // f16 tie: to even (1)
  src[2] = 1 + 3 * 2 ** -11; // f16 tie: to even (1 + 2^-9)
  src[3] = 1 + 2 ** -8; // bf16 tie: to even (1)
  src[4] = 1 + 3 * 2 ** -8; // bf16 tie: up
  src[5] = -0;
  src[6] = 1e-7; // f16 subnormal
  const src_bytes = new Uint8Array(src.buffer);

  // f32 -> f16 and back.
  const h = be.alloc(n * 2, "f16");
  lib.check(ng_convert_buf(h.ptr, 1, src_bytes, 0, BigInt(n), 0n, 0n), "ng_convert_buf");
  const h_host = new Float16Array(n);
  be.read(h, h_host);
  for (let i = 0; i < n; i++) assertEquals(h_host[i], Math.f16round(src[i]), `f16 of ${src[i]}`);
  const f = be.alloc(n * 4, "f32 back");
  lib.check(ng_convert(f.ptr, 0, h.ptr, 1, BigInt(n), 0n, 0n), "ng_convert");
  const back = download_f32(f, n);
  for (let i = 0; i < n; i++) assertEquals(back[i], h_host[i]);

  // f32 -> bf16 and back; bf16 -> f16 (through f32, one rounding).
  const bf = be.alloc(n * 2, "bf16");
  lib.check(ng_convert_buf(bf.ptr, 2, src_bytes, 0, BigInt(n), 0n, 0n), "ng_convert_buf");
  const bf_host = new Uint16Array(n);
  be.read(bf, bf_host);
  for (let i = 0; i < n; i++) assertEquals(bf_host[i], bf16_bits(src[i]), `bf16 of ${src[i]}`);
  lib.check(ng_convert(f.ptr, 0, bf.ptr, 2, BigInt(n), 0n, 0n), "ng_convert");
  const bf_back = download_f32(f, n);
  const widened = new Float32Array(new Uint32Array([...bf_host].map((b) => (b << 16) >>> 0)).buffer);
  assertEquals([...bf_back], [...widened]);
  lib.check(ng_convert(h.ptr, 1, bf.ptr, 2, BigInt(n), 0n, 0n), "ng_convert");
  be.read(h, h_host);
  for (let i = 0; i < n; i++) assertEquals(h_host[i], Math.f16round(widened[i]));

  // write_weight: f16 source transposed (rows 7, cols 13) -> f32 (13, 7).
  const rows = 7;
  const cols = 13;
  const m = new Float16Array(rows * cols);
  for (let i = 0; i < m.length; i++) m[i] = r() * 4 - 2;
  const wt = be.alloc(rows * cols * 4, "transposed");
  be.write_weight(wt, new Uint8Array(m.buffer), "f16", rows * cols, [rows, cols]);
  const t = download_f32(wt, rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) assertEquals(t[j * rows + i], m[i * cols + j]);
  }
  // bf16 source, unaligned bytes.
  const raw = new Uint8Array(1 + rows * cols * 2);
  const bsrc = new Uint16Array(rows * cols).map(() => bf16_bits(r() * 8 - 4));
  raw.set(new Uint8Array(bsrc.buffer), 1);
  be.write_weight(wt, raw.subarray(1), "bf16", rows * cols);
  const tb = download_f32(wt, rows * cols);
  for (let i = 0; i < bsrc.length; i++) {
    assertEquals(tb[i], new Float32Array(new Uint32Array([bsrc[i] << 16]).buffer)[0]);
  }
  assertThrows(() => be.write_weight(wt, raw, "f32", rows * cols), Error, "transposed");
  assertThrows(() => be.write_weight(wt, raw, "f16", rows * cols, [5, 5]), Error, "transpose shape");
  free_all(h, f, bf, wt);
});

Deno.test("cpu: embed adds token and clamped position rows", () => {
  const r = rng(run_seed ^ 0x2222);
  const [rows, C, V, max_pos] = [15, 40, 17, 9];
  const positions = Int32Array.from({ length: rows }, () => Math.floor(r() * 12));
  const tokens = new Int32Array(rows).map(() => Math.floor(r() * V));
  const wte = randn_array(r, V * C);
  const wpe = randn_array(r, max_pos * C);
  const bufs = {
    out: be.alloc(rows * C * 4, "embed out"),
    tokens: upload(tokens, "tokens"),
    positions: upload(positions, "positions"),
    wte: upload(wte, "wte"),
    wpe: upload(wpe, "wpe"),
  };
  be.embed({ ...bufs, rows, C, max_pos });
  const got = download_f32(bufs.out, rows * C);
  const want = new Float32Array(rows * C);
  for (let row = 0; row < rows; row++) {
    const pos = Math.min(positions[row], max_pos - 1);
    for (let c = 0; c < C; c++) want[row * C + c] = wte[tokens[row] * C + c] + wpe[pos * C + c];
  }
  assertEquals([...got], [...want], `seed ${run_seed}`);
  be.write(bufs.tokens, new Int32Array([-3]), 4);
  assertThrows(() => be.embed({ ...bufs, rows, C, max_pos }), Error, "row 1 has token id -3 outside 0..17");
  be.write(bufs.tokens, new Int32Array([17]), 4);
  assertThrows(() => be.embed({ ...bufs, rows, C, max_pos }), Error, "row 1 has token id 17");
  free_all(...Object.values(bufs));
});

Deno.test("cpu: layernorm with and without bias, in place", () => {
  const r = rng(run_seed ^ 0x3333);
  for (const [rows, C, with_bias] of [[5, 768, true], [13, 37, false], [1, 3, true]] as const) {
    const x = randn_array(r, rows * C, 3);
    for (let i = 0; i < x.length; i++) x[i] += 2; // a mean far from 0
    const w = randn_array(r, C);
    const bias = randn_array(r, C);
    const eps = 1e-5;
    const want = new Float32Array(rows * C);
    for (let i = 0; i < rows; i++) {
      let mean = 0;
      for (let c = 0; c < C; c++) mean += x[i * C + c];
      mean /= C;
      let v = 0;
      for (let c = 0; c < C; c++) v += (x[i * C + c] - mean) ** 2;
      const rstd = 1 / Math.sqrt(v / C + eps);
      for (let c = 0; c < C; c++) {
        want[i * C + c] = (x[i * C + c] - mean) * rstd * w[c] + (with_bias ? bias[c] : 0);
      }
    }
    const xb = upload(x, "ln x");
    const out = be.alloc(rows * C * 4, "ln out");
    const wb = upload(w, "ln w");
    const bb = upload(bias, "ln b");
    be.layernorm({ out, x: xb, weight: wb, bias: with_bias ? bb : null, rows, C, eps });
    assert_close(download_f32(out, rows * C), want, `layernorm ${rows}x${C}`);
    be.layernorm({ out: xb, x: xb, weight: wb, bias: with_bias ? bb : null, rows, C, eps });
    assert_close(download_f32(xb, rows * C), want, `layernorm in place ${rows}x${C}`);
    free_all(xb, out, wb, bb);
  }
});

function gelu_erf_ref(x: number): number {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

function gelu_tanh_ref(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
}

Deno.test("cpu: matmul with bias, activations and accumulate", () => {
  const r = rng(run_seed ^ 0x4444);
  const cases: [number, number, number][] = [
    [1, 2304, 768],
    [37, 50, 67],
    [130, 19, 260],
    [90, 21, 3100],
    [4, 8, 16],
    [3, 5, 1],
  ];
  for (const [M, N, K] of cases) {
    const x = randn_array(r, M * K);
    const w = randn_array(r, N * K, 0.2);
    const bias = randn_array(r, N);
    const init = randn_array(r, M * N);
    const pre = new Float64Array(M * N);
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = bias[n];
        for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
        pre[m * N + n] = s;
      }
    }
    const bufs = { x: upload(x, "mm x"), w: upload(w, "mm w"), bias: upload(bias, "mm bias") };
    const out = be.alloc(M * N * 4, "mm out");
    const shape = `${M}x${N}x${K}`;
    be.matmul({ out, ...bufs, M, N, K, act: "none", accumulate: false });
    assert_close(download_f32(out, M * N), pre, `matmul ${shape}`);
    be.matmul({ out, ...bufs, bias: null, M, N, K, act: "none", accumulate: false });
    assert_close(download_f32(out, M * N), pre.map((v, i) => v - bias[i % N]), `matmul no bias ${shape}`);
    be.matmul({ out, ...bufs, M, N, K, act: "gelu_erf", accumulate: false });
    assert_close(download_f32(out, M * N), pre.map(gelu_erf_ref), `matmul gelu_erf ${shape}`);
    be.matmul({ out, ...bufs, M, N, K, act: "gelu_tanh", accumulate: false });
    assert_close(download_f32(out, M * N), pre.map(gelu_tanh_ref), `matmul gelu_tanh ${shape}`);
    be.write(out, init);
    be.matmul({ out, ...bufs, M, N, K, act: "none", accumulate: true });
    assert_close(download_f32(out, M * N), pre.map((v, i) => v + init[i]), `matmul accumulate ${shape}`);
    assertThrows(
      () => be.matmul({ out, ...bufs, M, N, K, act: "gelu_erf", accumulate: true }),
      Error,
      "accumulate needs act none",
    );
    assertThrows(
      () => be.matmul({ out, ...bufs, M: M + 1, N, K, act: "none", accumulate: false }),
      Error,
      "mm out",
    );
    free_all(out, ...Object.values(bufs));
  }
});

Deno.test("cpu: gelu_erf and gelu_tanh are accurate over a wide range", () => {
  // M rows of K = 1 times a 1x1 weight of 1: out[m] = gelu(x[m]).
  const grid = Array.from({ length: 4001 }, (_, i) => -10 + (20 * i) / 4000);
  const xs = new Float32Array([...grid, -1e4, -100, -30, 30, 100, 1e4, 3e19, -3e19]);
  const n = xs.length;
  const xb = upload(xs, "gelu x");
  const w = upload(new Float32Array([1]), "gelu w");
  const out = be.alloc(n * 4, "gelu out");
  for (const [act, ref] of [["gelu_erf", gelu_erf_ref], ["gelu_tanh", gelu_tanh_ref]] as const) {
    be.matmul({ out, x: xb, w, bias: null, M: n, N: 1, K: 1, act, accumulate: false });
    const got = download_f32(out, n);
    let max_err = 0;
    for (let i = 0; i < n; i++) {
      const want = ref(xs[i]);
      assert(Number.isFinite(got[i]), `${act}(${xs[i]}) = ${got[i]}`);
      max_err = Math.max(max_err, Math.abs(got[i] - want) / Math.max(1, Math.abs(want)));
    }
    assert(max_err < 3e-7, `${act} max error ${max_err}`);
  }
  free_all(xb, w, out);
});

/** A case's block table, lengths and row arrays on the backend. */
function upload_case_ints(c: PagedCase) {
  return {
    table: upload(c.table, "block table"),
    lengths: upload(Int32Array.from(c.lengths), "attn lengths"),
    n_new: upload(Int32Array.from(c.counts), "attn n_new"),
    seq_start: upload(c.seq_start, "seq_start"),
    row_seq: upload(c.row_seq, "row_seq"),
    positions: upload(c.positions, "positions"),
  };
}

/** Runs one paged attention call on the CPU backend and checks the pools and outputs against the reference. */
function attention_case(spec: PagedSpec, r: () => number): void {
  const c = make_paged_case(spec, r);
  const want = attention_reference(c);
  const bufs = {
    out: be.alloc(c.rows * c.C * 4, "attn out"),
    qkv: upload(c.qkv, "qkv"),
    k: upload(c.k, "k pool"),
    v: upload(c.v, "v pool"),
    ...upload_case_ints(c),
  };
  be.write(bufs.out, new Float32Array(c.rows * c.C).fill(7)); // rows not owned keep this
  const most = Math.max(1, ...c.counts);
  const args = paged_attention_args(c, { ...bufs, cache: { k: bufs.k, v: bufs.v } });
  if (!c.decode && most > 1) {
    // An understated bound would make the CUDA kernels skip rows: the CPU refuses it before any work.
    assertThrows(
      () => be.attention({ ...args, max_seq_rows: most - 1 }),
      RangeError,
      `above max_seq_rows ${most - 1}`,
    );
  }
  be.attention(args);
  const name = `attention ${c.decode ? "decode" : "prefill"} H${c.H} D${c.D} bs${c.block_size} lengths ` +
    `${c.lengths} counts ${c.counts} (seed ${run_seed})`;
  assertEquals([...download_f32(bufs.k, c.k.length)], [...want.k], `${name}: k pool`);
  assertEquals([...download_f32(bufs.v, c.v.length)], [...want.v], `${name}: v pool`);
  const out = download_f32(bufs.out, c.rows * c.C);
  const got: number[] = [], exp: number[] = [];
  want.out.forEach((x, i) => {
    if (Number.isNaN(x)) {
      assertEquals(out[i], 7, `${name}: row ${Math.floor(i / c.C)} is not owned but was written`);
    } else {
      got.push(out[i]);
      exp.push(x);
    }
  });
  assert_close(got, exp, name);
  free_all(...Object.values(bufs));
}

Deno.test("cpu: paged attention appends to the pools and attends causally (decode and packed prefill)", () => {
  const r = rng(run_seed ^ 0x5555);
  const pre = (o: Omit<PagedSpec, "decode">) => attention_case({ ...o, decode: false }, r);
  const dec = (o: Omit<PagedSpec, "decode">) => attention_case({ ...o, decode: true }, r);
  pre({ H: 3, D: 16, block_size: 4, max_len: 24, lengths: [0, 7, 3], counts: [5, 2, 0], padding: 3 });
  pre({ H: 2, D: 24, block_size: 16, max_len: 160, lengths: [150, 0], counts: [1, 3] });
  pre({ H: 2, D: 24, block_size: 16, max_len: 80, lengths: [0], counts: [70] });
  pre({ H: 2, D: 128, block_size: 8, max_len: 90, lengths: [75], counts: [10] });
  pre({ H: 1, D: 200, block_size: 32, max_len: 80, lengths: [70, 3], counts: [9, 4], padding: 1 });
  pre({ H: 1, D: 5, block_size: 1, max_len: 6, lengths: [3, 0, 5, 6], counts: [3, 1, 1, 0] });
  dec({ H: 4, D: 64, block_size: 16, max_len: 300, lengths: [299], counts: [1] });
  dec({ H: 3, D: 16, block_size: 4, max_len: 40, lengths: [0, 17, 9, 39], counts: [1, 0, 1, 1] });
});

/** Rows of D values as int8 with one scale each (s = max |x| / 127, in f32), and back. */
function quantize_kv_rows(x: Float32Array, D: number): { q: Int8Array; s: Float32Array; back: Float32Array } {
  const n = x.length / D,
    q = new Int8Array(x.length),
    s = new Float32Array(n),
    back = new Float32Array(x.length);
  for (let r = 0; r < n; r++) {
    let m = 0;
    for (let d = 0; d < D; d++) m = Math.max(m, Math.abs(x[r * D + d]));
    s[r] = Math.fround(m / 127);
    for (let d = 0; d < D; d++) {
      q[r * D + d] = s[r] === 0 ? 0 : Math.max(-127, Math.min(127, Math.round(x[r * D + d] / s[r])));
      back[r * D + d] = q[r * D + d] * s[r];
    }
  }
  return { q, s, back };
}

/** The same call with an int8 cache: pools and appended rows are its values; outputs as attention over them. */
function attention_case_int8(spec: PagedSpec, r: () => number): void {
  const c = make_paged_case(spec, r);
  const k0 = quantize_kv_rows(c.k, c.D), v0 = quantize_kv_rows(c.v, c.D);
  // What the append stores: each row's k and v of each head, quantized and read back.
  const qkv = Float32Array.from(c.qkv);
  for (let row = 0; row < c.rows; row++) {
    const kv = qkv.subarray(row * 3 * c.C + c.C, (row + 1) * 3 * c.C);
    kv.set(quantize_kv_rows(Float32Array.from(kv), c.D).back);
  }
  const want = attention_reference({ ...c, qkv, k: k0.back, v: v0.back });
  const scale_bytes = c.num_blocks * c.H * c.block_size * 4;
  const bufs = {
    out: be.alloc(c.rows * c.C * 4, "attn out"),
    qkv: upload(c.qkv, "qkv"),
    k: be.alloc(c.k.length, "k pool int8"),
    v: be.alloc(c.v.length, "v pool int8"),
    ks: upload(k0.s, "k scales"),
    vs: upload(v0.s, "v scales"),
    ...upload_case_ints(c),
  };
  be.write(bufs.k, k0.q);
  be.write(bufs.v, v0.q);
  assertEquals(bufs.ks.bytes, scale_bytes);
  be.attention(
    paged_attention_args(c, { ...bufs, cache: { k: bufs.k, v: bufs.v, k_scale: bufs.ks, v_scale: bufs.vs } }),
  );
  const name = `int8 attention ${c.decode ? "decode" : "prefill"} H${c.H} D${c.D} (seed ${run_seed})`;
  for (const [pool, scales, ref] of [[bufs.k, bufs.ks, want.k], [bufs.v, bufs.vs, want.v]] as const) {
    const q = new Int8Array(ref.length), sc = download_f32(scales, ref.length / c.D);
    be.read(pool, q);
    for (let i = 0; i < ref.length; i++) {
      const step = sc[Math.floor(i / c.D)];
      assert(Math.abs(q[i] * step - ref[i]) <= 1.001 * step + 1e-12, `${name}: pool value ${i}`);
    }
  }
  const out = download_f32(bufs.out, c.rows * c.C);
  const got: number[] = [], exp: number[] = [];
  want.out.forEach((x, i) => {
    if (!Number.isNaN(x)) got.push(out[i]), exp.push(x);
  });
  assert_close(got, exp, name, 1e-3);
  free_all(...Object.values(bufs));
}

Deno.test("cpu: an int8 KV cache stores rows with per-row scales and attends over their values", () => {
  const r = rng(run_seed ^ 0x1818);
  attention_case_int8({
    H: 3,
    D: 16,
    block_size: 4,
    max_len: 24,
    lengths: [0, 7, 3],
    counts: [5, 2, 0],
    decode: false,
  }, r);
  attention_case_int8({
    H: 2,
    D: 64,
    block_size: 16,
    max_len: 160,
    lengths: [150, 0],
    counts: [1, 3],
    decode: false,
  }, r);
  attention_case_int8({
    H: 4,
    D: 64,
    block_size: 16,
    max_len: 300,
    lengths: [299, 5],
    counts: [1, 1],
    decode: true,
  }, r);
});

Deno.test("cpu: attention rejects bad lengths, counts and blocks with a clear error", () => {
  const c = make_paged_case({
    H: 2,
    D: 16,
    block_size: 4,
    max_len: 8,
    lengths: [2, 4],
    counts: [4, 3],
    decode: false,
  }, rng(1));
  const bufs = {
    out: be.alloc(c.rows * c.C * 4, "out"),
    qkv: be.alloc(c.rows * 3 * c.C * 4, "qkv"),
    k: be.alloc(c.k.length * 4, "k"),
    v: be.alloc(c.v.length * 4, "v"),
    table: upload(c.table, "table"),
    lengths: upload(Int32Array.from(c.lengths), "lengths"),
    seq_start: upload(c.seq_start, "seq_start"),
    row_seq: upload(c.row_seq, "row_seq"),
    positions: upload(c.positions, "positions"),
  };
  const a = {
    out: bufs.out,
    qkv: bufs.qkv,
    cache: { k: bufs.k, v: bufs.v },
    layout: { num_blocks: c.num_blocks, block_size: 4, n_head: 2, head_dim: 16, max_blocks: c.max_blocks },
    block_table: bufs.table,
    lengths: bufs.lengths,
    B: 2,
    seq_start: bufs.seq_start,
    row_seq: bufs.row_seq,
    positions: bufs.positions,
    rows: c.rows,
    max_seq_rows: 4,
  };
  be.attention(a);
  be.write(bufs.lengths, new Int32Array([2, 6]));
  assertThrows(() => be.attention(a), Error, "sequence 1 reaches position 9, past its 8 cache positions");
  be.write(bufs.lengths, new Int32Array([-1, 0]));
  assertThrows(() => be.attention(a), Error, "negative length -1");
  be.write(bufs.lengths, Int32Array.from(c.lengths));
  be.write(bufs.table, new Int32Array([c.num_blocks]));
  assertThrows(() => be.attention(a), Error, `sequence 0 block 0 is ${c.num_blocks}, outside the pool`);
  assertThrows(
    () => be.attention({ ...a, layout: { ...a.layout, num_blocks: c.num_blocks + 1 } }),
    Error,
    '"k"',
  );
  free_all(...Object.values(bufs));
});

Deno.test("cpu: gather_rows, scatter and advance", () => {
  const r = rng(run_seed ^ 0x6666);
  const [rows, C] = [12, 10];
  const x = randn_array(r, rows * C);
  const idx = new Int32Array([2, 0, 11, 5]);
  const bufs = {
    out: be.alloc(4 * C * 4, "gather out"),
    x: upload(x, "gather x"),
    idx: upload(idx, "idx"),
    n_new: upload(new Int32Array([3, 1, 0, 2]), "n_new"),
    lengths: upload(new Int32Array([5, 0, 9, 1]), "lengths"),
    dst: upload(new Int32Array([9, 9, 9, 9, 9]), "dst"),
    src: upload(new Int32Array([1, 2, 3, 4]), "src"),
    sidx: upload(new Int32Array([4, -1, 0, 2]), "scatter idx"),
  };
  be.gather_rows({ out: bufs.out, x: bufs.x, idx: bufs.idx, n: 4, C });
  const got = download_f32(bufs.out, 4 * C);
  idx.forEach((row, i) =>
    assertEquals([...got.subarray(i * C, (i + 1) * C)], [...x.subarray(row * C, (row + 1) * C)])
  );
  be.write(bufs.idx, new Int32Array([12]));
  assertThrows(
    () => be.gather_rows({ out: bufs.out, x: bufs.x, idx: bufs.idx, n: 4, C }),
    Error,
    "index 0 is 12, outside 0..12",
  );
  be.scatter({ dst: bufs.dst, src: bufs.src, idx: bufs.sidx, n: 4 });
  assertEquals([...download_i32(bufs.dst, 5)], [3, 9, 4, 9, 1]);
  be.write(bufs.sidx, new Int32Array([5]));
  assertThrows(
    () => be.scatter({ dst: bufs.dst, src: bufs.src, idx: bufs.sidx, n: 4 }),
    Error,
    "index 0 is 5, past 5",
  );
  be.advance({ lengths: bufs.lengths, n_new: bufs.n_new, B: 4 });
  assertEquals([...download_i32(bufs.lengths, 4)], [8, 1, 9, 3]);
  be.write(bufs.n_new, new Int32Array([-1]));
  assertThrows(() => be.advance({ lengths: bufs.lengths, n_new: bufs.n_new, B: 4 }), Error, "negative n_new");
  assertEquals([...download_i32(bufs.lengths, 4)], [8, 1, 9, 3]);
  free_all(...Object.values(bufs));
});

Deno.test("cpu: logprobs are log_softmax of the logits, with the top tokens in order", () => {
  const r = rng(run_seed ^ 0x7777);
  const [rows, V, ld, top_n] = [5, 37, 40, 5];
  const logits = randn_array(r, rows * ld, 4);
  logits[2 * ld + 3] = logits[2 * ld + 9] = 10; // a tie: the lower id comes first
  const targets = new Int32Array([0, 36, 3, -1, 17]);
  const W = 1 + 2 * top_n;
  const bufs = {
    out: be.alloc(rows * W * 4, "lp out"),
    logits: upload(logits, "logits"),
    targets: upload(targets, "targets"),
  };
  be.logprobs({ out: bufs.out, logits: bufs.logits, targets: bufs.targets, rows, V, ld, top_n });
  const got = download_f32(bufs.out, rows * W);
  for (let i = 0; i < rows; i++) {
    const row = Array.from(logits.subarray(i * ld, i * ld + V));
    const m = Math.max(...row), lse = m + Math.log(row.reduce((a, x) => a + Math.exp(x - m), 0));
    const t = targets[i];
    if (t < 0) assert(Number.isNaN(got[i * W]), "a target < 0 gives NaN");
    else assert(Math.abs(got[i * W] - (row[t] - lse)) < 1e-5, `row ${i}: ${got[i * W]} vs ${row[t] - lse}`);
    const order = row.map((x, id) => [x, id]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, top_n);
    order.forEach(([x, id], k) => {
      assertEquals(got[i * W + 1 + 2 * k], id, `row ${i} rank ${k} (seed ${run_seed})`);
      assert(Math.abs(got[i * W + 2 + 2 * k] - (x - lse)) < 1e-5);
    });
  }
  assertThrows(
    () => be.logprobs({ out: bufs.out, logits: bufs.logits, targets: bufs.targets, rows, V, ld, top_n: 21 }),
    Error,
    "top_n 21",
  );
  free_all(...Object.values(bufs));
});

// ---- sampling ----

/** High 32 bits of a * b for u32 a, b. */
function mulhi(a: number, b: number): number {
  return Number((BigInt(a) * BigInt(b)) >> 32n);
}

/** Philox4x32-10, as in native/cpu/philox.zig. */
function philox(ctr: number[], key: number[]): number[] {
  let [c0, c1, c2, c3] = ctr;
  let [k0, k1] = key;
  for (let r = 0; r < 10; r++) {
    if (r > 0) {
      k0 = (k0 + 0x9e3779b9) >>> 0;
      k1 = (k1 + 0xbb67ae85) >>> 0;
    }
    const hi0 = mulhi(0xd2511f53, c0);
    const lo0 = Math.imul(0xd2511f53, c0) >>> 0;
    const hi1 = mulhi(0xcd9e8d57, c2);
    const lo1 = Math.imul(0xcd9e8d57, c2) >>> 0;
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
  }
  return [c0, c1, c2, c3];
}

interface SampleParams {
  temperature: number;
  top_k: number;
  top_p: number;
}

/** The sampling algorithm of native/cpu/sample.zig, replayed in TypeScript. */
function sample_ref(row: Float32Array, prm: SampleParams, counter: number, key: [number, number]): number {
  const V = row.length;
  const f = Math.fround;
  const t = f(prm.temperature);
  if (!(t > 0) || prm.top_k === 1) {
    let best = 0;
    for (let i = 1; i < V; i++) if (row[i] > row[best]) best = i;
    return best;
  }
  const m = Math.max(...row);
  const p = new Float32Array(V);
  let z = 0;
  for (let i = 0; i < V; i++) z += p[i] = f(Math.exp(f(f(row[i] - m) / t)));
  const k = prm.top_k > 0 && prm.top_k < V ? prm.top_k : V;
  const p_on = prm.top_p > 0 && prm.top_p < 1;
  const p_mass = f(prm.top_p) * z;
  let pivot = -1;
  for (let r = 0;; r++) {
    const u = (philox([counter >>> 0, r, 0, 0], key)[0] >>> 8) * 2 ** -24;
    let total = 0;
    for (let i = 0; i < V; i++) if (p[i] > pivot) total += p[i];
    const target = u * total;
    let run = 0;
    let j = -1;
    let last = -1;
    for (let i = 0; i < V; i++) {
      if (!(p[i] > pivot)) continue;
      run += p[i];
      last = i;
      if (run > target) {
        j = i;
        break;
      }
    }
    if (j < 0) j = last;
    let cnt = 0;
    let mass = 0;
    for (let i = 0; i < V; i++) {
      if (p[i] > p[j]) {
        cnt++;
        mass += p[i];
      }
    }
    if (cnt < k && (!p_on || mass < p_mass)) return j;
    pivot = p[j];
  }
}

interface SampleRun {
  logits: Float32Array;
  V: number;
  lengths: Int32Array;
  n_new: Int32Array;
  params: SampleParams[];
  seeds: Uint32Array;
  tokens_init?: Int32Array;
}

function run_sample(s: SampleRun): Int32Array {
  const B = s.lengths.length;
  const bufs = {
    tokens_out: upload(s.tokens_init ?? new Int32Array(B).fill(-7), "tokens_out"),
    logits: upload(s.logits, "logits"),
    lengths: upload(s.lengths, "lengths"),
    n_new: upload(s.n_new, "n_new"),
    temperature: upload(new Float32Array(s.params.map((p) => p.temperature)), "temperature"),
    top_k: upload(new Int32Array(s.params.map((p) => p.top_k)), "top_k"),
    top_p: upload(new Float32Array(s.params.map((p) => p.top_p)), "top_p"),
    seed: upload(s.seeds, "seed"),
  };
  try {
    be.sample({ ...bufs, B, V: s.V });
    return download_i32(bufs.tokens_out, B);
  } finally {
    free_all(...Object.values(bufs));
  }
}

Deno.test("cpu: philox4x32-10 reference (TS replay) matches the Random123 known answers", () => {
  assertEquals(philox([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
  const f = 0xffffffff;
  assertEquals(philox([f, f, f, f], [f, f]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
});

Deno.test("cpu: sample greedy, padding rows, determinism and exact replay", () => {
  const r = rng(0x5eed);
  const V = 300;
  const B = 400;
  const logits = randn_array(r, B * V, 3);
  logits[17] = 50; // row 0 is greedy: a tie, the lowest index wins
  logits[200] = 50;
  const lengths = new Int32Array(B).map(() => Math.floor(r() * 1000));
  const n_new = new Int32Array(B).map((_, b) => (b % 13 === 3 ? 0 : 1 + (b % 4)));
  const param_sets: SampleParams[] = [
    { temperature: 0, top_k: 0, top_p: 1 },
    { temperature: 1, top_k: 1, top_p: 1 },
    { temperature: 1, top_k: 0, top_p: 1 },
    { temperature: 0.7, top_k: 20, top_p: 1 },
    { temperature: 1.3, top_k: 0, top_p: 0.5 },
    { temperature: 0.9, top_k: 40, top_p: 0.9 },
  ];
  const params = Array.from({ length: B }, (_, b) => param_sets[b % param_sets.length]);
  const seeds = new Uint32Array(2 * B).map(() => Math.floor(r() * 2 ** 32));
  const tokens_init = new Int32Array(B).fill(-7);
  const tokens = run_sample({ logits, V, lengths, n_new, params, seeds, tokens_init });
  for (let b = 0; b < B; b++) {
    if (n_new[b] === 0) {
      assertEquals(tokens[b], -7, `row ${b} has n_new 0 and must keep its token`);
      continue;
    }
    const row = logits.subarray(b * V, (b + 1) * V);
    const want = sample_ref(row, params[b], lengths[b] + n_new[b], [seeds[2 * b], seeds[2 * b + 1]]);
    assertEquals(tokens[b], want, `row ${b} params ${JSON.stringify(params[b])}`);
  }
  // Greedy rows (param set 0): argmax, lowest index on ties.
  assertEquals(tokens[0], 17);
  for (let b = 0; b < B; b += param_sets.length) {
    if (n_new[b] === 0) continue;
    const row = logits.subarray(b * V, (b + 1) * V);
    assertEquals(tokens[b], row.indexOf(Math.max(...row)));
  }
  // Same seed, same tokens; a single sequence draws the same token alone as in the batch.
  assertEquals([...run_sample({ logits, V, lengths, n_new, params, seeds, tokens_init })], [...tokens]);
  for (const b of [2, 9, 17]) {
    const alone = run_sample({
      logits: logits.slice(b * V, (b + 1) * V),
      V,
      lengths: lengths.slice(b, b + 1),
      n_new: n_new.slice(b, b + 1),
      params: [params[b]],
      seeds: seeds.slice(2 * b, 2 * b + 2),
    });
    assertEquals(alone[0], tokens[b], `row ${b} alone`);
  }
  // Different seeds: the sampled (non-greedy) rows mostly change.
  const other = run_sample({
    logits,
    V,
    lengths,
    n_new,
    params,
    seeds: seeds.map((s) => s ^ 0x9e3779b9),
    tokens_init,
  });
  let sampled = 0;
  let differ = 0;
  for (let b = 0; b < B; b++) {
    if (n_new[b] === 0 || params[b].temperature === 0 || params[b].top_k === 1) continue;
    sampled++;
    if (other[b] !== tokens[b]) differ++;
  }
  assert(differ > sampled / 3, `only ${differ} of ${sampled} sampled rows changed with the seed`);
});

Deno.test("cpu: sample tie-break of greedy and errors", () => {
  const logits = new Float32Array([1, 5, 2, 5, 5]);
  const one = { V: 5, lengths: new Int32Array([0]), n_new: new Int32Array([1]), seeds: new Uint32Array(2) };
  assertEquals(run_sample({ ...one, logits, params: [{ temperature: 0, top_k: 0, top_p: 1 }] })[0], 1);
  assertEquals(run_sample({ ...one, logits, params: [{ temperature: -1, top_k: 0, top_p: 1 }] })[0], 1);
  const bad = new Float32Array([1, NaN, 2, 0, 0]);
  assertThrows(
    () => run_sample({ ...one, logits: bad, params: [{ temperature: 1, top_k: 0, top_p: 1 }] }),
    Error,
    "sequence 0 has non-finite logits",
  );
  assertThrows(
    () =>
      run_sample({
        ...one,
        logits,
        lengths: new Int32Array([-2]),
        params: [{ temperature: 1, top_k: 0, top_p: 1 }],
      }),
    Error,
    "negative length -2",
  );
});

/** The 0.999 quantile of chi-square with `df` degrees of freedom (Wilson-Hilferty). */
function chi2_quantile_999(df: number): number {
  const z = 3.090232306167813;
  const a = 2 / (9 * df);
  return df * (1 - a + z * Math.sqrt(a)) ** 3;
}

/** The exact distribution sampled: top-k and top-p kept set, renormalised (as the algorithm defines it). */
function kept_distribution(logits: Float32Array, prm: SampleParams): Float64Array {
  const V = logits.length;
  const m = Math.max(...logits);
  const p = Array.from(logits, (l) => Math.exp((l - m) / prm.temperature));
  const z = p.reduce((a, b) => a + b, 0);
  const k = prm.top_k > 0 && prm.top_k < V ? prm.top_k : V;
  const P = prm.top_p > 0 && prm.top_p < 1 ? prm.top_p : Infinity;
  const q = new Float64Array(V);
  for (let i = 0; i < V; i++) {
    let cnt = 0;
    let mass = 0;
    for (let j = 0; j < V; j++) {
      if (p[j] > p[i]) {
        cnt++;
        mass += p[j];
      }
    }
    if (cnt < k && mass < P * z) q[i] = p[i];
  }
  const s = q.reduce((a, b) => a + b, 0);
  return q.map((v) => v / s);
}

Deno.test("cpu: sample matches the renormalised top-k/top-p distribution (chi-square)", () => {
  const r = rng(0xc41);
  const V = 30;
  const row = randn_array(r, V, 2);
  const N = 20000;
  const cases: SampleParams[] = [
    { temperature: 1, top_k: 0, top_p: 1 },
    { temperature: 1.5, top_k: 0, top_p: 1 },
    { temperature: 1, top_k: 7, top_p: 1 },
    { temperature: 1, top_k: 0, top_p: 0.6 },
    { temperature: 0.7, top_k: 10, top_p: 0.8 },
  ];
  for (const prm of cases) {
    const q = kept_distribution(row, prm);
    const logits = new Float32Array(N * V);
    for (let b = 0; b < N; b++) logits.set(row, b * V);
    const tokens = run_sample({
      logits,
      V,
      lengths: new Int32Array(N).map((_, b) => b),
      n_new: new Int32Array(N).fill(1),
      params: Array(N).fill(prm),
      seeds: new Uint32Array(2 * N).map((_, i) => (i % 2 === 0 ? 12345 : 678)),
    });
    const counts = new Float64Array(V);
    for (const t of tokens) counts[t]++;
    let chi2 = 0;
    let bins = 0;
    let pooled_obs = 0;
    let pooled_exp = 0;
    for (let i = 0; i < V; i++) {
      if (q[i] === 0) {
        assertEquals(counts[i], 0, `token ${i} is outside the kept set of ${JSON.stringify(prm)}`);
        continue;
      }
      const e = q[i] * N;
      if (e < 5) {
        pooled_obs += counts[i];
        pooled_exp += e;
        continue;
      }
      chi2 += (counts[i] - e) ** 2 / e;
      bins++;
    }
    if (pooled_exp > 0) {
      chi2 += (pooled_obs - pooled_exp) ** 2 / pooled_exp;
      bins++;
    }
    const kept = q.filter((v) => v > 0).length;
    assert(
      kept > 1 && kept < V || prm.top_k === 0 && prm.top_p === 1,
      `case ${JSON.stringify(prm)} keeps ${kept}`,
    );
    const limit = chi2_quantile_999(bins - 1);
    assert(
      chi2 < limit,
      `${JSON.stringify(prm)}: chi2 ${chi2.toFixed(1)} >= ${limit.toFixed(1)} (df ${bins - 1})`,
    );
  }
});

Deno.test("cpu: no buffers leak across the tests", () => {
  assertEquals(be.allocated_bytes(), 0);
});
