/**
 * Micro-benchmark of the decode attention alone (attention_decode, and attention_combine when keys
 * are split) as a decode step runs it: B sequences of H heads, every one at T cached positions
 * (the new token at position T), one launch per layer over that layer's own pools (planned for the
 * bound the engine gives a launch of 8 steps from T), the layers'
 * launches in one CUDA graph, so the pools (far past the 50 MB L2) come from memory. Prints one
 * line per (T, KV dtype) with the time a launch and the rate over the bytes a launch must read
 * (K and V rows, and the int8 cache's row scales).
 *
 *   deno run -A tests/gpu/attention_bench.ts [--B 256] [--H 12] [--D 64] [--T 192,448] [--kv dtype,int8]
 *     [--layers 12] [--json out.json]
 * @module
 */
import { parseArgs } from "node:util";
import { create_cuda_backend } from "../../src/backend/cuda.ts";
import type { AttentionArgs, Buf } from "../../src/backend/backend.ts";
import { length_bucket } from "../../src/engine/buckets.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    B: { type: "string", default: "256" },
    H: { type: "string", default: "12" },
    D: { type: "string", default: "64" },
    T: { type: "string", default: "192,448" },
    kv: { type: "string", default: "dtype,int8" },
    layers: { type: "string", default: "12" },
    json: { type: "string" },
  },
});
const B = Number(values.B), H = Number(values.H), D = Number(values.D), L = Number(values.layers);
const BLOCK_SIZE = 16, ITERS = 20, C = H * D;

using be = create_cuda_backend({ dtype: "bf16" });
console.log(`${be.device_name}, bf16 activations, B ${B}, H ${H}, D ${D}, ${L} layers a graph`);
console.log("T      kv     us/launch  GB/launch  TB/s");

/** Fills `buf` (`bytes` long) with a repeated chunk of small random bf16 values (or int8 bytes). */
function fill(buf: Buf, bytes: number, seed: number): void {
  const chunk = new Uint16Array(1 << 20);
  let a = seed >>> 0;
  for (let i = 0; i < chunk.length; i++) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    chunk[i] = (a >>> 16) % 2 ? 0x3dcc - (a & 0x3ff) : 0xbdcc - (a & 0x3ff); // about +-0.1, or int8 bytes
  }
  for (let off = 0; off < bytes; off += chunk.byteLength) {
    const n = Math.min(chunk.byteLength, bytes - off);
    be.write(buf, new Uint8Array(chunk.buffer, 0, n), off);
  }
}

const rows: Record<string, unknown>[] = [];
for (const T of values.T.split(",").map(Number)) {
  for (const kv of values.kv.split(",")) {
    if (kv !== "dtype" && kv !== "int8") throw new Error(`--kv takes dtype and int8, got "${kv}"`);
    const kv8 = kv === "int8", es = kv8 ? 1 : 2;
    // The engine's bound for a launch of 8 steps from T (engine.ts: length_bucket of its end), which
    // picks the plan (warps per head) as in a real step; each table row covers it, its entries past
    // the T + 1 positions a sequence holds left at block 0.
    const max_len = length_bucket(T + 8, 1024), max_blocks = Math.ceil(max_len / BLOCK_SIZE);
    const used = Math.ceil((T + 1) / BLOCK_SIZE), num_blocks = B * used;
    const pool_bytes = num_blocks * H * BLOCK_SIZE * D * es, scale_bytes = num_blocks * H * BLOCK_SIZE * 4;
    // Each sequence's blocks, shuffled across the pool (as a long-running cache holds them).
    const ids = Array.from({ length: num_blocks }, (_, i) => i);
    let r = 99991;
    for (let i = ids.length - 1; i > 0; i--) {
      r = (Math.imul(r, 1664525) + 1013904223) >>> 0;
      const j = r % (i + 1);
      [ids[i], ids[j]] = [ids[j], ids[i]];
    }
    const owned: Buf[] = [];
    const alloc = (bytes: number, label: string) => {
      const b = be.alloc(bytes, label);
      owned.push(b);
      return b;
    };
    const table_rows = new Int32Array(B * max_blocks);
    for (let b = 0; b < B; b++) table_rows.set(ids.slice(b * used, (b + 1) * used), b * max_blocks);
    const table = alloc(table_rows.byteLength, "block table");
    be.write(table, table_rows);
    const lengths = alloc(B * 4, "lengths"), n_new = alloc(B * 4, "n_new");
    be.write(lengths, new Int32Array(B).fill(T));
    be.write(n_new, new Int32Array(B).fill(1));
    const qkv = alloc(B * 3 * C * 2, "qkv"), out = alloc(B * C * 2, "out");
    fill(qkv, B * 3 * C * 2, 7);
    const layers = Array.from({ length: L }, (_, l) => {
      const k = alloc(pool_bytes, `k pool ${l}`), v = alloc(pool_bytes, `v pool ${l}`);
      fill(k, pool_bytes, 11 + l);
      fill(v, pool_bytes, 13 + l);
      if (!kv8) return { k, v };
      const k_scale = alloc(scale_bytes, `k scales ${l}`), v_scale = alloc(scale_bytes, `v scales ${l}`);
      const s = new Float32Array(scale_bytes / 4).fill(1 / 128);
      be.write(k_scale, s);
      be.write(v_scale, s);
      return { k, v, k_scale, v_scale };
    });
    const args = (cache: AttentionArgs["cache"]): AttentionArgs => ({
      out,
      qkv,
      cache,
      layout: { num_blocks, block_size: BLOCK_SIZE, n_head: H, head_dim: D, max_blocks },
      block_table: table,
      lengths,
      B,
      n_new,
      max_len,
    });
    const key = `attention ${T} ${kv}`;
    const record = () => {
      for (const c of layers) be.attention(args(c));
    };
    be.run_step(key, record);
    be.synchronize();
    const t0 = performance.now();
    for (let i = 0; i < ITERS; i++) be.run_step(key, record);
    be.synchronize();
    const us = (performance.now() - t0) * 1e3 / (ITERS * L);
    const bytes = B * H * (T + 1) * (2 * D * es + (kv8 ? 8 : 0));
    console.log(
      `${String(T).padEnd(6)} ${kv.padEnd(6)} ${us.toFixed(2).padStart(9)}  ${
        (bytes / 1e9).toFixed(4).padStart(9)
      }  ${(bytes / (us * 1e6)).toFixed(2)}`,
    );
    rows.push({ B, H, D, T, kv, us_per_launch: us, bytes_per_launch: bytes, tb_s: bytes / (us * 1e6) });
    be.reset_steps();
    for (const b of owned) be.free(b);
  }
}
if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify(rows, null, 1));
