/**
 * torch.save checkpoints and the nanoGPT loader: the real shakespeare-char checkpoints (with and without
 * the AdamW state), both fixtures, and checkpoints re-written here with a small torch-zip writer to
 * make them wrong in one way each (missing / mis-shaped / extra tensor, untied or strided lm_head,
 * forbidden global, big-endian, legacy format, missing storage).
 */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { fixture } from "./helpers/compare.ts";
import { needs_shared, SHAKESPEARE, SHAKESPEARE_CONFIG } from "./helpers/shared.ts";
import { open_nanogpt } from "../src/loaders/nanogpt.ts";
import { TorchCheckpoint, TorchTensor } from "../src/loaders/torch_checkpoint.ts";
import { weight_shapes } from "../src/model/config.ts";
import { FakeGlobal, FakeTensor, pickle } from "./helpers/torch_writer.ts";
import { make_zip, type ZipTestEntry } from "./helpers/zip_writer.ts";
import { create_tokenizer } from "../src/tokenizer/tokenizer.ts";

const tmp_dir = Deno.makeTempDirSync({ prefix: "ngpt_nanogpt_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp_dir, { recursive: true }));
let tmp_count = 0;
const tmp_path = (name: string) => `${tmp_dir}/${tmp_count++}_${name}`;

/** Turns an opened checkpoint's values into writable ones (TorchTensor -> FakeTensor). */
function to_fake(v: unknown): unknown {
  if (v instanceof TorchTensor) {
    return new FakeTensor(v.storage.key, v.dtype, [...v.shape], [...v.stride], v.storage_offset);
  }
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [k, to_fake(x)]));
  if (Array.isArray(v)) return Object.isFrozen(v) ? Object.freeze(v.map(to_fake)) : v.map(to_fake);
  return v;
}

/**
 * Re-writes checkpoint `src` after `mutate` edits its (writable) root and storages; returns the path.
 * With no mutation the result loads exactly like the source.
 */
async function repack(
  src: string,
  mutate: (root: Map<string, unknown>, storages: Map<string, Uint8Array>) => void = () => {},
  opts: { byteorder?: string; name?: string; entries?: Record<string, Partial<ZipTestEntry>> } = {},
): Promise<string> {
  using ckpt = await TorchCheckpoint.open(src);
  const root = to_fake(ckpt.root) as Map<string, unknown>;
  const storages = new Map<string, Uint8Array>();
  for (const name of ckpt.zip.entries.keys()) {
    const m = name.match(/^[^/]+\/data\/(\w+)$/);
    if (m) storages.set(m[1], await ckpt.zip.read(name));
  }
  mutate(root, storages);
  const files: [string, Uint8Array][] = [
    ["archive/data.pkl", pickle(root, storages)],
    ["archive/byteorder", new TextEncoder().encode(opts.byteorder ?? "little")],
  ];
  for (const [k, b] of storages) files.push([`archive/data/${k}`, b]);
  const path = tmp_path(opts.name ?? "ckpt.pt");
  await Deno.writeFile(
    path,
    make_zip(files.map(([name, data]) => ({ name, data, ...opts.entries?.[name] }))),
  );
  return path;
}

const model_of = (root: Map<string, unknown>) => root.get("model") as Map<string, unknown>;

async function all_bytes(src: { tensors: Map<string, { read(): Promise<Uint8Array> }> }) {
  const out = new Map<string, Uint8Array>();
  for (const [n, t] of src.tensors) out.set(n, await t.read());
  return out;
}

// ---- real checkpoints --------------------------------------------------------------------------

