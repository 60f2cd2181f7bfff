/**
 * Engine behaviour on the CPU backend: ragged batches equal single runs, seeds, stop conditions,
 * streaming, context overflow (nanoGPT's crop-and-recompute, or an error), bad input, no leaks.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import { create_cpu_backend, DEFAULT_MODEL, type GenerateResult, load_model } from "../mod.ts";
import { argmax, fixture } from "./helpers/compare.ts";

const CKPT = DEFAULT_MODEL;

/** What a result says about the text (not its timings or cache use). */
function essence(r: GenerateResult) {
  return { text: r.text, tokens: r.tokens, finish_reason: r.finish_reason };
}

Deno.test("engine: a ragged greedy batch equals running each prompt alone", async () => {
  using model = await load_model(CKPT, { device: "cpu" });
  const prompts = [
    "ROMEO:",
    "JULIET:\nO Romeo",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "A",
  ];
  const opts = { temperature: 0, max_new_tokens: 40 };
  const batch = await model.generate_batch(prompts, opts);
  for (let i = 0; i < prompts.length; i++) {
    const alone = await model.generate(prompts[i], opts);
    assertEquals(batch[i].tokens, alone.tokens, `prompt ${i}`);
    assertEquals(batch[i].text, alone.text);
  }
});

Deno.test("engine: same seed same text; another seed, another text; per-request parameters", async () => {
  using model = await load_model(CKPT, { device: "cpu" });
  const o = { max_new_tokens: 60, temperature: 1.0, top_k: 0 };
  const a = await model.generate("ROMEO:", { ...o, seed: 7 });
  const b = await model.generate("ROMEO:", { ...o, seed: 7 });
  const c = await model.generate("ROMEO:", { ...o, seed: 8 });
  assertEquals(a.text, b.text);
  assert(a.text !== c.text, "different seeds gave the same 60 tokens");
  // In a batch, each request keeps its own stream: same tokens as alone.
  const batch = await model.generate_batch([
    { prompt: "ROMEO:", seed: 7, ...o },
    { prompt: "ROMEO:", temperature: 0, max_new_tokens: 60 },
    { prompt: "ROMEO:", seed: 8, ...o, top_k: 5, top_p: 0.8 },
  ]);
  assertEquals(batch[0].text, a.text);
  assertEquals(batch[1].text, (await model.generate("ROMEO:", { temperature: 0, max_new_tokens: 60 })).text);
  assertEquals(batch[2].text, (await model.generate("ROMEO:", { seed: 8, ...o, top_k: 5, top_p: 0.8 })).text);
});

Deno.test("engine: stop strings, max tokens, streaming pieces", async () => {
  using model = await load_model(CKPT, { device: "cpu" });
  const P = "ROMEO:\nBut soft, what light through yonder";
  const full = await model.generate(P, { temperature: 0, max_new_tokens: 100 });
  const i = full.text.indexOf("\n\n");
  assert(i > 0, "the greedy text has a blank line to stop at");
  const stopped = await model.generate(P, { temperature: 0, max_new_tokens: 100, stop: ["\n\n"] });
  assertEquals(stopped.finish_reason, "stop");
  assertEquals(stopped.text, full.text.slice(0, i));
  let streamed = "";
  for await (const piece of model.stream(P, { temperature: 0, max_new_tokens: 100, stop: ["\n\n"] })) {
    streamed += piece;
  }
  assertEquals(streamed, stopped.text);
  const none = await model.generate(P, { max_new_tokens: 0 });
  assertEquals(essence(none), { text: "", tokens: [], finish_reason: "length" });
  assertEquals(none.prompt_tokens, 42);
});

Deno.test("engine: past block_size it crops to the last block_size tokens and recomputes, like sample.py", async () => {
  using model = await load_model(fixture("nano_bias.pt"), { device: "cpu" });
  const bs = model.config.block_size; // 32
  const prompt = Array.from({ length: 20 }, (_, i) => (i * 7) % model.config.vocab_size);
  const n_new = 30;
  const out = await model.generate(prompt, { temperature: 0, max_new_tokens: n_new });
  // Reference: nanoGPT's loop, one full forward over idx[-block_size:] per token.
  const idx = [...prompt];
  for (let s = 0; s < n_new; s++) {
    const [lg] = model.engine.prefill_logits([idx.slice(-bs)]);
    idx.push(argmax(lg));
  }
  assertEquals(out.tokens, idx.slice(prompt.length));
  // A prompt longer than the context is cropped the same way.
  const long = Array.from({ length: 45 }, (_, i) => (i * 5) % model.config.vocab_size);
  const o2 = await model.generate(long, { temperature: 0, max_new_tokens: 3 });
  const idx2 = [...long];
  for (let s = 0; s < 3; s++) idx2.push(argmax(model.engine.prefill_logits([idx2.slice(-bs)])[0]));
  assertEquals(o2.tokens, idx2.slice(long.length));
});

