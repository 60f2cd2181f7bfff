/**
 * The step trace: with NGPT_TRACE=<records> every kernel is compiled with -DNG_TRACE=<address of a
 * device buffer>, and thread 0 of each block logs when it started, passed its programmatic-launch
 * wait, reached its marks and left, on the global timer (native/kernels/common.cuh, NG_TRACE_KERNEL,
 * whose comment gives the words of a record). This file holds the record's size, passed to the
 * kernels with the other -D options, and the parse of a read buffer into launches.
 * tests/gpu/step_trace.ts turns a decode step's launches into a table.
 * @module
 */
import { env } from "../../util/env.ts";
import { type KernelName, KERNELS } from "./kernels.ts";

/** u64 words of a record, and of the header (the record count, then unused) before the records. */
export const TRACE_RECORD_WORDS = 8;
/** Marks a record holds (ng_trace_mark(0..2): its words 5..7). */
export const TRACE_MARKS = 3;

/** Records to keep (NGPT_TRACE: a positive integer, "1" for 262,144), or 0 when not tracing. */
export function trace_capacity(): number {
  const v = env("NGPT_TRACE");
  if (v === undefined || v === "" || v === "0") return 0;
  const n = v === "1" ? 1 << 18 : Number(v);
  if (!Number.isSafeInteger(n) || n < 1 || n > 1 << 24) {
    throw new Error(`NGPT_TRACE must be 0, 1 or a record count in 2..${1 << 24}, got "${v}"`);
  }
  return n;
}

/** Bytes of a trace buffer of `capacity` records. */
export function trace_bytes(capacity: number): number {
  return (capacity + 1) * TRACE_RECORD_WORDS * 8;
}

/** The kernels' tags in records: their index in KERNELS. */
const TAGS = Object.keys(KERNELS) as KernelName[];

/** The -D options that turn the trace on in `kernel`, logging into the buffer at `ptr`. */
export function trace_defines(ptr: bigint, capacity: number, kernel: KernelName): string[] {
  return [
    `NG_TRACE=0x${ptr.toString(16)}ull`,
    `NG_TRACE_CAP=${capacity}`,
    `NG_TRACE_TAG=${TAGS.indexOf(kernel)}`,
    `NG_TRACE_WORDS=${TRACE_RECORD_WORDS}`,
    `NG_TRACE_MARKS=${TRACE_MARKS}`,
  ];
}

/** One block's record: the global timer (ns) at each point (null: not reached or not logged). */
export interface TraceBlock {
  block: number;
  sm: number;
  entry_ns: number;
  /** When the block reached its programmatic-launch wait, and when the wait returned. */
  wait_start_ns: number | null;
  wait_ns: number | null;
  exit_ns: number | null;
  /** Marks 0 .. TRACE_MARKS - 1 (gemv: x staged, dot products done, stored). */
  mark_ns: (number | null)[];
}

/** A launch: its kernel, grid and block records (by blockIdx.x). */
export interface TraceLaunch {
  kernel: KernelName | `tag ${number}`;
  grid: number;
  blocks: TraceBlock[];
}

/** The launches of a read trace buffer, in launch order. Throws if the records do not group. */
export function parse_trace(words: BigUint64Array): { launches: TraceLaunch[]; dropped: number } {
  const count = Number(words[0]);
  const cap = words.length / TRACE_RECORD_WORDS - 1;
  const n = Math.min(count, cap);
  const opt = (w: bigint) => (w === 0n ? null : Number(w));
  const recs: (TraceBlock & { tag: number; grid: number })[] = [];
  for (let i = 0; i < n; i++) {
    const r = words.subarray((i + 1) * TRACE_RECORD_WORDS, (i + 2) * TRACE_RECORD_WORDS);
    const info = r[0];
    recs.push({
      tag: Number(info >> 48n),
      grid: Number((info >> 32n) & 0xffffn),
      block: Number((info >> 16n) & 0xffffn),
      sm: Number(info & 0xffffn),
      entry_ns: Number(r[1]),
      wait_start_ns: opt(r[2]),
      wait_ns: opt(r[3]),
      exit_ns: opt(r[4]),
      mark_ns: Array.from({ length: TRACE_MARKS }, (_, k) => opt(r[5 + k])),
    });
  }
  // Slots are taken in arrival order and a launch cannot start before every block of the one
  // before it has arrived, so each launch is the next `grid` records (grids past 65,535 blocks
  // are not traced: the record keeps 16 bits).
  const launches: TraceLaunch[] = [];
  for (let i = 0; i < recs.length;) {
    const { tag, grid } = recs[i];
    if (grid === 0 || i + grid > recs.length) break; // the last launch may be cut by the capacity
    const blocks = recs.slice(i, i + grid);
    const seen = new Set(blocks.map((b) => b.block));
    if (blocks.some((b) => b.tag !== tag || b.grid !== grid) || seen.size !== grid) {
      throw new Error(
        `trace record ${i}: a launch of ${grid} blocks (tag ${tag}) is not ${grid} records of it`,
      );
    }
    const kernel = TAGS[tag] ?? `tag ${tag}` as const;
    launches.push({ kernel, grid, blocks: blocks.sort((a, b) => a.block - b.block) });
    i += grid;
  }
  return { launches, dropped: Math.max(0, count - cap) };
}
