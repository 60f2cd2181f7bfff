/**
 * open_model: one entry point from a model spec (checkpoint file, nanoGPT out_dir, HF directory,
 * `random:<size>`, or a Hugging Face hub name) to a ModelSource.
 * @module
 */
import { dirname, join } from "node:path";
import { gpt2_config, GPT2_SIZES } from "../model/config.ts";
import { open_hf } from "./hf.ts";
import { open_nanogpt, open_nanogpt_safetensors } from "./nanogpt.ts";
import { random_model_source } from "./random.ts";
import type { ModelSource } from "../model/source.ts";
import { CHECKOUT_URL } from "../native/checkout.ts";
import { remote_file } from "../native/remote.ts";

/** Options of open_model (used for hub names and, imported from a URL, the embedded models). */
export interface OpenModelOptions {
  /** Hub branch, tag or commit (default "main"). */
  revision?: string;
  /** Download cache root (default: hf_hub.ts's default_cache_dir). */
  cache_dir?: string;
  /** Progress messages of a download (default: stderr for an embedded model fetched from a URL). */
  log?: (msg: string) => void;
}

/** The models kept in the repo, by `embedded:<name>`: the file under models/ of each. */
export const EMBEDDED_MODELS: Readonly<Record<string, string>> = {
  "shakespeare-char": "models/shakespeare-char/model.safetensors",
};

/**
 * The local path of an embedded model: in the checkout, or, when mod.ts was imported from a URL,
 * fetched from there into the cache once (checked against the remote's manifest).
 */
export async function embedded_model_path(name: string, opts: OpenModelOptions = {}): Promise<string> {
  const rel = EMBEDDED_MODELS[name];
  if (!rel) {
    throw new Error(
      `unknown embedded model "embedded:${name}": expected embedded:<${
        Object.keys(EMBEDDED_MODELS).join("|")
      }>`,
    );
  }
  if (CHECKOUT_URL.protocol === "file:") return decodeURIComponent(new URL(rel, CHECKOUT_URL).pathname);
  return await remote_file(CHECKOUT_URL, rel, { cache_dir: opts.cache_dir, log: opts.log });
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
    throw new Error(`${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Opens a model from `spec`:
 * - `embedded:shakespeare-char`: a model kept in the repo (models/);
 * - `random:<gpt2|gpt2-medium|gpt2-large|gpt2-xl>`: random weights of that size;
 * - a file: a nanoGPT `torch.save` checkpoint; a `.safetensors` file opens its HF directory when
 *   `config.json` sits beside it, else it is a nanoGPT model converted by examples/convert.ts;
 * - a directory with `config.json`: Hugging Face format; with `ckpt.pt`: a nanoGPT out_dir; with
 *   only `model.safetensors`: a converted nanoGPT model;
 * - otherwise a hub name (`gpt2`, `gpt2-xl`, `openai-community/gpt2`, `org/name`), downloaded into
 *   the cache (config.json + model.safetensors) through hf_hub.ts.
 * A path that does not exist and cannot be a hub name is an Error naming it.
 */
export async function open_model(spec: string, opts: OpenModelOptions = {}): Promise<ModelSource> {
  if (typeof spec !== "string" || spec === "") throw new Error(`open_model: empty model spec`);
  if (spec.startsWith("embedded:")) {
    return await open_nanogpt_safetensors(await embedded_model_path(spec.slice("embedded:".length), opts), {
      origin: spec,
    });
  }
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
      return await open_nanogpt_safetensors(spec, { origin: spec });
    }
    return await open_nanogpt(spec, { origin: spec });
  }
  if (st?.isDirectory) {
    if (await stat_or_null(join(spec, "config.json"))) return await open_hf(spec, { origin: spec });
    const ckpt = join(spec, "ckpt.pt");
    if ((await stat_or_null(ckpt))?.isFile) return await open_nanogpt(ckpt, { origin: spec });
    const converted = join(spec, "model.safetensors");
    if ((await stat_or_null(converted))?.isFile) {
      return await open_nanogpt_safetensors(converted, { origin: spec });
    }
    throw new Error(
      `${spec}: directory holds neither config.json (Hugging Face), ckpt.pt (nanoGPT) nor model.safetensors ` +
        `(a converted nanoGPT model)`,
    );
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
