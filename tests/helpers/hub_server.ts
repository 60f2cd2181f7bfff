/**
 * A local stand-in for the Hugging Face hub, for tests: serves the files of one directory under
 * `/<repo>/resolve/<revision>/<file>` on 127.0.0.1 with ETag = sha256 and Content-Length, honours
 * Range, records every request, and can misbehave on demand (drop a body halfway, send a wrong
 * ETag, ignore Range, require a token, redirect like the real hub).
 * @module
 */

/** How the server behaves. */
export interface HubServerOptions {
  /** Directory whose files are served. */
  files_dir: string;
  /** Repo id served, "owner/name". */
  repo: string;
  /** Revision served. Default "main". */
  revision?: string;
  /** A bare name answered with a relative 307 redirect to `repo` (like "gpt2" -> "openai-community/gpt2"). */
  alias?: string;
  /**
   * Like LFS files on the hub: resolve answers 302 to a second server (another origin) carrying
   * X-Linked-Size and X-Linked-Etag; that server sends the bytes without an ETag.
   */
  lfs?: boolean;
  /** The first GET of each file sends half of the body, then closes the connection. */
  drop_first?: boolean;
  /** ETags (and X-Linked-Etag) are the sha256 of something else. */
  wrong_etag?: boolean;
  /** Answers 200 with the whole file even when a Range is asked for. */
  ignore_range?: boolean;
  /** When set, resolve requests need `Authorization: Bearer <token>`, else 401. */
  token?: string;
}

/** One request the server saw. */
export interface SeenRequest {
  /** "hub" for resolve URLs, "cdn" for the LFS stand-in. */
  server: "hub" | "cdn";
  method: string;
  path: string;
  range: string | null;
  authorization: string | null;
}

interface Served {
  bytes: Uint8Array<ArrayBuffer>;
  sha256: string;
}

async function sha256_hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A running fake hub; close it (or `await using` it) to free its listeners. */
export class HubServer implements AsyncDisposable {
  /** Every request, in order. */
  readonly requests: SeenRequest[] = [];
  /** Base URL to pass as `endpoint`. */
  readonly endpoint: string;
  #opts: HubServerOptions;
  #files: Map<string, Served>;
  #dropped = new Set<string>();
  #abort = new AbortController();
  #hub: Deno.HttpServer<Deno.NetAddr>;
  #cdn: Deno.HttpServer<Deno.NetAddr>;

  private constructor(opts: HubServerOptions, files: Map<string, Served>) {
    this.#opts = opts;
    this.#files = files;
    const listen = { hostname: "127.0.0.1", port: 0, signal: this.#abort.signal, onListen() {} };
    this.#hub = Deno.serve(listen, (req) => this.#handle_hub(req));
    this.#cdn = Deno.serve(listen, (req) => this.#handle_cdn(req));
    this.endpoint = `http://127.0.0.1:${this.#hub.addr.port}`;
  }

  /** Loads the files of `opts.files_dir` and starts listening. */
  static async start(opts: HubServerOptions): Promise<HubServer> {
    const files = new Map<string, Served>();
    for await (const e of Deno.readDir(opts.files_dir)) {
      if (!e.isFile) continue;
      const bytes = await Deno.readFile(`${opts.files_dir}/${e.name}`);
      files.set(e.name, { bytes, sha256: await sha256_hex(bytes) });
    }
    return new HubServer(opts, files);
  }

  /** Requests for `file` (hub and cdn), in order. */
  requests_for(file: string): SeenRequest[] {
    return this.requests.filter((r) => r.path.endsWith(`/${file}`));
  }

  /** Stops both listeners and waits for them to finish. */
  async close(): Promise<void> {
    this.#abort.abort();
    await Promise.all([this.#hub.finished, this.#cdn.finished]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #record(server: "hub" | "cdn", req: Request): string {
    const path = decodeURIComponent(new URL(req.url).pathname);
    this.requests.push({
      server,
      method: req.method,
      path,
      range: req.headers.get("range"),
      authorization: req.headers.get("authorization"),
    });
    return path;
  }

  #etag(f: Served): string {
    return this.#opts.wrong_etag ? "0".repeat(64) : f.sha256;
  }

  #handle_hub(req: Request): Response {
    const path = this.#record("hub", req);
    const o = this.#opts;
    const rev = o.revision ?? "main";
    if (o.alias && path.startsWith(`/${o.alias}/resolve/`)) {
      return new Response(null, {
        status: 307,
        headers: { location: `/${o.repo}${path.slice(o.alias.length + 1)}` },
      });
    }
    const prefix = `/${o.repo}/resolve/${rev}/`;
    const name = path.startsWith(prefix) ? path.slice(prefix.length) : undefined;
    const file = name === undefined ? undefined : this.#files.get(name);
    if (!file || name === undefined) {
      return new Response("Entry not found", { status: 404, headers: { "x-error-code": "EntryNotFound" } });
    }
    if (o.token !== undefined && req.headers.get("authorization") !== `Bearer ${o.token}`) {
      return new Response("Access denied", { status: 401, headers: { "x-error-code": "GatedRepo" } });
    }
    if (o.lfs) {
      return new Response(null, {
        status: 302,
        headers: {
          location: `http://127.0.0.1:${this.#cdn.addr.port}/blobs/${name}`,
          "x-linked-size": String(file.bytes.length),
          "x-linked-etag": `"${this.#etag(file)}"`,
        },
      });
    }
    return this.#send(req, name, file, { etag: `"${this.#etag(file)}"` });
  }

  #handle_cdn(req: Request): Response {
    const path = this.#record("cdn", req);
    const name = path.replace(/^\/blobs\//, "");
    const file = this.#files.get(name);
    if (!file) return new Response("NoSuchKey", { status: 404 });
    return this.#send(req, name, file, {});
  }

  /** The bytes of `file`, honouring Range; the first GET drops halfway when drop_first is on. */
  #send(req: Request, name: string, file: Served, headers: Record<string, string>): Response {
    const size = file.bytes.length;
    let start = 0;
    let status = 200;
    const range = this.#opts.ignore_range ? null : req.headers.get("range");
    if (range) {
      const m = range.match(/^bytes=(\d+)-$/);
      if (!m) return new Response("bad range", { status: 400 });
      start = Number(m[1]);
      if (start >= size) {
        return new Response(null, { status: 416, headers: { "content-range": `bytes */${size}` } });
      }
      status = 206;
      headers["content-range"] = `bytes ${start}-${size - 1}/${size}`;
    }
    const body = file.bytes.subarray(start);
    headers["content-length"] = String(body.length);
    if (!this.#opts.drop_first || this.#dropped.has(name)) return new Response(body, { status, headers });
    this.#dropped.add(name);
    // Send half, wait so it reaches the client, then end short of Content-Length: the connection drops.
    const half = body.subarray(0, body.length >> 1);
    const stream = new ReadableStream<Uint8Array>({
      async start(c) {
        c.enqueue(half);
        await new Promise((r) => setTimeout(r, 50));
        c.close();
      },
    });
    return new Response(stream, { status, headers });
  }
}
