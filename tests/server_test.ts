/**
 * The OpenAI-compatible server on the CPU backend and the embedded model, driven by the official
 * `openai` npm client: completions equal the library's; streaming equals non-streaming; n with a
 * seed; logprobs and echo-scoring equal log-softmax of the model's logits; every error case in
 * OpenAI's shape; 64 concurrent requests, some cancelled mid-stream, each equal to its run alone,
 * with the engine back to zero afterwards; a soak of a few thousand requests without memory growth;
 * and SIGTERM ending a real `serve` process's streams cleanly.
 */
// deno-lint-ignore no-import-prefix
import OpenAI from "npm:openai@7.59.0";
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { DEFAULT_MODEL, load_model, type Model } from "../mod.ts";
import { serve, type Server } from "../src/server/server.ts";

const ID = DEFAULT_MODEL;

async function start(
  opts: Parameters<typeof load_model>[1] = {},
  serve_opts: Parameters<typeof serve>[1] = {},
) {
  const model = await load_model(DEFAULT_MODEL, { device: "cpu", ...opts });
  const server = serve(model, { port: 0, ...serve_opts });
  const client = new OpenAI({
    baseURL: `${server.url}/v1`,
    apiKey: serve_opts.api_key ?? "none",
    maxRetries: 0,
  });
  return {
    model,
    server,
    client,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
      model.dispose();
    },
  };
}

function log_softmax(x: Float32Array): Float64Array {
  let m = -Infinity;
  for (const v of x) m = Math.max(m, v);
  let z = 0;
  for (const v of x) z += Math.exp(v - m);
  const lse = m + Math.log(z);
  return Float64Array.from(x, (v) => v - lse);
}

