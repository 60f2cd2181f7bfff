/**
 * The switch for CUDA paths whose kernels compile (CI compiles every kernel) but have not yet run
 * on a GPU: 8-bit weights and the 8-bit KV cache, as of 2026-12-02. Until a GPU run checks them
 * against the CPU backend (tests/gpu/int8_test.ts), asking for them on CUDA is an error unless
 * NGPT_UNTESTED_8BIT=1 is set.
 * @module
 */

import { env } from "./env.ts";

/** Throws, naming `what`, unless NGPT_UNTESTED_8BIT=1. */
export function check_untested_8bit(what: string): void {
  if (env("NGPT_UNTESTED_8BIT") !== "1") {
    throw new Error(
      `${what} on CUDA: its kernels compile but have not run on a GPU yet; set NGPT_UNTESTED_8BIT=1 to run them anyway`,
    );
  }
}
