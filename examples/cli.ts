/**
 * What every example CLI does with its result: exit with main's code, or print the error's message
 * (one line, no stack: errors name their input) and exit 1.
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
