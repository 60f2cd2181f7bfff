/**
 * Weight-only int8 quantization (src/model/quantize.ts) and the int8 model on the CPU backend:
 * per-row scales bound each value's error by half a step, and the quantized embedded model's logits
 * stay close to the f32 model's.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import { DEFAULT_MODEL, load_model } from "../mod.ts";
import { quantize_rows, transpose } from "../src/model/quantize.ts";
import { rng, test_seed } from "./helpers/rng.ts";

Deno.test("quantize_rows: per-row scales, each value within half a step, the row's max at +-127", () => {
  const r = rng(test_seed());
  const rows = 7, cols = 33;
  const w = Float32Array.from(
    { length: rows * cols },
    (_, i) => (r() - 0.5) * (1 + (i % cols === 0 ? 5 : 0)),
  );
  w.fill(0, 2 * cols, 3 * cols); // an all-zero row
  const { q, scale } = quantize_rows(w, rows, cols);
  assertEquals(scale[2], 0);
  for (let i = 2 * cols; i < 3 * cols; i++) assertEquals(q[i], 0);
  for (let row = 0; row < rows; row++) {
    if (row === 2) continue;
    let max = 0;
    for (let c = 0; c < cols; c++) {
      const v = w[row * cols + c];
      max = Math.max(max, Math.abs(v));
      assert(Math.abs(q[row * cols + c] * scale[row] - v) <= scale[row] / 2 + 1e-7, `row ${row} col ${c}`);
    }
    assert(Math.abs(scale[row] - max / 127) < 1e-9);
    assert(q.subarray(row * cols, (row + 1) * cols).some((x) => Math.abs(x) === 127));
  }
  assertThrows(() => quantize_rows(new Float32Array([1, NaN]), 1, 2), RangeError, "row 0, column 1 is NaN");
  assertThrows(() => quantize_rows(new Float32Array(3), 2, 2), RangeError, "3 values");
});

Deno.test("transpose: a (cols, rows) store read as (rows, cols)", () => {
  assertEquals([...transpose(Float32Array.from([1, 2, 3, 4, 5, 6]), 2, 3)], [1, 3, 5, 2, 4, 6]);
});

Deno.test("int8 weights: the embedded model's logits stay close to f32, in a quarter of the bytes", async () => {
  using f32 = await load_model(DEFAULT_MODEL, { device: "cpu" });
  using q8 = await load_model(DEFAULT_MODEL, { device: "cpu", weights: "int8" });
  assertEquals(q8.gpt.weights, "int8");
  const ids = f32.tokenizer.encode("ROMEO:\nBut soft, what light through yonder window breaks?");
  const a = f32.engine.prefill_logits([ids])[0], b = q8.engine.prefill_logits([ids])[0];
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) num += (a[i] - b[i]) ** 2, den += a[i] ** 2;
  const rel = Math.sqrt(num / den);
  assert(rel < 0.02 && rel > 0, `relative L2 error of the logits ${rel}`);
  // The four linear layers of each block: 12 C^2 values per layer, 4 bytes each in f32, 1 in int8
  // (plus 4 bytes for each of the 9C rows' scales).
  const C = f32.config.n_embd, L = f32.config.n_layer;
  assertEquals(f32.gpt.weight_bytes - q8.gpt.weight_bytes, L * (12 * C * C * 3 - 9 * C * 4));
  await assertRejects(
    () => load_model(DEFAULT_MODEL, { device: "cpu", weights: "int4" as "int8" }),
    RangeError,
    'weights must be "dtype" or "int8", got "int4"',
  );
});
