/**
 * Where the CUDA backend looks for NVRTC and cuBLASLt, and where it caches compiled kernels.
 * @module
 */

const CUDA_LIB64 = "/usr/local/cuda/lib64";

import { env } from "../../util/env.ts";

function is_dir(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

/**
 * Candidate libnvrtc paths in order: $NGPT_NVRTC, libnvrtc.so.13 and .12 on the default search
 * path, /usr/local/cuda/lib64, then the PyPI wheels' layouts (`nvidia-cuda-nvrtc`:
 * <site-packages>/nvidia/cu13/lib/libnvrtc.so.13; `nvidia-cuda-nvrtc-cu12`:
 * <site-packages>/nvidia/cuda_nvrtc/lib/libnvrtc.so.12) under `site_dirs`.
 */
export function nvrtc_candidates(site_dirs: string[] = []): string[] {
  const out: string[] = [];
  const e = env("NGPT_NVRTC");
  if (e) out.push(e);
  out.push(
    "libnvrtc.so.13",
    "libnvrtc.so.12",
    `${CUDA_LIB64}/libnvrtc.so.13`,
    `${CUDA_LIB64}/libnvrtc.so.12`,
  );
  for (const d of site_dirs) {
    out.push(`${d}/nvidia/cu13/lib/libnvrtc.so.13`, `${d}/nvidia/cuda_nvrtc/lib/libnvrtc.so.12`);
  }
  return out;
}

/**
 * Candidate libcublasLt paths in order: $NGPT_CUBLASLT, libcublasLt.so.13 and .12 on the default
 * search path, /usr/local/cuda/lib64, then the PyPI wheels' layouts under `site_dirs`.
 */
export function cublaslt_candidates(site_dirs: string[] = []): string[] {
  const out: string[] = [];
  const e = env("NGPT_CUBLASLT");
  if (e) out.push(e);
  out.push(
    "libcublasLt.so.13",
    "libcublasLt.so.12",
    `${CUDA_LIB64}/libcublasLt.so.13`,
    `${CUDA_LIB64}/libcublasLt.so.12`,
  );
  for (const d of site_dirs) {
    out.push(`${d}/nvidia/cu13/lib/libcublasLt.so.13`, `${d}/nvidia/cublas/lib/libcublasLt.so.12`);
  }
  return out;
}

let site_cache: string[] | null = null;

/**
 * Python site-packages directories that may hold NVIDIA's wheels: $VIRTUAL_ENV's, then what
 * `python3` reports (asked once per process; none if python3 is missing).
 */
export function python_site_dirs(): string[] {
  if (site_cache) return site_cache;
  const dirs: string[] = [];
  const venv = env("VIRTUAL_ENV");
  if (venv) {
    try {
      for (const e of Deno.readDirSync(`${venv}/lib`)) {
        if (e.name.startsWith("python")) dirs.push(`${venv}/lib/${e.name}/site-packages`);
      }
    } catch { /* no such venv */ }
  }
  try {
    const code =
      "import site,sysconfig;print('\\n'.join([sysconfig.get_paths()['purelib'],site.getusersitepackages()]" +
      "+site.getsitepackages()))";
    const out = new Deno.Command("python3", { args: ["-c", code], stdout: "piped", stderr: "null" })
      .outputSync();
    if (out.success) {
      for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
        const d = line.trim();
        if (d && !dirs.includes(d)) dirs.push(d);
      }
    }
  } catch { /* python3 not installed */ }
  site_cache = dirs.filter(is_dir);
  return site_cache;
}

/** Encodes strings as one NUL-separated, NUL-terminated byte list for the native loaders. */
export function nul_list(items: string[]): Uint8Array {
  return new TextEncoder().encode(items.map((s) => s + "\0").join("") + "\0");
}
