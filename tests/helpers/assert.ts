/** Small assertion helpers over node:assert (JSR's @std/assert is not reachable here). */
import node_assert from "node:assert/strict";

/** Throws when `cond` is falsy. */
export function assert(cond: unknown, msg?: string): asserts cond {
  node_assert.ok(cond, msg);
}

/** Deep strict equality. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  node_assert.deepStrictEqual(actual, expected, msg);
}

function check_error(e: unknown, cls: new (...a: never[]) => Error, includes?: string): void {
  if (!(e instanceof cls)) {
    throw new Error(`expected ${cls.name}, got ${e instanceof Error ? e.name : typeof e}: ${e}`);
  }
  if (includes && !e.message.includes(includes)) {
    throw new Error(`expected the error message to include ${JSON.stringify(includes)}, got: ${e.message}`);
  }
}

/** Asserts that `fn` throws an instance of `cls` whose message includes `includes`; returns the error. */
export function assertThrows(
  fn: () => unknown,
  cls: new (...a: never[]) => Error = Error,
  includes?: string,
): Error {
  try {
    fn();
  } catch (e) {
    check_error(e, cls, includes);
    return e as Error;
  }
  throw new Error(`expected ${cls.name} to be thrown`);
}

/** Asserts that `fn` rejects with an instance of `cls` whose message includes `includes`; returns the error. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  cls: new (...a: never[]) => Error = Error,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    check_error(e, cls, includes);
    return e as Error;
  }
  throw new Error(`expected ${cls.name} to be rejected`);
}
