/**
 * The fuzzer (`deno task fuzz`): runs every target of tests/fuzz/targets.ts, 10,000 cases each by
 * default, and prints per target its cases and time; on a failure, fast-check's report (seed, path,
 * shrunk counterexample), and exits 1 once every target has run.
 *
 *   deno task fuzz [--runs N] [--seed S] [--target NAME]... [--path P]
 *
 * Without `--seed`, the seed is random (and printed); `--seed S --target NAME --path P` replays one
 * reported counterexample.
 * @module
 */
import { parseArgs } from "node:util";
import { failure_report, fc, fuzz_params, slowest, tally, TARGETS } from "./targets.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "10000" },
    seed: { type: "string" },
    target: { type: "string", multiple: true },
    path: { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});

if (values.help) {
  console.log("deno task fuzz [--runs N] [--seed S] [--target NAME]... [--path P]");
  console.log(`targets: ${TARGETS.map((t) => t.name).join(", ")}`);
  Deno.exit(0);
}

const runs = Number(values.runs);
if (!Number.isSafeInteger(runs) || runs < 1) {
  throw new Error(`--runs must be a positive integer, got ${values.runs}`);
}
const seed = values.seed === undefined ? (Math.random() * 2 ** 31) | 0 : Number(values.seed);
if (!Number.isSafeInteger(seed)) throw new Error(`--seed must be an integer, got ${values.seed}`);
const names = values.target ?? TARGETS.map((t) => t.name);
for (const n of names) {
  if (!TARGETS.some((t) => t.name === n)) {
    throw new Error(`unknown --target "${n}": expected one of ${TARGETS.map((t) => t.name).join(", ")}`);
  }
}

console.log(`fuzzing ${names.length} target(s), ${runs} cases each, seed ${seed}`);
const t_all = performance.now();
const failed: string[] = [];
for (const target of TARGETS.filter((t) => names.includes(t.name))) {
  const t0 = performance.now();
  const details = await fc.check(target.property(), fuzz_params(seed, runs, values.path));
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  const verdict = details.failed ? "FAILED" : "ok";
  console.log(
    `${target.name.padEnd(18)} ${String(details.numRuns).padStart(6)} cases ${s.padStart(6)} s  ${verdict}`,
  );
  console.log(`  bound: ${target.bound}; slowest case ${slowest.ms.toFixed(0)} ms`);
  if (tally.size) console.log(`  reached: ${[...tally].sort().map(([k, n]) => `${k} ${n}`).join(", ")}`);
  slowest.ms = 0;
  tally.clear();
  if (!details.failed) continue;
  failed.push(target.name);
  console.log(await failure_report(details));
  console.log(
    `replay: deno task fuzz --target ${target.name} --seed ${details.seed} --path ${details.counterexamplePath}\n`,
  );
}
console.log(`total ${((performance.now() - t_all) / 1000).toFixed(1)} s`);
if (failed.length) {
  console.log(`FAILED: ${failed.join(", ")}`);
  Deno.exit(1);
}
