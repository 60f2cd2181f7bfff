// CUDA backend behaviour: a small transformer step (every op: a packed prefill over the paged KV
// cache, then decode steps) gives identical tokens and logits with and without graphs; read_async; a failed capture cleans up; host transfers are refused
// inside a step; out-of-memory and double frees give clear errors; dispose returns all memory.
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import type { Buf, DType } from "../../src/backend/backend.ts";
import { sub_buf } from "../../src/backend/buf.ts";
import { create_cuda_backend, type CudaBackend } from "../../src/backend/cuda.ts";
import { backend, gpu_suite, randn, read_i32, upload, upload_i32, upload_raw_f32 } from "./gpu_helpers.ts";

const V = 97, C = 128, H = 2, L = 2, MAX_T = 160, B = 3, BS = 16, MB = MAX_T / BS;
/** The prompts' lengths: packed into 16 prefill rows. */
const PROMPTS = [8, 3, 5], ROWS = 16;

interface Tiny {
  be: CudaBackend;
  w: Record<string, Buf>;
  ws: Record<string, Buf>;
  st: Record<string, Buf>;
  cache: { k: Buf; v: Buf }[];
}

function tiny(be: CudaBackend, rows: number): Tiny {
  const es = be.dtype === "f32" ? 4 : 2;
  const w: Record<string, Buf> = {};
  let seed = 1;
  const put = (name: string, n: number, scale = 0.1, shift = 0) => {
    const x = randn(n, seed++, scale);
    if (shift) { for (let i = 0; i < n; i++) x[i] += shift; }
    w[name] = upload(be, x, name).buf;
  };
  put("wte", V * C, 0.5);
  put("wpe", MAX_T * C, 0.1);
  for (let l = 0; l < L; l++) {
    put(`ln1_w${l}`, C, 0.1, 1);
    put(`ln1_b${l}`, C);
    put(`attn_w${l}`, 3 * C * C, 0.08);
    put(`attn_b${l}`, 3 * C);
    put(`proj_w${l}`, C * C, 0.08);
    put(`proj_b${l}`, C);
    put(`ln2_w${l}`, C, 0.1, 1);
    put(`ln2_b${l}`, C);
    put(`fc_w${l}`, 4 * C * C, 0.08);
    put(`fc_b${l}`, 4 * C);
    put(`fc2_w${l}`, C * 4 * C, 0.04);
    put(`fc2_b${l}`, C);
  }
  put("lnf_w", C, 0.1, 1);
  put("lnf_b", C);
  const a = (n: number, label: string) => be.alloc(n, label);
  const ws = {
    x: a(rows * C * es, "x"),
    h: a(rows * C * es, "h"),
    qkv: a(rows * 3 * C * es, "qkv"),
    att: a(rows * C * es, "att"),
    fc: a(rows * 4 * C * es, "fc"),
    last: a(B * C * es, "last"),
    last_ln: a(B * C * es, "last_ln"),
    logits: a(B * V * 4, "logits"),
    tokens: a(rows * 4, "tokens"),
  };
  // Sequence b holds blocks b*MB .. b*MB+MB-1 of the pools, in reverse order.
  const table = Array.from({ length: B * MB }, (_, i) => Math.floor(i / MB) * MB + (MB - 1 - (i % MB)));
  const starts = [0, ...PROMPTS.map((_, b) => PROMPTS.slice(0, b + 1).reduce((x, y) => x + y, 0))];
  const row_seq = Array.from(
    { length: rows },
    (_, r) => starts.findIndex((s, b) => b < B && r >= s && r < starts[b + 1]),
  );
  const st = {
    lengths: upload_i32(be, [0, 0, 0], "lengths"),
    n_new: upload_i32(be, [0, 0, 0], "n_new"),
    prompt_n: upload_i32(be, PROMPTS, "prompt n_new"),
    seq_start: upload_i32(be, starts, "seq_start"),
    row_seq: upload_i32(be, row_seq, "row_seq"),
    positions: upload_i32(be, row_seq.map((b, r) => b < 0 ? 0 : r - starts[b]), "positions"),
    last_row: upload_i32(be, PROMPTS.map((n, b) => starts[b] + n - 1), "last rows"),
    table: upload_i32(be, table, "block table"),
    temperature: upload_raw_f32(be, [0, 0.9, 1.2], "temperature"),
    top_k: upload_i32(be, [0, 20, 0], "top_k"),
    top_p: upload_raw_f32(be, [1, 1, 0.9], "top_p"),
    seed: upload_i32(be, [1, 2, 3, 4, 5, 6], "seed"),
    next: upload_i32(be, [0, 0, 0], "next token"),
  };
  const cache = Array.from({ length: L }, (_, l) => ({
    k: a(B * MAX_T * C * es, `k${l}`),
    v: a(B * MAX_T * C * es, `v${l}`),
  }));
  return { be, w, ws, st, cache };
}

