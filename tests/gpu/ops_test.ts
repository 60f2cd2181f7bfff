// CUDA ops against naive TypeScript references on random data, in f32 (1e-5..1e-4 relative L2),
// f16 and bf16 (2e-2): transfers, weight conversion, embed, layernorm, every matmul form (with the
// fused layernorm, through the gemv kernel and cuBLASLt), gather, advance.
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import type { DType, MatmulArgs } from "../../src/backend/backend.ts";
import { sub_buf } from "../../src/backend/buf.ts";
import { quantize_rows } from "../../src/model/quantize.ts";
import {
  backend,
  decode,
  gelu,
  gpu_suite,
  randn,
  read_f32,
  read_i32,
  ref_layernorm,
  ref_matmul,
  rel_l2,
  tol,
  upload,
  upload_i32,
  upload_raw_f32,
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
      const V = 50, C = 72, P = 20, rows = 24;
      const wte = upload(be, randn(V * C, 2), "wte"), wpe = upload(be, randn(P * C, 3), "wpe");
      const tokens = Array.from({ length: rows }, (_, i) => (i * 7) % V);
      tokens[5] = 999; // garbage padding ids are clamped into the table
      tokens[6] = -3;
      const positions = Array.from({ length: rows }, (_, i) => (i * 5) % 27 - (i === 3 ? 9 : 0)); // past max_pos and negative: clamped
      const tk = upload_i32(be, tokens, "tokens"), ps = upload_i32(be, positions, "positions");
      const out = be.alloc(rows * C * (dtype === "f32" ? 4 : 2), "out");
      be.embed({ out, tokens: tk, positions: ps, wte: wte.buf, wpe: wpe.buf, rows, C, max_pos: P });
      const got = read_f32(be, out, rows * C);
      const want = new Float32Array(rows * C);
      for (let r = 0; r < rows; r++) {
        const tok = Math.min(Math.max(tokens[r], 0), V - 1), pos = Math.min(Math.max(positions[r], 0), P - 1);
        for (let c = 0; c < C; c++) want[r * C + c] = wte.values[tok * C + c] + wpe.values[pos * C + c];
      }
      assert(rel_l2(got, want) < tol(dtype, 1e-6), `embed ${dtype}: ${rel_l2(got, want)}`);
    });
  }

  for (const dtype of DTYPES) {
    Deno.test(`cuda layernorm (${dtype}): with and without bias, C not a multiple of 32, the vector kernel and not`, () => {
      using be = backend(dtype);
      // 100: rows of part vectors (the scalar kernel); 4608: more vectors than layernorm_vec holds.
      const cases = [[5, 768, true], [3, 100, false], [1, 1600, true], [19, 2048, false], [
        2,
        4608,
        true,
      ]] as const;
      for (const [rows, C, with_bias] of cases) {
        const x = upload(be, randn(rows * C, 4, 3), "x");
        const w = upload(be, randn(C, 5), "w"), bias = upload(be, randn(C, 6), "b");
        const out = be.alloc(rows * C * (dtype === "f32" ? 4 : 2), "out");
        be.layernorm({ out, x: x.buf, weight: w.buf, bias: with_bias ? bias.buf : null, rows, C, eps: 1e-5 });
        const got = read_f32(be, out, rows * C);
        const want = ref_layernorm(x.values, rows, C, w.values, with_bias ? bias.values : null);
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

  for (const dtype of DTYPES) {
    Deno.test(`cuda matmul with ln, small M (${dtype}): gemv and cuBLASLt paths, every epilogue`, () => {
      using be = backend(dtype, false);
      const es = dtype === "f32" ? 4 : 2;
      // [Ms, N, K]: N not a multiple of the gemv's 4 rows per warp; K of gpt2 / gpt2-xl; a tall case
      // with more row groups than the gemv grid has warps (its blocks loop, M = 1 and 2 included);
      // M = 2 at K = 6400 (gpt2-xl's mlp.c_proj at batch 2); K = 100 (bf16/f16 rows of 200 bytes:
      // not whole 16-byte vectors, so cuBLASLt whatever M). Without ln, M = 7 at K = 6400 (slices of
      // 33 and 34 k blocks) and M = 8 at N = 2100 (more tiles than blocks) split K across blocks on
      // tensor cores (gemv_mma_launch).
      const cases: [number[], number, number][] = [
        [Array.from({ length: 16 }, (_, i) => i + 1), 37, 768],
        [[8], 2100, 6400],
        [[1, 3, 8], 129, 1600],
        [[2, 5, 16], 66, 3072],
        [[1, 2, 7], 21, 6400],
        [[1, 2, 4], 40001, 64],
        [[3], 30, 100],
      ];
      let seed = 100;
      for (const [Ms, N, K] of cases) {
        const rows = Math.max(...Ms);
        // x is a view one row into its buffer, with a mean offset (as residual streams have).
        const x = upload(be, randn((rows + 1) * K, seed++, 2).map((v) => v + 0.5), "x");
        const xv = sub_buf(x.buf, K * es, rows * K * es), xs = x.values.subarray(K);
        const w = upload(be, randn(N * K, seed++, 0.1), "w"), bias = upload(be, randn(N, seed++), "bias");
        const g = upload(be, randn(K, seed++, 0.5).map((v) => v + 1), "ln.w");
        const gb = upload(be, randn(K, seed++, 0.3), "ln.b");
        const init = randn(rows * N, seed++);
        const acc_buf = be.alloc(rows * N * es, "acc"), out = be.alloc(rows * N * 4, "out");
        // Layernormed rows in f64, with and without the ln bias.
        const normed = (with_b: boolean) => ref_layernorm(xs, rows, K, g.values, with_b ? gb.values : null);
        const xn = { with_b: normed(true), no_b: normed(false) };
        const init_vals = (() => {
          const { buf, values } = upload(be, init, "init");
          be.free(buf);
          return values;
        })();
        type Form = {
          name: string;
          ln: "with_b" | "no_b" | null;
          bias: boolean;
          act: "none" | "gelu_erf" | "gelu_tanh";
          accumulate?: boolean;
          out_f32?: boolean;
        };
        const forms: Form[] = [
          { name: "qkv", ln: "with_b", bias: true, act: "none" },
          { name: "fc erf", ln: "no_b", bias: true, act: "gelu_erf" },
          { name: "fc tanh", ln: "with_b", bias: false, act: "gelu_tanh" },
          { name: "plain tanh", ln: null, bias: true, act: "gelu_tanh" },
          { name: "residual", ln: null, bias: true, act: "none", accumulate: true },
          { name: "residual ln", ln: "no_b", bias: false, act: "none", accumulate: true },
          { name: "lm head", ln: "with_b", bias: false, act: "none", out_f32: true },
        ];
        for (const M of Ms) {
          for (const f of forms) {
            const src = f.ln ? xn[f.ln] : xs;
            const want = ref_matmul(src, w.values, f.bias ? bias.values : null, M, N, K);
            if (f.act !== "none") { for (let i = 0; i < want.length; i++) want[i] = gelu(want[i], f.act); }
            if (f.accumulate) { for (let i = 0; i < want.length; i++) want[i] += init_vals[i]; }
            // gemv on tensor cores (M >= 3, 16-bit), gemv on CUDA cores, cuBLASLt.
            for (const [gemv, tc] of [[16, true], [16, false], [0, false]] as const) {
              be.gemv = gemv;
              be.gemv_tensor_cores = tc ? "all" : "off";
              const dst = f.accumulate ? acc_buf : out;
              if (f.accumulate) be.write_weight(acc_buf, new Uint8Array(init.buffer), "f32", M * N);
              be.matmul({
                out: dst,
                x: xv,
                w: w.buf,
                bias: f.bias ? bias.buf : null,
                M,
                N,
                K,
                act: f.act,
                accumulate: f.accumulate ?? false,
                out_f32: f.out_f32,
                ln: f.ln ? { weight: g.buf, bias: f.ln === "with_b" ? gb.buf : null, eps: 1e-5 } : undefined,
              });
              const got = read_f32(be, dst, M * N, f.out_f32 ? "f32" : dtype);
              const err = rel_l2(got, want);
              const limit = tol(dtype, f.act === "none" ? 1e-5 : 1e-4);
              assert(err < limit, `${f.name} ${dtype} M=${M} N=${N} K=${K} gemv=${gemv} tc=${tc}: ${err}`);
            }
          }
        }
        for (const b of [x.buf, w.buf, bias.buf, g.buf, gb.buf, acc_buf, out]) be.free(b);
      }
    });
  }

  for (const dtype of DTYPES) {
    Deno.test(`cuda matmul with int8 weights, small M (${dtype}): both gemv kernels, every epilogue`, () => {
      using be = backend(dtype, false);
      const es = dtype === "f32" ? 4 : 2;
      // [Ms, N, K]: gpt2's qkv and fc2 shapes (K a multiple of 64: the tensor-core gemv at M >= 3 in
      // 16 bits), N not a multiple of a row group, K = 80 (CUDA cores only), K = 9216 (on tensor
      // cores, K split across blocks).
      const cases: [number[], number, number][] = [
        [[1, 3, 8, 16], 2304, 768],
        [[2, 5, 12], 37, 3072],
        [[4], 29, 80],
        [[3], 40, 9216],
      ];
      let seed = 300;
      for (const [Ms, N, K] of cases) {
        const rows = Math.max(...Ms);
        const x = upload(be, randn(rows * K, seed++, 1), "x");
        const wf = randn(N * K, seed++, 0.05);
        const { q, scale } = quantize_rows(wf, N, K);
        const w = be.alloc(N * K, "w int8"), ws = upload_raw_f32(be, scale, "w_scale");
        be.write(w, q);
        const deq = Float64Array.from(q, (v, i) => v * scale[Math.floor(i / K)]);
        const bias = upload(be, randn(N, seed++), "bias");
        const g = upload(be, randn(K, seed++, 0.5).map((v) => v + 1), "ln.w");
        const init = randn(rows * N, seed++);
        const acc_buf = be.alloc(rows * N * es, "acc"), out = be.alloc(rows * N * 4, "out");
        const init_vals = read_f32(
          be,
          (() => {
            be.write_weight(acc_buf, new Uint8Array(init.buffer), "f32", rows * N);
            return acc_buf;
          })(),
          rows * N,
        );
        for (const M of Ms) {
          // Layernormed rows (no ln bias) in f64.
          const xn = ref_layernorm(x.values, M, K, g.values, null);
          const forms = [
            { name: "fc tanh", ln: true, act: "gelu_tanh", accumulate: false },
            { name: "residual", ln: false, act: "none", accumulate: true },
          ] as const; // (fc's activation is the only one: the tanh form)
          for (const f of forms) {
            const want = ref_matmul(f.ln ? xn : x.values, deq, bias.values, M, N, K);
            for (let i = 0; i < want.length; i++) {
              want[i] = f.accumulate ? want[i] + init_vals[i] : gelu(want[i], "gelu_tanh");
            }
            for (const tc of [true, false]) {
              be.gemv_tensor_cores = tc ? "all" : "off";
              const dst = f.accumulate ? acc_buf : out;
              if (f.accumulate) be.write_weight(acc_buf, new Uint8Array(init.buffer), "f32", rows * N);
              be.matmul({
                out: dst,
                x: x.buf,
                w,
                w_scale: ws,
                bias: bias.buf,
                M,
                N,
                K,
                act: f.act,
                accumulate: f.accumulate,
                ln: f.ln ? { weight: g.buf, bias: null, eps: 1e-5 } : undefined,
              });
              const got = read_f32(be, dst, M * N, dtype);
              const err = rel_l2(got, want);
              const limit = tol(dtype, 1e-5);
              assert(err < limit, `${f.name} ${dtype} M=${M} N=${N} K=${K} tc=${tc}: ${err}`);
            }
          }
        }
        for (const b of [x.buf, w, ws, bias.buf, g.buf, acc_buf, out]) be.free(b);
      }
    });
  }

  for (const dtype of ["bf16", "f16"] as DType[]) {
    Deno.test(`cuda matmul in gemm_mma (${dtype}): M past the gemv's, ragged last row tile, every epilogue`, () => {
      using be = backend(dtype, false);
      be.gemv = 0;
      be.gemm = true;
      // [M, N, K]: tiles of 64 x 64 with M not a multiple of 64; K of gpt2, gpt2-xl and their c_proj.
      const cases: [number, number, number][] = [[17, 64, 768], [100, 128, 1600], [256, 192, 768], [
        130,
        64,
        3072,
      ]];
      let seed = 500;
      for (const [M, N, K] of cases) {
        const x = upload(be, randn(M * K, seed++, 2).map((v) => v + 0.5), "x");
        const w = upload(be, randn(N * K, seed++, 0.1), "w"), bias = upload(be, randn(N, seed++), "bias");
        const g = upload(be, randn(K, seed++, 0.5).map((v) => v + 1), "ln.w");
        const gb = upload(be, randn(K, seed++, 0.3), "ln.b");
        const init = upload(be, randn(M * N, seed++), "init");
        const out = be.alloc(M * N * 4, "out");
        const forms: [string, boolean | null, boolean, MatmulArgs["act"], boolean, boolean][] = [
          // name, ln (true: with its bias, false: without, null: none), bias, act, accumulate, out_f32
          ["qkv", true, true, "none", false, false],
          ["fc erf", false, true, "gelu_erf", false, false],
          ["plain tanh", null, true, "gelu_tanh", false, false],
          ["residual", null, true, "none", true, false],
          ["lm head", true, false, "none", false, true],
        ];
        for (const [name, ln, with_bias, act, accumulate, out_f32] of forms) {
          for (const split of [undefined, 1]) { // the rule's K slices (these shapes split), and none
            be.gemm_split = split;
            const src = ln === null
              ? x.values
              : ref_layernorm(x.values, M, K, g.values, ln ? gb.values : null);
            const want = ref_matmul(src, w.values, with_bias ? bias.values : null, M, N, K);
            if (act !== "none") { for (let i = 0; i < want.length; i++) want[i] = gelu(want[i], act); }
            if (accumulate) { for (let i = 0; i < want.length; i++) want[i] += init.values[i]; }
            const v = init.values; // the residual, written again before each accumulating matmul
            if (accumulate) {
              be.write_weight(init.buf, new Uint8Array(v.buffer, v.byteOffset, v.byteLength), "f32", M * N);
            }
            const dst = accumulate ? init.buf : out;
            be.matmul({
              out: dst,
              x: x.buf,
              w: w.buf,
              bias: with_bias ? bias.buf : null,
              M,
              N,
              K,
              act,
              accumulate,
              out_f32,
              ln: ln === null ? undefined : { weight: g.buf, bias: ln ? gb.buf : null, eps: 1e-5 },
            });
            const got = read_f32(be, dst, M * N, out_f32 ? "f32" : dtype);
            const err = rel_l2(got, want);
            assert(
              err < tol(dtype, 1e-4),
              `${name} ${dtype} M=${M} N=${N} K=${K} split ${split ?? "rule"}: ${err}`,
            );
          }
        }
        for (const b of [x.buf, w.buf, bias.buf, g.buf, gb.buf, init.buf, out]) be.free(b);
      }
      assertEquals(be.allocated_bytes(), 0, "gemm_mma: leaked buffers");
    });
  }

  Deno.test("cuda matmul with ln inside captured steps: gemv and cuBLASLt (scratch grown on the dry run)", () => {
    using be = backend("bf16", true);
    const K = 768, N = 300, es = 2;
    const x = upload(be, randn(16 * K, 200, 3), "x"), w = upload(be, randn(N * K, 201, 0.1), "w");
    const g = upload(be, randn(K, 202, 0.5), "ln.w"), gb = upload(be, randn(K, 203, 0.3), "ln.b");
    const out = be.alloc(16 * N * es, "out");
    for (const M of [2, 16]) {
      be.gemv = 8;
      const record = () =>
        be.matmul({
          out,
          x: x.buf,
          w: w.buf,
          bias: null,
          M,
          N,
          K,
          act: "gelu_erf",
          accumulate: false,
          ln: { weight: g.buf, bias: gb.buf, eps: 1e-5 },
        });
      be.run_step(`ln M=${M}`, record);
      const first = read_f32(be, out, M * N);
      be.write(out, new Uint8Array(M * N * es)); // zeros: the replay must write them again
      be.run_step(`ln M=${M}`, record);
      const again = read_f32(be, out, M * N);
      const xn = new Float64Array(M * K);
      for (let m = 0; m < M; m++) {
        let mean = 0, v = 0;
        for (let k = 0; k < K; k++) mean += x.values[m * K + k];
        mean /= K;
        for (let k = 0; k < K; k++) v += (x.values[m * K + k] - mean) ** 2;
        const rstd = 1 / Math.sqrt(v / K + 1e-5);
        for (let k = 0; k < K; k++) {
          xn[m * K + k] = (x.values[m * K + k] - mean) * rstd * g.values[k] + gb.values[k];
        }
      }
      const want = ref_matmul(xn, w.values, null, M, N, K).map((v) => gelu(v, "gelu_erf"));
      assert(rel_l2(first, want) < 2e-2, `M=${M} captured: ${rel_l2(first, want)}`);
      assertEquals(
        Array.from(again),
        Array.from(first),
        `M=${M}: the replay differs from the capture's launch`,
      );
    }
    assertEquals(be.graph_count(), 2);
  });

  for (const dtype of ["f32", "bf16"] as DType[]) {
    Deno.test(`cuda gather_rows, scatter, advance and logprobs (${dtype})`, () => {
      using be = backend(dtype);
      const rows = 24, C = 40;
      const x = upload(be, randn(rows * C, 20), "x");
      const idx = [5, 0, 23, 11];
      const ix = upload_i32(be, idx, "idx");
      const out = be.alloc(idx.length * C * (dtype === "f32" ? 4 : 2), "out");
      be.gather_rows({ out, x: x.buf, idx: ix, n: idx.length, C });
      const got = read_f32(be, out, idx.length * C);
      idx.forEach((r, i) => {
        for (let c = 0; c < C; c++) assertEquals(got[i * C + c], x.values[r * C + c], `row ${i} col ${c}`);
      });
      const dst = upload_i32(be, [9, 9, 9, 9, 9], "dst"), src = upload_i32(be, [1, 2, 3, 4], "src");
      be.scatter({ dst, src, idx: upload_i32(be, [4, -1, 0, 2], "scatter idx"), n: 4 });
      assertEquals(Array.from(read_i32(be, dst, 5)), [3, 9, 4, 9, 1]);
      const nn = upload_i32(be, [6, 1, 0, 3], "n_new"), lengths = upload_i32(be, [10, 0, 7, 1], "lengths");
      be.advance({ lengths, n_new: nn, B: 4 });
      assertEquals(Array.from(read_i32(be, lengths, 4)), [16, 1, 7, 4]);
      // logprobs against the CPU's definition: log_softmax, the top 5 by value then lower id.
      const R = 3, V = 5003, ld = 5008, top_n = 5, W = 1 + 2 * top_n;
      const logits = randn(R * ld, 21, 4);
      logits[ld + 17] = logits[ld + 4000] = 9; // a tie at the top: id 17 first
      const lg = upload_raw_f32(be, logits, "logits"), tg = upload_i32(be, [3, 17, -1], "targets");
      const lp = be.alloc(R * W * 4, "logprobs");
      be.logprobs({ out: lp, logits: lg, targets: tg, rows: R, V, ld, top_n });
      const have = new Float32Array(R * W);
      be.read(lp, have);
      for (let r = 0; r < R; r++) {
        const row = Array.from(logits.subarray(r * ld, r * ld + V));
        const m = Math.max(...row), lse = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
        const t = [3, 17, -1][r];
        if (t < 0) assert(Number.isNaN(have[r * W]));
        else {assert(
            Math.abs(have[r * W] - (row[t] - lse)) < 1e-4,
            `row ${r}: ${have[r * W]} vs ${row[t] - lse}`,
          );}
        row.map((v, id) => [v, id]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, top_n).forEach(
          ([v, id], k) => {
            assertEquals(have[r * W + 1 + 2 * k], id, `row ${r} rank ${k}`);
            assert(Math.abs(have[r * W + 2 + 2 * k] - (v - lse)) < 1e-4);
          },
        );
      }
    });
  }
});