for (const file of ["ckpt.pt", "ckpt-slim.pt"]) {
  Deno.test(needs_shared(`nanogpt: shakespeare-char ${file}`), async () => {
    const path = `${SHAKESPEARE}${file}`;
    using src = await open_nanogpt(path);
    assertEquals(src.format, "nanogpt");
    assertEquals(src.origin, path);
    assertEquals(src.config, SHAKESPEARE_CONFIG);
    const shapes = weight_shapes(src.config);
    assertEquals([...src.tensors.keys()].sort(), [...shapes.keys()].sort());
    for (const [name, t] of src.tensors) {
      assertEquals(t.name, name);
      assertEquals(t.shape, shapes.get(name));
      assertEquals(t.dtype, "f32");
      assertEquals(t.stored_transposed, undefined);
      assertEquals((await t.read()).length, shapes.get(name)!.reduce((a, b) => a * b, 4));
    }
    assert(!src.tensors.has("lm_head"), "lm_head is tied to wte");
    // Trained LayerNorm weights: finite, around 1.
    const ln = new Float32Array((await src.tensors.get("ln_f.weight")!.read()).buffer);
    assert(ln.every(Number.isFinite));
    const mean = ln.reduce((a, b) => a + b, 0) / ln.length;
    assert(mean > 0.2 && mean < 3, `ln_f mean ${mean}`);
    // meta.pkl beside the checkpoint: a 65-character vocabulary.
    assertEquals(src.tokenizer.kind, "char");
    const ref = JSON.parse(await Deno.readTextFile(`${SHAKESPEARE}reference.json`));
    const tok = await create_tokenizer(src.tokenizer);
    assertEquals(tok.encode(ref.prompt), ref.prompt_ids);
    assertEquals(tok.decode(ref.prompt_ids), ref.prompt);
  });
}

Deno.test(
  needs_shared("nanogpt: ckpt.pt (with AdamW state) and ckpt-slim.pt hold the same weights"),
  async () => {
    using full = await open_nanogpt(`${SHAKESPEARE}ckpt.pt`);
    using slim = await open_nanogpt(`${SHAKESPEARE}ckpt-slim.pt`);
    assertEquals(await all_bytes(full), await all_bytes(slim));
  },
);

Deno.test(
  needs_shared("torch checkpoint: optimizer state, scalars and lazy tensors of ckpt.pt"),
  async () => {
    using c = await TorchCheckpoint.open(`${SHAKESPEARE}ckpt.pt`);
    const root = c.root as Map<string, unknown>;
    assertEquals([...root.keys()], [
      "model",
      "optimizer",
      "model_args",
      "iter_num",
      "best_val_loss",
      "config",
    ]);
    assertEquals(root.get("iter_num"), 4000);
    const ref = JSON.parse(await Deno.readTextFile(`${SHAKESPEARE}reference.json`));
    const loss = root.get("best_val_loss") as TorchTensor;
    assertEquals(loss.shape, []);
    assertEquals(new Float32Array((await loss.read()).buffer)[0], Math.fround(ref.best_val_loss));
    const opt = root.get("optimizer") as Map<string, unknown>;
    const state = opt.get("state") as Map<number, Map<string, TorchTensor>>;
    assertEquals(state.size, 27);
    const s0 = state.get(0)!;
    assertEquals([...s0.keys()], ["step", "exp_avg", "exp_avg_sq"]);
    assertEquals(s0.get("exp_avg")!.shape, [65, 256]);
    const groups = opt.get("param_groups") as Map<string, unknown>[];
    assertEquals(groups.length, 2);
    assertEquals(groups[0].get("lr") !== undefined, true);
    const config = root.get("config") as Map<string, unknown>;
    assertEquals(config.get("dataset"), "shakespeare_char");
    assertEquals(config.get("compile"), false);
  },
);

// ---- fixtures ----------------------------------------------------------------------------------

Deno.test("nanogpt: nano_bias.pt (bias, _orig_mod. prefix, fp32)", async () => {
  const ref = JSON.parse(await Deno.readTextFile(fixture("nano.json"))).nano_bias;
  using src = await open_nanogpt(fixture("nano_bias.pt"));
  const a = ref.model_args;
  assertEquals(src.config, {
    n_layer: a.n_layer,
    n_head: a.n_head,
    n_embd: a.n_embd,
    block_size: a.block_size,
    vocab_size: a.vocab_size,
    bias: true,
    activation: "gelu_erf",
    layer_norm_eps: 1e-5,
  });
  assertEquals([...src.tensors.keys()].sort(), [...weight_shapes(src.config).keys()].sort());
  assert(src.tensors.has("h.1.mlp.c_proj.bias"));
  assert([...src.tensors.values()].every((t) => t.dtype === "f32"));
  assertEquals(src.tokenizer, { kind: "gpt2" }); // dataset "fixture" has no meta.pkl anywhere
});

