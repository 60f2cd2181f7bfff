/**
 * Builds libngpt with `zig build` when it is missing or older than its sources.
 *
 *   deno run -A src/native/build.ts [--force] [--quiet] [-- extra zig build args]
 *
 * Zig is found as $ZIG, else `zig` on PATH, else `python3 -m ziglang` (PyPI's ziglang).
 * The Zig version is pinned in build.zig.zon (minimum_zig_version).
 * @module
 */
import { native_lib_filename } from "./lib.ts";

const root = decodeURIComponent(new URL("../../", import.meta.url).pathname);

async function run_ok(cmd: string, args: string[]): Promise<string | null> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch {
    return null;
  }
}

/** Returns the command (argv prefix) that runs Zig, or throws saying how to install it. */
export async function find_zig(): Promise<string[]> {
  const env = Deno.env.get("ZIG");
  const candidates: string[][] = [];
  if (env) candidates.push(env.split(" "));
  candidates.push(["zig"], ["python3", "-m", "ziglang"]);
  for (const c of candidates) {
    if (await run_ok(c[0], [...c.slice(1), "version"])) return c;
  }
  throw new Error(
    "Zig not found: install the version pinned in build.zig.zon, e.g. `pip install ziglang==" + pinned_zig() +
      "`, or set ZIG to the zig binary",
  );
}

/** The Zig version pinned in build.zig.zon. */
export function pinned_zig(): string {
  const zon = Deno.readTextFileSync(`${root}build.zig.zon`);
  const m = zon.match(/minimum_zig_version\s*=\s*"([^"]+)"/);
  if (!m) throw new Error("build.zig.zon has no minimum_zig_version");
  return m[1];
}

function newest_mtime(path: string): number {
  const st = Deno.statSync(path);
  if (!st.isDirectory) return st.mtime?.getTime() ?? 0;
  let t = 0;
  for (const e of Deno.readDirSync(path)) t = Math.max(t, newest_mtime(`${path}/${e.name}`));
  return t;
}

/** Path of the library that `zig build` installs. */
export function built_lib_path(): string {
  return `${root}zig-out/lib/${native_lib_filename()}`;
}

/** True when the built library is missing or older than native/, build.zig or build.zig.zon. */
export function is_stale(): boolean {
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
}

/** Builds the library if needed (or always with `force`); returns its path. */
export async function ensure_built(opts: { force?: boolean; quiet?: boolean; extra?: string[] } = {}) {
  if (!opts.force && !is_stale()) return built_lib_path();
  const zig = await find_zig();
  const version = await run_ok(zig[0], [...zig.slice(1), "version"]);
  if (version !== pinned_zig()) {
    console.error(`warning: Zig ${version} found, build.zig.zon pins ${pinned_zig()}`);
  }
  const args = [...zig.slice(1), "build", "-Doptimize=ReleaseFast", ...(opts.extra ?? [])];
  if (!opts.quiet) {
    console.error(`building libngpt: ${zig.join(" ")} ${args.slice(zig.length - 1).join(" ")}`);
  }
  const out = await new Deno.Command(zig[0], { args, cwd: root, stdout: "inherit", stderr: "inherit" })
    .output();
  if (!out.success) throw new Error(`zig build failed (exit ${out.code}); see the compiler output above`);
  return built_lib_path();
}

if (import.meta.main) {
  const argv = [...Deno.args];
  const dd = argv.indexOf("--");
  const extra = dd >= 0 ? argv.splice(dd).slice(1) : [];
  const path = await ensure_built({
    force: argv.includes("--force"),
    quiet: argv.includes("--quiet"),
    extra,
  });
  if (!argv.includes("--quiet")) console.error(`libngpt: ${path}`);
}