/**
 * One transformer step over every op (nanoGPT-style erf GELU), sampling into st.next: the packed
 * prefill of the three prompts, or a decode step of one token per sequence.
 */
function forward(m: Tiny, prefill: boolean): void {
  const { be, w, ws, st } = m, rows = prefill ? ROWS : B, eps = 1e-5;
  const layout = { num_blocks: B * MB, block_size: BS, n_head: H, head_dim: C / H, max_blocks: MB };
  be.embed({
    out: ws.x,
    tokens: prefill ? ws.tokens : st.next,
    positions: prefill ? st.positions : st.lengths,
    wte: w.wte,
    wpe: w.wpe,
    rows,
    C,
    max_pos: MAX_T,
  });
  for (let l = 0; l < L; l++) {
    be.layernorm({ out: ws.h, x: ws.x, weight: w[`ln1_w${l}`], bias: w[`ln1_b${l}`], rows, C, eps });
    be.matmul({
      out: ws.qkv,
      x: ws.h,
      w: w[`attn_w${l}`],
      bias: w[`attn_b${l}`],
      M: rows,
      N: 3 * C,
      K: C,
      act: "none",
      accumulate: false,
    });
    be.attention({
      out: ws.att,
      qkv: ws.qkv,
      cache: m.cache[l],
      layout,
      block_table: st.table,
      lengths: st.lengths,
      B,
      ...(prefill
        ? { seq_start: st.seq_start, row_seq: st.row_seq, positions: st.positions, rows, max_seq_rows: 8 }
        : { n_new: st.n_new, max_len: MAX_T }),
    });
    be.matmul({
      out: ws.x,
      x: ws.att,
      w: w[`proj_w${l}`],
      bias: w[`proj_b${l}`],
      M: rows,
      N: C,
      K: C,
      act: "none",
      accumulate: true,
    });
    be.layernorm({ out: ws.h, x: ws.x, weight: w[`ln2_w${l}`], bias: w[`ln2_b${l}`], rows, C, eps });
    be.matmul({
      out: ws.fc,
      x: ws.h,
      w: w[`fc_w${l}`],
      bias: w[`fc_b${l}`],
      M: rows,
      N: 4 * C,
      K: C,
      act: "gelu_erf",
      accumulate: false,
    });
    be.matmul({
      out: ws.x,
      x: ws.fc,
      w: w[`fc2_w${l}`],
      bias: w[`fc2_b${l}`],
      M: rows,
      N: C,
      K: 4 * C,
      act: "none",
      accumulate: true,
    });
  }
  let last = ws.x;
  if (prefill) {
    be.gather_rows({ out: ws.last, x: ws.x, idx: st.last_row, n: B, C });
    last = ws.last;
  }
  be.layernorm({ out: ws.last_ln, x: last, weight: w.lnf_w, bias: w.lnf_b, rows: B, C, eps });
  be.matmul({
    out: ws.logits,
    x: ws.last_ln,
    w: w.wte,
    bias: null,
    M: B,
    N: V,
    K: C,
    act: "none",
    accumulate: false,
    out_f32: true,
  });
  const n_new = prefill ? st.prompt_n : st.n_new;
  be.sample({
    tokens_out: st.next,
    logits: ws.logits,
    lengths: st.lengths,
    n_new,
    temperature: st.temperature,
    top_k: st.top_k,
    top_p: st.top_p,
    seed: st.seed,
    B,
    V,
  });
  be.advance({ lengths: st.lengths, n_new, B });
}

