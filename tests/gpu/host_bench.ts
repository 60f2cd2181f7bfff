/**
 * What the host pays per decode launch, piece by piece, on this machine: a graph launch (one
 * kernel node; a WHILE loop of 8 iterations of one kernel), an asynchronous read (copy + event),
 * and waiting on an event that is already done. Each timed over many calls, with the device kept
 * ahead (synchronized every 64 calls, outside the timing).
 *   deno run -A tests/gpu/host_bench.ts
 * @module
 */
import { create_cuda_backend } from "../../src/backend/cuda.ts";

using be = create_cuda_backend({ dtype: "bf16" });
const B = 1,
  lengths = be.alloc(4 * B, "lengths"),
  n_new = be.alloc(4 * B, "n_new"),
  log = be.alloc(4 * 64 * B, "log");
be.write(lengths, new Int32Array(B));
be.write(n_new, new Int32Array(B));
const step = () => be.advance({ lengths, n_new, B });
const loop = { first_row: 0, copies: [{ src: lengths, dst: log, words: B, stride: B }] };
const cases: [string, () => void][] = [
  ["graph launch (1 kernel)", () => be.run_step("one", step)],
  ["graph launch (WHILE loop of 8 x 1 kernel)", () => be.run_loop("loop", 8, step, loop)],
  ["read_async (4 bytes), enqueue only", () => void be.read_async(log, 4)],
  ["read_async (4 bytes) + wait", () => be.read_async(log, 4).wait()],
];
for (const [name, f] of cases) {
  f();
  be.synchronize();
  let total = 0;
  const n = 2048;
  for (let i = 0; i < n; i += 64) {
    const t0 = performance.now();
    for (let j = 0; j < 64; j++) f();
    total += performance.now() - t0;
    be.synchronize();
  }
  console.log(`${name}: ${(total * 1000 / n).toFixed(2)} us a call`);
}
// The engine launches while the device still runs the previous launch: time a loop launch and a
// read behind a busy device (a loop of 60 x 64 kernels enqueued first, untimed).
const big = () => {
  for (let i = 0; i < 64; i++) step();
};
be.run_loop("busy", 60, big, loop);
be.synchronize();
let busy_ms = 0;
const reps = 200;
for (let r = 0; r < reps; r++) {
  be.run_loop("busy", 60, big, loop);
  const t0 = performance.now();
  be.run_loop("loop", 8, step, loop);
  void be.read_async(log, 4);
  busy_ms += performance.now() - t0;
  be.synchronize();
}
console.log(`loop launch + read_async behind a busy device: ${(busy_ms * 1000 / reps).toFixed(2)} us`);
for (const b of [lengths, n_new, log]) be.free(b);
