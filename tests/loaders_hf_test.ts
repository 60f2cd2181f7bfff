/**
 * safetensors + HF GPT-2 directories: both fixture layouts, Conv1D transposition, lm_head tying, old
 * buffers, F16/BF16, shards, and broken configs / files (each error must name what was wrong).
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import { fixture } from "./helpers/compare.ts";
import { hf_config, open_hf } from "../src/loaders/hf.ts";
import { SafetensorsFile } from "../src/loaders/safetensors.ts";
import type { ModelSource } from "../src/model/source.ts";

const tmp_root = Deno.makeTempDirSync({ prefix: "ngpt_hf_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp_root, { recursive: true }));
let tmp_count = 0;

type StEntry = { name: string; dtype: string; shape: number[]; data: Uint8Array };

/** Serialises safetensors: u64 header length, JSON header, data in entry order. */
function safetensors_bytes(entries: StEntry[], meta: Record<string, string> = { format: "pt" }): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: meta };
  let off = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.data.length] };
    off += e.data.length;
  }
  const h = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  let p = 8 + h.length;
  for (const e of entries) {
    out.set(e.data, p);
    p += e.data.length;
  }
  return out;
}

/** Every tensor of a safetensors file, in file order. */
async function read_entries(path: string): Promise<StEntry[]> {
  using f = await SafetensorsFile.open(path);
  const out: StEntry[] = [];
  for (const e of f.entries.values()) {
    out.push({ name: e.name, dtype: e.dtype, shape: [...e.shape], data: await f.read(e.name) });
  }
  return out;
}

/** A new HF directory: the fixture's config (edited) and the given tensors (default: the fixture's). */
async function make_dir(
  opts: { config?: (c: Record<string, unknown>) => void; config_text?: string; entries?: StEntry[] } = {},
): Promise<string> {
  const dir = `${tmp_root}/${tmp_count++}`;
  await Deno.mkdir(dir);
  const cfg = JSON.parse(await Deno.readTextFile(fixture("hf_tiny_lm/config.json")));
  opts.config?.(cfg);
  await Deno.writeTextFile(`${dir}/config.json`, opts.config_text ?? JSON.stringify(cfg, null, 2));
  const entries = opts.entries ?? await read_entries(fixture("hf_tiny_lm/model.safetensors"));
  await Deno.writeFile(`${dir}/model.safetensors`, safetensors_bytes(entries));
  return dir;
}

async function all_bytes(src: ModelSource): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for (const [n, t] of src.tensors) out.set(n, await t.read());
  return out;
}

const CONV1D = /\.(c_attn|c_proj|c_fc)\.weight$/;

Deno.test("hf: hf_tiny_lm (transformer. prefix) and hf_tiny_bare give the same canonical model", async () => {
  using lm = await open_hf(fixture("hf_tiny_lm"));
  using bare = await open_hf(fixture("hf_tiny_bare"));
  for (const src of [lm, bare]) {
    assertEquals(src.format, "hf");
    assertEquals(src.tokenizer, { kind: "gpt2" });
    assertEquals(src.config, {
      n_layer: 2,
      n_head: 4,
      n_embd: 64,
      block_size: 48,
      vocab_size: 300,
      bias: true,
      activation: "gelu_tanh",
      layer_norm_eps: 1e-5,
    });
    assertEquals(src.tensors.size, 2 + 12 * 2 + 2);
    assert(!src.tensors.has("lm_head"), "lm_head is tied");
  }
  assertEquals([...lm.tensors.keys()].sort(), [...bare.tensors.keys()].sort());
  for (const [name, t] of lm.tensors) {
    const u = bare.tensors.get(name)!;
    assertEquals([t.dtype, t.shape, t.stored_transposed], [u.dtype, u.shape, u.stored_transposed]);
  }
  assertEquals(await all_bytes(lm), await all_bytes(bare));
});

