import assert from "node:assert/strict";
import { join } from "node:path";
import {
  default_cache_dir,
  hub_cache_path,
  hub_download,
  hub_snapshot,
  type HubOptions,
} from "../src/loaders/hf_hub.ts";
import { HubServer, type HubServerOptions } from "./helpers/hub_server.ts";
import { with_env } from "./helpers/env.ts";

const FIXTURE_DIR = new URL("./fixtures/hf_tiny_lm/", import.meta.url).pathname;
const REPO = "tiny-org/tiny-gpt2";
const WEIGHTS = "model.safetensors";

const assertEquals = <T>(actual: T, expected: T, message?: string) =>
  assert.deepEqual(actual, expected, message);

function assertStringIncludes(text: string, part: string): void {
  assert.ok(text.includes(part), `expected ${JSON.stringify(text)} to include ${JSON.stringify(part)}`);
}

/** Awaits `fn`, which must reject with an Error (whose message includes `part` when given); returns it. */
async function assertRejects(fn: () => Promise<unknown>, part?: string): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof Error, `expected an Error, got ${e}`);
    if (part !== undefined) assertStringIncludes(e.message, part);
    return e;
  }
  throw new assert.AssertionError({ message: "expected a rejection, the call succeeded" });
}

const fixture = (name: string) => Deno.readFile(join(FIXTURE_DIR, name));

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** A fake hub and a fresh temp cache dir, both cleaned up after `fn`. */
async function with_hub(
  server_opts: Partial<HubServerOptions>,
  fn: (srv: HubServer, opts: HubOptions & { cache_dir: string }) => Promise<void>,
): Promise<void> {
  const cache_dir = await Deno.makeTempDir({ prefix: "ngpt_hub_test_" });
  await using srv = await HubServer.start({ files_dir: FIXTURE_DIR, repo: REPO, ...server_opts });
  try {
    // The caller's own HF_* settings must not change what the tests see.
    await with_env(
      { HF_HUB_OFFLINE: undefined, HF_TOKEN: undefined },
      () => fn(srv, { cache_dir, endpoint: srv.endpoint, progress: false }),
    );
  } finally {
    await Deno.remove(cache_dir, { recursive: true });
  }
}

Deno.test("hub_download fetches into the cache layout, then hits the cache without a request", async () => {
  await with_hub({}, async (srv, opts) => {
    const path = await hub_download(REPO, WEIGHTS, opts);
    assertEquals(path, join(opts.cache_dir, "hub", "tiny-org--tiny-gpt2", "main", WEIGHTS));
    assertEquals(path, hub_cache_path(REPO, WEIGHTS, opts));
    assertEquals(await Deno.readFile(path), await fixture(WEIGHTS));
    assertEquals(await exists(path + ".incomplete"), false);
    assertEquals(srv.requests.length, 1);
    assertEquals(srv.requests[0].path, `/${REPO}/resolve/main/${WEIGHTS}`);
    assertEquals(srv.requests[0].range, null);

    assertEquals(await hub_download(REPO, WEIGHTS, opts), path);
    assertEquals(srv.requests.length, 1, "a cached file must not touch the network");

    const dir = await hub_snapshot(REPO, opts);
    assertEquals(dir, join(opts.cache_dir, "hub", "tiny-org--tiny-gpt2", "main"));
    assertEquals(await Deno.readFile(join(dir, "config.json")), await fixture("config.json"));
    assertEquals(srv.requests.length, 2, "snapshot fetches only the missing config.json");
    await hub_snapshot(REPO, opts);
    assertEquals(srv.requests.length, 2);
  });
});

Deno.test("hub_download resumes with a Range request after the connection drops mid-body", async () => {
  await with_hub({ drop_first: true }, async (srv, opts) => {
    const path = await hub_download(REPO, WEIGHTS, opts);
    assertEquals(await Deno.readFile(path), await fixture(WEIGHTS));
    const reqs = srv.requests_for(WEIGHTS);
    assertEquals(reqs.length, 2);
    assertEquals(reqs[0].range, null);
    const m = reqs[1].range?.match(/^bytes=(\d+)-$/);
    assert.ok(m, `second request must carry a Range header, got ${reqs[1].range}`);
    const offset = Number(m[1]);
    const size = (await fixture(WEIGHTS)).length;
    assert.ok(offset > 0 && offset < size, `resume offset ${offset} must be inside the file (${size} bytes)`);
    assertEquals(await exists(path + ".incomplete"), false);
  });
});

