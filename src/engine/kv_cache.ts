/**
 * The paged KV cache's bookkeeping on the host: which of the pool's fixed-size blocks each
 * sequence holds, reference counts, and the prefix cache.
 *
 * A full block of prompt tokens is keyed by a hash of its tokens chained with its parent block's
 * key, so two requests that share a prompt prefix map to the same blocks and the second prefills
 * only the rest. Keys are checked on lookup against the block's own tokens and parent key (a hash
 * collision cannot return another prompt's cache). A cached block that no sequence holds stays
 * readable until the pool needs it: free blocks are handed out first, then cached ones, least
 * recently used first.
 * @module
 */

/**
 * The keys of the full blocks of `tokens` (a prompt), in order: block i's key hashes every token
 * of blocks 0..i (two 32-bit multiplicative lanes, carried from block to block; 4 UTF-16 units).
 * One pass over the tokens: hashing each block's parent key again and writing hex took 0.12 ms
 * per 800-token prompt on a 2-core machine, a third of the time of 256 requests sharing a prefix.
 */
export function prefix_keys(tokens: readonly number[], block_size: number): string[] {
  const keys: string[] = [];
  let h1 = 0x811c9dc5, h2 = 0x9747b28c;
  for (let i = 0; i + block_size <= tokens.length; i += block_size) {
    for (let j = i; j < i + block_size; j++) {
      const t = tokens[j] | 0;
      h1 = Math.imul(h1 ^ t, 0x01000193);
      h1 ^= h1 >>> 15;
      h2 = Math.imul(h2 ^ t, 0x5bd1e995);
      h2 ^= h2 >>> 13;
    }
    h1 = Math.imul(h1 ^ (h1 >>> 16), 0x85ebca6b) ^ (i + block_size);
    h2 = Math.imul(h2 ^ (h2 >>> 16), 0xc2b2ae35);
    keys.push(String.fromCharCode(h1 & 0xffff, h1 >>> 16, h2 & 0xffff, h2 >>> 16));
  }
  return keys;
}

/** Whether `block` equals `tokens` from `at` on (a plain loop: Array.some's callback was the lookup's cost). */
function same_tokens(block: readonly number[], tokens: readonly number[], at: number): boolean {
  for (let j = 0; j < block.length; j++) if (block[j] !== tokens[at + j]) return false;
  return true;
}

/**
 * Block ids in least-recently-used order, as a doubly linked list over arrays: O(1) to append, to
 * remove any id and to take the oldest. (A Map used as a queue is quadratic: V8 leaves a hole for
 * each key deleted from its front and keys().next() walks them; 60,000 evictions from a full Map
 * took 0.96 s on a 2-core CI machine, and a gpt2-xl pool on an H200, about 25,000 blocks, evicts
 * tens of thousands in one serving bench.)
 */
export class LruList {
  #prev: Int32Array;
  #next: Int32Array;
  #in: Uint8Array;
  /** The sentinel: #next[head] is the oldest id, #prev[head] the newest. */
  #head: number;
  /** Ids in the list. */
  size = 0;

  constructor(capacity: number) {
    this.#prev = new Int32Array(capacity + 1);
    this.#next = new Int32Array(capacity + 1);
    this.#in = new Uint8Array(capacity);
    this.#head = capacity;
    this.#prev[capacity] = this.#next[capacity] = capacity;
  }

  /** Whether `id` is in the list. */
  has(id: number): boolean {
    return this.#in[id] === 1;
  }

