/**
 * NVRTC: CUDA C++ source to CUBIN, through libnvrtc opened by the native library. Needs no GPU
 * and no CUDA driver.
 * @module
 */
import { NativeError, type NativeLib } from "../../native/lib.ts";
import { nul_list, nvrtc_candidates, python_site_dirs } from "./paths.ts";

/** A compilation that NVRTC rejected; `log` holds the compiler's messages. */
export class NvrtcCompileError extends Error {
  constructor(readonly program: string, readonly log: string, message: string) {
    super(message);
    this.name = "NvrtcCompileError";
  }
}

/** libnvrtc-builtins.so.X.Y files beside an absolute libnvrtc path (a pip wheel's lib folder). */
function builtins_beside(path: string): string[] {
  const slash = path.lastIndexOf("/");
  if (slash < 0) return [];
  const dir = path.slice(0, slash);
  try {
    return [...Deno.readDirSync(dir)]
      .filter((e) => /^libnvrtc-builtins\.so\.\d+(\.\d+)*$/.test(e.name))
      .map((e) => `${dir}/${e.name}`);
  } catch {
    return [];
  }
}

/** Loaded NVRTC. */
export class Nvrtc {
  /** NVRTC version as [major, minor]. */
  readonly version: [number, number];
  #lib: NativeLib;

  private constructor(lib: NativeLib) {
    this.#lib = lib;
    const v = new Int32Array(2);
    lib.check(lib.symbols.ng_nvrtc_version(v), "ng_nvrtc_version");
    this.version = [v[0], v[1]];
  }

  /**
   * Opens NVRTC from the documented candidates (see paths.ts: $NGPT_NVRTC, the default search
   * path, /usr/local/cuda/lib64, then pip's nvidia-cuda-nvrtc wheel), or throws saying where it
   * looked and why each failed.
   */
  static load(lib: NativeLib, extra_paths: string[] = []): Nvrtc {
    const tried: string[] = [];
    const reasons: string[] = [];
    const attempt = (paths: string[]): boolean => {
      for (const p of paths) {
        if (tried.includes(p)) continue;
        tried.push(p);
        const list = nul_list([p]), pre = nul_list(builtins_beside(p));
        if (lib.symbols.ng_nvrtc_load(list, BigInt(list.length), pre, BigInt(pre.length)) === 0) return true;
        reasons.push(lib.last_error());
      }
      return false;
    };
    if (attempt([...extra_paths, ...nvrtc_candidates()])) return new Nvrtc(lib);
    if (attempt(nvrtc_candidates(python_site_dirs()))) return new Nvrtc(lib);
    throw new NativeError(
      "ng_nvrtc_load",
      -1,
      "NVRTC not found (set NGPT_NVRTC to a libnvrtc.so, install the CUDA toolkit, or " +
        `\`pip install nvidia-cuda-nvrtc\`): ${reasons.join("; ")}`,
    );
  }

  /** The SM architectures this NVRTC can compile for (e.g. [75, 80, 86, 89, 90, ...]). */
  supported_archs(): number[] {
    const out = new Int32Array(128), n = new Int32Array(1);
    this.#lib.check(this.#lib.symbols.ng_nvrtc_supported_archs(out, 128n, n), "ng_nvrtc_supported_archs");
    return Array.from(out.subarray(0, n[0]));
  }

  /**
   * Compiles `source` (named `name` in messages) with `options` to a CUBIN. Throws
   * NvrtcCompileError with the full log when the source does not compile.
   */
  compile(source: string, name: string, options: string[]): Uint8Array {
    const s = this.#lib.symbols, enc = new TextEncoder();
    const out = new BigUint64Array(1);
    this.#lib.check(
      s.ng_nvrtc_create(enc.encode(source + "\0"), enc.encode(name + "\0"), out),
      "ng_nvrtc_create",
    );
    const prog = out[0];
    try {
      const opts = enc.encode(options.map((o) => o + "\0").join(""));
      const status = s.ng_nvrtc_compile(prog, opts, BigInt(opts.length), options.length);
      if (status !== 0) {
        const message = this.#lib.last_error();
        const log = this.#log(prog);
        throw new NvrtcCompileError(
          name,
          log,
          `NVRTC could not compile ${name} (${options.join(" ")}): ${message}\n${log}`,
        );
      }
      this.#lib.check(s.ng_nvrtc_cubin_size(prog, out), "ng_nvrtc_cubin_size");
      const cubin = new Uint8Array(Number(out[0]));
      this.#lib.check(s.ng_nvrtc_cubin(prog, cubin), "ng_nvrtc_cubin");
      return cubin;
    } finally {
      s.ng_nvrtc_destroy(prog);
    }
  }

  #log(prog: bigint): string {
    const s = this.#lib.symbols, n = new BigUint64Array(1);
    if (s.ng_nvrtc_log_size(prog, n) !== 0) return "(no log)";
    const buf = new Uint8Array(Math.max(1, Number(n[0])));
    if (s.ng_nvrtc_log(prog, buf) !== 0) return "(no log)";
    const end = buf.indexOf(0);
    return new TextDecoder().decode(end >= 0 ? buf.subarray(0, end) : buf);
  }
}
