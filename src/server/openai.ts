/**
 * OpenAI's legacy completions API, field by field: a request body checked and turned into engine
 * requests (one per prompt and choice), and the response and stream chunk shapes built from the
 * results. Errors are ApiError, carrying OpenAI's error shape and an HTTP status.
 * @module
 */
import type { GenerateRequest, GenerateResult, TokenLogprob } from "../engine/request.ts";
import { MAX_LOGPROBS } from "../engine/request.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { describe, nearest } from "../util/check.ts";

/** An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`. */
export class ApiError extends Error {
  /** HTTP status. */
  readonly status: number;
  /** OpenAI's error type ("invalid_request_error", ...). */
  readonly type: string;
  /** The request field at fault, or null. */
  readonly param: string | null;
  /** A machine-readable code, or null. */
  readonly code: string | null;
  constructor(
    status: number,
    message: string,
    param: string | null = null,
    type = "invalid_request_error",
    code: string | null = null,
  ) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.param = param;
    this.code = code;
  }

  /** The response body. */
  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** The fields of a completions request ngpt reads (OpenAI's, plus the extensions top_k and ignore_eos). */
export const COMPLETION_FIELDS: readonly string[] = [
  "model",
  "prompt",
  "max_tokens",
  "temperature",
  "top_p",
  "n",
  "stop",
  "seed",
  "stream",
  "stream_options",
  "logprobs",
  "echo",
  "user",
  "top_k",
  "ignore_eos",
  "presence_penalty",
  "frequency_penalty",
  "best_of",
  "logit_bias",
  "suffix",
];

/** The most choices per prompt. */
export const MAX_N = 128;

/** A completions request, checked. */
export interface CompletionPlan {
  model: string;
  /** The prompts as token ids, in order. */
  prompts: number[][];
  n: number;
  stream: boolean;
  include_usage: boolean;
  echo: boolean;
  /** Alternatives per token when logprobs were asked for (0..5), else null. */
  logprobs: number | null;
  /** The engine requests: prompt i, choice j at index i * n + j. */
  requests: GenerateRequest[];
}

const bad = (param: string, message: string) => new ApiError(400, message, param);

function number_field(
  body: Record<string, unknown>,
  k: string,
  fallback: number,
  check: (v: number) => boolean,
  want: string,
): number {
  const v = body[k];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || !check(v)) {
    throw bad(k, `'${k}' must be ${want}, got ${describe(v)}`);
  }
  return v;
}

function bool_field(body: Record<string, unknown>, k: string): boolean {
  const v = body[k];
  if (v === undefined || v === null) return false;
  if (typeof v !== "boolean") throw bad(k, `'${k}' must be a boolean, got ${describe(v)}`);
  return v;
}

/** The prompts of a request body as token ids (a string, strings, token ids, or lists of token ids). */
function prompts_of(p: unknown, encode: (s: string) => number[], vocab: number): number[][] {
  const ids = (x: unknown, where: string): number[] => {
    if (!Array.isArray(x) || !x.every((t) => Number.isInteger(t) && t >= 0 && t < vocab)) {
      throw bad("prompt", `'prompt'${where} must be token ids in [0, ${vocab}), got ${describe(x)}`);
    }
    return x as number[];
  };
  const text = (s: string, where: string) => {
    try {
      return encode(s);
    } catch (e) {
      throw bad("prompt", `'prompt'${where} cannot be encoded: ${(e as Error).message}`);
    }
  };
  if (typeof p === "string") return [text(p, "")];
  if (!Array.isArray(p) || p.length === 0) {
    throw bad("prompt", `'prompt' must be a string, an array of strings, token ids, or arrays of token ids`);
  }
  if (p.every((x) => typeof x === "string")) return p.map((s, i) => text(s as string, `[${i}]`));
  if (p.every((x) => typeof x === "number")) return [ids(p, "")];
  if (p.every(Array.isArray)) return p.map((x, i) => ids(x, `[${i}]`));
  throw bad("prompt", `'prompt' mixes types: use strings, token ids, or arrays of token ids`);
}

/**
 * Checks a completions request body and plans its engine requests. `model_id` is the served
 * model's name, `context` its context length, `encode` its tokenizer (prompt text to ids, the empty
 * prompt as end-of-text).
 */
