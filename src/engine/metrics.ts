/**
 * The engine's counters and latency histograms (what a server's /metrics reports): requests,
 * prompt and generated tokens, time to first token, inter-token latency and end-to-end latency.
 * @module
 */
import type { Sequence } from "./request.ts";

/** A cumulative histogram over fixed bucket bounds (seconds), as Prometheus keeps them. */
export class Histogram {
  /** Upper bounds of the buckets, ascending (a +Inf bucket is implied). */
  readonly bounds: readonly number[];
  /** Observations per bucket (the last one is +Inf), not cumulative. */
  readonly counts: number[];
  /** Sum of all observations. */
  sum = 0;
  /** Number of observations. */
  count = 0;

  /** An empty histogram over `bounds`, the buckets' upper bounds in ascending order. */
  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.counts = new Array(bounds.length + 1).fill(0);
  }

  /** Records `v`, `times` times. */
  observe(v: number, times = 1): void {
    let i = this.bounds.findIndex((b) => v <= b);
    if (i < 0) i = this.bounds.length;
    this.counts[i] += times;
    this.sum += v * times;
    this.count += times;
  }
}

/** Bucket bounds in seconds: 1 ms to 60 s. */
const LATENCY_BOUNDS = [
  0.001,
  0.0025,
  0.005,
  0.01,
  0.02,
  0.04,
  0.06,
  0.08,
  0.1,
  0.15,
  0.25,
  0.5,
  0.75,
  1,
  2.5,
  5,
  10,
  20,
  60,
];

/** Counters and histograms of one engine. */
export class EngineMetrics {
  /** Requests submitted. */
  requests = 0;
  /** Requests that ended, by reason ("length", "eot", "stop", "cancelled"). */
  readonly finished: Record<string, number> = {};
  /** Prompt tokens prefilled: a request's prompt counts when its first token arrives. */
  prompt_tokens = 0;
  /** Tokens generated. */
  generated_tokens = 0;
  /** Seconds from submission to the first token. */
  readonly ttft = new Histogram(LATENCY_BOUNDS);
  /** Seconds between a request's consecutive tokens (a launch's tokens share its interval). */
  readonly itl = new Histogram(LATENCY_BOUNDS);
  /** Seconds from submission to the end. */
  readonly e2e = new Histogram(LATENCY_BOUNDS);
  #last = new WeakMap<Sequence, number>();

  /** A request was queued. */
  on_submit(): void {
    this.requests++;
  }

  /** `n` tokens of `s` arrived at `now` (performance.now()). */
  on_tokens(s: Sequence, n: number, now: number): void {
    if (n === 0) return;
    if (s.generated.length === n) {
      this.prompt_tokens += s.prompt.length;
      this.ttft.observe((now - s.t_submit) / 1000);
    } else {
      const last = this.#last.get(s);
      if (last !== undefined) this.itl.observe((now - last) / 1000 / n, n);
    }
    this.#last.set(s, now);
    this.generated_tokens += n;
  }

  /** A request ended. */
  on_end(s: Sequence, why: string): void {
    this.finished[why] = (this.finished[why] ?? 0) + 1;
    if (why !== "cancelled") this.e2e.observe((performance.now() - s.t_submit) / 1000);
  }
}
