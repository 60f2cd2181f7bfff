/**
 * On-disk cache of compiled kernels: `<cache>/kernels/<sha256>.cubin`, the hash over the source,
 * the NVRTC options, the architecture and NVRTC's version, so any change recompiles. Writes go
 * through a temporary file and a rename, so concurrent processes never read half a file. A cache
 * that cannot be read or written only costs a compile.
 * @module
 */
import { createHash } from "node:crypto";
import type { Nvrtc } from "./nvrtc.ts";

/** The cache key of a compilation. */
export function cache_key(
  source: string,
  options: string[],
  arch: number,
  nvrtc_version: [number, number],
): string {
  const h = createHash("sha256");
  h.update(source);
  h.update("\0" + options.join("\0") + "\0");
  h.update(`sm_${arch}\0nvrtc ${nvrtc_version[0]}.${nvrtc_version[1]}`);
  return h.digest("hex");
}

/**
 * Returns the CUBIN for (source, options, arch): from `<cache_dir>/kernels/` when there, else
 * compiled with NVRTC and stored. `cache_dir` null: always compiles.
 */
export function cached_compile(
  nvrtc: Nvrtc,
  source: string,
  name: string,
  options: string[],
  arch: number,
  cache_dir: string | null,
): Uint8Array {
  if (!cache_dir) return nvrtc.compile(source, name, options);
  const dir = `${cache_dir}/kernels`;
  const path = `${dir}/${cache_key(source, options, arch, nvrtc.version)}.cubin`;
  try {
    const hit = Deno.readFileSync(path);
    if (hit.length > 0) return hit;
  } catch { /* not cached yet */ }
  const cubin = nvrtc.compile(source, name, options);
  const tmp = `${path}.${Deno.pid}.${crypto.randomUUID()}.tmp`;
  try {
    Deno.mkdirSync(dir, { recursive: true });
    Deno.writeFileSync(tmp, cubin);
    Deno.renameSync(tmp, path);
  } catch {
    // Read-only or full cache: keep going without it.
    try {
      Deno.removeSync(tmp);
    } catch { /* never written */ }
  }
  return cubin;
}
