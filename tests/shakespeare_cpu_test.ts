/**
 * The real nanoGPT checkpoint on the CPU backend against its fp32 PyTorch reference:
 * logits at the prompt's last position and the 200-token greedy continuation, through the API
 * and through examples/generate.ts.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { load_model } from "../mod.ts";
import { rel_l2, SHAKESPEARE } from "./helpers/compare.ts";

const ref = JSON.parse(Deno.readTextFileSync(`${SHAKESPEARE}reference.json`)) as {
  prompt: string;
  prompt_ids: number[];
  last_logits: number[];
  greedy_ids: number[];
  greedy_text: string;
};

Deno.test("shakespeare-char: tokenizer, last logits and greedy continuation on the CPU", async () => {
  using model = await load_model(`${SHAKESPEARE}ckpt-slim.pt`, { device: "cpu" });
  assertEquals(model.tokenizer.encode(ref.prompt), ref.prompt_ids);
  const [logits] = model.engine.prefill_logits([ref.prompt_ids]);
  const err = rel_l2(logits, ref.last_logits);
  assert(err < 1e-4, `relative L2 error of the last logits ${err} >= 1e-4`);
  const out = await model.generate(ref.prompt, { temperature: 0, max_new_tokens: 200 });
  assertEquals([...ref.prompt_ids, ...out.tokens], ref.greedy_ids);
  assertEquals(ref.prompt + out.text, ref.greedy_text);
  assertEquals(out.finish_reason, "length");
});

Deno.test("shakespeare-char: the full checkpoint (with optimizer state) loads the same model", async () => {
  using model = await load_model(`${SHAKESPEARE}ckpt.pt`, { device: "cpu" });
  const [logits] = model.engine.prefill_logits([ref.prompt_ids]);
  assert(rel_l2(logits, ref.last_logits) < 1e-4);
});

Deno.test("examples/generate.ts streams the reference greedy continuation to stdout", async () => {
  const script = new URL("../examples/generate.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      script,
      "--model",
      `${SHAKESPEARE}ckpt-slim.pt`,
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
  const model = ["--model", `${SHAKESPEARE}ckpt-slim.pt`, "--device", "cpu", "--quiet"];
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
