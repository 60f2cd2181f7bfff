/**
 * mod.ts imported from a URL, as a user with Deno and Zig but no checkout would: a loopback HTTP
 * server serves the files a fresh clone has (git ls-files) with TypeScript content types; a child
 * Deno with an empty module cache, an empty ngpt cache and only the permissions the README lists
 * imports it, which fetches libngpt's sources through manifest.json, builds them in the cache, and
 * generates greedily with the embedded model (fetched the same way) and, where ../shared is
 * present, the shared checkpoint. A second run reuses the build; missing pieces are named.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { HAVE_SHARED, SHAKESPEARE, shakespeare_reference } from "./helpers/shared.ts";

const root = decodeURIComponent(new URL("../", import.meta.url).pathname);

const CONTENT_TYPES: Record<string, string> = {
  ts: "application/typescript; charset=utf-8",
  json: "application/json",
  md: "text/markdown",
};

/** The files a fresh clone of this working tree would have. */
function clone_files(): Set<string> {
  const out = new Deno.Command("git", {
    args: ["ls-files", "--cached", "--others", "--exclude-standard", "-z"],
    cwd: root,
    stdout: "piped",
  }).outputSync();
  if (!out.success) throw new Error("git ls-files failed");
  return new Set(new TextDecoder().decode(out.stdout).split("\0").filter((f) => f && !f.startsWith("../")));
}

function serve(
  files: Set<string>,
  hide: Set<string> = new Set(),
): { url: string; close: () => Promise<void> } {
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen: () => {} },
    (req) => {
      const path = decodeURIComponent(new URL(req.url).pathname).slice(1);
      if (!files.has(path) || hide.has(path)) return new Response("not found", { status: 404 });
      const ext = path.slice(path.lastIndexOf(".") + 1);
      return new Response(Deno.readFileSync(`${root}${path}`), {
        headers: { "content-type": CONTENT_TYPES[ext] ?? "application/octet-stream" },
      });
    },
  );
  const { port } = server.addr as Deno.NetAddr;
  return { url: `http://127.0.0.1:${port}/`, close: () => (ac.abort(), server.finished) };
}

const ref = shakespeare_reference();

