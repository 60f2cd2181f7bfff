/**
 * The one way to free several resources: every step runs even when some fail; then the first
 * failure is thrown as it is (a NativeError keeps its api and status), with any later failures
 * attached as its `suppressed` list.
 * @module
 */

/** An error thrown by run_all, with the failures of later steps. */
export interface WithSuppressed extends Error {
  suppressed?: unknown[];
}

/** Runs every step in order, then throws the first error (the others in its `suppressed`), if any. */
export function run_all(steps: (() => unknown)[]): void {
  const errors: unknown[] = [];
  for (const step of steps) {
    try {
      step();
    } catch (e) {
      errors.push(e);
    }
  }
  if (errors.length === 0) return;
  const first = (errors[0] instanceof Error ? errors[0] : new Error(String(errors[0]))) as WithSuppressed;
  if (errors.length > 1) first.suppressed = errors.slice(1);
  throw first;
}
