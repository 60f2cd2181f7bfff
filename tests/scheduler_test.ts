/**
 * The continuous-batching scheduler and its KV block pool, on the CPU backend and the embedded
 * model: block allocation, freeing and eviction; prefix-cache hits; preemption and recompute giving
 * the same tokens; chunked prefill equal to one-shot prefill; requests joining a running batch;
 * cancellation freeing blocks; and the overlapped pipeline (one launch behind) giving the same
 * results as the synchronous one.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import {
  type Backend,
  type CpuBackend,
  create_cpu_backend,
  DEFAULT_MODEL,
  type GenerateResult,
  load_model,
} from "../mod.ts";
import { BlockPool, LruList, prefix_keys } from "../src/engine/kv_cache.ts";
import { Scheduler } from "../src/engine/scheduler.ts";
import { Sequence } from "../src/engine/request.ts";
import { resolve_sampling } from "../src/engine/sampling.ts";
import type { Tokenizer } from "../src/tokenizer/tokenizer.ts";
import { rng, test_seed } from "./helpers/rng.ts";
import { prepare_native } from "../src/native/lib.ts";

await prepare_native();

/** What a result says about the text (not its timings or cache use). */
const essence = (r: GenerateResult) => ({ text: r.text, tokens: r.tokens, finish_reason: r.finish_reason });

/** The embedded model's KV bytes per block of 16 positions (4 layers, k and v, 256 wide, f32). */
const BLOCK_BYTES = 2 * 4 * 16 * 256 * 4;

const REQUESTS = [
  { prompt: "ROMEO:", max_new_tokens: 60, temperature: 0 },
  {
    prompt: "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?",
    max_new_tokens: 45,
    temperature: 1,
    seed: 3,
  },
  {
    prompt: "First Citizen:\nBefore we proceed any further, hear me speak.",
    max_new_tokens: 70,
    temperature: 0.8,
    seed: 4,
    top_k: 10,
  },
  { prompt: "A", max_new_tokens: 30, temperature: 0 },
  { prompt: "KING HENRY:\n", max_new_tokens: 50, temperature: 1, top_p: 0.9, seed: 5, stop: ["\n\n"] },
];

Deno.test("block pool: allocation, references, LRU eviction of cached blocks, invariants", () => {
  const pool = new BlockPool(6, 4);
  const a = pool.allocate_n(4)!;
  assertEquals(pool.available, 2);
  assertEquals(pool.allocate_n(3), null, "allocate_n takes nothing when short");
  assertEquals(pool.available, 2);
  const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9];
  const keys = prefix_keys(tokens, 4);
  assertEquals(keys.length, 2);
  pool.register(a[0], tokens, keys, 0);
  pool.register(a[1], tokens, keys, 1);
  pool.release_all(a);
  pool.check();
  assertEquals(pool.available, 6);
  assertEquals(pool.cached, 2);
  // A lookup finds both cached blocks and holds them; another prefix finds nothing.
  const hit = pool.lookup(tokens, keys, 2);
  assertEquals(hit, [a[0], a[1]]);
  assertEquals(pool.refs(a[0]), 1);
  assertEquals(pool.lookup([1, 2, 3, 5, 5, 6, 7, 8], prefix_keys([1, 2, 3, 5, 5, 6, 7, 8], 4), 2), []);
  // The second block's key chains the first: same tokens after another first block do not match.
  const other = [9, 9, 9, 9, 5, 6, 7, 8];
  assertEquals(pool.lookup(other, prefix_keys(other, 4), 2), []);
  pool.release_all(hit);
  // Fresh blocks come from the free list first, then the least recently used cached block.
  const b = pool.allocate_n(4)!;
  assert(!b.includes(a[0]) && !b.includes(a[1]), "cached blocks were evicted while free ones remained");
  const c = pool.allocate()!;
  assertEquals(c, a[0], "the least recently used cached block goes first");
  assertEquals(pool.cached, 1);
  assertEquals(pool.lookup(tokens, keys, 2), [], "an evicted first block breaks the chain");
  pool.release_all([...b, c]);
  pool.check();
  assertThrows(() => pool.release(c), Error, "released with 0 references");
  assertThrows(() => new BlockPool(0, 16), RangeError, "is not a pool");
});