Deno.test("nanogpt: nano_nobias.pt (no bias tensors, f16)", async () => {
  using src = await open_nanogpt(fixture("nano_nobias.pt"));
  assertEquals(src.config.bias, false);
  assertEquals(src.config.n_head, 2);
  assertEquals(src.tensors.size, 2 + 6 * 2 + 1);
  assert([...src.tensors.keys()].every((n) => !n.endsWith(".bias")));
  for (const t of src.tensors.values()) {
    assertEquals(t.dtype, "f16");
    assertEquals((await t.read()).length, t.shape.reduce((a, b) => a * b, 2));
  }
});

// ---- rewritten checkpoints ---------------------------------------------------------------------

Deno.test("nanogpt: a repacked checkpoint loads the same (writer sanity)", async () => {
  const path = await repack(fixture("nano_bias.pt"));
  using a = await open_nanogpt(path);
  using b = await open_nanogpt(fixture("nano_bias.pt"));
  assertEquals(a.config, b.config);
  assertEquals(await all_bytes(a), await all_bytes(b));
});

Deno.test("nanogpt: a missing tensor is an error naming it, its shape and the file", async () => {
  const path = await repack(fixture("nano_bias.pt"), (root) => {
    model_of(root).delete("_orig_mod.transformer.h.1.ln_2.weight");
  });
  await assertRejects(
    () => open_nanogpt(path),
    Error,
    `${path}: missing tensor "h.1.ln_2.weight" (expected shape [48])`,
  );
});

Deno.test("nanogpt: a mis-shaped tensor is an error naming it, both shapes and the file", async () => {
  const path = await repack(fixture("nano_bias.pt"), (root) => {
    const m = model_of(root);
    const t = m.get("_orig_mod.transformer.h.0.attn.c_proj.weight") as FakeTensor;
    m.set("_orig_mod.transformer.h.0.attn.c_proj.weight", new FakeTensor(t.key, t.dtype, [24, 48], [48, 1]));
  });
  await assertRejects(
    () => open_nanogpt(path),
    Error,
    `${path}: tensor "h.0.attn.c_proj.weight" ("_orig_mod.transformer.h.0.attn.c_proj.weight") has shape ` +
      `[24, 48], expected [48, 48]`,
  );
});

Deno.test("nanogpt: an unexpected extra model tensor is an error naming it", async () => {
  const path = await repack(fixture("nano_bias.pt"), (root) => {
    const m = model_of(root);
    m.set("_orig_mod.transformer.h.2.ln_1.weight", m.get("_orig_mod.transformer.h.1.ln_1.weight"));
  });
  await assertRejects(
    () => open_nanogpt(path),
    Error,
    `${path}: unexpected model tensor "_orig_mod.transformer.h.2.ln_1.weight" with shape [48]`,
  );
});

Deno.test("nanogpt: an untied lm_head becomes the canonical lm_head; an identical copy is dropped", async () => {
  const V = 70, C = 48;
  const untied = await repack(fixture("nano_bias.pt"), (root, storages) => {
    const data = new Float32Array(V * C).map((_, i) => Math.sin(i));
    storages.set("lm", new Uint8Array(data.buffer));
    model_of(root).set("lm_head.weight", new FakeTensor("lm", "f32", [V, C], [C, 1]));
  });
  {
    using src = await open_nanogpt(untied);
    const lm = src.tensors.get("lm_head");
    assert(lm, "lm_head expected");
    assertEquals(lm.shape, [V, C]);
    const got = new Float32Array((await lm.read()).buffer);
    assertEquals(got[5], Math.fround(Math.sin(5)));
  }
  const copied = await repack(fixture("nano_bias.pt"), (root, storages) => {
    const wte = model_of(root).get("_orig_mod.transformer.wte.weight") as FakeTensor;
    storages.set("lm", storages.get(wte.key)!.slice());
    model_of(root).set("_orig_mod.lm_head.weight", new FakeTensor("lm", "f32", [V, C], [C, 1]));
  });
  using src = await open_nanogpt(copied);
  assert(!src.tensors.has("lm_head"), "byte-identical lm_head is tied");
});

