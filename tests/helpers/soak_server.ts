/**
 * A server soak for tests/server_test.ts, run in its own process with --v8-flags=--expose-gc so
 * that the JavaScript heap can be measured after a full collection: serves the embedded model on
 * the CPU, sends rounds of short requests over HTTP, and prints one JSON line: the live heap after
 * each round (after gc), the backend's allocated bytes, and the blocks held at the end.
 */
import { DEFAULT_MODEL, load_model } from "../../mod.ts";
import { serve } from "../../src/server/server.ts";

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc");
const rounds = Number(Deno.args[0] ?? 15), per_round = Number(Deno.args[1] ?? 200);
using model = await load_model(DEFAULT_MODEL, { device: "cpu", max_running: 32 });
const server = serve(model, { port: 0 });
const prompts = ["ROMEO:", "JULIET:\nO Romeo", "First Citizen:\nBefore we proceed", "A", "KING HENRY:\n"];
const fire = (round: number) =>
  Promise.all(Array.from({ length: per_round }, (_, i) =>
    fetch(`${server.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({
        model: DEFAULT_MODEL,
        prompt: prompts[i % prompts.length] + " ".repeat(round % 4),
        max_tokens: 1 + (i % 4),
        temperature: i % 2 ? 0 : 1,
        seed: round * per_round + i,
        ...(i % 7 === 0 ? { stream: true } : {}),
      }),
    }).then(async (r) => {
      if (r.status !== 200) throw new Error(`status ${r.status}: ${await r.text()}`);
      await r.text();
    })));
const heap: number[] = [], allocated: number[] = [];
for (let round = 0; round < rounds; round++) {
  await fire(round);
  for (let i = 0; i < 3; i++) gc();
  heap.push(Deno.memoryUsage().heapUsed);
  allocated.push(model.backend.allocated_bytes());
}
await server.shutdown();
console.log(JSON.stringify({ heap, allocated, held: model.engine.pool!.held, requests: rounds * per_round }));