Deno.test("hub_download with retries: 0 keeps the partial file and the next call continues it", async () => {
  await with_hub({ drop_first: true }, async (srv, opts) => {
    const path = hub_cache_path(REPO, WEIGHTS, opts);
    const err = await assertRejects(() => hub_download(REPO, WEIGHTS, { ...opts, retries: 0 }));
    assertStringIncludes(err.message, `${REPO}/${WEIGHTS}`);
    assertStringIncludes(err.message, "resume");
    assertEquals(await exists(path), false, "no file under the final name after a failed download");
    const partial = (await Deno.stat(path + ".incomplete")).size;
    assert.ok(partial > 0, "the bytes received before the drop are kept");

    assertEquals(await hub_download(REPO, WEIGHTS, opts), path);
    const reqs = srv.requests_for(WEIGHTS);
    assertEquals(reqs.length, 2);
    assertEquals(reqs[1].range, `bytes=${partial}-`);
    assertEquals(await Deno.readFile(path), await fixture(WEIGHTS));
  });
});

Deno.test("hub_download starts over when the server ignores the Range and answers 200", async () => {
  await with_hub({ drop_first: true, ignore_range: true }, async (srv, opts) => {
    const path = await hub_download(REPO, WEIGHTS, opts);
    assertEquals(srv.requests_for(WEIGHTS).length, 2);
    assertEquals(await Deno.readFile(path), await fixture(WEIGHTS));
  });
});

Deno.test("hub_download rejects a checksum mismatch and leaves nothing under the final name", async () => {
  await with_hub({ wrong_etag: true }, async (_srv, opts) => {
    const path = hub_cache_path(REPO, WEIGHTS, opts);
    const err = await assertRejects(() => hub_download(REPO, WEIGHTS, opts));
    const bytes = await fixture(WEIGHTS);
    const actual = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    assertStringIncludes(err.message, "checksum mismatch");
    assertStringIncludes(err.message, `${REPO}/${WEIGHTS}`);
    assertStringIncludes(err.message, "0".repeat(64));
    assertStringIncludes(err.message, actual);
    assertEquals(await exists(path), false);
    assertEquals(await exists(path + ".incomplete"), false);
  });
});

Deno.test("hub_download follows the hub's redirects and checks X-Linked-Etag; the token stays on the hub", async () => {
  await with_hub({ alias: "tiny", lfs: true, token: "secret" }, async (srv, opts) => {
    const path = await hub_download("tiny", WEIGHTS, { ...opts, token: "secret" });
    assertEquals(path, join(opts.cache_dir, "hub", "tiny", "main", WEIGHTS));
    assertEquals(await Deno.readFile(path), await fixture(WEIGHTS));
    assertEquals(srv.requests.map((r) => r.server), ["hub", "hub", "cdn"]);
    assertEquals(srv.requests[1].path, `/${REPO}/resolve/main/${WEIGHTS}`);
    assertEquals(srv.requests[1].authorization, "Bearer secret");
    assertEquals(
      srv.requests[2].authorization,
      null,
      "Authorization must not follow a cross-origin redirect",
    );
  });
  await with_hub({ lfs: true, wrong_etag: true }, async (_srv, opts) => {
    const err = await assertRejects(() => hub_download(REPO, WEIGHTS, opts));
    assertStringIncludes(err.message, "checksum mismatch");
    assertEquals(await exists(hub_cache_path(REPO, WEIGHTS, opts)), false);
  });
});

Deno.test("hub_download names repo, file and revision on 404, and HF_TOKEN on 401", async () => {
  await with_hub({ token: "secret" }, async (_srv, opts) => {
    const nf = await assertRejects(() => hub_download(REPO, "nope.bin", opts));
    assertStringIncludes(nf.message, "404");
    assertStringIncludes(nf.message, `"${REPO}"`);
    assertStringIncludes(nf.message, `"nope.bin"`);
    assertStringIncludes(nf.message, `"main"`);
    const rev = await assertRejects(() => hub_download(REPO, WEIGHTS, { ...opts, revision: "v9" }));
    assertStringIncludes(rev.message, `"v9"`);
    await with_env({ HF_TOKEN: undefined }, async () => {
      const denied = await assertRejects(() => hub_download(REPO, WEIGHTS, opts));
      assertStringIncludes(denied.message, "401");
      assertStringIncludes(denied.message, "HF_TOKEN");
      assertStringIncludes(denied.message, `${REPO}/${WEIGHTS}`);
    });
    await with_env({ HF_TOKEN: "secret" }, async () => {
      assertEquals(await Deno.readFile(await hub_download(REPO, WEIGHTS, opts)), await fixture(WEIGHTS));
    });
  });
});