Deno.test("LRU list: random pushes, deletes and shifts agree with an array model", () => {
  const seed = test_seed(), r = rng(seed), n = 64;
  const lru = new LruList(n), model: number[] = [];
  for (let step = 0; step < 20000; step++) {
    const id = Math.floor(r() * n), op = r();
    if (op < 0.45) {
      if (model.includes(id)) assertThrows(() => lru.push(id), Error, "already in the LRU list");
      else lru.push(id), model.push(id);
    } else if (op < 0.75) {
      const i = model.indexOf(id);
      assertEquals(lru.delete(id), i >= 0, `seed ${seed}, step ${step}: delete ${id}`);
      if (i >= 0) model.splice(i, 1);
    } else {
      assertEquals(lru.shift(), model.shift(), `seed ${seed}, step ${step}: the oldest id`);
    }
    assertEquals(lru.size, model.length);
    assertEquals(lru.has(id), model.includes(id));
  }
});

Deno.test("scheduler: prefix-cache hits skip the shared prefix; results equal with the cache off", async () => {
  const system =
    "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n";
  const reqs = ["JULIET:", "MERCUTIO:", "NURSE:"].map((p) => ({
    prompt: system + p,
    max_new_tokens: 20,
    temperature: 0,
  }));
  const runs = [];
  for (const prefix_caching of [true, false]) {
    using model = await load_model(DEFAULT_MODEL, { device: "cpu", prefix_caching });
    const first = await model.generate_batch(reqs.slice(0, 1));
    const rest = await model.generate_batch(reqs.slice(1));
    const all = [...first, ...rest];
    if (prefix_caching) {
      assertEquals(first[0].cached_tokens, 0);
      const shared = Math.floor((system.length + 5) / 16) * 16; // full blocks of the common prefix
      for (const r of rest) {
        assert(r.cached_tokens >= shared - 16 && r.cached_tokens > 0, `cached ${r.cached_tokens}`);
      }
      const st = model.engine.pool!.stats;
      assert(st.hit_tokens > 0 && st.hit_tokens <= st.queried_tokens);
    } else assert(all.every((r) => r.cached_tokens === 0));
    runs.push(all.map(essence));
    assertEquals(model.engine.pool!.held, 0, "blocks held after the engine went idle");
  }
  assertEquals(runs[0], runs[1]);
});

Deno.test("scheduler: requests arriving together with one prompt compute its prefix once", async () => {
  using model = await load_model(DEFAULT_MODEL, { device: "cpu" });
  const prompt = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east.\n"; // 4 full blocks and more
  const out = await model.generate_batch(
    Array.from({ length: 4 }, (_, i) => ({ prompt, seed: i, max_new_tokens: 10 })),
  );
  assertEquals(out[0].cached_tokens, 0);
  const full = Math.floor((prompt.length - 1) / 16) * 16;
  for (const r of out.slice(1)) {
    assertEquals(r.cached_tokens, full, "a later sample did not reuse the prefix");
  }
  // The same texts as each request alone.
  for (const [i, r] of out.entries()) {
    assertEquals(r.text, (await model.generate(prompt, { seed: i, max_new_tokens: 10 })).text);
  }
});

Deno.test("scheduler: a KV pool too small for the batch preempts and recomputes, with the same tokens", async () => {
  const wide = [];
  {
    using model = await load_model(DEFAULT_MODEL, { device: "cpu" });
    wide.push(...(await model.generate_batch(REQUESTS)).map(essence));
  }
  // 20 blocks: one sequence's context (16 blocks) plus a few, for five requests of 2-8 blocks each.
  using model = await load_model(DEFAULT_MODEL, {
    device: "cpu",
    kv_memory: 20 * BLOCK_BYTES,
    steps_per_launch: 4,
  });
  const narrow = (await model.generate_batch(REQUESTS)).map(essence);
  assertEquals(narrow, wide);
  assert(model.engine.preemptions > 0, "the tight pool never preempted: the test no longer tests preemption");
  const pool = model.engine.pool!;
  assertEquals(pool.num_blocks, 20);
  assertEquals(pool.held, 0);
  pool.check();
});

Deno.test("scheduler: chunked prefill (16-token chunks) equals one-shot prefill", async () => {
  const long = {
    prompt: "ROMEO:\n" + "O, she doth teach the torches to burn bright! ".repeat(4),
    max_new_tokens: 30,
    temperature: 0,
  };
  const out = [];
  for (const prefill_tokens of [16, 48, 512]) {
    using model = await load_model(DEFAULT_MODEL, { device: "cpu", prefill_tokens, prefix_caching: false });
    out.push((await model.generate_batch([long, ...REQUESTS.slice(0, 2)])).map(essence));
  }
  assertEquals(out[0], out[2]);
  assertEquals(out[1], out[2]);
});

