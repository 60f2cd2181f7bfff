/**
 * The embedded default model (models/shakespeare-char) is the shared checkpoint converted by
 * examples/convert.ts: the same weights bit for bit, and the converter round-trips in every dtype.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { open_model } from "../src/loaders/open_model.ts";
import { DEFAULT_MODEL } from "../src/load.ts";
import { convert_nanogpt } from "../examples/convert.ts";
import { EMBEDDED, needs_shared, SHAKESPEARE } from "./helpers/shared.ts";
import { convert_dtype } from "../src/loaders/convert_dtype.ts";

Deno.test(needs_shared("embedded model: every tensor equals the shared ckpt.pt's, bit for bit"), async () => {
  using shared = await open_model(`${SHAKESPEARE}ckpt.pt`);
  using embedded = await open_model(DEFAULT_MODEL);
  assertEquals(embedded.config, shared.config);
  assertEquals(embedded.info, shared.info);
  assertEquals([...embedded.tensors.keys()].sort(), [...shared.tensors.keys()].sort());
  for (const [name, t] of shared.tensors) {
    assertEquals(await embedded.tensors.get(name)!.read(), await t.read(), name);
  }
  const itos = (s: typeof shared) => s.tokenizer.kind === "char" ? [...s.tokenizer.itos] : [];
  assertEquals(itos(embedded), itos(shared));
});

Deno.test("embedded model: converting it again gives the same file; bf16 keeps config and vocabulary", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ngpt_convert_test_" });
  try {
    using src = await open_model(DEFAULT_MODEL);
    await convert_nanogpt(src, `${dir}/f32.safetensors`, "f32");
    assertEquals(
      await Deno.readFile(`${dir}/f32.safetensors`),
      await Deno.readFile(`${EMBEDDED}model.safetensors`),
    );
    await convert_nanogpt(src, `${dir}/bf16.safetensors`, "bf16");
    using half = await open_model(`${dir}/bf16.safetensors`);
    assertEquals(half.config, src.config);
    assertEquals(half.tokenizer, src.tokenizer);
    const wte = half.tensors.get("wte")!;
    assertEquals(wte.dtype, "bf16");
    const want = convert_dtype(await src.tensors.get("wte")!.read(), "f32", "bf16", 65 * 256);
    assertEquals(await wte.read(), want);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert_dtype: bf16 rounds to nearest even; f16 and back are exact for representable values", () => {
  const f = Float32Array.of(1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 65504, NaN);
  const bf = new Uint16Array(convert_dtype(new Uint8Array(f.buffer), "f32", "bf16", f.length).buffer);
  assertEquals([...bf.subarray(0, 5)], [0x3f80, 0x3f80, 0x3f82, 0xc020, 0x4780]);
  assert((bf[5] & 0x7f80) === 0x7f80 && (bf[5] & 0x7f) !== 0, "NaN stays NaN");
  const back = new Float32Array(
    convert_dtype(convert_dtype(new Uint8Array(f.buffer), "f32", "f16", 5), "f16", "f32", 5).buffer,
  );
  assertEquals([...back], [1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 65504]);
});