Deno.test("server: greedy, streamed, n with a seed, logprobs and echo scoring", async () => {
  await using s = await start();
  const { client, model } = s;
  // Greedy equals the library's greedy output.
  const lib = await model.generate("ROMEO:", { max_new_tokens: 40, temperature: 0 });
  const r = await client.completions.create({ model: ID, prompt: "ROMEO:", max_tokens: 40, temperature: 0 });
  assertEquals(r.choices[0].text, lib.text);
  assertEquals(r.choices[0].finish_reason, "length");
  assertEquals(r.usage, { prompt_tokens: 6, completion_tokens: 40, total_tokens: 46 });
  assertEquals(r.object, "text_completion");
  // Streaming gives the same text, then [DONE] (the client stops there), with usage when asked.
  const st = await client.completions.create({
    model: ID,
    prompt: "ROMEO:",
    max_tokens: 40,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "", finish = null, usage = null;
  for await (const c of st) {
    if (c.choices.length) {
      text += c.choices[0].text;
      finish = c.choices[0].finish_reason ?? finish;
    }
    if (c.usage) usage = c.usage;
  }
  assertEquals(text, lib.text);
  assertEquals(finish, "length");
  assertEquals(usage, r.usage);
  // n with a seed: n distinct samples, the same again with the same seed; choice j is seed + j.
  const ask = () =>
    client.completions.create({ model: ID, prompt: ["JULIET:", "NURSE:"], max_tokens: 30, n: 3, seed: 11 });
  const a = await ask(), b = await ask();
  assertEquals(a.choices.length, 6);
  assertEquals(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  assertEquals(a.choices.map((c) => c.index), [0, 1, 2, 3, 4, 5]);
  assert(
    new Set(a.choices.slice(0, 3).map((c) => c.text)).size > 1,
    "n samples of one prompt were all equal",
  );
  const one = await model.generate("NURSE:", { max_new_tokens: 30, seed: 12, temperature: 1, top_k: 0 });
  assertEquals(a.choices[4].text, one.text, "choice 4 is prompt 1 with seed 11 + 1");
  // logprobs equal log-softmax of the model's logits, at every generated position.
  const lp = await client.completions.create({
    model: ID,
    prompt: "ROMEO:",
    max_tokens: 5,
    temperature: 0,
    logprobs: 3,
  });
  const ids = model.tokenizer.encode("ROMEO:");
  const got = lp.choices[0].logprobs as Required<NonNullable<typeof lp.choices[0]["logprobs"]>>;
  assertEquals(got.tokens.join(""), lp.choices[0].text);
  for (let i = 0; i < 5; i++) {
    const ls = log_softmax(model.engine.prefill_logits([ids])[0]);
    const t = model.tokenizer.encode(got.tokens[i])[0];
    assert(
      Math.abs(got.token_logprobs[i]! - ls[t]) < 1e-4,
      `token ${i}: ${got.token_logprobs[i]} vs ${ls[t]}`,
    );
    const top = Object.entries(got.top_logprobs![i]!);
    assertEquals(top.length, 3);
    const best = [...ls.keys()].sort((x, y) => ls[y] - ls[x]).slice(0, 3);
    assertEquals(top.map(([k]) => model.tokenizer.encode(k)[0]), best);
    ids.push(t);
  }
  // echo + max_tokens 0 + logprobs scores the prompt: each token given those before it.
  const prompt = "KING RICHARD III:\nNow is the winter of our discontent";
  const sc = await client.completions.create({ model: ID, prompt, max_tokens: 0, echo: true, logprobs: 0 });
  const c = sc.choices[0];
  const clp = c.logprobs as Required<NonNullable<typeof c.logprobs>>;
  assertEquals(c.text, prompt);
  const pid = model.tokenizer.encode(prompt);
  assertEquals(clp.token_logprobs[0], null);
  for (let j = 1; j < pid.length; j++) {
    const ls = log_softmax(model.engine.prefill_logits([pid.slice(0, j)])[0]);
    assert(Math.abs(clp.token_logprobs[j]! - ls[pid[j]]) < 1e-4, `prompt token ${j}`);
  }
  assertEquals(clp.text_offset.slice(0, 3), [0, 1, 2]);
  assertEquals(sc.usage!.completion_tokens, 0);
  // /v1/models names the served model.
  const models = await client.models.list();
  assertEquals(models.data.map((m) => m.id), [ID]);
});

Deno.test("server: errors in OpenAI's shape, naming the field, never a stack", async () => {
  await using s = await start({ max_running: 1, max_waiting: 1 }, { api_key: "sekrit" });
  const url = s.server.url;
  const post = (path: string, body: unknown, key: string | null = "sekrit") =>
    fetch(`${url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
  const expect = async (res: Response, status: number, param: string | null, includes: string) => {
    const j = await res.json();
    assertEquals(res.status, status, JSON.stringify(j));
    assertEquals(Object.keys(j), ["error"]);
    assertEquals(Object.keys(j.error).sort(), ["code", "message", "param", "type"]);
    assertEquals(j.error.param, param);
    assert(j.error.message.includes(includes), j.error.message);
    assert(!/\n\s+at /.test(j.error.message), "a stack trace in the response");
  };
  const ok = { model: ID, prompt: "ROMEO:", max_tokens: 2 };
  await expect(await post("/v1/completions", ok, null), 401, null, "API key");
  await expect(await post("/v1/completions", ok, "wrong"), 401, null, "API key");
  await expect(
    await post("/v1/completions", { ...ok, model: "gpt-4" }),
    404,
    "model",
    "'gpt-4' does not exist",
  );
  await expect(await post("/v1/nothing", ok), 404, null, "no route");
  await expect(await post("/v1/completions", "{not json"), 400, "body", "not valid JSON");
  await expect(
    await post("/v1/completions", { ...ok, max_tokns: 3 }),
    400,
    "max_tokns",
    "did you mean 'max_tokens'",
  );
  await expect(await post("/v1/completions", { ...ok, temperature: -1 }), 400, "temperature", "[0, 2]");
  await expect(await post("/v1/completions", { ...ok, n: 0 }), 400, "n", "integer");
  await expect(
    await post("/v1/completions", { ...ok, stop: ["a", "b", "c", "d", "e"] }),
    400,
    "stop",
    "at most 4",
  );
  await expect(await post("/v1/completions", { ...ok, logprobs: 6 }), 400, "logprobs", "[0, 5]");
  await expect(await post("/v1/completions", { ...ok, prompt: [1, 2, 999] }), 400, "prompt", "token ids");
  await expect(
    await post("/v1/completions", { ...ok, prompt: "caf\u00e9" }),
    400,
    "prompt",
    "cannot be encoded",
  );
  await expect(await post("/v1/completions", { ...ok, best_of: 2 }), 400, "best_of", "not supported");
  await expect(
    await post("/v1/completions", { ...ok, prompt: "A".repeat(250), max_tokens: 10 }),
    400,
    "prompt",
    "maximum context length is 256",
  );
  await expect(
    await post("/v1/chat/completions", { model: ID, messages: [] }),
    400,
    "messages",
    "no chat template",
  );
  // 429: one running, one waiting, the rest refused.
  const many = await Promise.all(
    Array.from({ length: 6 }, () => post("/v1/completions", { ...ok, max_tokens: 50 })),
  );
  const statuses = many.map((r) => r.status);
  assert(statuses.includes(429) && statuses.includes(200), `statuses ${statuses}`);
  for (const r of many) {
    const j = await r.json();
    if (r.status === 429) assertEquals(j.error.type, "rate_limit_exceeded");
  }
  // The client library reports them as its own error classes.
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "sekrit", maxRetries: 0 });
  await assertRejects(
    () => client.completions.create({ model: ID, prompt: "x", max_tokens: -1 }),
    OpenAI.BadRequestError,
  );
  const health = await fetch(`${url}/health`);
  assertEquals(await health.json(), { status: "ok" });
});

/** Requests of mixed prompts, lengths and sampling options. */
function mixed(i: number) {
  const prompts = ["ROMEO:", "JULIET:\nO Romeo", "First Citizen:\nBefore we proceed", "A", "KING HENRY:\n"];
  return {
    model: ID,
    prompt: prompts[i % prompts.length] + " ".repeat(i % 3),
    max_tokens: 5 + (i * 7) % 40,
    temperature: i % 4 === 0 ? 0 : 0.7 + (i % 3) * 0.2,
    top_k: i % 5 === 1 ? 10 : undefined,
    top_p: i % 5 === 2 ? 0.9 : undefined,
    seed: 1000 + i,
  };
}

Deno.test("server: 64 concurrent requests, some cancelled mid-stream, each equals its run alone", async () => {
  await using s = await start({ steps_per_launch: 4 });
  const { client, model } = s;
  const alone: string[] = [];
  for (let i = 0; i < 64; i++) {
    const q = mixed(i);
    alone.push(
      (await model.generate(q.prompt, {
        max_new_tokens: q.max_tokens,
        temperature: q.temperature,
        top_k: q.top_k ?? 0,
        top_p: q.top_p ?? 1,
        seed: q.seed,
      })).text,
    );
  }
  const cancelled = new Set([3, 17, 30, 41, 58]);
  const results = await Promise.all(Array.from({ length: 64 }, async (_, i) => {
    if (i % 2 === 0) {
      const r = await client.completions.create(mixed(i));
      return r.choices[0].text;
    }
    const ac = new AbortController();
    const st = await client.completions.create({ ...mixed(i), stream: true }, { signal: ac.signal });
    let text = "", pieces = 0;
    try {
      for await (const c of st) {
        text += c.choices[0]?.text ?? "";
        if (cancelled.has(i) && ++pieces === 2) {
          ac.abort(); // the client hangs up mid-stream
          break;
        }
      }
    } catch (e) {
      if (!cancelled.has(i)) throw e;
    }
    return cancelled.has(i) ? null : text;
  }));
  results.forEach((t, i) => {
    if (t !== null) assertEquals(t, alone[i], `request ${i}`);
    else assert(cancelled.has(i));
  });
  // Within a launch or two the cancelled requests are gone and everything is free.
  for (let k = 0; k < 100 && (model.engine.load.running || model.engine.load.waiting); k++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  assertEquals(model.engine.load, { running: 0, waiting: 0 });
  const pool = model.engine.pool!;
  assertEquals(pool.held, 0, "blocks still held: every block must be free or cached");
  pool.check();
  const metrics = await (await fetch(`${s.server.url}/metrics`)).text();
  assert(/^ngpt_requests_running 0$/m.test(metrics) && /^ngpt_kv_cache_usage 0$/m.test(metrics), metrics);
  assert(/^ngpt_time_to_first_token_seconds_count [1-9]/m.test(metrics), "no TTFT observed");
  assert(
    /ngpt_requests_finished_total\{finish_reason="cancelled"\} [1-9]/.test(metrics),
    "no cancellation counted",
  );
});

Deno.test("server: a soak of 3000 requests leaves the heap, device buffers and KV blocks where they were", async () => {
  // In its own process, to measure the heap after full collections (--expose-gc).
  const script = new URL("./helpers/soak_server.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", script, "15", "200"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, err);
  const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
  assertEquals(r.requests, 3000);
  assertEquals(r.held, 0, "KV blocks still held after the soak");
  assert(
    r.allocated.every((a: number) => a === r.allocated[0]),
    `backend allocations changed: ${r.allocated}`,
  );
  // The live heap after the first rounds (the engine's and the HTTP stack's working set) stays put.
  const base = Math.max(...r.heap.slice(3, 6)), last = Math.max(...r.heap.slice(-3));
  const grew = (last - base) / 2 ** 20;
  assert(
    grew < 1,
    `the live heap grew by ${grew.toFixed(2)} MiB over 1800 requests: ${
      r.heap.map((h: number) => (h / 2 ** 20).toFixed(1))
    }`,
  );
});

Deno.test("server: SIGTERM ends a real serve process's streams cleanly and exits", async () => {
  const script = new URL("../examples/serve.ts", import.meta.url).pathname;
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, "--device", "cpu", "--port", "0", "--quiet"],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = p.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    out += value;
  }
  const base = out.trim();
  assert(/^http:\/\/127\.0\.0\.1:\d+\/v1$/.test(base), `printed "${base}"`);
  const client = new OpenAI({ baseURL: base, apiKey: "none", maxRetries: 0 });
  const st = await client.completions.create({ model: ID, prompt: "ROMEO:", max_tokens: 200, stream: true });
  let pieces = 0, text = "";
  for await (const c of st) {
    text += c.choices[0]?.text ?? "";
    if (++pieces === 2) p.kill("SIGTERM");
  }
  assert(text.length > 0);
  const status = await p.status;
  reader.releaseLock();
  await p.stdout.cancel().catch(() => {});
  const err = new TextDecoder().decode(await new Response(p.stderr).arrayBuffer());
  assertEquals(status.code, 0, err);
  // The stream ended on its own terms: the request finished within the grace period.
  assert(pieces > 2, `only ${pieces} chunks`);
});

// Keep the type imported for readers of the helper's return type.
export type { Model, Server };
