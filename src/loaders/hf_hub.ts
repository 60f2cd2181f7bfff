/**
 * Downloads files of a Hugging Face hub repo into a local cache and returns their paths.
 *
 * Layout: `<cache>/hub/<owner>--<name>/<revision>/<filename>` (a "/" in the revision becomes "--").
 * A file under its final name is always complete: downloads go to `<file>.incomplete`, are resumed
 * with a Range request after a dropped connection, are checked (size, and sha256 when the hub gives
 * one), and are renamed into place only at the end. A lock file under `<cache>/hub/.locks/` keeps
 * two processes from downloading the same file at once.
 *
 * Environment: `NGPT_CACHE`, `XDG_CACHE_HOME` (cache dir), `HF_ENDPOINT`, `HF_TOKEN`,
 * `HF_HUB_OFFLINE=1` (never touch the network).
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { dirname, join } from "node:path";
import { cache_root, env } from "../util/env.ts";

/** Options of {@link hub_download} and {@link hub_snapshot}. */
export interface HubOptions {
  /** Branch, tag or commit. Default "main". A cached file is never refreshed, even for a branch. */
  revision?: string;
  /** Cache root. Default {@link default_cache_dir}. */
  cache_dir?: string;
  /** Hub URL. Default $HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Access token for gated or private repos. Default $HF_TOKEN. */
  token?: string;
  /** Draw a progress bar on stderr. Default: when stderr is a terminal. */
  progress?: boolean;
  /** How many times a dropped connection or an HTTP 429/5xx is retried (resuming). Default 3. */
  retries?: number;
  /** The fetch to use (tests, proxies). Default globalThis.fetch. */
  fetch?: typeof fetch;
}

/** Options of {@link hub_snapshot}: {@link HubOptions} and the files to fetch. */
export interface HubSnapshotOptions extends HubOptions {
  /** Files to download. Default ["config.json", "model.safetensors"]. */
  files?: string[];
}

/** Files {@link hub_snapshot} downloads when none are named. */
export const DEFAULT_SNAPSHOT_FILES: readonly string[] = ["config.json", "model.safetensors"];

const DEFAULT_ENDPOINT = "https://huggingface.co";
const DEFAULT_RETRIES = 3;
const RETRY_DELAY_MS = 250;
const MAX_REDIRECTS = 10;
const PROGRESS_INTERVAL_MS = 100;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const SHA256_HEX = /^[0-9a-f]{64}$/i;
const REPO_ID = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)?$/;

/**
 * The cache root (see native/env.ts cache_root). Throws when none of NGPT_CACHE, XDG_CACHE_HOME
 * and HOME is set.
 */
export function default_cache_dir(): string {
  const root = cache_root();
  if (!root) {
    throw new Error("default_cache_dir: none of NGPT_CACHE, XDG_CACHE_HOME, HOME is set; pass cache_dir");
  }
  return root;
}

/** Whether $HF_HUB_OFFLINE asks for offline mode ("1", "true", "yes", "on"). */
function offline_mode(): boolean {
  const v = env("HF_HUB_OFFLINE")?.toLowerCase();
  return v === "1" || v === "true" || v === "yes" || v === "on";
}

function check_repo_id(repo_id: string): void {
  if (!REPO_ID.test(repo_id) || repo_id.includes("..") || repo_id.includes("--")) {
    throw new Error(
      `hub: invalid repo id "${repo_id}": expected "name" or "owner/name" of letters, digits, "-", "_", "." ` +
        `(no "--" or "..")`,
    );
  }
}

function check_relative(kind: string, value: string, repo_id: string): string[] {
  const parts = value.split("/");
  if (
    value === "" || value.includes("\\") || value.includes("\0") ||
    parts.some((p) => p === "" || p === "." || p === "..")
  ) {
    throw new Error(
      `hub: invalid ${kind} "${value}" for repo ${repo_id}: expected a relative path without "." or ".."`,
    );
  }
  return parts;
}

/** Everything one download needs, resolved from the options and the environment. */
interface Target {
  repo_id: string;
  filename: string;
  revision: string;
  /** What every message names: `<repo>/<file> (revision <rev>)`. */
  what: string;
  url: string;
  path: string;
  lock_path: string;
  token?: string;
  progress: boolean;
  retries: number;
  fetch: typeof fetch;
}

function revision_of(opts: HubOptions): string {
  return opts.revision ?? "main";
}

function snapshot_dir_of(repo_id: string, revision: string, cache_dir: string): string {
  return join(cache_dir, "hub", repo_id.replaceAll("/", "--"), revision.replaceAll("/", "--"));
}

