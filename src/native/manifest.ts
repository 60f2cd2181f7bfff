/**
 * The manifest of the files that are not TypeScript modules but that ngpt fetches when `mod.ts` is
 * imported from a URL: the native library's sources (build.zig, build.zig.zon, native/, its CUDA
 * kernels among them) and the embedded default model. Each is listed with its size and SHA-256, so
 * a remote build is keyed by its sources' content and every fetched byte is checked.
 *
 *   deno run -A src/native/manifest.ts           rewrites manifest.json at the repo root
 *   deno run -A src/native/manifest.ts --check   fails when manifest.json is not current (CI)
 * @module
 */

/** The manifest's file name at the repo root. */
export const MANIFEST_FILE = "manifest.json";

/** One file of the manifest. */
export interface ManifestFile {
  /** Path relative to the repo root, with forward slashes. */
  path: string;
  bytes: number;
  /** Lowercase hex. */
  sha256: string;
}

/** manifest.json. */
export interface Manifest {
  version: 1;
  files: ManifestFile[];
}

/** The roots the manifest covers: files, or directories taken whole (hidden entries skipped). */
export const MANIFEST_ROOTS: readonly string[] = ["build.zig", "build.zig.zon", "native", "models"];

/** Whether `path` is one of the native library's sources (what a remote build is keyed on). */
export function is_native_source(path: string): boolean {
  return path === "build.zig" || path === "build.zig.zon" || path.startsWith("native/");
}

/** Lowercase hex SHA-256 of `bytes`. */
export async function sha256_hex(bytes: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

function walk(root: string, rel: string, out: string[]): void {
  const st = Deno.statSync(`${root}/${rel}`);
  if (!st.isDirectory) {
    out.push(rel);
    return;
  }
  for (const e of Deno.readDirSync(`${root}/${rel}`)) {
    if (!e.name.startsWith(".")) walk(root, `${rel}/${e.name}`, out);
  }
}

/** The manifest of the checkout at `root` (files sorted by path). */
export async function compute_manifest(root: string): Promise<Manifest> {
  const paths: string[] = [];
  for (const r of MANIFEST_ROOTS) walk(root, r, paths);
  paths.sort();
  const files: ManifestFile[] = [];
  for (const path of paths) {
    const bytes = await Deno.readFile(`${root}/${path}`);
    files.push({ path, bytes: bytes.length, sha256: await sha256_hex(bytes) });
  }
  return { version: 1, files };
}

/** The manifest as manifest.json holds it (one file per line, so diffs read well). */
export function manifest_text(m: Manifest): string {
  return `{\n  "version": ${m.version},\n  "files": [\n${
    m.files.map((f) => `    ${JSON.stringify(f)}`).join(",\n")
  }\n  ]\n}\n`;
}

/** The key of a build: a hash of the native sources' paths and hashes (first 16 hex digits). */
export async function native_source_key(m: Manifest): Promise<string> {
  const lines = m.files.filter((f) => is_native_source(f.path)).map((f) => `${f.path} ${f.sha256}\n`);
  return (await sha256_hex(new TextEncoder().encode(lines.join("")))).slice(0, 16);
}

if (import.meta.main) {
  const root = decodeURIComponent(new URL("../../", import.meta.url).pathname);
  const text = manifest_text(await compute_manifest(root));
  const path = `${root}${MANIFEST_FILE}`;
  if (Deno.args.includes("--check")) {
    let old = "";
    try {
      old = Deno.readTextFileSync(path);
    } catch { /* missing: not current */ }
    if (old !== text) {
      console.error(`${MANIFEST_FILE} is not current: run \`deno task manifest\` and commit it`);
      Deno.exit(1);
    }
  } else {
    Deno.writeTextFileSync(path, text);
    console.error(`wrote ${path}`);
  }
}
