/**
 * A decode step's time, kernel by kernel, from a parsed step trace (src/backend/cuda/step_trace.ts):
 * what tests/gpu/step_trace.ts prints. No GPU needed (tests/step_trace_test.ts runs it on a made-up
 * trace). Times are the global timer's (ns; on an H200 each SM sees it step by 256 ns, at phases 32
 * ns apart).
 * @module
 */
import type { TraceBlock, TraceLaunch } from "../../src/backend/cuda/step_trace.ts";

/** One launch of a decode step (ns). */
export interface StepRow {
  /** The kernel, or for gemvs its matmul ("c_attn", ..., "lm_head"). */
  label: string;
  kernel: string;
  grid: number;
  /** Per block (median): entry -> the wait's start (the requests a kernel makes before it). */
  prewait: number;
  /** The previous launch's last block out -> this launch's first block past its wait. */
  gap: number;
  /** First -> last block past the wait. */
  spread: number;
  /** Per block (median): wait -> exit. */
  body: number;
  /** Per block (median), gemv marks: wait -> x staged, -> dot products done, -> stored. */
  staged: number;
  dots: number;
  stored: number;
  /** The median block's exit -> the last block's exit. */
  tail: number;
  /** The previous launch's last exit -> this one's: a step is the sum of its rows. */
  step: number;
}

/** The summary of the decode steps of a trace. */
export interface StepSummary {
  /** Steps that ran only a decode (each row list adds up to the step). */
  steps: StepRow[][];
  /** Steps left out: they also ran something else (the prompt's prefill). */
  left_out: number;
  /** Each label's mean row over layers and steps, and its microseconds a step. */
  by_label: { label: string; launches: number; row: StepRow; per_step: number }[];
}

const GEMV_ROLES = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"];
const KEYS = ["prewait", "gap", "spread", "body", "staged", "dots", "stored", "tail", "step"] as const;
const NOT_DECODE = /prefill|layernorm|kv_append|gather|logprobs|scatter/;

/** The median (upper middle) of `a`; NaN when empty. */
export function median(a: number[]): number {
  const s = [...a].sort((x, y) => x - y);
  return s.length === 0 ? NaN : s[s.length >> 1];
}
const max = (a: number[]) => a.reduce((m, v) => Math.max(m, v), -Infinity);
const min = (a: number[]) => a.reduce((m, v) => Math.min(m, v), Infinity);
const ns = (v: number | null) => (v === null ? NaN : v);

/** The global timer's step: the smallest gap between its distinct readings. */
export function timer_resolution_ns(launches: TraceLaunch[]): number {
  const t = [...new Set(launches.flatMap((l) => l.blocks.flatMap((b) => [b.entry_ns, b.wait_ns ?? 0])))]
    .filter((v) => v > 0).sort((x, y) => x - y);
  return t.slice(1).reduce((m, v, i) => Math.min(m, v - t[i]), Infinity);
}

/** The rows of one step: `step` runs from one decode embed to the next, that one included. */
function step_rows(step: TraceLaunch[], n_layer: number): StepRow[] {
  let gemvs = 0, prev_exit = max(step[0].blocks.map((b) => ns(b.exit_ns)));
  return step.slice(1).map((l) => {
    const gemv = l.kernel.startsWith("gemv");
    const label = gemv
      ? (gemvs < 4 * n_layer ? GEMV_ROLES[gemvs % 4] : "lm_head")
      : l.kernel.replace(/_kv8$/, "");
    if (gemv) gemvs++;
    const wait = l.blocks.map((b) => ns(b.wait_ns)), exit = l.blocks.map((b) => ns(b.exit_ns));
    const per = (k: number, from: (b: TraceBlock) => number | null) =>
      median(l.blocks.map((b) => ns(b.mark_ns[k]) - ns(from(b))));
    const end = max(exit);
    const r: StepRow = {
      label,
      kernel: l.kernel,
      grid: l.grid,
      prewait: median(l.blocks.map((b) => ns(b.wait_start_ns) - b.entry_ns)),
      gap: min(wait) - prev_exit,
      spread: max(wait) - min(wait),
      body: median(l.blocks.map((b) => ns(b.exit_ns) - ns(b.wait_ns))),
      staged: per(0, (b) => b.wait_ns),
      dots: per(1, (b) => b.mark_ns[0]),
      stored: per(2, (b) => b.mark_ns[1]),
      tail: end - median(exit),
      step: end - prev_exit,
    };
    prev_exit = end;
    return r;
  });
}

/**
 * The decode steps of a trace of `batch` sequences (a decode step's embed has at least `batch` and
 * fewer than `64 * batch` rows: the prompts' prefill embeds 64 a sequence), by kernel.
 */
export function summarize_steps(launches: TraceLaunch[], n_layer: number, batch: number): StepSummary {
  const embeds = launches.flatMap((
    l,
    i,
  ) => (l.kernel === "embed" && l.grid >= batch && l.grid < 64 * batch ? [i] : []));
  if (embeds.length < 2) throw new Error(`the trace holds ${embeds.length} decode embeds; need 2`);
  const all = embeds.slice(1).map((e, i) => step_rows(launches.slice(embeds[i], e + 1), n_layer));
  const steps = all.filter((rs) => rs.every((r) => !NOT_DECODE.test(r.kernel)));
  if (steps.length === 0) throw new Error("no step of the trace ran only a decode");
  const groups = new Map<string, StepRow[]>();
  for (const r of steps.flat()) groups.set(r.label, [...groups.get(r.label) ?? [], r]);
  const by_label = [...groups].map(([label, rs]) => {
    // The mean over layers and steps: the timer steps by 256 ns as each SM reads it, so one
    // launch's numbers come in steps of 0.256 us, and only their mean resolves less.
    const row = { ...rs[0] };
    for (const k of KEYS) row[k] = rs.reduce((a, r) => a + r[k], 0) / rs.length;
    return {
      label,
      launches: rs.length / steps.length,
      row,
      per_step: rs.reduce((a, r) => a + r.step, 0) / steps.length,
    };
  });
  return { steps, left_out: all.length - steps.length, by_label };
}

/** The summary as a markdown table (microseconds). */
export function summary_table(s: StepSummary): string {
  const us = (v: number) => (Number.isFinite(v) ? (v / 1000).toFixed(2) : "-");
  const lines = [
    `| kernel | launches a step | grid | ${KEYS.join(" | ")} | us a step |`,
    `| --- | ---: | ---: | ${KEYS.map(() => "---:").join(" | ")} | ---: |`,
  ];
  for (const { label, launches, row, per_step } of s.by_label) {
    lines.push(
      `| ${label} | ${launches} | ${row.grid} | ${KEYS.map((k) => us(row[k])).join(" | ")} | ${
        us(per_step)
      } |`,
    );
  }
  return lines.join("\n");
}
