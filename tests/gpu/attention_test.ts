// CUDA paged attention (kv_append + prefill over packed rows; decode with the append fused in, in
// one chunk or split in several and combined) against the f64 reference of
// tests/helpers/attention_ref.ts: shuffled block tables, ragged lengths and rows, padding rows,
// head sizes 16, 24, 64, 80 and 128, long caches (1024 keys), B = 256 and 512, f32 and bf16; the
// tensor-core prefill (f16/bf16, head sizes 64 and 128) over 512-row prompts and chunks; decode over
// an int8 KV cache (short, long and B = 256 caches) against the reference over its dequantized rows.
import { assert, assertEquals } from "../helpers/assert.ts";
import type { Buf, DType } from "../../src/backend/backend.ts";
import type { CudaBackend } from "../../src/backend/cuda.ts";
import { decode_plan } from "../../src/backend/cuda/ops.ts";
import {
  attention_reference,
  make_paged_case,
  paged_attention_args,
  type PagedBufs,
  type PagedSpec,
  pool_row,
} from "../helpers/attention_ref.ts";
import { test_seed } from "../helpers/rng.ts";
import {
  backend,
  gpu_suite,
  read_f32,
  rel_l2,
  rng,
  tol,
  upload,
  upload_i32,
  upload_raw_f32,
} from "./gpu_helpers.ts";

const SEED = test_seed();

/** The rows of `out` the reference owns (not NaN in `want`) within the dtype's relative L2 bound. */
function check_out(be: CudaBackend, out: Buf, want: Float64Array, name: string): void {
  const got = read_f32(be, out, want.length);
  const have: number[] = [], exp: number[] = [];
  want.forEach((x, i) => {
    if (!Number.isNaN(x)) {
      have.push(got[i]);
      exp.push(x);
    }
  });
  const err = rel_l2(have, exp);
  assert(err < tol(be.dtype, 1e-5), `${name}: relative L2 error ${err}`);
}

/** Runs one attention call on `be` and checks the pools and the owned rows against the reference. */
function check(be: CudaBackend, spec: PagedSpec, seed: number, what: string): void {
  const c = make_paged_case(spec, rng(SEED ^ seed));
  const es = be.dtype === "f32" ? 4 : 2;
  // The device stores the inputs rounded to its dtype: the reference uses the stored values.
  const qkv = upload(be, c.qkv, "qkv"), k = upload(be, c.k, "k pool"), v = upload(be, c.v, "v pool");
  c.qkv = qkv.values;
  c.k = k.values;
  c.v = v.values;
  const want = attention_reference(c);
  const ints = [
    upload_i32(be, c.table, "table"),
    upload_i32(be, c.lengths, "lengths"),
    upload_i32(be, c.counts, "n_new"),
    upload_i32(be, c.seq_start, "seq_start"),
    upload_i32(be, c.row_seq, "row_seq"),
    upload_i32(be, c.positions, "positions"),
  ];
  const [table, lengths, n_new, seq_start, row_seq, positions] = ints;
  const out = be.alloc(c.rows * c.C * es, "out");
  be.attention(paged_attention_args(c, {
    out,
    qkv: qkv.buf,
    cache: { k: k.buf, v: v.buf },
    table,
    lengths,
    n_new,
    seq_start,
    row_seq,
    positions,
  }));
  const name = `${what} (seed ${SEED})`;
  const kd = read_f32(be, k.buf, c.k.length), vd = read_f32(be, v.buf, c.v.length);
  assert(kd.every((x, i) => x === want.k[i]), `${name}: the k pool differs from the expected append`);
  assert(vd.every((x, i) => x === want.v[i]), `${name}: the v pool differs from the expected append`);
  check_out(be, out, want.out, name);
  for (const b of [qkv.buf, k.buf, v.buf, out, ...ints]) be.free(b);
  assertEquals(be.allocated_bytes(), 0, `${name}: leaked buffers`);
}

/** A pool row quantized as common.cuh's ng_kv8_store_row does: s = max |x| / 127 (f32), round(x / s). */
function quantize_row(x: ArrayLike<number>, q: Int8Array, at: number, D: number): number {
  let m = 0;
  for (let d = 0; d < D; d++) m = Math.max(m, Math.abs(x[at + d]));
  const s = Math.fround(m / 127);
  for (let d = 0; d < D; d++) {
    const r = s === 0 ? 0 : Math.fround(x[at + d] / s);
    q[at + d] = Math.max(-127, Math.min(127, Math.sign(r) * Math.round(Math.abs(r))));
  }
  return s;
}

/**
 * A decode step over an int8 KV cache (attention_decode's NG_KV8 variant) against the reference
 * over the pools the device holds after it: the rows before the step unchanged, each appended row
 * within one step of the reference's quantization (a quotient may round the other way), and the
 * output the f64 attention over the dequantized rows.
 */