function resolve_target(repo_id: string, filename: string, opts: HubOptions): Target {
  check_repo_id(repo_id);
  const revision = revision_of(opts);
  const name_parts = check_relative("filename", filename, repo_id);
  check_relative("revision", revision, repo_id);
  const cache_dir = opts.cache_dir ?? default_cache_dir();
  const endpoint = (opts.endpoint ?? env("HF_ENDPOINT") ?? DEFAULT_ENDPOINT).replace(/\/+$/, "");
  if (!URL.canParse(endpoint) || !/^https?:$/.test(new URL(endpoint).protocol)) {
    throw new Error(
      `hub: invalid endpoint "${endpoint}" (from ${
        opts.endpoint ? "options" : "HF_ENDPOINT"
      }): expected an http(s) URL`,
    );
  }
  const url = `${endpoint}/${repo_id}/resolve/${encodeURIComponent(revision)}/` +
    name_parts.map(encodeURIComponent).join("/");
  const repo_dir = repo_id.replaceAll("/", "--");
  const rev_dir = revision.replaceAll("/", "--");
  const retries = opts.retries ?? DEFAULT_RETRIES;
  if (!Number.isInteger(retries) || retries < 0) {
    throw new Error(`hub: retries must be a non-negative integer, got ${retries}`);
  }
  return {
    repo_id,
    filename,
    revision,
    what: `${repo_id}/${filename} (revision ${revision})`,
    url,
    path: join(snapshot_dir_of(repo_id, revision, cache_dir), ...name_parts),
    lock_path: join(cache_dir, "hub", ".locks", repo_dir, rev_dir, ...name_parts) + ".lock",
    token: opts.token ?? env("HF_TOKEN"),
    progress: opts.progress ?? Deno.stderr.isTerminal(),
    retries,
    fetch: opts.fetch ?? globalThis.fetch,
  };
}

/**
 * Where {@link hub_download} keeps `filename` of `repo_id` (whether or not it is there yet).
 * Throws on an invalid repo id, filename or revision.
 */
export function hub_cache_path(repo_id: string, filename: string, opts: HubOptions = {}): string {
  return resolve_target(repo_id, filename, opts).path;
}

/**
 * Downloads `filename` of the hub repo `repo_id` (e.g. "gpt2", "openai-community/gpt2") into the
 * cache, or finds it there, and returns its local path. A cached file is returned without network.
 * Throws an Error naming the repo and file: not found (404), access denied (401/403: set HF_TOKEN),
 * network failure after retries (the partial file is kept and resumed by the next call), checksum
 * mismatch, or, with HF_HUB_OFFLINE=1, not in the cache.
 */
export async function hub_download(
  repo_id: string,
  filename: string,
  opts: HubOptions = {},
): Promise<string> {
  const t = resolve_target(repo_id, filename, opts);
  if (await is_file(t.path)) return t.path;
  if (offline_mode()) {
    throw new Error(
      `hub_download: ${t.what} is not in the cache (looked for ${t.path}) and offline mode is on ` +
        `(HF_HUB_OFFLINE=${env("HF_HUB_OFFLINE")}); download it first or unset HF_HUB_OFFLINE`,
    );
  }
  await Deno.mkdir(dirname(t.path), { recursive: true });
  await Deno.mkdir(dirname(t.lock_path), { recursive: true });
  using lock = await Deno.open(t.lock_path, { create: true, write: true });
  await lock.lock(true); // released when the file closes
  if (await is_file(t.path)) return t.path; // another caller finished it while we waited
  await download_with_retries(t);
  return t.path;
}

/**
 * Downloads `opts.files` (default config.json and model.safetensors) of `repo_id`, or finds them in
 * the cache, and returns the local directory holding them (files keep their repo-relative paths).
 */
export async function hub_snapshot(repo_id: string, opts: HubSnapshotOptions = {}): Promise<string> {
  check_repo_id(repo_id);
  const files = opts.files ?? DEFAULT_SNAPSHOT_FILES;
  for (const f of files) await hub_download(repo_id, f, opts);
  const dir = snapshot_dir_of(repo_id, revision_of(opts), opts.cache_dir ?? default_cache_dir());
  await Deno.mkdir(dir, { recursive: true });
  return dir;
}

/** A failure worth retrying (dropped connection, 429, 5xx): the partial file stays for resuming. */
class TransientError extends Error {}

async function download_with_retries(t: Target): Promise<void> {
  for (let attempt = 0;; attempt++) {
    try {
      return await download_once(t);
    } catch (e) {
      if (!(e instanceof TransientError)) throw e;
      if (attempt >= t.retries) {
        const kept = await file_size(t.path + ".incomplete");
        throw new Error(
          `hub_download: ${t.what}: ${e.message} (gave up after ${attempt + 1} attempts` +
            (kept > 0 ? `; ${kept} bytes kept in ${t.path}.incomplete, run again to resume)` : ")"),
          { cause: e.cause ?? e },
        );
      }
      await new Promise((r) => setTimeout(r, RETRY_DELAY_MS * (attempt + 1)));
    }
  }
}

