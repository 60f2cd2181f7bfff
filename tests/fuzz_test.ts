/**
 * The CI slice of the fuzzer: every target of tests/fuzz/targets.ts for 500 cases from a fixed seed
 * (42, or NGPT_TEST_SEED), so a run is deterministic; `deno task fuzz` runs the full 10,000.
 */
import { failure_report, fc, fuzz_params, TARGETS } from "./fuzz/targets.ts";

const SEED = Number(Deno.env.get("NGPT_TEST_SEED") ?? 42);
const RUNS = 500;

for (const target of TARGETS) {
  Deno.test(`fuzz: ${target.name} (${RUNS} cases, seed ${SEED})`, async () => {
    if (!Number.isSafeInteger(SEED)) throw new Error(`NGPT_TEST_SEED must be an integer, got ${SEED}`);
    const details = await fc.check(target.property(), fuzz_params(SEED, RUNS));
    if (details.failed) {
      throw new Error(
        `fuzz target ${target.name} failed with seed ${SEED} (rerun: NGPT_TEST_SEED=${SEED}, or ` +
          `deno task fuzz --target ${target.name} --seed ${details.seed} --path ${details.counterexamplePath})\n` +
          (await failure_report(details)),
      );
    }
  });
}
