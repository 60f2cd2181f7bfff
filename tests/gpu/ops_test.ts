// CUDA ops against naive TypeScript references on random data, in f32 (1e-5..1e-4 relative L2),
// f16 and bf16 (2e-2): transfers, weight conversion, embed, layernorm, every matmul form, gather,
// advance.
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import type { DType } from "../../src/backend/backend.ts";
import { sub_buf } from "../../src/backend/buf.ts";
import {
  backend,
  decode,
  gelu,
  gpu_suite,
  randn,
  read_f32,
  read_i32,
  ref_matmul,
  rel_l2,
  tol,
  upload,
  upload_i32,
} from "./gpu_helpers.ts";

const DTYPES: DType[] = ["f32", "bf16", "f16"];

gpu_suite("ops_test", () => {
  Deno.test("cuda write/read: round trips, offsets, multi-chunk transfers, bounds", () => {
    using be = backend("f32");
    const n = (20 << 20) + 12; // above two staging chunks
    const data = new Uint8Array(n);
    for (let i = 0; i < n; i++) data[i] = (i * 2654435761) >>> 24;
    const buf = be.alloc(n + 64, "big");
    be.write(buf, data, 64);
    const back = new Uint8Array(n);
    be.read(buf, back, 64);
    assert(back.every((v, i) => v === data[i]), "20 MiB round trip differs");
    const part = new Int32Array([1, -2, 3]);
    be.write(buf, part, 8);
    const got = new Int32Array(5);
    be.read(buf, got.subarray(1, 4), 8);
    assertEquals(Array.from(got), [0, 1, -2, 3, 0]);
    assertThrows(() => be.write(buf, new Uint8Array(100), n), RangeError, "big");
    assertThrows(() => be.read(buf, new Uint8Array(n + 65)), RangeError, "big");
    assertEquals(be.allocated_bytes(), n + 64);
    be.free(buf);
    assertEquals(be.allocated_bytes(), 0);
  });

  for (const dtype of DTYPES) {
    Deno.test(`cuda write_weight (${dtype}): f32/f16/bf16 sources, transpose`, () => {
      using be = backend(dtype);
      const rows = 37, cols = 29, n = rows * cols;
      const x = randn(n, 1);
      const { buf, values } = upload(be, x, "w");
      assert(rel_l2(values, x) < tol(dtype, 1e-7), `f32 -> ${dtype}: ${rel_l2(values, x)}`);
      // A bf16 source (rounded here, nearest even) is stored exactly (f16: to within its rounding).
      const bf = new Uint16Array(n);
      const f = new Float32Array(1), u = new Uint32Array(f.buffer);
      for (let i = 0; i < n; i++) {
        f[0] = x[i];
        bf[i] = (u[0] + 0x7fff + ((u[0] >> 16) & 1)) >>> 16;
      }
      const bf_vals = decode(new Uint8Array(bf.buffer), "bf16");
      be.write_weight(buf, new Uint8Array(bf.buffer), "bf16", n);
      const got = read_f32(be, buf, n);
      assert(rel_l2(got, bf_vals) < (dtype === "f16" ? 1e-3 : 1e-7), `bf16 source: ${rel_l2(got, bf_vals)}`);
      // Transposed: source (rows, cols) stored as (cols, rows).
      be.write_weight(buf, new Uint8Array(x.buffer), "f32", n, [rows, cols]);
      const t = read_f32(be, buf, n);
      const want = new Float32Array(n);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) want[c * rows + r] = x[r * cols + c];
      assert(rel_l2(t, want) < tol(dtype, 1e-7), `transpose: ${rel_l2(t, want)}`);
      be.free(buf);
    });
  }

  for (const dtype of DTYPES) {
    Deno.test(`cuda embed (${dtype}): tokens, positions, clamping of padding`, () => {
      using be = backend(dtype);
      const V = 50, C = 72, P = 20, B = 3, T = 8;
      const wte = upload(be, randn(V * C, 2), "wte"), wpe = upload(be, randn(P * C, 3), "wpe");
      const tokens = Array.from({ length: B * T }, (_, i) => (i * 7) % V);
      tokens[5] = 999; // garbage padding ids are clamped into the table
      tokens[6] = -3;
      const lengths = [0, 5, 15]; // 15 + 7 runs past max_pos: clamped
      const tk = upload_i32(be, tokens, "tokens"), ln = upload_i32(be, lengths, "lengths");
      const out = be.alloc(B * T * C * (dtype === "f32" ? 4 : 2), "out");
      be.embed({ out, tokens: tk, lengths: ln, wte: wte.buf, wpe: wpe.buf, B, T, C, max_pos: P });
      const got = read_f32(be, out, B * T * C);
      const want = new Float32Array(B * T * C);
      for (let b = 0; b < B; b++) {
        for (let t = 0; t < T; t++) {
          const tok = Math.min(Math.max(tokens[b * T + t], 0), V - 1), pos = Math.min(lengths[b] + t, P - 1);
          for (let c = 0; c < C; c++) {
            want[(b * T + t) * C + c] = wte.values[tok * C + c] + wpe.values[pos * C + c];
          }
        }
      }
      assert(rel_l2(got, want) < tol(dtype, 1e-6), `embed ${dtype}: ${rel_l2(got, want)}`);
    });
  }

  for (const dtype of DTYPES) {
    Deno.test(`cuda layernorm (${dtype}): with and without bias, C not a multiple of 32`, () => {
      using be = backend(dtype);
      for (const [rows, C, with_bias] of [[5, 768, true], [3, 100, false], [1, 1600, true]] as const) {
        const x = upload(be, randn(rows * C, 4, 3), "x");
        const w = upload(be, randn(C, 5), "w"), bias = upload(be, randn(C, 6), "b");
        const out = be.alloc(rows * C * (dtype === "f32" ? 4 : 2), "out");
        be.layernorm({ out, x: x.buf, weight: w.buf, bias: with_bias ? bias.buf : null, rows, C, eps: 1e-5 });
        const got = read_f32(be, out, rows * C);
        const want = new Float64Array(rows * C);
        for (let r = 0; r < rows; r++) {
          let mean = 0, v = 0;
          for (let c = 0; c < C; c++) mean += x.values[r * C + c];
          mean /= C;
          for (let c = 0; c < C; c++) v += (x.values[r * C + c] - mean) ** 2;
          const rstd = 1 / Math.sqrt(v / C + 1e-5);
          for (let c = 0; c < C; c++) {
            want[r * C + c] = (x.values[r * C + c] - mean) * rstd * w.values[c] +
              (with_bias ? bias.values[c] : 0);
          }
        }
        assert(rel_l2(got, want) < tol(dtype, 1e-5), `layernorm ${dtype} ${rows}x${C}: ${rel_l2(got, want)}`);
        for (const b of [x.buf, w.buf, bias.buf, out]) be.free(b);
      }
    });
  }

  for (const dtype of DTYPES) {
    Deno.test(`cuda matmul (${dtype}): bias, gelu_erf, gelu_tanh, accumulate, out_f32, views`, () => {
      using be = backend(dtype, false);
      const es = dtype === "f32" ? 4 : 2;
      const shapes: [number, number, number][] = [[1, 65, 384], [37, 288, 96], [16, 3 * 64, 64], [
        5,
        100,
        24,
      ]];
      let seed = 10;
      for (const [M, N, K] of shapes) {
        const x = upload(be, randn((M + 1) * K, seed++), "x"), w = upload(be, randn(N * K, seed++, 0.2), "w");
        const bias = upload(be, randn(N, seed++), "bias");
        const init = upload(be, randn(M * N, seed++), "init");
        const out = be.alloc(M * N * 4, "out");
        // x is a view one row in: a pointer less aligned than the allocation.
        const xv = sub_buf(x.buf, K * es, M * K * es), xs = x.values.subarray(K);
        for (const act of ["none", "gelu_erf", "gelu_tanh"] as const) {
          for (const with_bias of [true, false]) {
            be.matmul({
              out,
              x: xv,
              w: w.buf,
              bias: with_bias ? bias.buf : null,
              M,
              N,
              K,
              act,
              accumulate: false,
            });
            const got = read_f32(be, out, M * N);
            const want = ref_matmul(xs, w.values, with_bias ? bias.values : null, M, N, K);
            if (act !== "none") { for (let i = 0; i < want.length; i++) want[i] = gelu(want[i], act); }
            const err = rel_l2(got, want);
            const limit = tol(dtype, act === "none" ? 1e-5 : 1e-4);
            assert(err < limit, `matmul ${dtype} ${M}x${N}x${K} ${act} bias=${with_bias}: ${err}`);
          }
        }
        // Residual form: out += x @ w^T + bias.
        be.matmul({ out: init.buf, x: xv, w: w.buf, bias: bias.buf, M, N, K, act: "none", accumulate: true });
        const acc = read_f32(be, init.buf, M * N);
        const want = ref_matmul(xs, w.values, bias.values, M, N, K);
        for (let i = 0; i < want.length; i++) want[i] += init.values[i];
        assert(
          rel_l2(acc, want) < tol(dtype, 1e-5),
          `accumulate ${dtype} ${M}x${N}x${K}: ${rel_l2(acc, want)}`,
        );
        // LM head form: f32 logits whatever the dtype.
        be.matmul({
          out,
          x: xv,
          w: w.buf,
          bias: null,
          M,
          N,
          K,
          act: "none",
          accumulate: false,
          out_f32: true,
        });
        const logits = read_f32(be, out, M * N, "f32");
        const lw = ref_matmul(xs, w.values, null, M, N, K);
        assert(
          rel_l2(logits, lw) < tol(dtype, 1e-5),
          `out_f32 ${dtype} ${M}x${N}x${K}: ${rel_l2(logits, lw)}`,
        );
        for (const b of [x.buf, w.buf, bias.buf, init.buf, out]) be.free(b);
      }
      assertThrows(
        () => {
          const b = be.alloc(64, "tiny");
          try {
            be.matmul({
              out: b,
              x: b,
              w: b,
              bias: null,
              M: 4,
              N: 4,
              K: 4,
              act: "gelu_erf",
              accumulate: true,
            });
          } finally {
            be.free(b);
          }
        },
        Error,
        "accumulate",
      );
    });
  }

  for (const dtype of ["f32", "bf16"] as DType[]) {
    Deno.test(`cuda gather_last and advance (${dtype})`, () => {
      using be = backend(dtype);
      const B = 4, T = 6, C = 40;
      const x = upload(be, randn(B * T * C, 20), "x");
      const n_new = [6, 1, 0, 3];
      const nn = upload_i32(be, n_new, "n_new");
      const out = be.alloc(B * C * (dtype === "f32" ? 4 : 2), "out");
      be.gather_last({ out, x: x.buf, n_new: nn, B, T, C });
      const got = read_f32(be, out, B * C);
      for (let b = 0; b < B; b++) {
        const t = Math.max(n_new[b] - 1, 0);
        for (let c = 0; c < C; c++) {
          assertEquals(got[b * C + c], x.values[(b * T + t) * C + c], `row ${b} col ${c}`);
        }
      }
      const lengths = upload_i32(be, [10, 0, 7, 1], "lengths");
      be.advance({ lengths, n_new: nn, B });
      assertEquals(Array.from(read_i32(be, lengths, B)), [16, 1, 7, 4]);
    });
  }
});