  /** Appends `id` as the most recently used. */
  push(id: number): void {
    if (this.#in[id]) throw new Error(`internal: block ${id} is already in the LRU list`);
    const h = this.#head, last = this.#prev[h];
    this.#next[last] = id;
    this.#prev[id] = last;
    this.#next[id] = h;
    this.#prev[h] = id;
    this.#in[id] = 1;
    this.size++;
  }

  /** Removes `id`; false when it was not in the list. */
  delete(id: number): boolean {
    if (!this.#in[id]) return false;
    const p = this.#prev[id], n = this.#next[id];
    this.#next[p] = n;
    this.#prev[n] = p;
    this.#in[id] = 0;
    this.size--;
    return true;
  }

  /** Removes and returns the least recently used id, or undefined when empty. */
  shift(): number | undefined {
    if (this.size === 0) return undefined;
    const id = this.#next[this.#head];
    this.delete(id);
    return id;
  }
}

interface CachedBlock {
  key: string;
  parent: string;
  tokens: number[];
}

/** Counters of the prefix cache. */
export interface PrefixCacheStats {
  /** Prompt tokens looked up (full blocks only). */
  queried_tokens: number;
  /** Of those, tokens found cached. */
  hit_tokens: number;
}

/** Blocks of one KV pool: allocation, sharing and the prefix cache. */
export class BlockPool {
  /** Blocks in the pool. */
  readonly num_blocks: number;
  /** Positions per block. */
  readonly block_size: number;
  /** Prefix cache counters. */
  readonly stats: PrefixCacheStats = { queried_tokens: 0, hit_tokens: 0 };
  #ref: Int32Array;
  /** Free blocks not in the cache (a stack: the lowest ids come out first). */
  #free: number[];
  /** Cached blocks no sequence holds, least recently used first. */
  #evictable: LruList;
  #cached: (CachedBlock | null)[];
  #by_key = new Map<string, number>();
  /** Whether the prefix cache is used (off: every block is private). */
  readonly prefix_caching: boolean;

  /** A pool of `num_blocks` free blocks of `block_size` positions; prefix caching is on by default. */
  constructor(num_blocks: number, block_size: number, opts: { prefix_caching?: boolean } = {}) {
    if (
      !(Number.isInteger(num_blocks) && num_blocks >= 1 && Number.isInteger(block_size) && block_size >= 1)
    ) {
      throw new RangeError(`BlockPool: ${num_blocks} blocks of ${block_size} positions is not a pool`);
    }
    this.num_blocks = num_blocks;
    this.block_size = block_size;
    this.prefix_caching = opts.prefix_caching ?? true;
    this.#ref = new Int32Array(num_blocks);
    this.#free = Array.from({ length: num_blocks }, (_, i) => num_blocks - 1 - i);
    this.#cached = new Array(num_blocks).fill(null);
    this.#evictable = new LruList(num_blocks);
  }

  /** Blocks that can be handed out now: free ones and cached ones no sequence holds. */
  get available(): number {
    return this.#free.length + this.#evictable.size;
  }

  /** Blocks some sequence holds. */
  get held(): number {
    return this.num_blocks - this.available;
  }

  /** Blocks in the prefix cache (held or not). */
  get cached(): number {
    return this.#by_key.size;
  }

  /** A fresh block (reference count 1), evicting the least recently used cached block if need be; null when none is left. */
  allocate(): number | null {
    let id = this.#free.pop();
    if (id === undefined) {
      id = this.#evictable.shift();
      if (id === undefined) return null;
      this.#uncache(id);
    }
    this.#ref[id] = 1;
    return id;
  }

  /** `n` fresh blocks, or null (and nothing taken) when fewer are available. */
  allocate_n(n: number): number[] | null {
    if (n > this.available) return null;
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(this.allocate()!);
    return out;
  }

  /** Drops one reference; at zero the block becomes evictable (cached) or free. */
  release(id: number): void {
    if (!(this.#ref[id] > 0)) {
      throw new Error(`internal: block ${id} released with ${this.#ref[id]} references`);
    }
    if (--this.#ref[id] > 0) return;
    if (this.#cached[id]) this.#evictable.push(id);
    else this.#free.push(id);
  }

  /** Releases every block of a list. */
  release_all(ids: readonly number[]): void {
    for (const id of ids) this.release(id);
  }

  /** References of a block (for tests and checks). */
  refs(id: number): number {
    return this.#ref[id];
  }

  /**
   * The cached blocks of the longest prefix of `tokens` (whose block keys are `keys`) whose full
   * blocks are cached, at most `max_blocks` of them, each now held (one more reference).
   */
  lookup(tokens: readonly number[], keys: readonly string[], max_blocks: number): number[] {
    if (!this.prefix_caching) return [];
    const bs = this.block_size, out: number[] = [];
    for (let i = 0; i < Math.min(keys.length, max_blocks); i++) {
      const id = this.#by_key.get(keys[i]);
      const c = id === undefined ? null : this.#cached[id];
      const parent = i === 0 ? "" : keys[i - 1];
      if (!c || c.parent !== parent || !same_tokens(c.tokens, tokens, i * bs)) break;
      out.push(id!);
    }
    for (const id of out) {
      if (this.#ref[id]++ === 0) this.#evictable.delete(id);
    }
    return out;
  }

  /** Counts an admitted request's lookup in `stats`: `blocks` full blocks asked for, `hits` found. */
  count_lookup(blocks: number, hits: number): void {
    this.stats.queried_tokens += blocks * this.block_size;
    this.stats.hit_tokens += hits * this.block_size;
  }

  /**
   * Records that block `id` (held) now holds full block `index` of `tokens`, whose KV is computed
   * (or enqueued to be, ahead of any later use); `keys` are prefix_keys(tokens). A key already
   * cached keeps its block.
   */
  register(id: number, tokens: readonly number[], keys: readonly string[], index: number): void {
    if (!this.prefix_caching || this.#cached[id] || this.#by_key.has(keys[index])) return;
    const bs = this.block_size;
    if ((index + 1) * bs > tokens.length) {
      throw new Error(`internal: block ${index} of ${tokens.length} tokens is not full`);
    }
    this.#by_key.set(keys[index], id);
    this.#cached[id] = {
      key: keys[index],
      parent: index === 0 ? "" : keys[index - 1],
      tokens: tokens.slice(index * bs, (index + 1) * bs),
    };
  }

  #uncache(id: number): void {
    const c = this.#cached[id];
    if (!c) return;
    this.#by_key.delete(c.key);
    this.#cached[id] = null;
  }

  /** Checks the invariants (every block free, evictable or held; the cache consistent); throws naming the first broken one. */
  check(): void {
    const free = new Set(this.#free);
    if (free.size !== this.#free.length) throw new Error("BlockPool: a block is free twice");
    for (let id = 0; id < this.num_blocks; id++) {
      const r = this.#ref[id], f = free.has(id), e = this.#evictable.has(id);
      if (r < 0 || (r > 0 && (f || e)) || (r === 0 && f === e)) {
        throw new Error(`BlockPool: block ${id} has ${r} references, free ${f}, evictable ${e}`);
      }
      if (e && !this.#cached[id]) throw new Error(`BlockPool: evictable block ${id} is not cached`);
      if (f && this.#cached[id]) throw new Error(`BlockPool: free block ${id} is still cached`);
    }
    for (const [key, id] of this.#by_key) {
      if (this.#cached[id]?.key !== key) {
        throw new Error(`BlockPool: key ${key} maps to block ${id}, which holds another`);
      }
    }
  }
}
