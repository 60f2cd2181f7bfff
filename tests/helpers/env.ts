/**
 * Tests that change environment variables.
 * @module
 */

/** Sets an environment variable, or unsets it for undefined. */
function put(name: string, value: string | undefined): void {
  if (value === undefined) Deno.env.delete(name);
  else Deno.env.set(name, value);
}

/**
 * Runs `fn` with the environment variables `vars` set (undefined: unset), then restores each as it was,
 * whatever `fn` did or threw. Inside `fn`, `set` changes one of them (only those named in `vars`, so
 * every change is restored).
 */
export async function with_env(
  vars: Record<string, string | undefined>,
  fn: (set: (name: string, value: string | undefined) => void) => unknown,
): Promise<void> {
  const saved = Object.keys(vars).map((k) => [k, Deno.env.get(k)] as const);
  const set = (name: string, value: string | undefined) => {
    if (!(name in vars)) throw new Error(`with_env: ${name} is not among the variables it restores`);
    put(name, value);
  };
  try {
    for (const [k, v] of Object.entries(vars)) put(k, v);
    await fn(set);
  } finally {
    for (const [k, v] of saved) put(k, v);
  }
}