/** One request: resumes `<path>.incomplete` when it exists, renames it into place when complete. */
async function download_once(t: Target): Promise<void> {
  const part = t.path + ".incomplete";
  let offset = await file_size(part);
  const headers: Record<string, string> = { "accept-encoding": "identity", "user-agent": "ngpt" };
  if (offset > 0) headers["range"] = `bytes=${offset}-`;
  const { res, url, linked_size, linked_etag } = await fetch_following(t, headers);

  const range = res.status === 206 ? parse_content_range(res.headers.get("content-range")) : null;
  if ((res.status === 416 || res.status === 206) && (offset === 0 || range?.start !== offset)) {
    // The partial file does not fit what the server has (or a range we did not ask for): start over.
    await res.body?.cancel();
    if (offset === 0) throw new Error(`hub_download: ${t.what}: unexpected HTTP ${res.status} from ${url}`);
    await Deno.remove(part);
    return await download_once(t);
  }
  if (!res.ok) throw await http_error(t, res, url);
  if (res.status !== 206) offset = 0; // the server sent the whole file: restart from scratch

  const content_length = parse_size(res.headers.get("content-length"));
  const expected_size = linked_size ??
    (res.status === 206
      ? range?.total ?? (content_length === undefined ? undefined : offset + content_length)
      : content_length);
  const etag = normalize_etag(linked_etag ?? res.headers.get("etag"));
  const expected_sha256 = etag !== undefined && SHA256_HEX.test(etag) ? etag.toLowerCase() : undefined;

  const hasher = expected_sha256 ? createHash("sha256") : undefined;
  if (hasher && offset > 0) await hash_file(part, hasher);
  const file = await Deno.open(
    part,
    offset > 0 ? { append: true } : { write: true, create: true, truncate: true },
  );
  const bar = t.progress ? new ProgressBar(t.filename, expected_size, offset) : undefined;
  const body = res.body ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() }); // empty file
  const reader = body.getReader();
  let done_bytes = offset;
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw new TransientError(
          `connection to ${url} dropped after ${done_bytes} of ${expected_size ?? "?"} bytes: ${
            message_of(e)
          }`,
          { cause: e },
        );
      }
      if (chunk.done) break;
      await write_all(file, chunk.value);
      hasher?.update(chunk.value);
      done_bytes += chunk.value.length;
      bar?.update(done_bytes);
      if (expected_size !== undefined && done_bytes > expected_size) break;
    }
  } catch (e) {
    await reader.cancel().catch(() => {});
    throw e;
  } finally {
    file.close();
    bar?.finish(done_bytes);
  }

  if (expected_size !== undefined && done_bytes > expected_size) {
    await reader.cancel().catch(() => {});
    await Deno.remove(part);
    throw new Error(
      `hub_download: ${t.what}: ${url} sent more than the expected ${expected_size} bytes; partial file deleted`,
    );
  }
  if (expected_size !== undefined && done_bytes < expected_size) {
    throw new TransientError(`${url} ended after ${done_bytes} of ${expected_size} bytes`);
  }
  if (hasher && expected_sha256) {
    const actual = hasher.digest("hex");
    if (actual !== expected_sha256) {
      await Deno.remove(part);
      throw new Error(
        `hub_download: checksum mismatch for ${t.what} from ${url}: expected sha256 ${expected_sha256}, ` +
          `got ${actual}; the partial file was deleted`,
      );
    }
  }
  await Deno.rename(part, t.path);
}

interface Followed {
  res: Response;
  /** The URL that answered last. */
  url: string;
  /** X-Linked-Size / X-Linked-Etag seen on any hop (the hub puts them on its redirect to the CDN). */
  linked_size?: number;
  linked_etag?: string;
}