function check_kv8(be: CudaBackend, spec: PagedSpec, seed: number, what: string): void {
  const c = make_paged_case(spec, rng(SEED ^ seed));
  const { D, C } = c, n_rows = c.num_blocks * c.H * c.block_size;
  const kq = new Int8Array(n_rows * D), vq = new Int8Array(n_rows * D);
  const ks = new Float32Array(n_rows), vs = new Float32Array(n_rows);
  for (let r = 0; r < n_rows; r++) {
    ks[r] = quantize_row(c.k, kq, r * D, D);
    vs[r] = quantize_row(c.v, vq, r * D, D);
  }
  const qkv = upload(be, c.qkv, "qkv");
  c.qkv = qkv.values;
  const bufs = [qkv.buf];
  const own = (b: Buf) => (bufs.push(b), b);
  const pool = (q: Int8Array, label: string) => {
    const b = own(be.alloc(q.byteLength, label));
    be.write(b, q);
    return b;
  };
  const cache = {
    k: pool(kq, "k pool"),
    v: pool(vq, "v pool"),
    k_scale: own(upload_raw_f32(be, ks, "k scales")),
    v_scale: own(upload_raw_f32(be, vs, "v scales")),
  };
  const table = own(upload_i32(be, c.table, "table")), lengths = own(upload_i32(be, c.lengths, "lengths"));
  const n_new = own(upload_i32(be, c.counts, "n_new"));
  const out = be.alloc(c.rows * C * (be.dtype === "f32" ? 4 : 2), "out");
  bufs.push(out);
  be.attention(paged_attention_args(c, { out, qkv: qkv.buf, cache, table, lengths, n_new } as PagedBufs));
  const name = `${what} (seed ${SEED})`;
  const got = { k: new Int8Array(kq.length), v: new Int8Array(vq.length) };
  const got_s = { k: new Float32Array(n_rows), v: new Float32Array(n_rows) };
  be.read(cache.k, got.k);
  be.read(cache.v, got.v);
  be.read(cache.k_scale, got_s.k);
  be.read(cache.v_scale, got_s.v);
  // Rows appended this step: the reference quantizes them from the stored qkv.
  const appended = new Map<number, [number, number]>(); // pool row -> (b, h)
  for (let b = 0; b < c.B; b++) {
    if (c.counts[b]) {
      for (let h = 0; h < c.H; h++) appended.set(pool_row(c, b, h, c.lengths[b]) / D, [b, h]);
    }
  }
  for (const [kind, q, sc, part] of [["k", kq, ks, 1], ["v", vq, vs, 2]] as const) {
    const want_q = new Int8Array(D);
    for (let r = 0; r < n_rows; r++) {
      const at = appended.get(r);
      const g_q = got[kind].subarray(r * D, (r + 1) * D), g_s = got_s[kind][r];
      if (at === undefined) {
        assert(
          g_s === sc[r] && g_q.every((x, d) => x === q[r * D + d]),
          `${name}: ${kind} pool row ${r} changed`,
        );
        continue;
      }
      const [b, h] = at;
      const want_s = quantize_row(c.qkv.subarray(b * 3 * C + part * C + h * D), want_q, 0, D);
      assert(
        Math.abs(g_s - want_s) <= 1e-6 * want_s,
        `${name}: ${kind} scale of (b ${b}, h ${h}): ${g_s} vs ${want_s}`,
      );
      assert(
        g_q.every((x, d) => Math.abs(x - want_q[d]) <= 1),
        `${name}: ${kind} row of (b ${b}, h ${h}) differs`,
      );
    }
  }
  // The reference over the device's pools, dequantized (the appended rows enter through qkv).
  const deq = (q: Int8Array, sc: Float32Array) => Float32Array.from(q, (x, i) => x * sc[Math.floor(i / D)]);
  const dk = deq(got.k, got_s.k), dv = deq(got.v, got_s.v);
  const ref_qkv = c.qkv.slice();
  for (const [r, [b, h]] of appended) {
    for (let d = 0; d < D; d++) {
      ref_qkv[b * 3 * C + C + h * D + d] = dk[r * D + d];
      ref_qkv[b * 3 * C + 2 * C + h * D + d] = dv[r * D + d];
    }
  }
  const want = attention_reference({ ...c, qkv: ref_qkv, k: dk, v: dv });
  check_out(be, out, want.out, name);
  for (const b of bufs) be.free(b);
  assertEquals(be.allocated_bytes(), 0, `${name}: leaked buffers`);
}

