/**
 * The engine's host time alone: the CPU backend with every compute op a no-op (the device's work
 * taken away), so what is left is the scheduler, the launch setup, the reads and the collection of
 * events. A closed batch of B prompts of P tokens, N new tokens each (greedy; the sampled tokens
 * are whatever the no-op leaves, token 0). Prints the time of the prefill launch(es) and the host
 * time per decode step.
 *   deno run -A tests/bench/host_overhead.ts [B=256] [P=64] [N=64]
 * @module
 */
import { type Backend, create_cpu_backend, GPT, open_model } from "../../mod.ts";
import { Engine } from "../../src/engine/engine.ts";
import { create_tokenizer } from "../../src/tokenizer/tokenizer.ts";

const [B, P, N] = [Number(Deno.args[0] ?? 256), Number(Deno.args[1] ?? 64), Number(Deno.args[2] ?? 64)];
const NOOP = new Set(["embed", "layernorm", "matmul", "attention", "gather_rows", "logprobs", "sample"]);
using cpu = create_cpu_backend();
const be = new Proxy(cpu, {
  get(target, key) {
    if (typeof key === "string" && NOOP.has(key)) return () => {};
    const v = Reflect.get(target, key, target);
    return typeof v === "function" ? v.bind(target) : v;
  },
}) as Backend;
using source = await open_model(Deno.env.get("MODEL") ?? "random:gpt2");
const tokenizer = await create_tokenizer(source.tokenizer);
using gpt = await GPT.load(be, source);
using engine = new Engine(gpt, tokenizer, {
  max_running: B,
  prefill_tokens: Math.max(16, B * P),
  prefill_seqs: B,
  kv_memory: 2 ** 30,
  prefix_caching: false,
});
const V = gpt.config.vocab_size;
const prompts = Array.from(
  { length: B },
  (_, b) => Array.from({ length: P }, (_, i) => (b * 131 + i * 7) % V),
);
const run = (n: number) =>
  engine.generate(
    prompts.map((prompt) => ({ prompt, max_new_tokens: n, temperature: 0, stop_at_eot: false })),
  );
await run(N); // warm-up
for (let i = 0; i < Number(Deno.env.get("ROUNDS") ?? 3); i++) {
  const t0 = performance.now();
  await run(1);
  const ttft = performance.now() - t0;
  const t1 = performance.now();
  await run(N);
  const total = performance.now() - t1;
  console.log(
    `B=${B} P=${P}: prefill run ${ttft.toFixed(2)} ms, decode ${
      ((total - ttft) * 1000 / (N - 1)).toFixed(1)
    } us/step`,
  );
}