/** GETs t.url following redirects by hand, keeping X-Linked-* of each hop; Authorization stays on its origin. */
async function fetch_following(t: Target, base_headers: Record<string, string>): Promise<Followed> {
  const headers = { ...base_headers };
  if (t.token) headers["authorization"] = `Bearer ${t.token}`;
  let url = t.url;
  let linked_size: number | undefined;
  let linked_etag: string | undefined;
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    let res: Response;
    try {
      res = await t.fetch(url, { headers, redirect: "manual" });
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
        throw new Error(`hub_download: ${t.what}: no permission to fetch ${url}: ${message_of(e)}`, {
          cause: e,
        });
      }
      throw new TransientError(`request to ${url} failed: ${message_of(e)}`, { cause: e });
    }
    linked_size = parse_size(res.headers.get("x-linked-size")) ?? linked_size;
    linked_etag = res.headers.get("x-linked-etag") ?? linked_etag;
    if (!REDIRECT_STATUSES.has(res.status)) return { res, url, linked_size, linked_etag };
    await res.body?.cancel();
    const location = res.headers.get("location");
    if (!location) {
      throw new Error(`hub_download: ${t.what}: HTTP ${res.status} redirect without a Location from ${url}`);
    }
    const next = new URL(location, url);
    if (next.origin !== new URL(url).origin) delete headers["authorization"];
    url = next.href;
  }
  throw new Error(`hub_download: ${t.what}: more than ${MAX_REDIRECTS} redirects from ${t.url}`);
}

/** The Error for a non-2xx answer; 429 and 5xx are transient. Consumes the body. */
async function http_error(t: Target, res: Response, url: string): Promise<Error> {
  await res.body?.cancel();
  const hub_message = res.headers.get("x-error-message");
  const detail = hub_message ? ` (hub says: ${hub_message})` : "";
  const status = `HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}`;
  if (res.status === 401 || res.status === 403) {
    return new Error(
      `hub_download: access to ${t.what} denied (${status} from ${url})${detail}: the repo may be gated, ` +
        `private or missing; ${
          t.token ? "the token sent lacks access" : "set HF_TOKEN (or pass token) to a token with access"
        }`,
    );
  }
  if (res.status === 404) {
    return new Error(
      `hub_download: not found (${status}): file "${t.filename}" in repo "${t.repo_id}" at revision ` +
        `"${t.revision}" (${url})${detail}`,
    );
  }
  if (res.status === 429 || res.status >= 500) return new TransientError(`${status} from ${url}${detail}`);
  return new Error(`hub_download: ${t.what}: ${status} from ${url}${detail}`);
}

/** Strips W/ and quotes: `W/"abc"` -> `abc`. */
function normalize_etag(etag: string | null | undefined): string | undefined {
  if (!etag) return undefined;
  return etag.trim().replace(/^W\//, "").replace(/^"(.*)"$/, "$1");
}

function parse_size(v: string | null): number | undefined {
  if (v === null || !/^\d+$/.test(v.trim())) return undefined;
  return Number(v.trim());
}

/** `bytes <start>-<end>/<total|*>` -> start and total. */
function parse_content_range(v: string | null): { start: number; total?: number } | null {
  const m = v?.match(/^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/);
  if (!m) return null;
  return { start: Number(m[1]), total: m[3] === "*" ? undefined : Number(m[3]) };
}

function message_of(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function is_file(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function file_size(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
}

async function write_all(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await file.write(data.subarray(off));
}

async function hash_file(path: string, hasher: Hash): Promise<void> {
  using file = await Deno.open(path, { read: true });
  for await (const chunk of file.readable) hasher.update(chunk);
}

/** One line on stderr redrawn with "\r" at most every PROGRESS_INTERVAL_MS; never touches stdout. */
class ProgressBar {
  #label: string;
  #total?: number;
  #start_bytes: number;
  #start_ms = performance.now();
  #last_ms = -Infinity;
  #last_len = 0;
  #encoder = new TextEncoder();

  constructor(label: string, total: number | undefined, start_bytes: number) {
    this.#label = label;
    this.#total = total;
    this.#start_bytes = start_bytes;
  }

  update(done_bytes: number, force = false): void {
    const now = performance.now();
    if (!force && now - this.#last_ms < PROGRESS_INTERVAL_MS) return;
    this.#last_ms = now;
    const mb = (n: number) => (n / 1e6).toFixed(1);
    const secs = Math.max((now - this.#start_ms) / 1000, 1e-3);
    const rate = `${mb((done_bytes - this.#start_bytes) / secs)} MB/s`;
    const line = this.#total
      ? `${this.#label} ${(100 * done_bytes / this.#total).toFixed(1).padStart(5)}% ` +
        `${mb(done_bytes)}/${mb(this.#total)} MB ${rate}`
      : `${this.#label} ${mb(done_bytes)} MB ${rate}`;
    this.#write("\r" + line.padEnd(this.#last_len));
    this.#last_len = line.length;
  }

  finish(done_bytes: number): void {
    this.update(done_bytes, true);
    this.#write("\n");
  }

  #write(s: string): void {
    const bytes = this.#encoder.encode(s);
    try {
      for (let off = 0; off < bytes.length;) off += Deno.stderr.writeSync(bytes.subarray(off));
    } catch { /* a closed stderr must not fail the download */ }
  }
}