export function plan_completion(
  body: unknown,
  model_id: string,
  context: number,
  encode: (s: string) => number[],
  vocab: number,
): CompletionPlan {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw bad("body", "the request body must be a JSON object");
  }
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) {
    if (!COMPLETION_FIELDS.includes(k)) {
      throw bad(
        k,
        `unrecognized request argument supplied: '${k}' (did you mean '${nearest(k, COMPLETION_FIELDS)}'?)`,
      );
    }
  }
  if (typeof b.model !== "string") {
    throw bad("model", `'model' must be a string naming the model, got ${describe(b.model)}`);
  }
  if (b.model !== model_id) {
    throw new ApiError(
      404,
      `the model '${b.model}' does not exist: this server serves '${model_id}'`,
      "model",
      "invalid_request_error",
      "model_not_found",
    );
  }
  if (b.prompt === undefined) throw bad("prompt", "'prompt' is required");
  for (const [k, neutral] of [["presence_penalty", 0], ["frequency_penalty", 0], ["best_of", 1]] as const) {
    if (b[k] !== undefined && b[k] !== null && b[k] !== neutral) {
      throw bad(k, `'${k}' is not supported (only ${neutral})`);
    }
  }
  for (const k of ["logit_bias", "suffix"] as const) {
    if (b[k] !== undefined && b[k] !== null) throw bad(k, `'${k}' is not supported`);
  }
  const max_tokens = number_field(
    b,
    "max_tokens",
    16,
    (v) => Number.isInteger(v) && v >= 0,
    "an integer >= 0",
  );
  const temperature = number_field(b, "temperature", 1, (v) => v >= 0 && v <= 2, "a number in [0, 2]");
  const top_p = number_field(b, "top_p", 1, (v) => v > 0 && v <= 1, "a number in (0, 1]");
  const top_k = number_field(b, "top_k", 0, (v) => Number.isInteger(v) && v >= 0, "an integer >= 0 (0: off)");
  const n = number_field(
    b,
    "n",
    1,
    (v) => Number.isInteger(v) && v >= 1 && v <= MAX_N,
    `an integer in [1, ${MAX_N}]`,
  );
  const seed_given = b.seed !== undefined && b.seed !== null;
  const seed = number_field(b, "seed", 0, (v) => Number.isSafeInteger(v) && v >= 0, "an integer >= 0");
  const logprobs = b.logprobs === undefined || b.logprobs === null
    ? null
    : number_field(b, "logprobs", 0, (v) =>
      Number.isInteger(v) && v >= 0 && v <= MAX_LOGPROBS, `an integer in [0, ${MAX_LOGPROBS}]`);
  const stream = bool_field(b, "stream"),
    echo = bool_field(b, "echo"),
    ignore_eos = bool_field(b, "ignore_eos");
  let include_usage = false;
  if (b.stream_options !== undefined && b.stream_options !== null) {
    const so = b.stream_options;
    if (!stream) throw bad("stream_options", "'stream_options' is only allowed with 'stream': true");
    if (typeof so !== "object" || Array.isArray(so) || Object.keys(so).some((k) => k !== "include_usage")) {
      throw bad("stream_options", `'stream_options' may only hold 'include_usage', got ${describe(so)}`);
    }
    include_usage = bool_field(so as Record<string, unknown>, "include_usage");
  }
  let stop: string[] = [];
  if (typeof b.stop === "string") stop = [b.stop];
  else if (Array.isArray(b.stop)) stop = b.stop as string[];
  else if (b.stop !== undefined && b.stop !== null) {
    throw bad("stop", `'stop' must be a string or an array of strings`);
  }
  if (stop.length > 4 || !stop.every((s) => typeof s === "string" && s.length > 0)) {
    throw bad("stop", `'stop' must be at most 4 non-empty strings, got ${describe(b.stop)}`);
  }
  if (b.user !== undefined && b.user !== null && typeof b.user !== "string") {
    throw bad("user", "'user' must be a string");
  }
  const prompts = prompts_of(b.prompt, encode, vocab);
  prompts.forEach((p, i) => {
    if (p.length + max_tokens > context) {
      throw new ApiError(
        400,
        `this model's maximum context length is ${context} tokens, but prompt ${i} has ${p.length} tokens and ` +
          `max_tokens is ${max_tokens}: reduce the prompt or max_tokens`,
        "prompt",
        "invalid_request_error",
        "context_length_exceeded",
      );
    }
  });
  const requests: GenerateRequest[] = [];
  prompts.forEach((prompt) => {
    for (let j = 0; j < n; j++) {
      requests.push({
        prompt,
        max_new_tokens: max_tokens,
        temperature,
        top_p,
        top_k,
        stop,
        stop_at_eot: !ignore_eos,
        context_overflow: "error",
        ...(seed_given ? { seed: seed + j } : {}),
        ...(logprobs !== null ? { logprobs } : {}),
        ...(echo && logprobs !== null ? { prompt_logprobs: true } : {}),
      });
    }
  });
  return { model: model_id, prompts, n, stream, include_usage, echo, logprobs, requests };
}

/** OpenAI's legacy logprobs object of one choice. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/** The logprobs object of `entries` (null entries: the prompt's first token), text offsets from `offset`. */
export function logprobs_object(
  tok: Tokenizer,
  ids: number[],
  entries: (TokenLogprob | null)[],
  offset: number,
): CompletionLogprobs {
  const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  let at = offset;
  ids.forEach((id, i) => {
    const s = tok.decode([id]);
    const e = entries[i];
    out.tokens.push(s);
    out.token_logprobs.push(e ? e.logprob : null);
    out.top_logprobs.push(
      e ? Object.fromEntries(e.top.map((t) => [tok.decode([t.token]), t.logprob])) : null,
    );
    out.text_offset.push(at);
    at += s.length;
  });
  return out;
}

/** finish_reason as OpenAI reports it: the end-of-text token and stop strings are both "stop". */
export function finish_reason(r: GenerateResult): "stop" | "length" {
  return r.finish_reason === "length" ? "length" : "stop";
}