Deno.test("hub_download names the URL when the server cannot be reached", async () => {
  const cache_dir = await Deno.makeTempDir({ prefix: "ngpt_hub_test_" });
  try {
    // Find a free port, then close it so nothing listens there.
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const endpoint = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
    l.close();
    const err = await assertRejects(() =>
      with_env(
        { HF_HUB_OFFLINE: undefined },
        () => hub_download(REPO, WEIGHTS, { cache_dir, endpoint, retries: 1, progress: false }),
      )
    );
    assertStringIncludes(err.message, `${endpoint}/${REPO}/resolve/main/${WEIGHTS}`);
    assertStringIncludes(err.message, `${REPO}/${WEIGHTS}`);
    assertStringIncludes(err.message, "2 attempts");
  } finally {
    await Deno.remove(cache_dir, { recursive: true });
  }
});

Deno.test("HF_HUB_OFFLINE=1 serves cached files and never touches the network", async () => {
  await with_hub({}, async (srv, opts) => {
    await hub_download(REPO, "config.json", opts);
    assertEquals(srv.requests.length, 1);
    await with_env({ HF_HUB_OFFLINE: "1" }, async () => {
      const cached = await hub_download(REPO, "config.json", opts);
      assertEquals(await Deno.readFile(cached), await fixture("config.json"));
      const missing = hub_cache_path(REPO, WEIGHTS, opts);
      const err = await assertRejects(() => hub_download(REPO, WEIGHTS, opts));
      assertStringIncludes(err.message, "not in the cache");
      assertStringIncludes(err.message, missing);
      assertStringIncludes(err.message, "offline");
      await assertRejects(() => hub_snapshot(REPO, opts), "not in the cache");
    });
    assertEquals(srv.requests.length, 1, "offline mode made a request");
  });
});

Deno.test("concurrent hub_download calls for one file download it once", async () => {
  await with_hub({}, async (srv, opts) => {
    const paths = await Promise.all([1, 2, 3].map(() => hub_download(REPO, WEIGHTS, opts)));
    assertEquals(new Set(paths).size, 1);
    assertEquals(srv.requests_for(WEIGHTS).length, 1);
    assertEquals(await Deno.readFile(paths[0]), await fixture(WEIGHTS));
  });
});

Deno.test("hub_download rejects invalid repo ids and file names before any request", async () => {
  await with_hub({}, async (srv, opts) => {
    for (const bad of ["", "a/b/c", "../x", "a--b", "a b"]) {
      await assertRejects(() => hub_download(bad, WEIGHTS, opts), "invalid repo id");
    }
    for (const bad of ["", "../x", "a//b", "/abs", "a\\b"]) {
      await assertRejects(() => hub_download(REPO, bad, opts), "invalid filename");
    }
    await assertRejects(
      () => hub_download(REPO, WEIGHTS, { ...opts, endpoint: "ftp://x" }),
      "invalid endpoint",
    );
    assertEquals(srv.requests.length, 0);
  });
});

Deno.test("default_cache_dir: NGPT_CACHE, then XDG_CACHE_HOME/ngpt, then ~/.cache/ngpt", async () => {
  await with_env({ NGPT_CACHE: "/n", XDG_CACHE_HOME: "/x", HOME: "/h" }, (set) => {
    assertEquals(default_cache_dir(), "/n");
    set("NGPT_CACHE", undefined);
    assertEquals(default_cache_dir(), join("/x", "ngpt"));
    set("XDG_CACHE_HOME", undefined);
    assertEquals(default_cache_dir(), join("/h", ".cache", "ngpt"));
  });
});

Deno.test("the progress bar goes to stderr only and ends with a newline", async () => {
  await with_hub({}, async (_srv, opts) => {
    const module_url = new URL("../src/loaders/hf_hub.ts", import.meta.url).href;
    const code = `import { hub_download } from ${JSON.stringify(module_url)};\n` +
      `await hub_download(${JSON.stringify(REPO)}, ${JSON.stringify(WEIGHTS)}, ` +
      `${JSON.stringify({ ...opts, progress: true })});`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-check", code],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, stderr);
    assertEquals(out.stdout.length, 0, "nothing may go to stdout");
    const size_mb = ((await fixture(WEIGHTS)).length / 1e6).toFixed(1);
    assertStringIncludes(stderr, WEIGHTS);
    assertStringIncludes(stderr, `100.0% ${size_mb}/${size_mb} MB`);
    assertStringIncludes(stderr, "MB/s");
    assert.ok(stderr.endsWith("\n"), `stderr must end with a newline: ${JSON.stringify(stderr)}`);
  });
});
