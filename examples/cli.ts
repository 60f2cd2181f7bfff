/**
 * What the example CLIs share: reading numeric flags, and what to do with main's result (exit with
 * its code, or print the error's message, one line with no stack since errors name their input, and
 * exit 1).
 * @module
 */

/** Runs `main(Deno.args)` and exits with its code; an error is one line on stderr and exit code 1. */
export async function run_cli(main: (args: string[]) => Promise<number>): Promise<never> {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}

/** A numeric flag's value: undefined when absent; an error naming `--name` unless it is a number (an integer with `int`). */
export function flag_number(name: string, v: string | undefined, int: boolean): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || (int && !Number.isInteger(n))) {
    throw new Error(`--${name} expects ${int ? "an integer" : "a number"}, got "${v}"`);
  }
  return n;
}
