/**
 * CPU backend against reference logits made by PyTorch/transformers (tests/fixtures/make_fixtures.py):
 * HF GPT-2 in both key layouts and nanoGPT checkpoints (bias / no bias, fp16, head sizes 16 and 24),
 * at every position, through the prefill and through the KV-cache decode path.
 */
import { assert } from "./helpers/assert.ts";
import { load_model } from "../mod.ts";
import { fixture, rel_l2 } from "./helpers/compare.ts";

const hf = JSON.parse(Deno.readTextFileSync(fixture("hf_tiny.json"))) as {
  input_ids: number[];
  logits: number[][];
};
const nano = JSON.parse(Deno.readTextFileSync(fixture("nano.json"))) as Record<
  string,
  { input_ids: number[]; logits: number[][] }
>;

const cases: [string, string, { input_ids: number[]; logits: number[][] }][] = [
  ["HF GPT2LMHeadModel layout", fixture("hf_tiny_lm"), hf],
  ["HF GPT2Model layout (no transformer. prefix)", fixture("hf_tiny_bare"), hf],
  ["nanoGPT bias=True, _orig_mod., head 16", fixture("nano_bias.pt"), nano.nano_bias],
  ["nanoGPT bias=False, fp16, head 24", fixture("nano_nobias.pt"), nano.nano_nobias],
];

for (const [name, path, ref] of cases) {
  Deno.test(`parity (cpu): ${name}`, async () => {
    using model = await load_model(path, { device: "cpu" });
    const ids = ref.input_ids;
    // Prefill of every prefix: last-position logits.
    for (const n of [1, 5, ids.length]) {
      const [lg] = model.engine.prefill_logits([ids.slice(0, n)]);
      const err = rel_l2(lg, ref.logits[n - 1]);
      assert(err < 1e-4, `prefill of ${n} tokens: relative L2 error ${err}`);
    }
    // Decode path: prefill 3 tokens, then one cached step per token.
    const all = model.engine.teacher_forced_logits(ids, 3);
    assert(all.length === ids.length - 2);
    all.forEach((lg, i) => {
      const err = rel_l2(lg, ref.logits[i + 2]);
      assert(err < 1e-4, `decode position ${i + 2}: relative L2 error ${err}`);
    });
    // A ragged batch of prefixes gives each one's logits.
    const lens = [ids.length, 2, 7];
    const got = model.engine.prefill_logits(lens.map((n) => ids.slice(0, n)));
    lens.forEach((n, b) => assert(rel_l2(got[b], ref.logits[n - 1]) < 1e-4, `ragged row ${b}`));
  });
}