/** The packed prefill, then decode steps; returns each step's tokens and logits. */
function generate(be: CudaBackend, steps: number): { tokens: number[][]; logits: Float32Array[] } {
  const m = tiny(be, ROWS);
  const prompt = Int32Array.from({ length: ROWS }, (_, i) => (i * 37) % V);
  be.write(m.ws.tokens, prompt);
  be.run_step("prefill", () => forward(m, true));
  const tokens: number[][] = [], logits: Float32Array[] = [];
  const take = () => {
    const pending = be.read_async(m.st.next, B * 4);
    const lg = new Float32Array(B * V);
    be.read(m.ws.logits, lg);
    assert(pending.done(), "read_async not done after a later read");
    tokens.push(Array.from(new Int32Array(pending.wait().buffer)));
    logits.push(lg);
  };
  take();
  be.write(m.st.n_new, Int32Array.from([1, 1, 0]));
  for (let s = 0; s < steps; s++) {
    be.run_step("decode", () => forward(m, false));
    take();
  }
  return { tokens, logits };
}

function workload(be: CudaBackend): void {
  generate(be, 3);
  const pend = Array.from({ length: 12 }, (_, i) => {
    const b = upload_i32(be, [i, i * 2], `r${i}`);
    return { i, p: be.read_async(b, 8) };
  });
  for (const { i, p } of pend) assertEquals(Array.from(new Int32Array(p.wait().buffer)), [i, i * 2]);
}