Deno.test("hf: Conv1D weights keep their stored (in, out) layout with a canonical (out, in) shape", async () => {
  using src = await open_hf(fixture("hf_tiny_lm"));
  const C = 64;
  assertEquals(src.tensors.get("h.0.attn.c_attn.weight")!.shape, [3 * C, C]);
  assertEquals(src.tensors.get("h.0.attn.c_attn.weight")!.stored_transposed, [C, 3 * C]);
  assertEquals(src.tensors.get("h.1.mlp.c_fc.weight")!.stored_transposed, [C, 4 * C]);
  assertEquals(src.tensors.get("h.1.mlp.c_proj.weight")!.shape, [C, 4 * C]);
  assertEquals(src.tensors.get("h.1.mlp.c_proj.weight")!.stored_transposed, [4 * C, C]);
  for (const [name, t] of src.tensors) {
    assertEquals(t.stored_transposed !== undefined, CONV1D.test(name), name);
  }
  // Bytes come back exactly as stored.
  const raw = await read_entries(fixture("hf_tiny_lm/model.safetensors"));
  const stored = raw.find((e) => e.name === "transformer.h.0.attn.c_attn.weight")!;
  assertEquals(await src.tensors.get("h.0.attn.c_attn.weight")!.read(), stored.data);
});

Deno.test("hf: old checkpoints' attn.bias / attn.masked_bias buffers are ignored", async () => {
  const entries = await read_entries(fixture("hf_tiny_bare/model.safetensors"));
  for (const i of [0, 1]) {
    entries.push({
      name: `h.${i}.attn.bias`,
      dtype: "F32",
      shape: [1, 1, 48, 48],
      data: new Uint8Array(48 * 48 * 4),
    });
    entries.push({ name: `h.${i}.attn.masked_bias`, dtype: "F32", shape: [], data: new Uint8Array(4) });
  }
  using src = await open_hf(await make_dir({ entries }));
  assertEquals(src.tensors.size, 28);
});

Deno.test("hf: lm_head.weight byte-identical to wte is tied; a different one is kept as lm_head", async () => {
  const entries = await read_entries(fixture("hf_tiny_lm/model.safetensors"));
  const wte = entries.find((e) => e.name === "transformer.wte.weight")!;
  {
    using src = await open_hf(
      await make_dir({ entries: [...entries, { ...wte, name: "lm_head.weight", data: wte.data.slice() }] }),
    );
    assert(!src.tensors.has("lm_head"));
  }
  const other = wte.data.slice();
  other[17] ^= 0x40;
  using src = await open_hf(
    await make_dir({ entries: [...entries, { ...wte, name: "lm_head.weight", data: other }] }),
  );
  const lm = src.tensors.get("lm_head");
  assert(lm);
  assertEquals(lm.shape, [300, 64]);
  assertEquals(lm.stored_transposed, undefined);
  assertEquals(await lm.read(), other);
});

Deno.test("hf: F16 and BF16 tensors keep their dtype", async () => {
  const entries = await read_entries(fixture("hf_tiny_bare/model.safetensors"));
  const half = entries.map((e, i) => ({
    ...e,
    dtype: i % 2 ? "F16" : "BF16",
    data: e.data.slice(0, e.data.length / 2),
  }));
  using src = await open_hf(await make_dir({ entries: half }));
  const dtypes = new Set([...src.tensors.values()].map((t) => t.dtype));
  assertEquals([...dtypes].sort(), ["bf16", "f16"]);
  for (const t of src.tensors.values()) {
    assertEquals(
      (await t.read()).length,
      t.shape.reduce((a, b) => a * b, 2),
    );
  }
});