Deno.test("scheduler: requests join a running batch and leave it; cancellation frees their blocks", async () => {
  using model = await load_model(DEFAULT_MODEL, { device: "cpu", steps_per_launch: 2 });
  const e = model.engine;
  const alone = await Promise.all(REQUESTS.map((r) => e.generate([r]).then((x) => essence(x[0]))));
  // Submitted one after another while earlier ones run: each equals its run alone.
  const handles = [];
  for (const r of REQUESTS) {
    handles.push(e.submit(r));
    await new Promise((res) => setTimeout(res, 3));
  }
  const late = await Promise.all(handles.map((h) => h.result));
  assertEquals(late.map(essence), alone);
  // Cancel one mid-stream: its events end with the reason; the others are unaffected.
  const keep = e.submit(REQUESTS[0]);
  const gone = e.submit({ prompt: "ROMEO:", max_new_tokens: 200, temperature: 0 });
  let pieces = 0;
  await assertRejects(
    async () => {
      for await (const _ of gone.events()) if (++pieces === 2) gone.cancel(new Error("client went away"));
    },
    Error,
    "client went away",
  );
  await assertRejects(() => gone.result, Error, "client went away");
  assertEquals(essence(await keep.result), alone[0]);
  assertEquals(e.load, { running: 0, waiting: 0 });
  assertEquals(e.pool!.held, 0);
  // An AbortSignal cancels too, even before the request starts.
  const ac = new AbortController();
  ac.abort(new Error("never mind"));
  await assertRejects(() => e.submit(REQUESTS[1], { signal: ac.signal }).result, Error, "never mind");
});

/**
 * A CPU backend whose reads claim to be asynchronous: the engine then runs its overlapped pipeline
 * (launch, then collect the launch before), as on CUDA.
 */
