/** open_model: every kind of spec (file, out_dir, HF dir, random:, hub names through the cache). */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { fixture } from "./helpers/compare.ts";
import { EMBEDDED, needs_shared, SHAKESPEARE, SHAKESPEARE_CONFIG } from "./helpers/shared.ts";
import { is_plausible_hub_name, open_model } from "../src/loaders/open_model.ts";
import { gpt2_config } from "../src/model/config.ts";

const tmp_root = Deno.makeTempDirSync({ prefix: "ngpt_open_model_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp_root, { recursive: true }));

Deno.test("open_model: the embedded model, its file and its directory (a converted nanoGPT model)", async () => {
  for (const spec of ["embedded:shakespeare-char", `${EMBEDDED}model.safetensors`, EMBEDDED]) {
    using src = await open_model(spec);
    assertEquals(src.format, "nanogpt");
    assertEquals(src.origin, spec);
    assertEquals(src.config, SHAKESPEARE_CONFIG);
    assertEquals(src.tokenizer.kind, "char");
    assertEquals(src.info, { iter_num: 4000, best_val_loss: 1.4496768712997437 });
  }
  await assertRejects(() => open_model("embedded:nope"), Error, 'unknown embedded model "embedded:nope"');
});

Deno.test(needs_shared("open_model: a .pt file and a nanoGPT out_dir holding ckpt.pt"), async () => {
  {
    using src = await open_model(`${SHAKESPEARE}ckpt-slim.pt`);
    assertEquals(src.format, "nanogpt");
    assertEquals(src.config.n_layer, 4);
    assertEquals(src.tokenizer.kind, "char");
  }
  using dir = await open_model(SHAKESPEARE);
  assertEquals(dir.format, "nanogpt");
  assertEquals(dir.origin, SHAKESPEARE);
  assertEquals(dir.config.vocab_size, 65);
});

Deno.test("open_model: an HF directory, and its model.safetensors file", async () => {
  {
    using src = await open_model(fixture("hf_tiny_bare"));
    assertEquals(src.format, "hf");
    assertEquals(src.config.vocab_size, 300);
  }
  using file = await open_model(fixture("hf_tiny_lm/model.safetensors"));
  assertEquals(file.format, "hf");
  assertEquals(file.tensors.size, 28);
});

Deno.test("open_model: random:<size>", async () => {
  using src = await open_model("random:gpt2-medium");
  assertEquals(src.format, "random");
  assertEquals(src.origin, "random:gpt2-medium");
  assertEquals(src.config, gpt2_config("gpt2-medium"));
  assertEquals(src.tensors.get("wte")!.shape, [50257, 1024]);
  await assertRejects(() => open_model("random:gpt5"), Error, `unknown random model "random:gpt5"`);
});

Deno.test("open_model: hub names resolve through hf_hub's cache", async () => {
  const cache = `${tmp_root}/cache`;
  const put = async (repo_dir: string, rev: string) => {
    const d = `${cache}/hub/${repo_dir}/${rev}`;
    await Deno.mkdir(d, { recursive: true });
    await Deno.copyFile(fixture("hf_tiny_lm/config.json"), `${d}/config.json`);
    await Deno.copyFile(fixture("hf_tiny_lm/model.safetensors"), `${d}/model.safetensors`);
  };
  await put("openai-community--gpt2", "main");
  await put("someone--tiny", "v1");
  for (const spec of ["gpt2", "openai-community/gpt2"]) {
    using src = await open_model(spec, { cache_dir: cache });
    assertEquals(src.format, "hf");
    assertEquals(src.origin, spec);
    assertEquals(src.config.n_embd, 64);
  }
  using src = await open_model("someone/tiny", { cache_dir: cache, revision: "v1" });
  assertEquals(src.origin, "someone/tiny");
  assertEquals(src.tensors.size, 28);
});

Deno.test("open_model: a path that does not exist and is no hub name is an error naming it", async () => {
  for (const spec of ["./nope/ckpt.pt", `${tmp_root}/missing_dir/`, "out/ckpt.pt", "a/b/c"]) {
    await assertRejects(() => open_model(spec), Error, `${spec}: no such file or directory`);
  }
  const empty = `${tmp_root}/empty`;
  await Deno.mkdir(empty);
  await assertRejects(() => open_model(empty), Error, `${empty}: directory holds neither config.json`);
  await assertRejects(() => open_model(""), Error, "empty model spec");
});

Deno.test("open_model: which specs are plausible hub names", () => {
  for (const s of ["gpt2", "gpt2-xl", "openai-community/gpt2", "org/name", "a.b/c_d-e"]) {
    assert(is_plausible_hub_name(s), s);
  }
  for (
    const s of ["./x", "/abs/path", "~/x", "a/b/c", "ckpt.pt", "org/../x", "x/", "model.safetensors", "-x"]
  ) {
    assert(!is_plausible_hub_name(s), s);
  }
});
