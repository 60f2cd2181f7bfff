/**
 * The process environment, read the same way everywhere: variables (unset, empty and unreadable
 * alike are undefined, so no code needs --allow-env to run with defaults) and the cache root.
 * @module
 */

/** An environment variable, or undefined when it is unset, empty or not readable (no permission). */
export function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/**
 * $name as an integer in min..max, or undefined when unset or empty; anything else throws an error
 * naming the variable and what it held.
 */
export function env_int(name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const v = env(name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer in ${min}..${max}`;
    throw new Error(`${name} must be ${range}, got "${v}"`);
  }
  return n;
}

/**
 * The cache root for downloads, compiled kernels and native builds: `explicit`, else $NGPT_CACHE,
 * else $XDG_CACHE_HOME/ngpt, else ~/.cache/ngpt; null when none can be determined.
 */
export function cache_root(explicit?: string): string | null {
  if (explicit) return explicit;
  const c = env("NGPT_CACHE");
  if (c) return c;
  const x = env("XDG_CACHE_HOME");
  if (x) return `${x}/ngpt`;
  const home = env("HOME") ?? env("USERPROFILE");
  return home ? `${home}/.cache/ngpt` : null;
}