Deno.test("hf: sharded weights (model.safetensors.index.json)", async () => {
  const entries = await read_entries(fixture("hf_tiny_lm/model.safetensors"));
  const dir = await make_dir();
  await Deno.remove(`${dir}/model.safetensors`);
  const a = entries.slice(0, 10), b = entries.slice(10);
  await Deno.writeFile(`${dir}/model-00001-of-00002.safetensors`, safetensors_bytes(a));
  await Deno.writeFile(`${dir}/model-00002-of-00002.safetensors`, safetensors_bytes(b));
  const weight_map: Record<string, string> = {};
  for (const e of a) weight_map[e.name] = "model-00001-of-00002.safetensors";
  for (const e of b) weight_map[e.name] = "model-00002-of-00002.safetensors";
  await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify({ weight_map }));
  using sharded = await open_hf(dir);
  using single = await open_hf(fixture("hf_tiny_lm"));
  assertEquals(await all_bytes(sharded), await all_bytes(single));
});

Deno.test("hf config: activations and defaults", () => {
  const base = { n_layer: 1, n_head: 2, n_embd: 8, n_positions: 16, vocab_size: 10 };
  assertEquals(hf_config(base, "c.json").activation, "gelu_tanh"); // transformers' default gelu_new
  assertEquals(hf_config(base, "c.json").layer_norm_eps, 1e-5);
  assertEquals(
    hf_config({ ...base, activation_function: "gelu_pytorch_tanh" }, "c.json").activation,
    "gelu_tanh",
  );
  assertEquals(hf_config({ ...base, activation_function: "gelu" }, "c.json").activation, "gelu_erf");
  assertEquals(hf_config({ ...base, layer_norm_epsilon: 1e-6 }, "c.json").layer_norm_eps, 1e-6);
  assertThrows(
    () => hf_config({ ...base, activation_function: "relu" }, "c.json"),
    Error,
    `c.json: activation_function "relu"`,
  );
  assertThrows(
    () => hf_config({ ...base, model_type: "llama" }, "c.json"),
    Error,
    `c.json: model_type is "llama"`,
  );
  assertThrows(
    () => hf_config({ ...base, n_layer: 1.5 }, "c.json"),
    Error,
    `c.json: field "n_layer" must be a positive integer`,
  );
  assertThrows(() => hf_config({ ...base, n_inner: 7 }, "c.json"), Error, `c.json: field "n_inner"`);
  assertThrows(
    () => hf_config({ ...base, layer_norm_epsilon: "x" }, "c.json"),
    Error,
    `"layer_norm_epsilon"`,
  );
  assertThrows(() => hf_config([1], "c.json"), Error, "c.json: not a JSON object");
});

Deno.test("hf: a bad config.json is an error naming the file and the field", async () => {
  const bad_json = await make_dir({ config_text: `{"n_layer": 2, "n_head": ` });
  await assertRejects(() => open_hf(bad_json), Error, `${bad_json}/config.json: invalid JSON`);
  const no_embd = await make_dir({ config: (c) => delete c.n_embd });
  await assertRejects(() => open_hf(no_embd), Error, `${no_embd}/config.json: missing field "n_embd"`);
  const indivisible = await make_dir({ config: (c) => c.n_embd = 65 });
  await assertRejects(
    () => open_hf(indivisible),
    Error,
    `${indivisible}/config.json: n_embd (65) must be divisible by n_head (4)`,
  );
  const no_config = await make_dir();
  await Deno.remove(`${no_config}/config.json`);
  await assertRejects(() => open_hf(no_config), Error, `${no_config}/config.json: cannot read`);
});

