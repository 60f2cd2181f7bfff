/**
 * When `mod.ts` is imported from a URL there is no checkout to build: the files listed in the
 * remote's manifest.json (src/native/manifest.ts) are fetched from the same base URL, checked
 * against their SHA-256, and kept in the cache. The native sources are built there once, under a
 * key of their content hash (`<cache>/native/<key>/`), and that build is reused afterwards.
 * @module
 */
import { build_native } from "./build.ts";
import { cache_root } from "../util/env.ts";
import { native_lib_filename } from "./checkout.ts";
import { is_native_source, type Manifest, MANIFEST_FILE, native_source_key, sha256_hex } from "./manifest.ts";
import { with_permission_async } from "../util/permissions.ts";

/** A remote checkout's native build in the cache. */
export interface RemoteBuild {
  /** The built library. */
  lib: string;
  /** The fetched sources' root (holds native/, whose kernels/ the CUDA backend compiles). */
  src_dir: string;
}

async function fetch_bytes(url: URL, what: string): Promise<Uint8Array> {
  return await with_permission_async("--allow-net", `fetching ${what} from ${url.host}`, async () => {
    let res: Response;
    try {
      res = await fetch(url);
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable) throw e;
      throw new Error(`could not fetch ${url} (${what}): ${(e as Error).message} (network unreachable?)`, {
        cause: e,
      });
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw new Error(`could not fetch ${url} (${what}): HTTP ${res.status} ${res.statusText}`);
    }
    return new Uint8Array(await res.arrayBuffer());
  });
}

/** The remote's manifest.json, checked for shape. */
export async function fetch_manifest(base: URL): Promise<Manifest> {
  const url = new URL(MANIFEST_FILE, base);
  const text = new TextDecoder().decode(await fetch_bytes(url, "ngpt's file manifest"));
  let m: Manifest;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new Error(`${url}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  const ok = m?.version === 1 && Array.isArray(m.files) &&
    m.files.every((f) =>
      typeof f?.path === "string" && !f.path.split("/").includes("..") && !f.path.startsWith("/") &&
      Number.isSafeInteger(f.bytes) && /^[0-9a-f]{64}$/.test(f.sha256)
    );
  if (!ok) throw new Error(`${url}: not an ngpt manifest (version 1, files with path, bytes, sha256)`);
  return m;
}

/** Fetches one manifest file and checks its size and hash. */
async function fetch_checked(base: URL, f: Manifest["files"][number]): Promise<Uint8Array> {
  const url = new URL(f.path, base);
  const bytes = await fetch_bytes(url, f.path);
  const sha = await sha256_hex(bytes);
  if (bytes.length !== f.bytes || sha !== f.sha256) {
    throw new Error(
      `${url}: ${bytes.length} bytes with SHA-256 ${sha}, but the manifest lists ${f.bytes} bytes, ${f.sha256}`,
    );
  }
  return bytes;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function cache_dir_or_throw(explicit?: string): string {
  const root = cache_root(explicit);
  if (!root) throw new Error("no cache directory for ngpt's native build: set NGPT_CACHE (or HOME)");
  return root;
}

/**
 * The native library of the checkout at `base`, built in the cache: reused when a build of the
 * same sources is there, else fetched and built (progress on `log`). Concurrent processes build
 * in their own temporary directories; the first to finish is kept.
 */
export async function remote_native_build(
  base: URL,
  opts: { cache_dir?: string; log?: (msg: string) => void } = {},
): Promise<RemoteBuild> {
  const log = opts.log ?? ((m: string) => console.error(m));
  const manifest = await fetch_manifest(base);
  const key = await native_source_key(manifest);
  const root = cache_dir_or_throw(opts.cache_dir);
  const dir = `${root}/native/${key}`;
  const done = { lib: `${dir}/lib/${native_lib_filename()}`, src_dir: `${dir}/src/` };
  return await with_permission_async(
    "--allow-read and --allow-write",
    `ngpt's native build in ${root}`,
    async () => {
      if (exists(done.lib)) return done;
      const files = manifest.files.filter((f) => is_native_source(f.path));
      const kb = files.reduce((s, f) => s + f.bytes, 0) / 1024;
      log(`fetching libngpt's sources (${files.length} files, ${kb.toFixed(0)} KiB) from ${base}`);
      await Deno.mkdir(`${root}/native`, { recursive: true });
      const tmp = await Deno.makeTempDir({ dir: `${root}/native`, prefix: `${key}.tmp-` });
      try {
        await Promise.all(files.map(async (f) => {
          const bytes = await fetch_checked(base, f);
          const path = `${tmp}/src/${f.path}`;
          await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
          await Deno.writeFile(path, bytes);
        }));
        await build_native(`${tmp}/src`, { prefix: tmp, log });
        await Deno.remove(`${tmp}/src/.zig-cache`, { recursive: true }).catch(() => {});
        try {
          await Deno.rename(tmp, dir);
        } catch (e) {
          if (!exists(done.lib)) throw e; // another process finished first: keep its build
        }
      } finally {
        await Deno.remove(tmp, { recursive: true }).catch(() => {});
      }
      return done;
    },
  );
}

/**
 * A file the remote's manifest lists (the default model), fetched once into
 * `<cache>/files/<sha256>/<name>` and checked; returns its local path.
 */
export async function remote_file(
  base: URL,
  path: string,
  opts: { cache_dir?: string; log?: (msg: string) => void } = {},
): Promise<string> {
  const log = opts.log ?? ((m: string) => console.error(m));
  const manifest = await fetch_manifest(base);
  const f = manifest.files.find((x) => x.path === path);
  if (!f) throw new Error(`${new URL(MANIFEST_FILE, base)} does not list ${path}`);
  const root = cache_dir_or_throw(opts.cache_dir);
  const local = `${root}/files/${f.sha256}/${path.slice(path.lastIndexOf("/") + 1)}`;
  return await with_permission_async(
    "--allow-read and --allow-write",
    `ngpt's file cache in ${root}`,
    async () => {
      if (exists(local)) return local;
      log(`fetching ${path} (${(f.bytes / 1e6).toFixed(1)} MB) from ${base}`);
      const bytes = await fetch_checked(base, f);
      await Deno.mkdir(local.slice(0, local.lastIndexOf("/")), { recursive: true });
      const tmp = `${local}.tmp-${Deno.pid}`;
      await Deno.writeFile(tmp, bytes);
      await Deno.rename(tmp, local);
      return local;
    },
  );
}
