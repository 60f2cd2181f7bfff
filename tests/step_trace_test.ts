// The step trace's host side (no GPU): the record layout common.cuh writes, grouped into launches,
// and a decode step's summary by kernel.
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import {
  parse_trace,
  trace_bytes,
  trace_capacity,
  trace_defines,
  TRACE_RECORD_WORDS,
} from "../src/backend/cuda/step_trace.ts";
import { KERNELS } from "../src/backend/cuda/kernels.ts";
import { summarize_steps } from "./helpers/step_summary.ts";
import { with_env } from "./helpers/env.ts";

const TAG = Object.fromEntries(Object.keys(KERNELS).map((k, i) => [k, i]));

/** A launch as the kernels log it: blocks that enter, pass their wait and leave at these ns. */
interface FakeLaunch {
  kernel: string;
  blocks: { entry: number; wait: number; exit: number; marks?: number[] }[];
}

/** Words of a trace buffer holding `launches` in order (blocks in arrival order, sm = block). */
function trace_words(launches: FakeLaunch[], capacity = 64): BigUint64Array {
  const w = new BigUint64Array(trace_bytes(capacity) / 8);
  let i = 0;
  for (const l of launches) {
    l.blocks.forEach((b, k) => {
      const r = (i + 1) * TRACE_RECORD_WORDS;
      w[r] = (BigInt(TAG[l.kernel]) << 48n) | (BigInt(l.blocks.length) << 32n) | (BigInt(k) << 16n) |
        BigInt(k);
      // common.cuh's words: entry, the wait's start (200 ns after entry here), its end, exit, marks.
      [b.entry, b.entry + 200, b.wait, b.exit].forEach((t, j) => (w[r + 1 + j] = BigInt(t)));
      (b.marks ?? []).forEach((t, j) => (w[r + 5 + j] = BigInt(t)));
      i++;
    });
  }
  w[0] = BigInt(i);
  return w;
}

// One layer's decode step, 1 us a launch: each launch's blocks pass their wait 200 ns after the one
// before leaves, and leave 1 us after that.
function step(t0: number, extra: string[] = []): FakeLaunch[] {
  const kernels = [
    ...extra,
    "gemv_m1",
    "attention_decode",
    "gemv_m1",
    "gemv_m1",
    "gemv_m1",
    "gemv_m1",
    "sample",
    "advance",
    "loop_step",
    "embed",
  ];
  return kernels.map((kernel, j) => {
    const wait = t0 + 1200 * j + 200, n = kernel === "gemv_m1" ? 2 : 1;
    return {
      kernel,
      blocks: Array.from({ length: n }, (_, k) => ({
        entry: wait - 500,
        wait: wait + 100 * k,
        exit: wait + 1000 + 100 * k,
        marks: kernel === "gemv_m1" ? [wait + 300, wait + 700, wait + 900] : undefined,
      })),
    };
  });
}
const first_embed = (t0: number): FakeLaunch => ({
  kernel: "embed",
  blocks: [{ entry: t0 - 1500, wait: t0 - 1000, exit: t0 }],
});

Deno.test("parse_trace: records group into launches in arrival order; a broken launch is named", () => {
  const launches = [first_embed(10_000), ...step(10_000)];
  const { launches: got, dropped } = parse_trace(trace_words(launches));
  assertEquals(dropped, 0);
  assertEquals(got.map((l) => l.kernel), launches.map((l) => l.kernel));
  assertEquals(got[1].grid, 2);
  assertEquals(got[1].blocks[1].wait_ns, 10_000 + 200 + 100);
  assertEquals(got[1].blocks[1].wait_start_ns, 10_000 + 200 - 500 + 200);
  assertEquals(got[1].blocks[0].mark_ns, [10_500, 10_900, 11_100]);
  assertEquals(got[2].blocks[0].mark_ns, [null, null, null]); // attention logs none here
  // A launch of 2 blocks whose second record is another kernel's.
  const w = trace_words(launches);
  w[3 * TRACE_RECORD_WORDS] = (BigInt(TAG.sample) << 48n) | (2n << 32n) | (1n << 16n);
  assertThrows(() => parse_trace(w), Error, "is not 2 records of it");
  // More records than the buffer holds: counted as dropped, the cut launch left out.
  const small = trace_words(launches, 3);
  small[0] = 20n;
  const cut = parse_trace(small);
  assertEquals([cut.dropped, cut.launches.map((l) => l.kernel)], [17, ["embed", "gemv_m1"]]);
});

Deno.test("summarize_steps: a step's rows add up to it; gemvs get their matmul; prefill steps are left out", () => {
  const launches = [first_embed(10_000), ...step(10_000), ...step(22_000, ["layernorm"]), ...step(35_200)];
  const s = summarize_steps(parse_trace(trace_words(launches)).launches, 1, 1);
  assertEquals([s.steps.length, s.left_out], [2, 1]);
  const labels = s.steps[0].map((r) => r.label);
  assertEquals(labels.slice(0, 6), [
    "c_attn",
    "attention_decode",
    "attn.c_proj",
    "c_fc",
    "mlp.c_proj",
    "lm_head",
  ]);
  // The first step: from the first embed's exit (10,000) to the step's embed's last exit.
  const total = s.steps[0].reduce((a, r) => a + r.step, 0);
  assertEquals(total, 10_000 + 1200 * 9 + 200 + 1000 - 10_000);
  const c_attn = s.steps[0][0];
  assertEquals([c_attn.prewait, c_attn.gap, c_attn.spread, c_attn.tail], [200, 200, 100, 0]); // the median exit is the upper one
  assertEquals([c_attn.staged, c_attn.dots, c_attn.stored], [300, 400, 200]);
  assert(Number.isNaN(s.steps[0][1].staged)); // no marks: not a number
  const fc = s.by_label.find((b) => b.label === "c_fc")!;
  assertEquals(fc.launches, 1);
  assert(Math.abs(fc.row.step - 1200) < 1e-9, `c_fc step ${fc.row.step}`);
  assertThrows(
    () => summarize_steps(parse_trace(trace_words([first_embed(0)])).launches, 1, 1),
    Error,
    "need 2",
  );
});

Deno.test("trace_capacity and trace_defines: NGPT_TRACE names a record count; bad values are named", async () => {
  await with_env({ NGPT_TRACE: undefined }, (set) => {
    assertEquals(trace_capacity(), 0);
    set("NGPT_TRACE", "1");
    assertEquals(trace_capacity(), 1 << 18);
    set("NGPT_TRACE", "5000");
    assertEquals(trace_capacity(), 5000);
    set("NGPT_TRACE", "many");
    assertThrows(
      () => trace_capacity(),
      Error,
      'NGPT_TRACE must be 0, 1 or a record count in 2..16777216, got "many"',
    );
  });
  assertEquals(trace_defines(0xabcn, 10, "sample"), [
    "NG_TRACE=0xabcull",
    "NG_TRACE_CAP=10",
    `NG_TRACE_TAG=${TAG.sample}`,
    "NG_TRACE_WORDS=8",
    "NG_TRACE_MARKS=3",
  ]);
});
