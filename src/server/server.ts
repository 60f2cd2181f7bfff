/**
 * An OpenAI-compatible HTTP server over one model's engine: POST /v1/completions (streamed as
 * server-sent events or not), GET /v1/models, /health and /metrics (Prometheus). Every request goes
 * through the engine's continuous batching; a client that disconnects cancels its requests, whose
 * KV blocks are then freed within one launch. Errors answer in OpenAI's shape, never with a stack.
 * @module
 */
import { timingSafeEqual } from "node:crypto";
import { QueueFullError } from "../engine/engine.ts";
import type { GenerateResult, RequestHandle } from "../engine/request.ts";
import type { Engine } from "../engine/engine.ts";
import type { GPTConfig } from "../model/config.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { check_keys } from "../util/check.ts";
import { render_metrics } from "./metrics.ts";
import { ApiError, type CompletionPlan, finish_reason, logprobs_object, plan_completion } from "./openai.ts";

/** Options of serve. */
export interface ServeOptions {
  /** Interface to bind (default 127.0.0.1). */
  host?: string;
  /** Port (default 8000; 0 picks a free one). */
  port?: number;
  /** When set, /v1/ requests need `Authorization: Bearer <api_key>`. */
  api_key?: string;
  /** The model's name in requests and /v1/models (default: the model's origin). */
  model_id?: string;
  /** Stop the server on SIGINT and SIGTERM (default false; the CLI sets it). */
  handle_signals?: boolean;
  /** How long a shutdown lets requests in flight finish before cancelling them (default 10 s). */
  shutdown_grace_ms?: number;
  /** Log lines (default: none). */
  log?: (msg: string) => void;
}

/** A running server. */
export interface Server {
  /** Its base URL, e.g. http://127.0.0.1:8000. */
  readonly url: string;
  /** Resolves once it has stopped and every request has ended. */
  readonly finished: Promise<void>;
  /** Stops accepting requests, lets those in flight end (cancelling them after the grace period), then resolves. */
  shutdown(): Promise<void>;
}

const JSON_HEADERS = { "content-type": "application/json" };

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: JSON_HEADERS });
}

/** Any error as an ApiError: a full queue is 429, anything unexpected 500 (its message, never its stack). */
function as_api_error(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof QueueFullError) return new ApiError(429, e.message, null, "rate_limit_exceeded");
  const msg = e instanceof Error ? e.message : String(e);
  return new ApiError(500, `internal error: ${msg}`, null, "server_error");
}

function error_response(e: unknown): Response {
  const a = as_api_error(e);
  return json(a.body(), a.status);
}

/** Compares two strings in time independent of where they differ (both are hashed to one length). */
async function same_secret(a: string, b: string): Promise<boolean> {
  const h = async (s: string) =>
    new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
  return timingSafeEqual(await h(a), await h(b));
}

/** What the server needs of a loaded model (a Model from load_model has it all). */
export interface Servable {
  /** The engine every request goes through. */
  engine: Engine;
  /** Turns prompts into token ids and tokens back into text. */
  tokenizer: Tokenizer;
  /** The model's shape: its context (block_size) bounds prompt + max_tokens. */
  config: GPTConfig;
  /** Where the weights came from: the default model name. */
  origin: string;
}

