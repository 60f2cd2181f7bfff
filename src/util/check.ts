/**
 * Argument checks with one message style for every layer: what was wrong, named, with the value
 * given. Options objects are checked for unknown keys (a typo such as `max_tokens` for
 * `max_new_tokens` is an error naming the nearest known key, never silently ignored).
 * @module
 */

/** Edit distance between two short strings (insertions, deletions, substitutions). */
export function edit_distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/** The known name nearest to `name`: the fewest edits (ties: the longest common prefix, then the first listed). */
export function nearest(name: string, known: readonly string[]): string {
  const lower = name.toLowerCase();
  const prefix = (k: string) => {
    let i = 0;
    while (i < k.length && i < lower.length && k[i] === lower[i]) i++;
    return i;
  };
  let best = known[0], d_best = Infinity, p_best = -1;
  for (const k of known) {
    const d = edit_distance(lower, k), p = prefix(k);
    if (d < d_best || (d === d_best && p > p_best)) [best, d_best, p_best] = [k, d, p];
  }
  return best;
}

/**
 * Throws a TypeError when `opts` is not a plain object, or names a key `known` lacks: the error
 * names `what`, the key, and the nearest known key. Keys whose value is undefined count too.
 */
export function check_keys(opts: unknown, known: readonly string[], what: string): void {
  if (opts === undefined) return;
  if (opts === null || typeof opts !== "object" || Array.isArray(opts)) {
    throw new TypeError(`${what} must be an object, got ${opts === null ? "null" : typeof opts}`);
  }
  for (const key of Object.keys(opts)) {
    if (!known.includes(key)) {
      throw new TypeError(`${what}: unknown option "${key}" (did you mean "${nearest(key, known)}"?)`);
    }
  }
}

/** Throws a RangeError unless `v` is an integer in [min, max]; `name` is the option's name. */
export function check_int(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new RangeError(`${name} must be an integer ${range}, got ${describe(v)}`);
  }
  return v;
}

/** Throws a RangeError unless `v` is one of `choices`. */
export function check_choice<T extends string>(name: string, v: unknown, choices: readonly T[]): T {
  if (typeof v !== "string" || !(choices as readonly string[]).includes(v)) {
    throw new RangeError(`${name} must be ${choices.map((c) => `"${c}"`).join(" or ")}, got ${describe(v)}`);
  }
  return v as T;
}

/** A value as it reads in an error message. */
export function describe(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "object" && v !== null) {
    try {
      // Big ints as 12n (JSON.stringify throws on them), e.g. in a tuple a pickle gave.
      const json = JSON.stringify(v, (_k, x) => typeof x === "bigint" ? `${x}n` : x);
      return (json ?? Object.prototype.toString.call(v)).replace(/"(-?\d+n)"/g, "$1").slice(0, 80);
    } catch {
      return Object.prototype.toString.call(v);
    }
  }
  return String(v);
}
