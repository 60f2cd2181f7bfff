/**
 * open_model: one entry point from a model spec (checkpoint file, nanoGPT out_dir, HF directory,
 * `random:<size>`, or a Hugging Face hub name) to a ModelSource.
 * @module
 */
import { dirname, join } from "node:path";
import { gpt2_config, GPT2_SIZES } from "../model/config.ts";
import { open_hf } from "./hf.ts";
import { open_nanogpt } from "./nanogpt.ts";
import { random_model_source } from "./random.ts";
import type { ModelSource } from "./source.ts";

/** Options of open_model (used for hub names only). */
export interface OpenModelOptions {
  /** Hub branch, tag or commit (default "main"). */
  revision?: string;
  /** Hub download cache root (default: hf_hub.ts's default_cache_dir). */
  cache_dir?: string;
}

const HUB_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*(\/[A-Za-z0-9][A-Za-z0-9_.-]*)?$/;
const FILE_EXTENSIONS = /\.(pt|pth|bin|ckpt|safetensors|json|pkl)$/i;

/** Whether `spec` could name a hub repo (`gpt2`, `org/name`) rather than a mistyped local path. */
export function is_plausible_hub_name(spec: string): boolean {
  return HUB_NAME.test(spec) && !spec.includes("..") && !FILE_EXTENSIONS.test(spec);
}

async function stat_or_null(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

/**
 * Opens a model from `spec`:
 * - `random:<gpt2|gpt2-medium|gpt2-large|gpt2-xl>`: random weights of that size;
 * - a file: a nanoGPT `torch.save` checkpoint (a `model.safetensors` file opens its HF directory);
 * - a directory with `config.json`: Hugging Face format; with `ckpt.pt`: a nanoGPT out_dir;
 * - otherwise a hub name (`gpt2`, `gpt2-xl`, `openai-community/gpt2`, `org/name`), downloaded into
 *   the cache (config.json + model.safetensors) through hf_hub.ts.
 * A path that does not exist and cannot be a hub name is an Error naming it.
 */
export async function open_model(spec: string, opts: OpenModelOptions = {}): Promise<ModelSource> {
  if (typeof spec !== "string" || spec === "") throw new Error(`open_model: empty model spec`);
  if (spec.startsWith("random:")) {
    const size = spec.slice("random:".length);
    if (!(size in GPT2_SIZES)) {
      throw new Error(
        `open_model: unknown random model "${spec}": expected random:<${Object.keys(GPT2_SIZES).join("|")}>`,
      );
    }
    return random_model_source(gpt2_config(size), { origin: spec, dtype: "bf16" });
  }

  const st = await stat_or_null(spec);
  if (st?.isFile) {
    if (spec.endsWith(".safetensors")) {
      const dir = dirname(spec);
      if (await stat_or_null(join(dir, "config.json"))) return await open_hf(dir, { origin: spec });
      throw new Error(`${spec}: a safetensors file needs its config.json beside it (not found in ${dir})`);
    }
    return await open_nanogpt(spec, { origin: spec });
  }
  if (st?.isDirectory) {
    if (await stat_or_null(join(spec, "config.json"))) return await open_hf(spec, { origin: spec });
    const ckpt = join(spec, "ckpt.pt");
    if ((await stat_or_null(ckpt))?.isFile) return await open_nanogpt(ckpt, { origin: spec });
    throw new Error(`${spec}: directory holds neither config.json (Hugging Face) nor ckpt.pt (nanoGPT)`);
  }
  if (st) throw new Error(`${spec}: not a file or directory`);

  if (!is_plausible_hub_name(spec)) {
    throw new Error(
      `${spec}: no such file or directory (and not a Hugging Face hub name like "gpt2" or "org/name")`,
    );
  }
  // Bare GPT-2 names live under openai-community on the hub; one cache entry for both spellings.
  const repo_id = spec in GPT2_SIZES ? `openai-community/${spec}` : spec;
  const { hub_snapshot } = await import("./hf_hub.ts");
  let dir: string;
  try {
    dir = await hub_snapshot(repo_id, {
      revision: opts.revision,
      cache_dir: opts.cache_dir,
      files: ["config.json", "model.safetensors"],
    });
  } catch (e) {
    throw new Error(
      `${spec}: no such local file or directory, and fetching it from the Hugging Face hub failed: ` +
        (e as Error).message,
      { cause: e },
    );
  }
  return await open_hf(dir, { origin: spec });
}