function overlapped(be: CpuBackend): Backend {
  return new Proxy(be, {
    get(target, key) {
      if (key === "read_async") {
        return (src: Parameters<CpuBackend["read"]>[0], bytes: number, offset = 0) => {
          const out = new Uint8Array(bytes);
          target.read(src, out, offset);
          return { done: () => true, wait: () => out };
        };
      }
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

Deno.test("engine: the overlapped pipeline (one launch behind) gives the synchronous results", async () => {
  const plain = [];
  {
    using model = await load_model(DEFAULT_MODEL, { device: "cpu" });
    plain.push(...(await model.generate_batch(REQUESTS)).map(essence));
    plain.push(
      essence(await model.generate("ROMEO: ".repeat(40), { max_new_tokens: 12, temperature: 1, seed: 9 })),
    );
  }
  using cpu = create_cpu_backend();
  using model = await load_model(DEFAULT_MODEL, { backend: overlapped(cpu) });
  const got = (await model.generate_batch(REQUESTS)).map(essence);
  got.push(
    essence(await model.generate("ROMEO: ".repeat(40), { max_new_tokens: 12, temperature: 1, seed: 9 })),
  );
  assertEquals(got, plain);
  // A tight pool: preemption in the overlapped pipeline drains the launch in flight first.
  using tight = await load_model(DEFAULT_MODEL, { backend: overlapped(cpu), kv_memory: 20 * BLOCK_BYTES });
  assertEquals((await tight.generate_batch(REQUESTS)).map(essence), plain.slice(0, REQUESTS.length));
  assert(tight.engine.preemptions > 0, "the tight pool never preempted");
});

/** A scheduler over a pool of 64 blocks of 16 positions, and sequences for it (no model). */
function bare_scheduler(slots: number, prefill_tokens: number) {
  const sched = new Scheduler(new BlockPool(64, 16, { prefix_caching: true }), {
    slots,
    context: 256,
    prefill_tokens,
    prefill_seqs: 8,
    steps_per_launch: 8,
    max_waiting: 0,
  });
  const tokenizer = { encode: () => [], decode: () => "", eot_token: 0 } as unknown as Tokenizer;
  let id = 0;
  const seq = (prompt: number[], max_new_tokens = 100) =>
    new Sequence(
      id++,
      { ...resolve_sampling({ temperature: 0, max_new_tokens }), logprobs: -1, prompt_logprobs: false },
      prompt,
      tokenizer,
      false,
    );
  /** Plans a launch and marks it done as the engine would. */
  const launch = () => {
    const plan = sched.plan();
    assert(!("needs_drain" in plan));
    for (const c of plan.prefill) sched.computed(c);
    for (const s of plan.decode?.by_slot ?? []) if (s) s.len += plan.decode!.k;
    // Collected at once: the tokens of the launch are generated.
    for (const c of plan.prefill) if (c.final) c.seq.generated.push(0);
    for (const s of plan.decode?.by_slot ?? []) if (s) s.generated.push(...new Array(plan.decode!.k).fill(0));
    return plan;
  };
  return { sched, seq, launch };
}

Deno.test("scheduler: one decode step per launch while admitted prompts wait beyond the chunk budget", () => {
  const { sched, seq, launch } = bare_scheduler(4, 32);
  const prompt = (n: number, from: number) => Array.from({ length: n }, (_, i) => i + from);
  sched.add(seq(prompt(20, 0)));
  sched.admit();
  // One prompt within the budget: its final chunk and K decode steps in one launch.
  assertEquals(launch().decode?.k, 8);
  sched.add(seq(prompt(40, 100)));
  sched.add(seq(prompt(40, 200)));
  sched.add(seq(prompt(40, 300)));
  sched.admit();
  // 120 prompt tokens, 32 a launch: one step per launch while more than one more chunk waits.
  const ks = [launch(), launch(), launch(), launch()].map((p) => [
    p.prefill.reduce((a, c) => a + c.n, 0),
    p.decode?.k,
  ]);
  assertEquals(ks, [[32, 1], [32, 1], [32, 8], [24, 8]]);
});

Deno.test("scheduler: requests sharing a cached prefix are admitted together; a prefix being computed is waited for", () => {
  const { sched, seq, launch } = bare_scheduler(8, 512);
  const prefix = Array.from({ length: 64 }, (_, i) => 1000 + i);
  // Suffixes of a whole block: each request's last full block is its own (the case that waited).
  const suffix = (i: number) => Array.from({ length: 16 }, (_, j) => 16 * i + j);
  const first = seq([...prefix, ...suffix(0)]);
  sched.add(first);
  sched.add(seq([...prefix, ...suffix(1)]));
  // The second shares blocks the first is computing: it waits one launch for them.
  assertEquals(sched.admit(), [first]);
  launch();
  for (let i = 2; i < 7; i++) sched.add(seq([...prefix, ...suffix(i)]));
  const admitted = sched.admit();
  assertEquals(admitted.length, 6, "each request's own last block made the next one wait");
  assertEquals(admitted.map((s) => s.computed), [64, 64, 64, 64, 64, 64]);
  sched.pool.check();
});

Deno.test("scheduler: fewer tokens wanted than steps per launch take the largest power of two that fits", () => {
  const { sched, seq, launch } = bare_scheduler(4, 64);
  sched.add(seq(Array.from({ length: 20 }, (_, i) => i), 8));
  sched.admit();
  // The prefill's token, then 7 more: 4, 2, 1 (not seven one-step launches).
  assertEquals([launch(), launch(), launch()].map((p) => p.decode?.k), [4, 2, 1]);
});

Deno.test("scheduler: an int8 KV cache sizes its pool by its own block bytes, and preemption recomputes the same tokens", async () => {
  const wide = [];
  {
    using model = await load_model(DEFAULT_MODEL, { device: "cpu", kv_dtype: "int8" });
    wide.push(...(await model.generate_batch(REQUESTS)).map(essence));
  }
  using model = await load_model(DEFAULT_MODEL, { device: "cpu", kv_dtype: "int8", kv_memory: 1 });
  const c = model.config;
  // One byte a value, plus an f32 scale per row of head_dim values, for K and V in every layer.
  const block = 2 * c.n_layer * 16 * c.n_embd + 2 * c.n_layer * 16 * c.n_head * 4;
  assert(block < BLOCK_BYTES / 3, `int8 block of ${block} bytes against ${BLOCK_BYTES} in f32`);
  await assertRejects(() => model.generate("ROMEO:"), RangeError, `blocks of ${block} bytes`);
  using tight = await load_model(DEFAULT_MODEL, {
    device: "cpu",
    kv_dtype: "int8",
    kv_memory: 20 * block,
    steps_per_launch: 4,
  });
  assertEquals((await tight.generate_batch(REQUESTS)).map(essence), wide);
  assertEquals(tight.engine.pool!.num_blocks, 20);
  assertEquals(tight.engine.kv_bytes, 20 * block);
  assert(tight.engine.preemptions > 0, "the tight pool never preempted");
  assertEquals(tight.engine.pool!.held, 0);
});
