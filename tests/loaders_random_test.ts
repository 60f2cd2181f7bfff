/** Random-weight model sources: shapes, statistics, determinism, bf16, speed. */
import node_assert from "node:assert/strict";
import { assert, assertEquals } from "./helpers/assert.ts";
import { random_model_source } from "../src/loaders/random.ts";
import { gpt2_config, type GPTConfig, weight_shapes } from "../src/model/config.ts";

const small: GPTConfig = {
  n_layer: 2,
  n_head: 4,
  n_embd: 64,
  block_size: 32,
  vocab_size: 1000,
  bias: true,
  activation: "gelu_tanh",
  layer_norm_eps: 1e-5,
};

const f32 = (b: Uint8Array) => new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);

Deno.test("random: every canonical tensor, normal(0, 0.02) weights, LayerNorm 1, biases 0", async () => {
  using src = random_model_source(small);
  assertEquals(src.format, "random");
  assertEquals(src.tokenizer, { kind: "gpt2" });
  assertEquals(src.config, small);
  const shapes = weight_shapes(small);
  assertEquals([...src.tensors.keys()], [...shapes.keys()]);
  for (const [name, t] of src.tensors) {
    assertEquals(t.shape, shapes.get(name));
    assertEquals(t.dtype, "f32");
    const v = f32(await t.read());
    assertEquals(v.length, t.shape.reduce((a, b) => a * b, 1));
    if (name.endsWith(".bias")) assert(v.every((x) => x === 0), name);
    else if (/ln_(1|2|f)\.weight$/.test(name)) assert(v.every((x) => x === 1), name);
    else {
      const mean = v.reduce((a, b) => a + b, 0) / v.length;
      const std = Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / v.length);
      assert(Math.abs(mean) < 0.002, `${name} mean ${mean}`);
      assert(Math.abs(std - 0.02) < 0.002, `${name} std ${std}`);
      // Not a constant or repeating pattern: many distinct values.
      const head = v.subarray(0, 4096);
      assert(new Set(head).size > 0.97 * head.length, `${name} values repeat`);
    }
  }
});

Deno.test("random: deterministic in the seed; tensors differ from each other", async () => {
  const a = random_model_source(small, { seed: 1 });
  const b = random_model_source(small, { seed: 1 });
  const c = random_model_source(small, { seed: 2 });
  const name = "h.1.attn.c_attn.weight";
  const x = await a.tensors.get(name)!.read();
  assertEquals(await b.tensors.get(name)!.read(), x);
  node_assert.notDeepStrictEqual(await c.tensors.get(name)!.read(), x);
  const y = await a.tensors.get("h.0.attn.c_attn.weight")!.read();
  node_assert.notDeepStrictEqual(y, x);
  // Read order does not matter.
  assertEquals(await a.tensors.get(name)!.read(), x);
});

Deno.test("random: bf16 output is the f32 weights rounded, at half the bytes", async () => {
  const a = random_model_source(small, { seed: 3 });
  const b = random_model_source(small, { seed: 3, dtype: "bf16" });
  for (const name of ["wte", "h.0.mlp.c_fc.weight", "ln_f.weight", "h.1.mlp.c_proj.bias"]) {
    const tb = b.tensors.get(name)!;
    assertEquals(tb.dtype, "bf16");
    const full = f32(await a.tensors.get(name)!.read());
    const half = await tb.read();
    assertEquals(half.length, full.length * 2);
    const bits = new Uint16Array(half.buffer);
    const up = new Float32Array(new Uint32Array(Array.from(bits, (h) => h << 16)).buffer);
    for (let i = 0; i < full.length; i += 97) {
      assert(
        Math.abs(up[i] - full[i]) <= Math.abs(full[i]) / 256 + 1e-30,
        `${name}[${i}]: ${up[i]} vs ${full[i]}`,
      );
    }
  }
});

Deno.test("random: gpt2-xl (1.5e9 weights) generates quickly in bf16", async () => {
  const cfg = gpt2_config("gpt2-xl");
  using src = random_model_source(cfg, { dtype: "bf16" });
  const t0 = performance.now();
  let bytes = 0;
  for (const t of src.tensors.values()) bytes += (await t.read()).length;
  const ms = performance.now() - t0;
  assertEquals(bytes, [...weight_shapes(cfg).values()].reduce((a, s) => a + s.reduce((x, y) => x * y, 2), 0));
  assert(ms < 10_000, `gpt2-xl random weights took ${ms.toFixed(0)} ms`);
});