Deno.test("torch checkpoint: a strided (transposed) tensor is read contiguous", async () => {
  let original: Uint8Array | null = null;
  const path = await repack(fixture("nano_bias.pt"), (root, storages) => {
    // Store h.0.mlp.c_fc.weight (192, 48) transposed: storage (48, 192), view stride (1, 192).
    const m = model_of(root);
    const t = m.get("_orig_mod.transformer.h.0.mlp.c_fc.weight") as FakeTensor;
    original = storages.get(t.key)!.slice(t.offset * 4, (t.offset + 192 * 48) * 4);
    const src = new Float32Array(original.slice().buffer);
    const tr = new Float32Array(192 * 48);
    for (let i = 0; i < 192; i++) for (let j = 0; j < 48; j++) tr[j * 192 + i] = src[i * 48 + j];
    storages.set("tr", new Uint8Array(tr.buffer));
    m.set("_orig_mod.transformer.h.0.mlp.c_fc.weight", new FakeTensor("tr", "f32", [192, 48], [1, 192]));
  });
  using src = await open_nanogpt(path);
  assertEquals([...(await src.tensors.get("h.0.mlp.c_fc.weight")!.read())], [...original!]);
});

Deno.test("torch checkpoint: a forbidden global in data.pkl is an error naming it and the file", async () => {
  const path = await repack(fixture("nano_nobias.pt"), (root) => {
    root.set("iter_num", new FakeGlobal("os", "system", ["echo pwned"]));
  });
  const e = await assertRejects(() => open_nanogpt(path), Error, `forbidden global "os.system" in ${path}`);
  assert(e.message.includes("torch._utils._rebuild_tensor_v2"), e.message);
});

Deno.test("torch checkpoint: big-endian, legacy format, missing storage and non-checkpoints", async () => {
  const be = await repack(fixture("nano_nobias.pt"), () => {}, { byteorder: "big" });
  await assertRejects(() => TorchCheckpoint.open(be), Error, `${be}: byteorder is "big"`);

  const legacy = tmp_path("legacy.pt");
  await Deno.writeFile(
    legacy,
    Uint8Array.from([
      0x80,
      0x02,
      0x8a,
      0x0a,
      0x6c,
      0xfc,
      0x9c,
      0x46,
      0xf9,
      0x20,
      0x6a,
      0xa8,
      0x50,
      0x19,
      0x2e,
      0,
      0,
      0,
    ]),
  );
  await assertRejects(
    () => open_nanogpt(legacy),
    Error,
    `${legacy}: legacy (pre-1.6, non-zip) torch.save format`,
  );

  const missing = await repack(fixture("nano_nobias.pt"), (root, storages) => {
    const wpe = model_of(root).get("transformer.wpe.weight") as FakeTensor;
    storages.delete(wpe.key);
  });
  await assertRejects(() => open_nanogpt(missing), Error, `${missing}: storage "`);

  const no_pkl = tmp_path("nopkl.pt");
  await Deno.writeFile(no_pkl, make_zip([{ name: "a/b", data: new Uint8Array(3) }]));
  await assertRejects(
    () => open_nanogpt(no_pkl),
    Error,
    `${no_pkl}: not a torch checkpoint: the zip has no data.pkl`,
  );

  const no_args = await repack(fixture("nano_nobias.pt"), (root) => void root.delete("model_args"));
  await assertRejects(() => open_nanogpt(no_args), Error, `${no_args}: not a nanoGPT checkpoint`);
});

