/**
 * Peak host memory while loading a model onto a backend: VmHWM (Linux) after the load, against the
 * resident size before it, next to the bytes the backend keeps.
 *
 *   deno run -A tests/bench/load_memory.ts --model SPEC [--device cpu|cuda] [--dtype f32|bf16]
 *   deno run -A tests/bench/load_memory.ts --make-gpt2 DIR   writes DIR/gpt2-ckpt.pt (a nanoGPT
 *       torch.save checkpoint of GPT-2 124M's shapes, random f32 weights) and DIR/gpt2.safetensors
 *
 * Prints one JSON line. Each measurement needs its own process (VmHWM only grows).
 * @module
 */
import { parseArgs } from "node:util";
import { load_model } from "../../mod.ts";
import { random_model_source } from "../../src/loaders/random.ts";
import { gpt2_config } from "../../src/model/config.ts";
import { FakeTensor, pickle } from "../helpers/torch_writer.ts";
import { make_zip } from "../helpers/zip_writer.ts";
import { convert_nanogpt, nanogpt_key } from "../../examples/convert.ts";

function status_kib(field: string): number {
  const m = Deno.readTextFileSync("/proc/self/status").match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  if (!m) throw new Error(`/proc/self/status has no ${field}`);
  return Number(m[1]);
}

async function make_gpt2(dir: string): Promise<void> {
  const config = { ...gpt2_config("gpt2"), activation: "gelu_erf" as const };
  using src = random_model_source(config, { dtype: "f32", origin: "random gpt2 (nanoGPT layout)" });
  const model = new Map<string, unknown>();
  const storages = new Map<string, Uint8Array>();
  let k = 0;
  for (const t of src.tensors.values()) {
    const key = String(k++);
    storages.set(key, await t.read());
    const stride = t.shape.map((_, i) => t.shape.slice(i + 1).reduce((a, b) => a * b, 1));
    model.set(nanogpt_key(t.name), new FakeTensor(key, "f32", t.shape, stride));
  }
  const model_args = new Map<string, unknown>([
    ["n_layer", 12],
    ["n_head", 12],
    ["n_embd", 768],
    ["block_size", 1024],
    ["vocab_size", 50257],
    ["bias", true],
  ]);
  const root = new Map<string, unknown>([["model", model], ["model_args", model_args], ["iter_num", 0]]);
  const files = [{ name: "ckpt/data.pkl", data: pickle(root, storages) }];
  for (const [key, data] of storages) files.push({ name: `ckpt/data/${key}`, data });
  await Deno.writeFile(`${dir}/gpt2-ckpt.pt`, make_zip(files));
  storages.clear();
  using ckpt = await (await import("../../src/loaders/nanogpt.ts")).open_nanogpt(`${dir}/gpt2-ckpt.pt`);
  await convert_nanogpt(ckpt, `${dir}/gpt2.safetensors`);
  console.error(`wrote ${dir}/gpt2-ckpt.pt and ${dir}/gpt2.safetensors`);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      device: { type: "string", default: "cpu" },
      dtype: { type: "string" },
      "make-gpt2": { type: "string" },
    },
  });
  if (values["make-gpt2"]) {
    await make_gpt2(values["make-gpt2"]);
    Deno.exit(0);
  }
  if (!values.model) throw new Error("--model is required");
  const rss_before_mib = status_kib("VmRSS") / 1024;
  using model = await load_model(values.model, {
    device: values.device as "cpu" | "cuda",
    dtype: values.dtype as "f32" | "bf16" | undefined,
    log: () => {},
  });
  const peak_mib = status_kib("VmHWM") / 1024;
  let file_mb = 0;
  try {
    file_mb = Deno.statSync(values.model).size / 2 ** 20;
  } catch { /* not a file */ }
  console.log(JSON.stringify({
    model: values.model,
    device: model.backend.device_name,
    dtype: model.backend.dtype,
    file_mib: Number(file_mb.toFixed(1)),
    weights_mib: Number((model.gpt.weight_bytes / 2 ** 20).toFixed(1)),
    rss_before_mib: Number(rss_before_mib.toFixed(1)),
    rss_peak_mib: Number(peak_mib.toFixed(1)),
    load_peak_mib: Number((peak_mib - rss_before_mib).toFixed(1)),
  }));
}
