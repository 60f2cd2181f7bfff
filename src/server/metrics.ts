/**
 * The engine's state and counters in Prometheus' text exposition format (the server's /metrics).
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Histogram } from "../engine/metrics.ts";

function histogram(name: string, help: string, h: Histogram): string {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
  let cum = 0;
  h.bounds.forEach((b, i) => {
    cum += h.counts[i];
    lines.push(`${name}_bucket{le="${b}"} ${cum}`);
  });
  lines.push(`${name}_bucket{le="+Inf"} ${h.count}`, `${name}_sum ${h.sum}`, `${name}_count ${h.count}`);
  return lines.join("\n");
}

function gauge(name: string, help: string, v: number, type = "gauge"): string {
  return `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${v}`;
}

/** /metrics of one engine. */
export function render_metrics(engine: Engine): string {
  const m = engine.metrics, pool = engine.pool, load = engine.load;
  const hits = pool ? pool.stats.hit_tokens : 0, queried = pool ? pool.stats.queried_tokens : 0;
  const parts = [
    gauge("ngpt_requests_running", "Requests admitted: computing their prompt or decoding.", load.running),
    gauge("ngpt_requests_waiting", "Requests queued for a decode slot or KV blocks.", load.waiting),
    gauge(
      "ngpt_kv_cache_usage",
      "Fraction of KV blocks held by running or waiting requests (cached blocks no request holds count as free).",
      pool ? pool.held / pool.num_blocks : 0,
    ),
    gauge(
      "ngpt_prefix_cache_hit_ratio",
      "Prompt tokens served from the prefix cache, over those looked up.",
      queried ? hits / queried : 0,
    ),
    gauge(
      "ngpt_prompt_tokens_total",
      "Prompt tokens of requests that produced a token.",
      m.prompt_tokens,
      "counter",
    ),
    gauge("ngpt_generation_tokens_total", "Tokens generated.", m.generated_tokens, "counter"),
    gauge("ngpt_requests_total", "Requests submitted.", m.requests, "counter"),
    gauge(
      "ngpt_preemptions_total",
      "Sequences preempted (their KV freed, recomputed later).",
      engine.preemptions,
      "counter",
    ),
    [
      "# HELP ngpt_requests_finished_total Requests that ended, by reason.",
      "# TYPE ngpt_requests_finished_total counter",
      ...Object.entries(m.finished).map(([r, n]) =>
        `ngpt_requests_finished_total{finish_reason="${r}"} ${n}`
      ),
    ].join("\n"),
    histogram("ngpt_time_to_first_token_seconds", "Time from submission to the first token.", m.ttft),
    histogram("ngpt_inter_token_latency_seconds", "Time between a request's consecutive tokens.", m.itl),
    histogram("ngpt_e2e_request_latency_seconds", "Time from submission to the end.", m.e2e),
  ];
  return parts.join("\n") + "\n";
}
