/**
 * The step trace: with NGPT_TRACE=<records> every kernel is compiled with -DNG_TRACE=<address of a
 * device buffer>, and thread 0 of each block logs when it started, passed its programmatic-launch
 * wait, reached its marks and left (native/kernels/common.cuh, NG_TRACE_KERNEL). This file holds the
 * buffer's layout (one source with common.cuh's comment), the -D options, and the parse of a read
 * buffer into launches. tests/gpu/step_trace.ts turns a decode step's launches into a table.
 * @module
 */
import { env } from "../../util/env.ts";
import { type KernelName, KERNELS } from "./kernels.ts";

/** u64 words of a record, and of the header (the record count, then unused) before the records. */
export const TRACE_RECORD_WORDS = 16;
/** Marks a record holds (ng_trace_mark(0..3)). */
export const TRACE_MARKS = 4;

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
  ];
}

/** One block's record: ns of the global timer, clocks of its SM's counter (null: not reached). */
export interface TraceBlock {
  block: number;
  sm: number;
  /** Global timer (ns) at entry, after the programmatic-launch wait, at exit. */
  entry_ns: number;
  wait_ns: number | null;
  exit_ns: number | null;
  /** SM clock at entry, at the wait's start and end, at exit. */
  entry_clk: number;
  wait_start_clk: number | null;
  wait_clk: number | null;
  exit_clk: number | null;
  /** Global timer and SM clock at marks 0..3. */
  mark_ns: (number | null)[];
  mark_clk: (number | null)[];
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
      wait_ns: opt(r[2]),
      exit_ns: opt(r[3]),
      entry_clk: Number(r[4]),
      wait_clk: opt(r[5]),
      exit_clk: opt(r[6]),
      wait_start_clk: opt(r[7]),
      mark_ns: Array.from({ length: TRACE_MARKS }, (_, k) => opt(r[8 + k])),
      mark_clk: Array.from({ length: TRACE_MARKS }, (_, k) => opt(r[8 + TRACE_MARKS + k])),
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
