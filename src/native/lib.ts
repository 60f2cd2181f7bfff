/**
 * Finds, builds when needed, and opens libngpt (built by `zig build` from native/) with Deno.dlopen.
 *
 * Lookup order: an explicit path, the NGPT_LIB environment variable, then the checkout's own build:
 * zig-out/lib/ beside this source tree (built by prepare_native when missing or stale), or, when
 * mod.ts was imported from a URL, a build of the remote's native sources in the cache
 * (src/native/remote.ts). `native()` opens what is there, synchronously; `prepare_native()`, which
 * load_model calls, builds first.
 * @module
 */
import { ensure_built } from "./build.ts";
import { CHECKOUT_URL, native_lib_filename } from "./checkout.ts";
import { env } from "../util/env.ts";

import { PermissionError, with_permission } from "../util/permissions.ts";
import { remote_native_build } from "./remote.ts";
import { NATIVE_ABI_VERSION, native_symbols as symbols } from "./symbols.ts";

export { native_lib_filename } from "./checkout.ts";

export { NATIVE_ABI_VERSION };

/** Every symbol of libngpt, typed. */
export type NativeSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** An error raised by the native library; `api` names the call that failed. */
export class NativeError extends Error {
  /** The native call that failed ("ng_cuda_mem_alloc", ...). */
  readonly api: string;
  /** Its nonzero status. */
  readonly status: number;
  /** An error of native call `api` with nonzero `status`; `message` is used as it is. */
  constructor(api: string, status: number, message: string) {
    super(message);
    this.name = "NativeError";
    this.api = api;
    this.status = status;
  }
}

/** The checkout's own build, or null when mod.ts was not loaded from a file: URL. */
export function repo_lib_path(): string | null {
  if (CHECKOUT_URL.protocol !== "file:") return null;
  return `${decodeURIComponent(CHECKOUT_URL.pathname)}zig-out/lib/${native_lib_filename()}`;
}

function exists(path: string): boolean {
  return with_permission("--allow-read", `looking for libngpt at ${path}`, () => {
    try {
      return Deno.statSync(path).isFile;
    } catch {
      return false;
    }
  });
}

/** The remote checkout's build once prepare_native made it. */
let remote: { lib: string; src_dir: string } | null = null;

/** Resolves the library path following the documented order, or throws saying how to get one. */
export function resolve_lib_path(explicit?: string): string {
  if (explicit) {
    if (!exists(explicit)) throw new Error(`native library not found at the given path: ${explicit}`);
    return explicit;
  }
  const from_env = env("NGPT_LIB");
  if (from_env) {
    if (!exists(from_env)) throw new Error(`native library not found at NGPT_LIB=${from_env}`);
    return from_env;
  }
  if (remote) return remote.lib;
  const repo = repo_lib_path();
  if (repo && exists(repo)) return repo;
  if (!repo) {
    throw new Error(
      `libngpt is not built yet for ${CHECKOUT_URL}: call \`await prepare_native()\` first ` +
        "(load_model does), or set NGPT_LIB to a built library",
    );
  }
  throw new Error(
    `native library ${native_lib_filename()} not found (looked for ${repo}). Build it with ` +
      "`deno task build` (or ./ngpt build), load through load_model (which builds it), or set NGPT_LIB",
  );
}

/**
 * The root of the native sources in use: the checkout's, or the fetched copy of a remote's
 * (after prepare_native). The CUDA backend compiles `native/kernels/` under it.
 */
export function native_source_dir(): string {
  if (remote) return remote.src_dir;
  if (CHECKOUT_URL.protocol === "file:") return decodeURIComponent(CHECKOUT_URL.pathname);
  throw new Error(
    `ngpt's native sources are not fetched yet from ${CHECKOUT_URL}: call \`await prepare_native()\``,
  );
}

/** The opened native library: its symbols and helpers for error reporting. */
export class NativeLib implements Disposable {
  /** Where it was loaded from. */
  readonly path: string;
  /** Every exported function, typed. */
  readonly symbols: NativeSymbols;
  #lib: Deno.DynamicLibrary<typeof symbols>;
  #err_buf = new Uint8Array(1024);

  /** Opens the library at `path` and checks its ABI version. */
  constructor(path: string) {
    this.path = path;
    try {
      this.#lib = Deno.dlopen(path, symbols);
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable) {
        throw new PermissionError("--allow-ffi", `loading ngpt's native library ${path}`, { cause: e });
      }
      throw new Error(
        `could not load native library ${path}: ${(e as Error).message}. ` +
          "If it is an old build, rebuild it with `deno task build`.",
        { cause: e },
      );
    }
    this.symbols = this.#lib.symbols;
    const v = this.symbols.ng_version();
    if (v !== NATIVE_ABI_VERSION) {
      this.#lib.close();
      throw new Error(
        `native library ${path} has ABI version ${v}, expected ${NATIVE_ABI_VERSION}: rebuild it`,
      );
    }
  }

  /** The message of the library's last error. */
  last_error(): string {
    const n = Number(this.symbols.ng_last_error(this.#err_buf, BigInt(this.#err_buf.length)));
    return new TextDecoder().decode(this.#err_buf.subarray(0, Math.min(n, this.#err_buf.length)));
  }

  /** Throws a NativeError naming `api` when `status` is nonzero. */
  check(status: number, api: string): void {
    if (status !== 0) throw new NativeError(api, status, `${api} failed: ${this.last_error()}`);
  }

  /** Closes the library. */
  [Symbol.dispose](): void {
    this.#lib.close();
  }
}

let shared: NativeLib | null = null;

/** Opens the library once per process (or returns the one already open); builds nothing. */
export function native(explicit_path?: string): NativeLib {
  if (shared) {
    if (explicit_path && explicit_path !== shared.path) {
      throw new Error(`native library already loaded from ${shared.path}; cannot also load ${explicit_path}`);
    }
    return shared;
  }
  shared = new NativeLib(resolve_lib_path(explicit_path));
  return shared;
}

/** Options of prepare_native. */
export interface PrepareNativeOptions {
  /** A built library to use as is (default: NGPT_LIB, then the checkout's or the remote's build). */
  lib_path?: string;
  /** Cache root for a remote build (default: see util/env.ts cache_root). */
  cache_dir?: string;
  /** Progress messages (default: stderr). */
  log?: (msg: string) => void;
}

/**
 * Makes libngpt ready and opens it: builds the checkout's library when it is missing or older than
 * its sources, or, when mod.ts was imported from a URL, fetches the native sources from there and
 * builds them in the cache (once per content hash). A given `lib_path` or NGPT_LIB is used as is.
 */
export async function prepare_native(opts: PrepareNativeOptions = {}): Promise<NativeLib> {
  if (shared || opts.lib_path || env("NGPT_LIB")) return native(opts.lib_path);
  if (CHECKOUT_URL.protocol === "file:") await ensure_built({ log: opts.log });
  else remote ??= await remote_native_build(CHECKOUT_URL, { cache_dir: opts.cache_dir, log: opts.log });
  return native();
}