/** Runs `code` (a module importing BASE/mod.ts) in a child Deno with the given permission flags. */
async function run_child(base: string, code: string, perms: string[], env: Record<string, string>) {
  const dir = await Deno.makeTempDir({ prefix: "ngpt_url_child_" });
  try {
    await Deno.writeTextFile(`${dir}/main.ts`, code.replaceAll("BASE/", base));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-lock", "--no-config", ...perms, `${dir}/main.ts`],
      env,
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The smallest permissions the README documents for a URL import, for server `base`. */
function minimal_perms(base: string, cache: string, extra_read: string[] = []): string[] {
  const host = new URL(base).host;
  return [
    `--allow-import=${host}`,
    `--allow-net=${host}`,
    `--allow-read=${[cache, ...extra_read].join(",")}`,
    `--allow-write=${cache}`,
    "--allow-env",
    "--allow-run",
    "--allow-ffi",
  ];
}

const GENERATE = `
import { load_model } from "BASE/mod.ts";
const spec = Deno.args[0] ?? undefined;
using model = await load_model(SPEC, { device: "cpu" });
const out = await model.generate(${JSON.stringify(ref.prompt)}, { temperature: 0, max_new_tokens: 200 });
console.log(JSON.stringify({ text: out.text, origin: model.origin }));
`;

Deno.test("URL import: a fresh cache fetches and builds libngpt once, then generates greedily", async () => {
  const files = clone_files();
  for (const f of ["mod.ts", "manifest.json", "build.zig", "native/root.zig"]) assert(files.has(f), f);
  const srv = serve(files);
  const cache = await Deno.makeTempDir({ prefix: "ngpt_url_cache_" });
  const deno_dir = await Deno.makeTempDir({ prefix: "ngpt_url_deno_" });
  const env = {
    PATH: Deno.env.get("PATH") ?? "",
    HOME: Deno.env.get("HOME") ?? "",
    NGPT_CACHE: cache,
    DENO_DIR: deno_dir,
    ...(Deno.env.get("ZIG") ? { ZIG: Deno.env.get("ZIG")! } : {}),
  };
  try {
    const first = await run_child(
      srv.url,
      GENERATE.replace("SPEC", "undefined"),
      minimal_perms(srv.url, cache),
      env,
    );
    assertEquals(first.code, 0, first.stderr);
    if (Deno.env.get("NGPT_TEST_VERBOSE")) console.error(first.stderr);
    assertEquals(JSON.parse(first.stdout).text, ref.greedy_text.slice(ref.prompt.length));
    assert(first.stderr.includes("fetching libngpt's sources"), first.stderr);
    assert(/built libngpt in [\d.]+ s/.test(first.stderr), first.stderr);
    assert(first.stderr.includes("fetching models/shakespeare-char/model.safetensors"), first.stderr);

    const again = await run_child(
      srv.url,
      GENERATE.replace("SPEC", "undefined"),
      minimal_perms(srv.url, cache),
      env,
    );
    assertEquals(again.code, 0, again.stderr);
    assertEquals(again.stdout, first.stdout);
    assert(!again.stderr.includes("building libngpt") && !again.stderr.includes("fetching"), again.stderr);

    if (HAVE_SHARED) {
      const ckpt = `${SHAKESPEARE}ckpt-slim.pt`;
      const shared = await run_child(
        srv.url,
        GENERATE.replace("SPEC", JSON.stringify(ckpt)),
        // Deno checks a read against the path as given and, for a link, the path it resolves to.
        minimal_perms(srv.url, cache, [...new Set([SHAKESPEARE, Deno.realPathSync(SHAKESPEARE)])]),
        env,
      );
      assertEquals(shared.code, 0, shared.stderr);
      assertEquals(JSON.parse(shared.stdout).text, ref.greedy_text.slice(ref.prompt.length));
    } else console.error("note: ../shared not found: the shared checkpoint's URL-import run is skipped");

    // A missing permission is named as one.
    const no_ffi = minimal_perms(srv.url, cache).filter((p) => p !== "--allow-ffi");
    const denied = await run_child(srv.url, GENERATE.replace("SPEC", "undefined"), no_ffi, env);
    assert(denied.code !== 0);
    assert(
      denied.stderr.includes("permission needed") && denied.stderr.includes("--allow-ffi"),
      denied.stderr,
    );
  } finally {
    await srv.close();
    await Deno.remove(cache, { recursive: true });
    await Deno.remove(deno_dir, { recursive: true });
  }
});

Deno.test("URL import: no Zig, or a server without the sources, is an error saying what is missing", async () => {
  const files = clone_files();
  const cache = await Deno.makeTempDir({ prefix: "ngpt_url_cache_" });
  const deno_dir = await Deno.makeTempDir({ prefix: "ngpt_url_deno_" });
  const bin = await Deno.makeTempDir({ prefix: "ngpt_url_bin_" });
  const env = { PATH: bin, HOME: cache, NGPT_CACHE: cache, DENO_DIR: deno_dir };
  const srv = serve(files);
  try {
    const no_zig = await run_child(
      srv.url,
      GENERATE.replace("SPEC", "undefined"),
      minimal_perms(srv.url, cache),
      env,
    );
    assert(no_zig.code !== 0);
    assert(no_zig.stderr.includes("Zig not found") && no_zig.stderr.includes("ziglang=="), no_zig.stderr);
  } finally {
    await srv.close();
  }
  const bare = serve(files, new Set(["manifest.json"]));
  try {
    const no_manifest = await run_child(
      bare.url,
      GENERATE.replace("SPEC", "undefined"),
      minimal_perms(bare.url, cache),
      env,
    );
    assert(no_manifest.code !== 0);
    assert(
      no_manifest.stderr.includes(`could not fetch ${bare.url}manifest.json`) &&
        no_manifest.stderr.includes("404"),
      no_manifest.stderr,
    );
  } finally {
    await bare.close();
    for (const d of [cache, deno_dir, bin]) await Deno.remove(d, { recursive: true });
  }
});
