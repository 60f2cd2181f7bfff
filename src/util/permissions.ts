/**
 * Deno permission failures, reported as what they are: which flag is missing and what it is for,
 * instead of the failed operation's own message (a missing --allow-ffi used to read as a stale
 * library).
 * @module
 */

/** An operation needed a Deno permission this process does not have. */
export class PermissionError extends Error {
  /** The flag that grants it ("--allow-ffi", "--allow-run", ...). */
  readonly flag: string;
  /** The message reads "permission needed: `what` needs `flag`"; `options.cause` keeps Deno's error. */
  constructor(flag: string, what: string, options?: ErrorOptions) {
    super(`permission needed: ${what} needs ${flag} (run deno with ${flag}, or -A)`, options);
    this.name = "PermissionError";
    this.flag = flag;
  }
}

/** Whether `e` is Deno's error for a missing permission. */
export function is_permission_error(e: unknown): boolean {
  return e instanceof Deno.errors.NotCapable;
}

/**
 * Runs `f`; a missing permission becomes a PermissionError naming `flag` and `what` needed it,
 * with Deno's own error as its cause. Other errors pass through.
 */
export function with_permission<T>(flag: string, what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (is_permission_error(e)) throw new PermissionError(flag, what, { cause: e });
    throw e;
  }
}

/** with_permission for an async `f`. */
export async function with_permission_async<T>(flag: string, what: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (is_permission_error(e)) throw new PermissionError(flag, what, { cause: e });
    throw e;
  }
}