gpu_suite("attention_test", () => {
  // The int8 cache: short and long caches (several passes a warp, keys split in chunks), B = 256.
  for (const dtype of ["f32", "bf16"] as DType[]) {
    Deno.test(`cuda attention (${dtype}, int8 KV cache): decode, short, long and B = 256`, () => {
      using be = backend(dtype, false);
      const decode = { block_size: 16, decode: true };
      const u = rng(31);
      const lengths = Array.from({ length: 256 }, (_, b) => b === 0 ? 447 : Math.floor(u() * 447));
      const cases: [PagedSpec, string][] = [
        ...[16, 24, 64, 128].map((D): [PagedSpec, string] => [
          { ...decode, H: 3, D, max_len: 320, lengths: [40, 57, 173, 290], counts: [1, 1, 0, 1] },
          `D=${D}`,
        ]),
        [
          { ...decode, H: 2, D: 64, max_len: 1024, lengths: [1023, 1020, 5, 900], counts: [1, 1, 1, 0] },
          "long",
        ],
        [{
          ...decode,
          H: 4,
          D: 64,
          max_len: 448,
          lengths,
          counts: lengths.map((_, b) => b % 13 === 5 ? 0 : 1),
        }, "B=256"],
      ];
      cases.forEach(([spec, label], i) => check_kv8(be, spec, 20 + i, `${dtype} int8 ${label} decode`));
    });
  }

  for (const dtype of ["f32", "bf16"] as DType[]) {
    for (const D of [16, 24, 64, 80, 128]) {
      Deno.test(`cuda attention (${dtype}, head ${D}): packed ragged prefill with padding, then decode`, () => {
        using be = backend(dtype, false);
        const H = D === 128 ? 2 : 3, base = { H, D, block_size: 16, max_len: 320 };
        // A fresh prompt over three query blocks, a continuation, one past 128 keys, an idle sequence.
        check(
          be,
          { ...base, lengths: [0, 37, 140, 290], counts: [40, 20, 33, 0], decode: false, padding: 5 },
          1,
          `${dtype} D=${D} prefill`,
        );
        check(
          be,
          { ...base, lengths: [40, 57, 173, 290], counts: [1, 1, 0, 1], decode: true },
          2,
          `${dtype} D=${D} decode`,
        );
        check(
          be,
          { ...base, block_size: 4, lengths: [0, 0, 300], counts: [1, 1, 1], decode: true },
          3,
          `${dtype} D=${D} decode bs 4`,
        );
      });
    }
    for (const D of [64, 128]) {
      Deno.test(`cuda attention (${dtype}, head ${D}): long caches, decode split in chunks`, () => {
        using be = backend(dtype, false);
        const base = { H: 2, D, block_size: 16, max_len: 1024 };
        // Few (b, head) pairs and a long cache: the keys are cut in chunks on any GPU of >= 8 SMs.
        assert(decode_plan(4, 2, 1024, 132).n_chunks > 1, "the long case no longer splits the keys");
        check(
          be,
          { ...base, lengths: [0, 980, 700, 900], counts: [40, 40, 3, 0], decode: false },
          4,
          `${dtype} D=${D} long prefill`,
        );
        // 1024 keys (every chunk), a middle one, a short one (one live chunk, no combine), an idle one.
        check(
          be,
          { ...base, lengths: [1023, 1020, 5, 900], counts: [1, 1, 1, 0], decode: true },
          5,
          `${dtype} D=${D} long decode`,
        );
      });
    }
    // B = 256 (one warp per head on an H100 or H200: several heads a block), and B = 512 with a short
    // cache, where a block holds several heads of one sequence (asserted for 132 SMs).
    for (const [B, max_len, multi_head] of [[256, 128, false], [512, 48, true]] as const) {
      Deno.test(`cuda attention (${dtype}, head 64): decode at B = ${B}`, () => {
        const H = 12, D = 64;
        const plan = decode_plan(B, H, max_len, 132);
        if (multi_head) assert(plan.heads_per_block > 1, `B = ${B} plan ${JSON.stringify(plan)}`);
        using be = backend(dtype, false);
        const u = rng(B);
        const lengths = Array.from(
          { length: B },
          (_, b) => b === 0 ? max_len - 1 : Math.floor(u() * (max_len - 1)),
        );
        const counts = lengths.map((_, b) => b % 17 === 3 ? 0 : 1);
        check(
          be,
          { H, D, block_size: 16, max_len, lengths, counts, decode: true },
          6 + B,
          `${dtype} B=${B} decode`,
        );
      });
    }
  }
  // Tensor-core prefill (attention_prefill_mma): long prompts over several 64-row query tiles and
  // 64-key tiles, ragged rows (partial and empty tiles), then chunks over cached keys.
  for (const dtype of ["bf16", "f16"] as DType[]) {
    for (const D of [64, 128]) {
      Deno.test(`cuda attention (${dtype}, head ${D}): tensor-core prefill of 512, 128, 64 rows`, () => {
        using be = backend(dtype, false);
        const base = { H: 2, D, block_size: 16, max_len: 720, decode: false };
        check(
          be,
          { ...base, lengths: [0, 0, 0], counts: [512, 300, 0], padding: 7 },
          9,
          `${dtype} D=${D} prefill 512`,
        );
        check(
          be,
          { ...base, lengths: [512, 300, 0], counts: [128, 77, 128] },
          10,
          `${dtype} D=${D} chunk 128`,
        );
        check(be, { ...base, lengths: [640, 377, 128], counts: [64, 1, 40] }, 11, `${dtype} D=${D} chunk 64`);
      });
    }
  }
});
