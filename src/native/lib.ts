/**
 * Finds and opens libngpt (built by `zig build` from native/) with Deno.dlopen.
 *
 * Lookup order: an explicit path, the NGPT_LIB environment variable, the repo's own build output
 * (zig-out/lib/libngpt.so beside this source tree); otherwise an error that says how to build it.
 * @module
 */
import { core_symbols } from "./symbols_core.ts";
import { cpu_symbols } from "./symbols_cpu.ts";
import { cuda_symbols } from "./symbols_cuda.ts";

/** Version of the exported C ABI this TypeScript expects (native/root.zig ng_version). */
export const NATIVE_ABI_VERSION = 1;

const symbols = { ...core_symbols, ...cpu_symbols, ...cuda_symbols } as const;
/** Every symbol of libngpt, typed. */
export type NativeSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** An error raised by the native library; `api` names the call that failed. */
export class NativeError extends Error {
  constructor(readonly api: string, readonly status: number, message: string) {
    super(message);
    this.name = "NativeError";
  }
}

/** The library's file name on this platform. */
export function native_lib_filename(): string {
  if (Deno.build.os === "windows") return "ngpt.dll";
  if (Deno.build.os === "darwin") return "libngpt.dylib";
  return "libngpt.so";
}

/** Default location of the library built from this checkout, or null when not loaded from a file: URL. */
export function repo_lib_path(): string | null {
  const url = new URL(`../../zig-out/lib/${native_lib_filename()}`, import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : null;
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Resolves the library path following the documented order, or throws with build instructions. */
export function resolve_lib_path(explicit?: string): string {
  if (explicit) {
    if (!exists(explicit)) throw new Error(`native library not found at the given path: ${explicit}`);
    return explicit;
  }
  const env = Deno.env.get("NGPT_LIB");
  if (env) {
    if (!exists(env)) throw new Error(`native library not found at NGPT_LIB=${env}`);
    return env;
  }
  const repo = repo_lib_path();
  if (repo && exists(repo)) return repo;
  throw new Error(
    `native library ${native_lib_filename()} not found` + (repo ? ` (looked for ${repo})` : "") +
      ". Build it with `deno task build` (runs `zig build -Doptimize=ReleaseFast` in the repo), " +
      "or set NGPT_LIB to the path of a built library.",
  );
}

/** The opened native library: its symbols and helpers for error reporting. */
export class NativeLib implements Disposable {
  readonly path: string;
  readonly symbols: NativeSymbols;
  #lib: Deno.DynamicLibrary<typeof symbols>;
  #err_buf = new Uint8Array(1024);

  constructor(path: string) {
    this.path = path;
    try {
      this.#lib = Deno.dlopen(path, symbols);
    } catch (e) {
      throw new Error(
        `could not load native library ${path}: ${(e as Error).message}. ` +
          "It may be stale: rebuild with `deno task build`.",
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

  [Symbol.dispose](): void {
    this.#lib.close();
  }
}

let shared: NativeLib | null = null;

/** Opens the library once per process (or returns the one already open). */
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