Deno.test(
  needs_shared("nanogpt: meta.pkl is found in data/<dataset>/ above the checkpoint's directory"),
  async () => {
    const root = tmp_path("nanogpt_repo");
    await Deno.mkdir(`${root}/out-shakespeare-char`, { recursive: true });
    await Deno.mkdir(`${root}/data/shakespeare_char`, { recursive: true });
    const ckpt = `${root}/out-shakespeare-char/ckpt.pt`;
    await Deno.copyFile(`${SHAKESPEARE}ckpt-slim.pt`, ckpt);
    {
      using src = await open_nanogpt(ckpt);
      assertEquals(src.tokenizer, { kind: "gpt2" }); // no meta.pkl anywhere yet
    }
    await Deno.copyFile(`${SHAKESPEARE}meta.pkl`, `${root}/data/shakespeare_char/meta.pkl`);
    {
      using src = await open_nanogpt(ckpt);
      assertEquals(src.tokenizer.kind, "char");
    }
    // Relative to the working directory too (in a child process: cwd is process-wide).
    await Deno.remove(`${root}/data/shakespeare_char/meta.pkl`);
    const cwd = tmp_path("cwd");
    await Deno.mkdir(`${cwd}/data/shakespeare_char`, { recursive: true });
    await Deno.copyFile(`${SHAKESPEARE}meta.pkl`, `${cwd}/data/shakespeare_char/meta.pkl`);
    const mod = new URL("../src/loaders/nanogpt.ts", import.meta.url).href;
    const code = `const { open_nanogpt } = await import(${JSON.stringify(mod)});
    using s = await open_nanogpt(${
      JSON.stringify(ckpt)
    }); console.log(s.tokenizer.kind, s.tokenizer.itos?.size);`;
    const out = await new Deno.Command(Deno.execPath(), { args: ["eval", code], cwd, stderr: "inherit" })
      .output();
    assertEquals(new TextDecoder().decode(out.stdout).trim(), "char 65");
  },
);

Deno.test("torch checkpoint: a storage entry declaring more bytes than its tensor needs is refused unread", async () => {
  const path = await repack(fixture("nano_bias.pt"), () => {}, {
    entries: { "archive/data/0": { method: 8, declare_bytes: 0xf0000000 } },
  });
  await assertRejects(() => open_nanogpt(path), Error, `storage "0" has 4026531840 bytes, expected`);
});

Deno.test("torch checkpoint: a storage that inflates past its declared size fails without inflating it all", async () => {
  let declared = 0;
  const bomb = new Uint8Array(64 << 20); // 64 MiB of zeros deflate to about 64 KiB
  const path = await repack(fixture("nano_bias.pt"), (_, storages) => {
    declared = storages.get("0")!.length;
  }, { entries: { "archive/data/0": { method: 8, data: bomb } } });
  // The entry declares 64 MiB; the pickle says the storage holds `declared` bytes.
  await assertRejects(
    () => open_nanogpt(path),
    Error,
    `storage "0" has ${64 << 20} bytes, expected ${declared}`,
  );
  const lying = await repack(fixture("nano_bias.pt"), () => {}, {
    entries: { "archive/data/0": { method: 8, data: bomb, declare_bytes: declared } },
  });
  using src = await open_nanogpt(lying);
  const name = [...src.tensors.keys()].find((n) => n === "wte")!;
  const reads = await Promise.allSettled([...src.tensors.values()].map((t) => t.read()));
  const failed = reads.filter((r) => r.status === "rejected").map((r) =>
    (r as PromiseRejectedResult).reason.message
  );
  assert(failed.length > 0, `no tensor read failed (${name})`);
  assert(
    failed.every((m) => m.includes(`inflates to more than its declared ${declared} bytes`)),
    failed.join("\n"),
  );
});

Deno.test("torch checkpoint: a data.pkl declaring more than MAX_PICKLE_BYTES is refused unread", async () => {
  const path = await repack(fixture("nano_bias.pt"), () => {}, {
    entries: { "archive/data.pkl": { method: 8, declare_bytes: 100 << 20 } },
  });
  await assertRejects(
    () => open_nanogpt(path),
    Error,
    `declares ${100 << 20} bytes, more than the ${64 << 20}`,
  );
});
