/**
 * The real nanoGPT checkpoint on the CPU backend against its fp32 PyTorch reference:
 * logits at the prompt's last position and the 200-token greedy continuation, through the API
 * and through examples/generate.ts. The embedded copy (models/shakespeare-char) runs everywhere;
 * the checkpoints in ../shared where it is present.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { DEFAULT_MODEL, load_model } from "../mod.ts";
import { rel_l2 } from "./helpers/compare.ts";
import { needs_shared, SHAKESPEARE, shakespeare_reference } from "./helpers/shared.ts";

const ref = shakespeare_reference();

Deno.test("shakespeare-char (embedded): tokenizer, last logits and greedy continuation on the CPU", async () => {
  using model = await load_model(DEFAULT_MODEL, { device: "cpu" });
  assertEquals(model.tokenizer.encode(ref.prompt), ref.prompt_ids);
  const [logits] = model.engine.prefill_logits([ref.prompt_ids]);
  const err = rel_l2(logits, ref.last_logits);
  assert(err < 1e-4, `relative L2 error of the last logits ${err} >= 1e-4`);
  const out = await model.generate(ref.prompt, { temperature: 0, max_new_tokens: 200 });
  assertEquals([...ref.prompt_ids, ...out.tokens], ref.greedy_ids);
  assertEquals(ref.prompt + out.text, ref.greedy_text);
  assertEquals(out.finish_reason, "length");
});

for (const file of ["ckpt.pt", "ckpt-slim.pt"]) {
  Deno.test(needs_shared(`shakespeare-char: the shared ${file} loads the same model`), async () => {
    using model = await load_model(`${SHAKESPEARE}${file}`, { device: "cpu" });
    const [logits] = model.engine.prefill_logits([ref.prompt_ids]);
    assert(rel_l2(logits, ref.last_logits) < 1e-4);
    const out = await model.generate(ref.prompt, { temperature: 0, max_new_tokens: 200 });
    assertEquals(ref.prompt + out.text, ref.greedy_text);
  });
}

Deno.test("examples/generate.ts streams the reference greedy continuation of the default model", async () => {
  const script = new URL("../examples/generate.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      script,
      "--device",
      "cpu",
      "--temperature",
      "0",
      "--max-new-tokens",
      "200",
      "--echo",
      ref.prompt,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, stderr);
  assertEquals(new TextDecoder().decode(out.stdout), ref.greedy_text + "\n");
});

Deno.test("examples/generate.ts reads the prompt from stdin and rejects bad options", async () => {
  const script = new URL("../examples/generate.ts", import.meta.url).pathname;
  const run = async (args: string[], stdin: string) => {
    const p = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = p.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
    const o = await p.output();
    return {
      code: o.code,
      stdout: new TextDecoder().decode(o.stdout),
      stderr: new TextDecoder().decode(o.stderr),
    };
  };
  const model = ["--model", DEFAULT_MODEL, "--device", "cpu", "--quiet"];
  const ok = await run([...model, "--temperature", "0", "--max-new-tokens", "20"], ref.prompt);
  assertEquals(ok.code, 0, ok.stderr);
  assertEquals(ref.prompt + ok.stdout, ref.greedy_text.slice(0, ref.prompt.length + 20) + "\n");
  assertEquals(ok.stderr, "");
  const bad = await run([...model, "--top-p", "2"], "x");
  assertEquals(bad.code, 1);
  assert(bad.stderr.includes("top_p"), bad.stderr);
  const unknown = await run([...model, "--max-new-tokens", "5"], "ROMEO: \u00e9");
  assertEquals(unknown.code, 1);
  assert(unknown.stderr.includes("\u00e9") || unknown.stderr.includes("\\u00e9"), unknown.stderr);
});
