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