Deno.test("engine: context_overflow 'error' and bad requests give clear errors", async () => {
  using model = await load_model(fixture("nano_bias.pt"), { device: "cpu", context_overflow: "error" });
  await assertRejects(
    () => model.generate([1, 2, 3], { max_new_tokens: 40 }),
    RangeError,
    "exceeds the model's context of 32",
  );
  await assertRejects(() => model.generate([1, 2, 999]), RangeError, "prompt token 2 is 999");
  await assertRejects(() => model.generate([1], { temperature: -1 }), RangeError, "temperature");
  await assertRejects(() => model.generate([1], { top_k: 1.5 }), RangeError, "top_k");
  await assertRejects(() => model.generate([1], { max_new_tokens: -2 }), RangeError, "max_new_tokens");
  assertThrows(
    () => model.engine.prefill_logits([Array(40).fill(1)]),
    RangeError,
    "exceed the model's context",
  );
});

Deno.test("engine: the CPU backend frees everything it allocated", async () => {
  const backend = create_cpu_backend();
  try {
    for (const path of [CKPT, fixture("hf_tiny_lm")]) {
      const model = await load_model(path, { backend });
      assert(backend.allocated_bytes() > 0);
      await model.generate_batch(["a", "bb"].map((p) => path === CKPT ? p : [1, 2]), { max_new_tokens: 5 });
      model.dispose();
      assertEquals(backend.allocated_bytes(), 0);
    }
  } finally {
    backend[Symbol.dispose]();
  }
});

Deno.test("engine: generate's text (decoded once) equals the streamed pieces, byte-level BPE included", async () => {
  using model = await load_model(fixture("hf_tiny_lm"), { device: "cpu" });
  // A random 300-token model: its tokens are arbitrary GPT-2 byte pieces, often partial UTF-8.
  const opts = { max_new_tokens: 40, temperature: 1, top_k: 0, seed: 3, stop_at_eot: false };
  const out = await model.generate([1, 2, 3], opts);
  let streamed = "";
  for await (const piece of model.stream([1, 2, 3], opts)) streamed += piece;
  assertEquals(out.tokens.length, 40);
  assertEquals(out.text, streamed);
  assertEquals(out.text, new TextDecoder().decode(model.tokenizer.decode_bytes(out.tokens)));
});

Deno.test("engine: several decode steps per launch give the same results as one step per launch", async () => {
  const reqs = [
    { prompt: "ROMEO:", max_new_tokens: 40, temperature: 1, top_k: 0, seed: 1 },
    { prompt: "JULIET:\nO Romeo", max_new_tokens: 17, temperature: 0.8, seed: 2 },
    { prompt: "A", max_new_tokens: 1, temperature: 0 },
    { prompt: "First Citizen:\n", max_new_tokens: 60, temperature: 0, stop: ["\n"] },
    { prompt: "KING", max_new_tokens: 33, temperature: 1, top_p: 0.9, seed: 5, stop: ["e"] },
  ];
  const runs = [];
  for (const steps_per_launch of [1, 3, 8]) {
    using model = await load_model(CKPT, { device: "cpu", steps_per_launch });
    runs.push(await model.generate_batch(reqs));
    // Sliding past the context (256) in the middle of a launch of 8.
    const long = "ROMEO: ".repeat(35);
    runs.push([await model.generate(long, { max_new_tokens: 20, temperature: 1, seed: 9 })]);
  }
  for (const r of runs) assert(r.every((x) => x.tokens.length > 0));
  assertEquals(runs[0][3].finish_reason, "stop");
  const e = runs.map((r) => r.map(essence));
  assertEquals(e[2], e[0]);
  assertEquals(e[4], e[0]);
  assertEquals(e[3], e[1]);
  assertEquals(e[5], e[1]);
  assertEquals(runs[1][0].tokens.length, 20);
});

Deno.test("engine: steps_per_launch must be an integer in [1, 64]", async () => {
  await assertRejects(
    () => load_model(CKPT, { device: "cpu", steps_per_launch: 0 }),
    RangeError,
    "steps_per_launch",
  );
});

Deno.test("engine: a probe right after a request's result is served; while one runs it is refused", async () => {
  using model = await load_model(CKPT, { device: "cpu" });
  // With io_yield_ms (as the server runs it) the loop can still be parked in a timer when the result
  // resolves: that is idle (nothing queued or in flight), not busy.
  model.engine.io_yield_ms = 1;
  const want = model.engine.prefill_logits([[1, 2, 3]])[0];
  for (let i = 0; i < 5; i++) {
    await model.generate("ROMEO:", { max_new_tokens: 100, temperature: 0 });
    assertEquals(model.engine.prefill_logits([[1, 2, 3]])[0], want);
  }
  const running = model.generate("ROMEO:", { max_new_tokens: 20, temperature: 0 });
  assertThrows(() => model.engine.prefill_logits([[1, 2, 3]]), Error, "prefill_logits needs an idle engine");
  await running;
});
