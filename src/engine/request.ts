/**
 * A request's life in the engine: what a caller submits, what it gets back (a stream of events
 * and a final result), and the engine's per-sequence state in between (status, decode slot, KV
 * blocks, generated tokens, text).
 * @module
 */
import { MAX_TOP_LOGPROBS } from "../backend/backend.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { check_int } from "../util/check.ts";
import type { ResolvedSampling, SamplingOptions } from "./sampling.ts";
import { TextStream } from "./text_stream.ts";

/** The most alternatives per token a request may ask for (OpenAI's completions API allows 5). */
export const MAX_LOGPROBS = 5;
if (MAX_LOGPROBS > MAX_TOP_LOGPROBS) throw new Error("internal: MAX_LOGPROBS above the kernels' limit");

/** One generation request: a prompt (text or token ids), its sampling options and what to report. */
export interface GenerateRequest extends SamplingOptions {
  /** Text, or token ids. An empty prompt starts from the end-of-text token when there is one. */
  prompt: string | number[];
  /**
   * Report the log-probability of each generated token and of its `logprobs` most likely
   * alternatives (0..5; default: no log-probabilities).
   */
  logprobs?: number;
  /** Also report the prompt's own log-probabilities (each token given those before it), as OpenAI's `echo`. */
  prompt_logprobs?: boolean;
}

/** A request's options: everything but the prompt. */
export type RequestOptions = Omit<GenerateRequest, "prompt">;

/** The keys a GenerateRequest may hold besides the sampling options. */
export const REQUEST_KEYS: readonly string[] = ["prompt", "logprobs", "prompt_logprobs"];

/** Why a sequence ended: max_new_tokens reached, the end-of-text token, or a stop string. */
export type FinishReason = "length" | "eot" | "stop";

/** A token's log-probability under the model, and the most likely alternatives at its position. */
export interface TokenLogprob {
  /** The token id. */
  token: number;
  /** Its natural-log probability (log_softmax of the logits, no temperature). */
  logprob: number;
  /** The most likely tokens at this position, most likely first. */
  top: { token: number; logprob: number }[];
}

/** The outcome of one request. */
export interface GenerateResult {
  /** Generated text (without the prompt, the end-of-text token or the stop string). */
  text: string;
  /** Generated token ids (the end-of-text token included when it ended the sequence). */
  tokens: number[];
  /** Why it ended. */
  finish_reason: FinishReason;
  /** Prompt length in tokens (before any cropping to the context). */
  prompt_tokens: number;
  /** The prompt's token ids. */
  prompt_ids: number[];
  /** Prompt tokens whose KV came from the prefix cache. */
  cached_tokens: number;
  /** Per generated token, when the request asked for `logprobs`. */
  logprobs?: TokenLogprob[];
  /** Per prompt token (null for the first), when the request asked for `prompt_logprobs`. */
  prompt_logprobs?: (TokenLogprob | null)[];
  /** Milliseconds from submission to the first generated token (0 when none). */
  ttft_ms: number;
  /** Milliseconds from submission to the end. */
  total_ms: number;
}

/** What a request's stream yields as its tokens come back. */
export interface RequestEvent {
  /** Text that can be shown now (possibly ""; stop strings are held back until they cannot match). */
  text: string;
  /** The tokens that arrived with this event. */
  tokens: number[];
  /** Their log-probabilities, when asked for. */
  logprobs?: TokenLogprob[];
  /** Set on the last event. */
  done?: FinishReason;
}

/** A submitted request: its events as they happen, its result, and a way to cancel it. */
export interface RequestHandle {
  /** The engine's id of this request. */
  readonly id: number;
  /** The events, in order; a consumer that stops early does not cancel the request. */
  events(): AsyncIterableIterator<RequestEvent>;
  /** Resolves at the end; rejects when the request is cancelled or fails. */
  readonly result: Promise<GenerateResult>;
  /** Stops the request: its KV memory is freed within one launch and `result` rejects with `reason`. */
  cancel(reason?: unknown): void;
}

/** An unbounded async queue of events with an end and an error. */
export class EventQueue<T> {
  #items: T[] = [];
  #wake: (() => void) | null = null;
  #closed = false;
  #error: unknown = null;

  /** Adds an item (ignored once closed). */
  push(item: T): void {
    if (this.#closed) return;
    this.#items.push(item);
    this.#signal();
  }

  /** Ends the stream after the queued items; with `error`, iteration then throws it. */
  close(error: unknown = null): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#error = error;
    this.#signal();
  }

