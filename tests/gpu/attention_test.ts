// CUDA attention (kv append + prefill; decode with the append fused in, in one chunk or split in
// several and combined) against a naive f64 reference, with ragged lengths / n_new, head sizes 16,
// 24, 64, 80 and 128, long caches (1024 keys) and B = 256, in f32 and bf16; the tensor-core prefill
// (f16/bf16, head sizes 64 and 128) at T = 512, 128 and 64 with ragged n_new and chunked prefill.
import { assert, assertEquals } from "../helpers/assert.ts";
import type { Buf, DType } from "../../src/backend/backend.ts";
import type { CudaBackend } from "../../src/backend/cuda.ts";
import { decode_plan } from "../../src/backend/cuda/ops.ts";
import { backend, gpu_suite, randn, read_f32, rel_l2, rng, tol, upload, upload_i32 } from "./gpu_helpers.ts";

interface Case {
  be: CudaBackend;
  B: number;
  H: number;
  D: number;
  max_T: number;
  k: Buf;
  v: Buf;
  /** Host mirror of the caches (B, H, max_T, D). */
  k_host: Float32Array;
  v_host: Float32Array;
}

/** Runs one attention step and checks caches and valid output rows against the reference. */
function step(c: Case, T: number, lengths: number[], n_new: number[], seed: number, what: string): void {
  const { be, B, H, D, max_T } = c, C = H * D;
  const qkv = upload(be, randn(B * T * 3 * C, seed), "qkv");
  const ln = upload_i32(be, lengths, "lengths"), nn = upload_i32(be, n_new, "n_new");
  const out = be.alloc(B * T * C * (be.dtype === "f32" ? 4 : 2), "out");
  be.attention({
    out,
    qkv: qkv.buf,
    k_cache: c.k,
    v_cache: c.v,
    lengths: ln,
    n_new: nn,
    B,
    T,
    n_head: H,
    head_dim: D,
    max_T,
  });
  const got = read_f32(be, out, B * T * C);
  // The append, on the host mirror.
  const cache_at = (b: number, h: number, p: number) => ((b * H + h) * max_T + p) * D;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < n_new[b]; t++) {
      for (let h = 0; h < H; h++) {
        for (let d = 0; d < D; d++) {
          const src = (b * T + t) * 3 * C + h * D + d;
          c.k_host[cache_at(b, h, lengths[b] + t) + d] = qkv.values[src + C];
          c.v_host[cache_at(b, h, lengths[b] + t) + d] = qkv.values[src + 2 * C];
        }
      }
    }
  }
  const k_dev = read_f32(be, c.k, c.k_host.length), v_dev = read_f32(be, c.v, c.v_host.length);
  assert(k_dev.every((x, i) => x === c.k_host[i]), `${what}: k cache differs from the expected append`);
  assert(v_dev.every((x, i) => x === c.v_host[i]), `${what}: v cache differs from the expected append`);
  // Output rows of valid slots.
  const want: number[] = [], have: number[] = [];
  const scale = 1 / Math.sqrt(D);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < n_new[b]; t++) {
      const n_keys = lengths[b] + t + 1;
      for (let h = 0; h < H; h++) {
        const q = (b * T + t) * 3 * C + h * D;
        const s = new Float64Array(n_keys);
        let m = -Infinity;
        for (let j = 0; j < n_keys; j++) {
          let a = 0;
          for (let d = 0; d < D; d++) a += qkv.values[q + d] * c.k_host[cache_at(b, h, j) + d];
          s[j] = a * scale;
          m = Math.max(m, s[j]);
        }
        let z = 0;
        for (let j = 0; j < n_keys; j++) z += s[j] = Math.exp(s[j] - m);
        for (let d = 0; d < D; d++) {
          let o = 0;
          for (let j = 0; j < n_keys; j++) o += s[j] * c.v_host[cache_at(b, h, j) + d];
          want.push(o / z);
          have.push(got[(b * T + t) * C + h * D + d]);
        }
      }
    }
  }
  const err = rel_l2(have, want);
  assert(err < tol(be.dtype, 1e-5), `${what}: relative L2 error ${err}`);
  for (const b of [qkv.buf, ln, nn, out]) be.free(b);
}