Deno.test("hf: a missing or mis-shaped tensor is an error naming it, both shapes and the file", async () => {
  const entries = await read_entries(fixture("hf_tiny_lm/model.safetensors"));
  const missing = await make_dir({ entries: entries.filter((e) => e.name !== "transformer.h.1.ln_2.bias") });
  await assertRejects(
    () => open_hf(missing),
    Error,
    `${missing}/model.safetensors: missing tensor "h.1.ln_2.bias" (expected shape [64])`,
  );
  // c_attn stored in Linear's (out, in) orientation: wrong for a Conv1D checkpoint.
  const flipped = entries.map((e) =>
    e.name === "transformer.h.0.attn.c_attn.weight" ? { ...e, shape: [192, 64] } : e
  );
  const dir = await make_dir({ entries: flipped });
  await assertRejects(
    () => open_hf(dir),
    Error,
    `${dir}/model.safetensors: tensor "h.0.attn.c_attn.weight" ("transformer.h.0.attn.c_attn.weight") has shape ` +
      `[192, 64], expected [64, 192] (Conv1D: in, out)`,
  );
  const extra = await make_dir({
    entries: [...entries, { ...entries[0], name: "transformer.h.5.attn.c_attn.bias" }],
  });
  await assertRejects(
    () => open_hf(extra),
    Error,
    `unexpected model tensor "transformer.h.5.attn.c_attn.bias"`,
  );
  const ints = await make_dir({
    entries: entries.map((e) => e.name.endsWith("ln_f.bias") ? { ...e, dtype: "I32" } : e),
  });
  await assertRejects(() => open_hf(ints), Error, `tensor "transformer.ln_f.bias" has dtype I32`);
});

Deno.test("safetensors: truncated and malformed files are errors naming the file", async () => {
  const good = await Deno.readFile(fixture("hf_tiny_bare/model.safetensors"));
  const write = async (b: Uint8Array) => {
    const p = `${tmp_root}/${tmp_count++}.safetensors`;
    await Deno.writeFile(p, b);
    return p;
  };
  const cut = await write(good.subarray(0, good.length - 1000));
  await assertRejects(() => SafetensorsFile.open(cut), Error, `${cut}: safetensors tensor "`);
  await assertRejects(() => SafetensorsFile.open(cut), Error, "past the end of the data");
  const cut_header = await write(good.subarray(0, 100));
  await assertRejects(
    () => SafetensorsFile.open(cut_header),
    Error,
    `${cut_header}: bad safetensors header length 2288`,
  );
  const tiny = await write(good.subarray(0, 5));
  await assertRejects(() => SafetensorsFile.open(tiny), Error, `${tiny}: truncated safetensors file`);

  const header = (h: string) => {
    const b = new TextEncoder().encode(h);
    const out = new Uint8Array(8 + b.length + 16);
    new DataView(out.buffer).setBigUint64(0, BigInt(b.length), true);
    out.set(b, 8);
    return out;
  };
  const not_json = await write(header("{not json"));
  await assertRejects(
    () => SafetensorsFile.open(not_json),
    Error,
    `${not_json}: safetensors header is not valid JSON`,
  );
  const overlap = await write(header(JSON.stringify({
    a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
    b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
  })));
  await assertRejects(
    () => SafetensorsFile.open(overlap),
    Error,
    `${overlap}: safetensors tensors "a" and "b" overlap`,
  );
  const past = await write(
    header(JSON.stringify({ a: { dtype: "F32", shape: [8], data_offsets: [0, 32] } })),
  );
  await assertRejects(
    () => SafetensorsFile.open(past),
    Error,
    `${past}: safetensors tensor "a": data_offsets [0, 32] go past`,
  );
  const wrong_size = await write(
    header(JSON.stringify({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } })),
  );
  await assertRejects(
    () => SafetensorsFile.open(wrong_size),
    Error,
    `"a": data_offsets [0, 8] hold 8 bytes, but F32 [3] needs 12`,
  );
  const bad_dtype = await write(
    header(JSON.stringify({ a: { dtype: "F8", shape: [1], data_offsets: [0, 1] } })),
  );
  await assertRejects(() => SafetensorsFile.open(bad_dtype), Error, `"a": unknown dtype "F8"`);
  // And the same through open_hf: the truncated weights of a directory.
  const dir = await make_dir();
  await Deno.writeFile(`${dir}/model.safetensors`, good.subarray(0, good.length - 1000));
  await assertRejects(() => open_hf(dir), Error, `${dir}/model.safetensors: safetensors tensor`);
});