  #signal(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  /** Iterates the items as they come. */
  async *iterate(): AsyncIterableIterator<T> {
    while (true) {
      if (this.#items.length) {
        yield this.#items.shift()!;
        continue;
      }
      if (this.#closed) {
        if (this.#error) throw this.#error;
        return;
      }
      await new Promise<void>((r) => (this.#wake = r));
    }
  }
}

/** A request resolved and checked: its sampling options and what it reports. */
export interface ResolvedRequest extends ResolvedSampling {
  /** Alternatives per generated token to report, 0..MAX_LOGPROBS; -1: no log-probabilities. */
  logprobs: number;
  /** Whether the prompt's own log-probabilities are reported. */
  prompt_logprobs: boolean;
}

/** Checks the non-sampling fields of a request and resolves them. */
export function resolve_reporting(r: GenerateRequest): { logprobs: number; prompt_logprobs: boolean } {
  const logprobs = r.logprobs === undefined ? -1 : check_int("logprobs", r.logprobs, 0, MAX_LOGPROBS);
  if (r.prompt_logprobs !== undefined && typeof r.prompt_logprobs !== "boolean") {
    throw new TypeError(`prompt_logprobs must be a boolean, got ${typeof r.prompt_logprobs}`);
  }
  return { logprobs, prompt_logprobs: r.prompt_logprobs ?? false };
}

/** Where a sequence is: waiting for admission, computing its prompt, decoding, or finished. */
export type SeqStatus = "waiting" | "prefill" | "decode" | "finished";

/** The engine's state of one request. */
export class Sequence {
  /** The engine's request id. */
  readonly id: number;
  /** Resolved options. */
  readonly req: ResolvedRequest;
  /** The prompt's token ids (uncropped). */
  readonly prompt: number[];
  /** When it was submitted (performance.now()). */
  readonly t_submit: number;
  /** Its event stream. */
  readonly queue: EventQueue<RequestEvent> = new EventQueue<RequestEvent>();
  /** Generated tokens, as they come back. */
  generated: number[] = [];
  /** Their log-probabilities (when asked for). */
  logprobs: TokenLogprob[] = [];
  /** The prompt's log-probabilities (when asked for), index 0 null. */
  prompt_logprobs: (TokenLogprob | null)[] = [];
  /** Streaming detokenizer; null when the text is decoded once at the end. */
  text: TextStream | null;
  /** Set when it ended normally. */
  done: FinishReason | null = null;
  /** Set when it was cancelled or failed: the result rejects with it. */
  error: unknown = null;
  /** Time of its first generated token. */
  t_first = 0;
  /** Called once when it ends (resolves or rejects its handle's result). */
  settle: () => void = () => {};

  /** Scheduling state. */
  status: SeqStatus = "waiting";
  /** Its decode slot, or -1. */
  slot: number = -1;
  /** Its KV blocks, in order of position. */
  blocks: number[] = [];
  /** Tokens whose KV the prefill computes (the prompt, or the history to recompute); last one predicts the next. */
  target: number[] = [];
  /** prefix_keys(target) when the prefix cache may serve it. */
  keys: string[] = [];
  /** Target tokens whose KV is computed or enqueued. */
  computed = 0;
  /** Prompt tokens that came from the prefix cache (first admission). */
  cached_tokens = 0;
  /** Tokens in its KV cache (decode), as the host mirrors it. */
  len = 0;
  /** Tokens launched but not yet collected. */
  inflight = 0;
  /** Times it was preempted. */
  preemptions = 0;
  /** Admission order (for preemption: the latest admitted goes first). */
  admitted = 0;

  /**
   * A waiting sequence submitted now; its text streams through a TextStream when `stream_text` is
   * set or the request has stop strings.
   */
  constructor(
    id: number,
    req: ResolvedRequest,
    prompt: number[],
    tokenizer: Tokenizer,
    stream_text: boolean,
  ) {
    this.id = id;
    this.req = req;
    this.prompt = prompt;
    this.t_submit = performance.now();
    this.text = stream_text || req.stop.length > 0 ? new TextStream(tokenizer, req.stop) : null;
  }

  /** Tokens generated or in flight: what it still wants is max_new_tokens minus this. */
  get produced(): number {
    return this.generated.length + this.inflight;
  }

  /** True once it has ended (normally, cancelled or failed). */
  get ended(): boolean {
    return this.done !== null || this.error !== null;
  }
}
