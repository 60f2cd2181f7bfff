/**
 * Test data: the embedded model (always there) and `../shared` beside the checkout (this project's
 * machines and CI have it; a fresh clone elsewhere does not). A test that needs `../shared` is
 * ignored, with one visible line saying why, when it is missing, except under CI=true, where a
 * missing `../shared` fails.
 */
import type { GPTConfig } from "../../src/model/config.ts";

/** models/shakespeare-char/ of the checkout: model.safetensors and reference.json. */
export const EMBEDDED = decodeURIComponent(
  new URL("../../models/shakespeare-char/", import.meta.url).pathname,
);

/** The directory `../shared` beside the checkout. */
export const SHARED_ROOT = decodeURIComponent(new URL("../../../shared/", import.meta.url).pathname);

function is_dir(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

const under_ci = (() => {
  try {
    return Deno.env.get("CI") === "true";
  } catch {
    return false;
  }
})();

/** Whether ../shared is present. */
export const HAVE_SHARED: boolean = is_dir(SHARED_ROOT);

let said = false;
if (!HAVE_SHARED) {
  if (under_ci) {
    Deno.test("../shared is present (CI=true requires it)", () => {
      throw new Error(`${SHARED_ROOT} is missing: CI must provide ../shared beside the checkout`);
    });
  } else if (!said) {
    said = true;
    console.error(
      `note: ${SHARED_ROOT} not found: tests that need ../shared are ignored (see README, "Test data")`,
    );
  }
}

/** Deno.test options for a test that needs ../shared: ignored (not failed) without it, unless CI=true. */
export function needs_shared(name: string): { name: string; ignore: boolean } {
  return { name: HAVE_SHARED ? name : `${name} (needs ../shared)`, ignore: !HAVE_SHARED && !under_ci };
}

/** The shared shakespeare-char checkout directory (with ckpt.pt, ckpt-slim.pt, meta.pkl, reference.json). */
export const SHAKESPEARE = `${SHARED_ROOT}models/shakespeare-char/`;

/** The shakespeare-char model's config, as every form of it (checkpoint, converted, embedded) loads. */
export const SHAKESPEARE_CONFIG: GPTConfig = {
  n_layer: 4,
  n_head: 4,
  n_embd: 256,
  block_size: 256,
  vocab_size: 65,
  bias: false,
  activation: "gelu_erf",
  layer_norm_eps: 1e-5,
};

/** The reference of the shakespeare-char model (embedded copy of the shared one). */
export interface ShakespeareReference {
  prompt: string;
  prompt_ids: number[];
  last_logits: number[];
  greedy_ids: number[];
  greedy_text: string;
}

/** reference.json of the embedded model. */
export function shakespeare_reference(): ShakespeareReference {
  return JSON.parse(Deno.readTextFileSync(`${EMBEDDED}reference.json`));
}