/** Serves `model` over HTTP until shut down. */
export function serve(model: Servable, opts: ServeOptions = {}): Server {
  check_keys(
    opts,
    ["host", "port", "api_key", "model_id", "handle_signals", "shutdown_grace_ms", "log"],
    "serve options",
  );
  const engine = model.engine, tok = model.tokenizer;
  const model_id = opts.model_id ?? model.origin;
  const log = opts.log ?? (() => {});
  const created = Math.floor(Date.now() / 1000);
  /** Handles of requests in flight, to cancel at shutdown. */
  const inflight = new Set<RequestHandle>();
  let stopping = false;
  if (engine.io_yield_ms === 0) engine.io_yield_ms = 2; // serve sockets while the engine works

  const encode = (s: string) => s === "" ? engine.encode_prompt([]) : engine.encode_prompt(s);

  const submit_all = (plan: CompletionPlan, stream_text: boolean): RequestHandle[] => {
    const handles: RequestHandle[] = [];
    try {
      for (const r of plan.requests) handles.push(engine.submit(r, { stream_text }));
    } catch (e) {
      for (const h of handles) h.cancel(e);
      throw e;
    }
    for (const h of handles) {
      inflight.add(h);
      h.result.finally(() => inflight.delete(h)).catch(() => {});
    }
    return handles;
  };

  /**
   * A response whose body `produce` writes once it is ready. The body is a stream either way, so a
   * client that disconnects cancels it, and `on_cancel` cancels the requests.
   */
  const body_stream = (produce: (send: (s: string) => void) => Promise<void>, on_cancel: () => void) => {
    const enc = new TextEncoder();
    let closed = false;
    return new ReadableStream<Uint8Array>({
      start: async (controller) => {
        await produce((s) => {
          if (!closed) controller.enqueue(enc.encode(s));
        });
        if (!closed) controller.close();
      },
      cancel: () => {
        closed = true;
        on_cancel();
      },
    });
  };
  const cancel_all = (handles: RequestHandle[]) => () =>
    handles.forEach((h) => h.cancel(new Error("the client disconnected")));

  const usage = (plan: CompletionPlan, results: GenerateResult[]) => {
    const prompt_tokens = plan.prompts.reduce((a, p) => a + p.length, 0);
    const completion_tokens = results.reduce((a, r) => a + r.tokens.length, 0);
    return { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens };
  };

  /** The logprobs object of a finished choice (echo: the prompt's tokens first). */
  const choice_logprobs = (plan: CompletionPlan, r: GenerateResult) => {
    const gen = r.finish_reason === "eot" ? r.tokens.slice(0, -1) : r.tokens;
    const lps = (r.logprobs ?? []).slice(0, gen.length);
    if (!plan.echo) return logprobs_object(tok, gen, lps, 0);
    return logprobs_object(tok, [...r.prompt_ids, ...gen], [
      ...(r.prompt_logprobs ?? r.prompt_ids.map(() => null)),
      ...lps,
    ], 0);
  };

  const completion = (plan: CompletionPlan): Response => {
    const handles = submit_all(plan, false);
    const body = body_stream(async (send) => {
      try {
        const results = await Promise.all(handles.map((h) => h.result));
        send(JSON.stringify({
          id: `cmpl-${crypto.randomUUID()}`,
          object: "text_completion",
          created: Math.floor(Date.now() / 1000),
          model: plan.model,
          choices: results.map((r, index) => ({
            text: (plan.echo ? tok.decode(r.prompt_ids) : "") + r.text,
            index,
            logprobs: plan.logprobs === null ? null : choice_logprobs(plan, r),
            finish_reason: finish_reason(r),
          })),
          usage: usage(plan, results),
        }));
      } catch (e) {
        send(JSON.stringify(as_api_error(e).body()));
      }
    }, cancel_all(handles));
    return new Response(body, { headers: JSON_HEADERS });
  };

  const streamed = (plan: CompletionPlan): Response => {
    const handles = submit_all(plan, true);
    const id = `cmpl-${crypto.randomUUID()}`, t = Math.floor(Date.now() / 1000);
    const body = body_stream(async (write) => {
      const send = (obj: unknown) => write(`data: ${JSON.stringify(obj)}\n\n`);
      const chunk = (index: number, text: string, logprobs: unknown, finish: string | null) =>
        send({
          id,
          object: "text_completion",
          created: t,
          model: plan.model,
          choices: [{ text, index, logprobs, finish_reason: finish }],
        });
      const results: GenerateResult[] = [];
      const offsets = new Array(handles.length).fill(0);
      const one = async (h: RequestHandle, index: number) => {
        if (plan.echo) {
          const prompt = plan.prompts[Math.floor(index / plan.n)];
          const text = tok.decode(prompt);
          // Echoed prompt logprobs come with the result (they are computed with the prompt).
          const r = plan.logprobs !== null ? await h.result : null;
          chunk(
            index,
            text,
            r ? logprobs_object(tok, prompt, r.prompt_logprobs ?? prompt.map(() => null), 0) : null,
            null,
          );
          offsets[index] = text.length;
        }
        for await (const ev of h.events()) {
          const toks = ev.done === "eot" ? ev.tokens.filter((x) => x !== tok.eot_id) : ev.tokens;
          const lp = plan.logprobs === null
            ? null
            : logprobs_object(tok, toks, (ev.logprobs ?? []).slice(0, toks.length), offsets[index]);
          if (lp) offsets[index] += lp.tokens.reduce((a, s) => a + s.length, 0);
          if (ev.text || toks.length || ev.done) {
            chunk(index, ev.text, lp, ev.done ? (ev.done === "length" ? "length" : "stop") : null);
          }
        }
        results[index] = await h.result;
      };
      try {
        await Promise.all(handles.map(one));
        if (plan.include_usage) {
          send({
            id,
            object: "text_completion",
            created: t,
            model: plan.model,
            choices: [],
            usage: usage(plan, results),
          });
        }
      } catch (e) {
        send(as_api_error(e).body());
      }
      write("data: [DONE]\n\n");
    }, cancel_all(handles));
    return new Response(body, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" },
    });
  };

  const handler = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    const path = url.pathname.replace(/\/+$/, "") || "/";
    try {
      if (path === "/health") {
        return stopping ? json({ status: "shutting down" }, 503) : json({ status: "ok" });
      }
      if (path === "/metrics") {
        return new Response(render_metrics(engine), {
          headers: { "content-type": "text/plain; version=0.0.4" },
        });
      }
      if (!path.startsWith("/v1/")) {
        throw new ApiError(404, `no route ${req.method} ${path}`, null, "not_found_error");
      }
      if (opts.api_key !== undefined) {
        const auth = req.headers.get("authorization") ?? "";
        const m = auth.match(/^Bearer (.+)$/);
        if (!m || !(await same_secret(m[1], opts.api_key))) {
          throw new ApiError(
            401,
            "missing or incorrect API key: send 'Authorization: Bearer <key>'",
            null,
            "invalid_request_error",
            "invalid_api_key",
          );
        }
      }
      if (stopping) throw new ApiError(503, "the server is shutting down", null, "server_error");
      const method = (m: string) => {
        if (req.method !== m) {
          throw new ApiError(405, `${path} takes ${m}, not ${req.method}`, null, "invalid_request_error");
        }
      };
      if (path === "/v1/models") {
        method("GET");
        return json({ object: "list", data: [{ id: model_id, object: "model", created, owned_by: "ngpt" }] });
      }
      if (path === "/v1/chat/completions") {
        method("POST");
        throw new ApiError(
          400,
          `the model '${model_id}' has no chat template: use /v1/completions`,
          "messages",
        );
      }
      if (path === "/v1/completions") {
        method("POST");
        let body: unknown;
        try {
          body = await req.json();
        } catch (e) {
          throw new ApiError(400, `the request body is not valid JSON: ${(e as Error).message}`, "body");
        }
        const plan = plan_completion(
          body,
          model_id,
          model.config.block_size,
          encode,
          model.config.vocab_size,
        );
        return plan.stream ? streamed(plan) : completion(plan);
      }
      throw new ApiError(404, `no route ${req.method} ${path}`, null, "not_found_error");
    } catch (e) {
      if (!(e instanceof ApiError)) log(`error: ${(e as Error).message}`);
      return error_response(e);
    }
  };

  const http = Deno.serve({
    hostname: opts.host ?? "127.0.0.1",
    port: opts.port ?? 8000,
    onListen: () => {},
  }, handler);
  const addr = http.addr as Deno.NetAddr;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  const server_url = `http://${host}:${addr.port}`;

  let done: Promise<void> | null = null;
  const shutdown = (): Promise<void> => {
    done ??= (async () => {
      stopping = true;
      log("shutting down: no new requests; waiting for those in flight");
      const grace = opts.shutdown_grace_ms ?? 10_000;
      const all = Promise.allSettled([...inflight].map((h) => h.result));
      const timer = new Promise((r) => setTimeout(r, grace));
      await Promise.race([all, timer]);
      for (const h of inflight) {
        h.cancel(new ApiError(503, "the server is shutting down", null, "server_error"));
      }
      await Promise.allSettled([...inflight].map((h) => h.result));
      await http.shutdown(); // lets the responses in flight finish sending (their [DONE] included)
      if (opts.handle_signals) {
        for (const s of ["SIGINT", "SIGTERM"] as const) Deno.removeSignalListener(s, on_signal);
      }
    })();
    return done;
  };
  const on_signal = () => void shutdown();
  if (opts.handle_signals) {
    for (const s of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(s, on_signal);
  }
  return { url: server_url, finished: http.finished, shutdown };
}
