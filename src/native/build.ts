/**
 * Builds libngpt with `zig build`: the checkout's own (when missing or older than its sources) or a
 * fetched copy of the sources (src/native/remote.ts). Says on stderr that it starts, and how long
 * it took, whenever it builds.
 *
 *   deno run -A src/native/build.ts [--force] [--quiet] [--zig-test] [-- extra zig build args]
 *
 * Zig is found as $ZIG, else `zig` on PATH, else `python3 -m ziglang` (PyPI's ziglang).
 * The Zig version is pinned in build.zig.zon (minimum_zig_version).
 * @module
 */
import { env } from "../util/env.ts";
import { CHECKOUT_URL, native_lib_filename } from "./checkout.ts";
import { is_permission_error, PermissionError, with_permission } from "../util/permissions.ts";

function checkout_dir(): string {
  if (CHECKOUT_URL.protocol !== "file:") throw new Error("internal: the checkout is not a local directory");
  return decodeURIComponent(CHECKOUT_URL.pathname);
}

async function run_ok(cmd: string, args: string[]): Promise<string | null> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch (e) {
    if (is_permission_error(e)) {
      throw new PermissionError("--allow-run", `running ${cmd} to build libngpt`, { cause: e });
    }
    return null;
  }
}

/** The Zig version pinned in `zon` (the text of build.zig.zon). */
export function pinned_zig(zon: string): string {
  const m = zon.match(/minimum_zig_version\s*=\s*"([^"]+)"/);
  if (!m) throw new Error("build.zig.zon has no minimum_zig_version");
  return m[1];
}

/** The command (argv prefix) that runs Zig and its version, or an Error saying how to install it. */
export async function find_zig(pinned: string): Promise<{ zig: string[]; version: string }> {
  const given = env("ZIG");
  const candidates: string[][] = given ? [given.split(" ")] : [];
  candidates.push(["zig"], ["python3", "-m", "ziglang"]);
  for (const c of candidates) {
    const version = await run_ok(c[0], [...c.slice(1), "version"]);
    if (version) return { zig: c, version };
  }
  throw new Error(
    `Zig not found (tried ${
      given ? "$ZIG, " : ""
    }zig on PATH and python3 -m ziglang): building libngpt needs ` +
      `Zig ${pinned}. Install it with \`pip install ziglang==${pinned}\` (or use ./ngpt, which installs it), ` +
      "or set ZIG to a zig binary",
  );
}

/**
 * Runs `zig build -Doptimize=ReleaseFast` in `src_dir` (a directory with build.zig, build.zig.zon
 * and native/), installing into `prefix` (default src_dir/zig-out); returns the library's path.
 */
export async function build_native(
  src_dir: string,
  opts: { prefix?: string; extra?: string[]; log?: (msg: string) => void } = {},
): Promise<string> {
  const log = opts.log ?? ((m: string) => console.error(m));
  const pinned = pinned_zig(
    with_permission(
      "--allow-read",
      "reading build.zig.zon",
      () => Deno.readTextFileSync(`${src_dir}/build.zig.zon`),
    ),
  );
  const { zig, version } = await find_zig(pinned);
  if (version !== pinned) log(`warning: Zig ${version} found, build.zig.zon pins ${pinned}`);
  const args = [...zig.slice(1), "build", "-Doptimize=ReleaseFast", ...(opts.extra ?? [])];
  if (opts.prefix) args.push("--prefix", opts.prefix);
  log(`building libngpt with Zig ${version} (${zig.join(" ")}); the first build takes about 20 s...`);
  const t0 = performance.now();
  const out = await new Deno.Command(zig[0], { args, cwd: src_dir, stdout: "inherit", stderr: "inherit" })
    .output();
  if (!out.success) {
    throw new Error(`zig build failed (exit ${out.code}) in ${src_dir}; see the compiler output above`);
  }
  log(`built libngpt in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return `${opts.prefix ?? `${src_dir.replace(/\/$/, "")}/zig-out`}/lib/${native_lib_filename()}`;
}

/** The newest modification time of the Zig sources under `path` (CUDA kernels are NVRTC's, not Zig's). */
function newest_mtime(path: string): number {
  const st = Deno.statSync(path);
  if (!st.isDirectory) return path.endsWith(".zig") || path.endsWith(".zon") ? st.mtime?.getTime() ?? 0 : 0;
  let t = 0;
  for (const e of Deno.readDirSync(path)) t = Math.max(t, newest_mtime(`${path}/${e.name}`));
  return t;
}

/** Path of the library that `zig build` installs in the checkout. */
export function built_lib_path(): string {
  return `${checkout_dir()}zig-out/lib/${native_lib_filename()}`;
}

/** True when the checkout's library is missing or older than native/'s Zig sources, build.zig or build.zig.zon. */
export function is_stale(): boolean {
  const root = checkout_dir();
  return with_permission("--allow-read", "checking whether libngpt is built", () => {
    let lib_t: number;
    try {
      lib_t = Deno.statSync(built_lib_path()).mtime?.getTime() ?? 0;
    } catch {
      return true;
    }
    const src_t = Math.max(
      newest_mtime(`${root}native`),
      newest_mtime(`${root}build.zig`),
      newest_mtime(`${root}build.zig.zon`),
    );
    return src_t > lib_t;
  });
}

/** Builds the checkout's library if needed (or always with `force`); returns its path. */
export async function ensure_built(
  opts: { force?: boolean; extra?: string[]; log?: (msg: string) => void } = {},
): Promise<string> {
  if (!opts.force && !is_stale()) return built_lib_path();
  return await build_native(checkout_dir(), { extra: opts.extra, log: opts.log });
}

/** Runs native/'s Zig unit tests (`zig build test`, ReleaseSafe) in the checkout. */
export async function zig_unit_tests(): Promise<void> {
  const root = checkout_dir();
  const { zig } = await find_zig(pinned_zig(Deno.readTextFileSync(`${root}build.zig.zon`)));
  const args = [...zig.slice(1), "build", "test", "-Doptimize=ReleaseSafe"];
  const out = await new Deno.Command(zig[0], { args, cwd: root, stdout: "inherit", stderr: "inherit" })
    .output();
  if (!out.success) throw new Error(`zig build test failed (exit ${out.code})`);
}

if (import.meta.main) {
  const argv = [...Deno.args];
  const dd = argv.indexOf("--");
  const extra = dd >= 0 ? argv.splice(dd).slice(1) : [];
  try {
    const path = await ensure_built({ force: argv.includes("--force"), extra });
    if (!argv.includes("--quiet")) console.error(`libngpt: ${path}`);
    if (argv.includes("--zig-test")) await zig_unit_tests();
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