gpu_suite("attention_test", () => {
  for (const dtype of ["f32", "bf16"] as DType[]) {
    for (const D of [16, 24, 64, 80, 128]) {
      Deno.test(`cuda attention (${dtype}, head ${D}): ragged prefill, then decode`, () => {
        using be = backend(dtype, false);
        const B = 4, H = D === 128 ? 2 : 3, max_T = 300, n = B * H * max_T * D;
        const k = upload(be, randn(n, 100 + D), "k cache"), v = upload(be, randn(n, 200 + D), "v cache");
        const c: Case = { be, B, H, D, max_T, k: k.buf, v: v.buf, k_host: k.values, v_host: v.values };
        // Prefill: a fresh prompt over three query blocks, a continuation, one past 128 keys,
        // and an idle sequence with a long cache.
        const T = 40;
        const lengths = [0, 37, 140, 290], n_new = [40, 20, 33, 0];
        step(c, T, lengths, n_new, 1, `${dtype} D=${D} prefill`);
        // Decode: one token each, except sequence 2 (idle); sequence 3 reads 291 keys.
        const l2 = lengths.map((l, b) => l + n_new[b]);
        step(c, 1, l2, [1, 1, 0, 1], 2, `${dtype} D=${D} decode`);
        const l3 = l2.map((l, b) => l + [1, 1, 0, 1][b]);
        step(c, 1, l3, [1, 1, 1, 1], 3, `${dtype} D=${D} decode 2`);
        assertEquals(be.allocated_bytes(), 2 * n * (dtype === "f32" ? 4 : 2));
      });
    }
    for (const D of [64, 128]) {
      Deno.test(`cuda attention (${dtype}, head ${D}): long caches, decode split in chunks`, () => {
        using be = backend(dtype, false);
        const B = 4, H = 2, max_T = 1100, n = B * H * max_T * D;
        // Few (b, head) pairs and a long cache: the keys are cut in chunks on any GPU of >= 8 SMs.
        assert(decode_plan(B, H, max_T, 132).n_chunks > 1, "the long case no longer splits the keys");
        const k = upload(be, randn(n, 300 + D), "k cache"), v = upload(be, randn(n, 400 + D), "v cache");
        const c: Case = { be, B, H, D, max_T, k: k.buf, v: v.buf, k_host: k.values, v_host: v.values };
        const lengths = [0, 980, 700, 900], n_new = [40, 40, 3, 0];
        step(c, 40, lengths, n_new, 4, `${dtype} D=${D} long prefill`);
        // 1024 keys (every chunk), a middle one, a short one (one live chunk, no combine), an idle one.
        const l2 = [1023, 1020, 5, 900];
        step(c, 1, l2, [1, 1, 1, 0], 5, `${dtype} D=${D} long decode`);
        step(c, 1, l2.map((l) => l + 1), [1, 1, 1, 1], 6, `${dtype} D=${D} long decode 2`);
        assertEquals(be.allocated_bytes(), 2 * n * (dtype === "f32" ? 4 : 2));
      });
    }
    // B = 256 (a few warps per head on an H100), and B = 512 with a short cache, where a block
    // holds several heads of one sequence (asserted for an H100's 132 SMs).
    for (const [B, max_T, multi_head] of [[256, 128, false], [512, 40, true]] as const) {
      const what = multi_head ? "several heads per block" : "ragged";
      Deno.test(`cuda attention (${dtype}, head 64): decode at B = ${B}, ${what}`, () => {
        const H = 12, D = 64, n = B * H * max_T * D;
        const plan = decode_plan(B, H, max_T, 132);
        if (multi_head) assert(plan.heads_per_block > 1, `B = ${B} plan ${JSON.stringify(plan)}`);
        using be = backend(dtype, false);
        const k = upload(be, randn(n, 500 + B), "k cache"), v = upload(be, randn(n, 600 + B), "v cache");
        const c: Case = { be, B, H, D, max_T, k: k.buf, v: v.buf, k_host: k.values, v_host: v.values };
        const u = rng(B);
        const lengths = Array.from(
          { length: B },
          (_, b) => b === 0 ? max_T - 2 : Math.floor(u() * (max_T - 2)),
        );
        const n_new = lengths.map((_, b) => b % 17 === 3 ? 0 : 1);
        step(c, 1, lengths, n_new, 7, `${dtype} B=${B} decode`);
        step(c, 1, lengths.map((l, b) => l + n_new[b]), n_new.map(() => 1), 8, `${dtype} B=${B} decode 2`);
        assertEquals(be.allocated_bytes(), 2 * n * (dtype === "f32" ? 4 : 2));
      });
    }
  }
  // Tensor-core prefill (attention_prefill_mma): long prompts over several 64-row query tiles and
  // 64-key tiles, ragged n_new (partial and empty tiles), then chunked prefill over cached keys.
  for (const dtype of ["bf16", "f16"] as DType[]) {
    for (const D of [64, 128]) {
      Deno.test(`cuda attention (${dtype}, head ${D}): tensor-core prefill, T = 512, 128, 64`, () => {
        using be = backend(dtype, false);
        const B = 3, H = 2, max_T = 720, n = B * H * max_T * D;
        const k = upload(be, randn(n, 700 + D), "k cache"), v = upload(be, randn(n, 800 + D), "v cache");
        const c: Case = { be, B, H, D, max_T, k: k.buf, v: v.buf, k_host: k.values, v_host: v.values };
        // A full 512-token prompt, a ragged one (300: a partial query tile) and an idle sequence.
        step(c, 512, [0, 0, 0], [512, 300, 0], 9, `${dtype} D=${D} prefill T=512`);
        // Chunked prefill: each continues over its cache (the idle one starts a 128-token prompt).
        step(c, 128, [512, 300, 0], [128, 77, 128], 10, `${dtype} D=${D} chunk T=128`);
        step(c, 64, [640, 377, 128], [64, 1, 40], 11, `${dtype} D=${D} chunk T=64`);
        assertEquals(be.allocated_bytes(), 2 * n * 2);
      });
    }
  }
});