gpu_suite("backend_test", () => {
  for (const dtype of ["f32", "bf16"] as DType[]) {
    Deno.test(`cuda step (${dtype}): graphs and no graphs give identical tokens and logits`, () => {
      const runs = [true, false].map((graphs) => {
        using be = backend(dtype, graphs);
        be.autotune = false; // timing picks algorithms; this compares launch paths on the same ones
        const r = generate(be, 12);
        assertEquals(be.graph_count(), graphs ? 2 : 0);
        return r;
      });
      assertEquals(runs[0].tokens, runs[1].tokens);
      runs[0].logits.forEach((lg, i) => {
        assert(
          lg.every((x, j) => x === runs[1].logits[i][j]),
          `step ${i}: logits differ between graphs and no graphs`,
        );
        assert(lg.slice(0, V).every(Number.isFinite), `step ${i}: non-finite logits`);
      });
      // Sequence 2 is idle after the prefill: its token stays the prefill's.
      for (const t of runs[0].tokens) assertEquals(t[2], runs[0].tokens[0][2]);
      // Greedy sequence 0 follows the argmax of its logits.
      runs[0].tokens.forEach((t, i) => {
        const row = runs[0].logits[i].subarray(0, V);
        assertEquals(t[0], row.indexOf(Math.max(...row)), `step ${i}: greedy token is not the argmax`);
      });
    });
  }

  Deno.test("cuda kernels: compiled once into <cache>/kernels/*.cubin, reused by the next backend", () => {
    const dir = Deno.makeTempDirSync({ prefix: "ngpt-cache-" });
    try {
      const run = () => {
        using be = create_cuda_backend({ dtype: "bf16", cache_dir: dir });
        const lengths = upload_i32(be, [1, 2], "lengths"), n_new = upload_i32(be, [3, 4], "n_new");
        be.advance({ lengths, n_new, B: 2 });
        return Array.from(read_i32(be, lengths, 2));
      };
      assertEquals(run(), [4, 6]);
      const files = [...Deno.readDirSync(`${dir}/kernels`)].map((e) => e.name);
      assert(files.length === 1 && /^[0-9a-f]{64}\.cubin$/.test(files[0]), `cache holds ${files}`);
      const mtime = Deno.statSync(`${dir}/kernels/${files[0]}`).mtime;
      assertEquals(run(), [4, 6]);
      assertEquals(Deno.statSync(`${dir}/kernels/${files[0]}`).mtime, mtime);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });

  Deno.test("cuda read_async: many reads in flight, each sees its own data", () => {
    using be = backend("f32");
    workload(be);
  });

  Deno.test("cuda run_step: a failing record leaves no graph and no capture behind", () => {
    using be = backend("f32", true);
    const lengths = upload_i32(be, [1, 2], "lengths"), n_new = upload_i32(be, [1, 1], "n_new");
    const adv = () => be.advance({ lengths, n_new, B: 2 });
    assertThrows(
      () =>
        be.run_step("bad dry run", () => {
          adv();
          throw new Error("boom in the dry run");
        }),
      Error,
      "boom in the dry run",
    );
    let calls = 0;
    assertThrows(
      () =>
        be.run_step("bad capture", () => {
          adv();
          if (++calls === 2) throw new Error("boom during capture");
        }),
      Error,
      "boom during capture",
    );
    assertThrows(
      () => be.run_step("bad op", () => be.advance({ lengths, n_new, B: 1000 })),
      Error,
      "lengths",
    );
    assertEquals(be.graph_count(), 0);
    assertThrows(() => be.run_step("host op", () => be.write(lengths, new Int32Array(2))), Error, "run_step");
    assertThrows(() => be.run_step("read", () => be.read(lengths, new Int32Array(2))), Error, "run_step");
    // The stream is usable: nothing ran, then one good step runs once per launch.
    assertEquals(Array.from(read_i32(be, lengths, 2)), [1, 2]);
    be.run_step("good", adv);
    be.run_step("good", adv);
    assertEquals(Array.from(read_i32(be, lengths, 2)), [3, 4]);
    assertEquals(be.graph_count(), 1);
    be.reset_steps();
    assertEquals(be.graph_count(), 0);
    be.run_step("good", adv);
    assertEquals(Array.from(read_i32(be, lengths, 2)), [4, 5]);
  });

  Deno.test("cuda alloc: out of memory is a clear error and leaves nothing allocated", () => {
    using be = backend("f32");
    const keep = be.alloc(4096, "kept");
    const before = be.allocated_bytes(), free_before = be.mem_info().free_bytes;
    const huge = be.mem_info().total_bytes * 2;
    const e = assertThrows(() => be.alloc(huge, "huge activations"), Error, "huge activations");
    assert(/out of device memory/.test(e.message) && e.message.includes(String(huge)), e.message);
    assert(e.message.includes("free of"), e.message);
    assertEquals(be.allocated_bytes(), before);
    // Nothing was retained (the driver may even release some of its own memory on the way).
    const free_after = be.mem_info().free_bytes;
    assert(free_after >= free_before, `free device memory fell from ${free_before} to ${free_after}`);
    const ok = be.alloc(1 << 20, "after oom");
    be.free(ok);
    be.free(keep);
    assertThrows(() => be.free(keep), Error, "kept");
    const big = be.alloc(1024, "parent");
    assertThrows(() => be.free(sub_buf(big, 0, 512)), Error, "not a live allocation");
    be.free(big);
    assertEquals(be.allocated_bytes(), 0);
  });

  Deno.test("cuda dispose: device memory returns to its starting value, no graphs left", () => {
    using keeper = backend("f32"); // holds the primary context, so memory readings stay comparable
    const warm = backend("bf16");
    workload(warm);
    warm.dispose();
    const start = keeper.mem_info().free_bytes;
    const be = backend("bf16");
    workload(be);
    assert(be.graph_count() > 0 && be.allocated_bytes() > 0);
    be.alloc(3 << 20, "leaked on purpose"); // dispose frees live buffers too
    be.dispose();
    assertEquals(be.graph_count(), 0);
    assertEquals(be.allocated_bytes(), 0);
    const end = keeper.mem_info().free_bytes;
    assertEquals(end, start, `free device memory ${end} after dispose, ${start} before`);
    assertThrows(() => be.alloc(16, "after dispose"), Error, "disposed");
  });
});
