/**
 * Fuzz targets: one fast-check property per loader or validator, shared by the full fuzzer
 * (tests/fuzz/run.ts, `deno task fuzz`) and the CI slice (tests/fuzz_test.ts).
 *
 * The loader property: for any input, the reader either loads it consistently (every entry readable
 * with its declared size) or throws an Error (not a leaked internal TypeError / RangeError) that names
 * the input and the problem. Every case must finish within CASE_MS, keep within the allocation bound
 * stated beside its target (checked by a byte source that records every read), and nothing from the
 * input is ever run: the unpickler's globals are recording factories, and only allowlisted ones may
 * be called.
 * @module
 */
// deno-lint-ignore no-import-prefix
import fc from "npm:fast-check@4.11.0";
import { type ByteSource, MemoryFile, ZipReader } from "../../src/loaders/zip.ts";
import { type PyFactory, PyGlobal, unpickle } from "../../src/loaders/pickle.ts";
import { SAFETENSORS_DTYPE_BYTES, SafetensorsFile } from "../../src/loaders/safetensors.ts";
import { torch_dtype_bytes, TorchCheckpoint, TorchTensor } from "../../src/loaders/torch_checkpoint.ts";
import { load_char_vocab, nanogpt_config } from "../../src/loaders/nanogpt.ts";
import { hf_config } from "../../src/loaders/hf.ts";
import { type GPTConfig, validate_config } from "../../src/model/config.ts";
import { CharTokenizer } from "../../src/tokenizer/char.ts";
import { create_tokenizer, type Tokenizer } from "../../src/tokenizer/tokenizer.ts";
import {
  check_request_keys,
  resolve_sampling,
  SAMPLING_KEYS,
  type SamplingOptions,
} from "../../src/engine/sampling.ts";
import { crc32, make_zip, type ZipTestEntry } from "../helpers/zip_writer.ts";
import { FakeGlobal, FakeTensor, pickle } from "../helpers/torch_writer.ts";

export { fc };

/** A fuzz target: a name, the bound it states, and a fresh fast-check property. */
export interface FuzzTarget {
  /** Short name (`--target NAME`). */
  readonly name: string;
  /** The time / allocation bound the property checks, in words. */
  readonly bound: string;
  /** Builds the property. */
  // deno-lint-ignore no-explicit-any
  property(): fc.IRawProperty<any>;
}

/** Every case must finish within this many milliseconds. */
export const CASE_MS = 2000;
/** Resident memory the fuzzing process may reach (sampled every 64 cases). */
export const RSS_CAP_BYTES = 3 * 1024 ** 3;

/** The failure of a fast-check run in words: fast-check's report (seed, path, counterexample) and the error. */
export async function failure_report(details: fc.RunDetails<unknown>): Promise<string> {
  const e = details.errorInstance;
  const why = e instanceof Error
    ? `${e.name}: ${e.message}` +
      (e.cause instanceof Error ? `\n  cause: ${e.cause.name}: ${e.cause.message}` : "")
    : String(e);
  return `${await fc.asyncDefaultReportMessage(details)}\nFailure: ${why}`;
}

/** fast-check parameters for `runs` cases from `seed` (and `path`, to replay one counterexample). */
export function fuzz_params(seed: number, runs: number, path?: string): fc.Parameters<unknown> {
  return { seed, numRuns: runs, path, timeout: CASE_MS, endOnFailure: false };
}

// ---------------------------------------------------------------------------------------------------
// Shared checks

/** A broken invariant of the fuzzed code (as opposed to an error it reports on purpose). */
class FuzzFailure extends Error {
  override name = "FuzzFailure";
}

function fail(msg: string, cause?: unknown): never {
  throw new FuzzFailure(msg, cause === undefined ? undefined : { cause });
}

function ensure(cond: unknown, msg: string): asserts cond {
  if (!cond) fail(msg);
}

// Messages of JavaScript's own errors: an input reached code that did not expect it.
const INTERNAL = new RegExp(
  [
    "Cannot read propert",
    "Cannot set propert",
    "is not a function",
    "is not iterable",
    "is not an entry object",
    "is not a constructor",
    "Invalid array length",
    "Invalid typed array length",
    "Invalid string length",
    "Array buffer allocation failed",
    "Maximum call stack",
    "Cannot convert",
    "Cannot mix BigInt",
    "Do not know how to serialize",
    "circular structure",
    "outside the bounds",
  ].join("|"),
);

/**
 * Asserts that `e` is an Error with a message naming each of `names` (the input, and where given the
 * entry), saying more than that, and not a JavaScript error leaking from inside the loader.
 */
export function expect_named_error(e: unknown, names: readonly string[]): void {
  if (e instanceof FuzzFailure) throw e;
  if (!(e instanceof Error)) fail(`threw a non-Error: ${typeof e} ${String(e)}`);
  if (INTERNAL.test(e.message)) fail(`an internal error leaked: ${e.name}: ${e.message}`, e);
  for (const n of names) {
    if (!e.message.includes(n)) fail(`the error does not name ${JSON.stringify(n)}: ${e.message}`, e);
  }
  let rest = e.message;
  for (const n of names) rest = rest.replaceAll(n, "");
  if (rest.replace(/[^A-Za-z]/g, "").length < 6) fail(`the error does not name the problem: ${e.message}`, e);
}

let cases = 0;
/** The slowest case's milliseconds since the runner last cleared it: the margin under CASE_MS. */
export const slowest = { ms: 0 };

/** Checks a finished case against CASE_MS (sync predicates cannot be interrupted) and RSS_CAP_BYTES. */
function check_case_bounds(t0: number): void {
  const ms = performance.now() - t0;
  slowest.ms = Math.max(slowest.ms, ms);
  if (ms > CASE_MS) fail(`the case took ${ms.toFixed(0)} ms, more than ${CASE_MS} ms`);
  if (++cases % 64 === 0) {
    const rss = Deno.memoryUsage().rss;
    if (rss > RSS_CAP_BYTES) fail(`resident memory ${rss} bytes is over the ${RSS_CAP_BYTES} cap`);
  }
}

function timed<A extends unknown[]>(f: (...a: A) => void): (...a: A) => void {
  return (...a: A) => {
    const t0 = performance.now();
    f(...a);
    check_case_bounds(t0);
  };
}

function timed_async<A extends unknown[]>(f: (...a: A) => Promise<void>): (...a: A) => Promise<void> {
  return async (...a: A) => {
    const t0 = performance.now();
    await f(...a);
    check_case_bounds(t0);
  };
}

/**
 * A MemoryFile that checks every read: each request is for at most the file's size, each served
 * buffer lies within the file and has the length asked for; it counts the bytes served.
 */
class RecordingSource implements ByteSource {
  readonly #inner: MemoryFile;
  served = 0;
  closed = false;
  readonly violations: string[] = [];

  constructor(readonly path: string, bytes: Uint8Array) {
    this.#inner = new MemoryFile(path, bytes);
  }

  get size_bytes(): number {
    return this.#inner.size_bytes;
  }

  async read_at(offset: number, length: number, what?: string): Promise<Uint8Array> {
    if (length > this.size_bytes) {
      this.violations.push(`asked for ${length} bytes (${what}) of a ${this.size_bytes}-byte file`);
    }
    const b = await this.#inner.read_at(offset, length, what);
    if (b.length !== length || offset + length > this.size_bytes) {
      this.violations.push(`served ${b.length} bytes at ${offset} for a read of ${length}`);
    }
    this.served += b.length;
    return b;
  }

  close(): void {
    this.closed = true;
    this.#inner.close();
  }

  /** Fails the case on any recorded violation. */
  check(): void {
    if (this.violations.length) fail(`${this.path}: bound violated: ${this.violations.join("; ")}`);
  }
}

/** How often each outcome happened (the runner prints and clears it per target): what the cases reach. */
export const tally: Map<string, number> = new Map();

function count(label: string): void {
  tally.set(label, (tally.get(label) ?? 0) + 1);
}

/**
 * Calls `f`; a thrown error must be a named Error (then returns null), else returns f's result.
 * Counts `label` ok / refused.
 */
async function named_or<T>(f: () => Promise<T>, names: readonly string[], label: string): Promise<T | null> {
  try {
    const v = await f();
    count(`${label} ok`);
    return v;
  } catch (e) {
    expect_named_error(e, names);
    count(`${label} refused`);
    return null;
  }
}

/** Every object reachable from `root` (cycle-safe, iterative: pickles can nest deeply). */
function reachable(root: unknown): { objects: Set<object>; strings: Set<string> } {
  const objects = new Set<object>();
  const strings = new Set<string>();
  const todo: unknown[] = [root];
  while (todo.length) {
    const v = todo.pop();
    if (typeof v === "string") strings.add(v);
    if (v === null || typeof v !== "object" || objects.has(v)) continue;
    objects.add(v);
    if (v instanceof Map) { for (const [k, x] of v) todo.push(k, x); }
    else if (v instanceof Set) { for (const x of v) todo.push(x); }
    else if (Array.isArray(v)) { for (const x of v) todo.push(x); }
    else if (v instanceof PyGlobal || v instanceof Uint8Array) continue;
    else for (const x of Object.values(v)) todo.push(x);
  }
  return { objects, strings };
}

// ---------------------------------------------------------------------------------------------------
// Byte mutations (flips, truncation, splices, lying fields)

/** One edit of a file's bytes; positions are taken modulo the length at the time of the edit. */
type Mutation =
  | { kind: "flip"; at: number; xor: number }
  | { kind: "truncate"; at: number }
  | { kind: "splice"; at: number; remove: number; insert: Uint8Array }
  | { kind: "lie"; field: number; value: bigint };

/** Where a structure stores a field: its offset and width in bytes. */
interface Field {
  at: number;
  width: 1 | 2 | 4 | 8;
}

/** Values a lying field takes: the edges of 8, 16, 32 and 64 bits, and of safe integers. */
const INTERESTING: bigint[] = [
  ...[0, 1, 2, 7, 0x7f, 0x80, 0xff, 0x7fff, 0xfffe, 0xffff, 0x7fffffff, 0x80000000].map(BigInt),
  ...[0xfffffffe, 0xffffffff, 2 ** 32, 2 ** 53 - 1, 2 ** 53].map(BigInt),
  1n << 63n,
  (1n << 64n) - 1n,
];

const mutation_arb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant("splice" as const),
    at: fc.nat(),
    remove: fc.nat({ max: 64 }),
    insert: fc.uint8Array({ maxLength: 64 }),
  }),
  fc.record({
    kind: fc.constant("lie" as const),
    field: fc.nat(),
    value: fc.oneof(fc.constantFrom(...INTERESTING), fc.bigInt({ min: 0n, max: 5000n })),
  }),
);

/** No mutation (a valid input) `none` times in 5, else 1 to `max` of them. */
function muts_arb(max: number, none = 2): fc.Arbitrary<Mutation[]> {
  return fc.oneof(
    { weight: none, arbitrary: fc.constant<Mutation[]>([]) },
    { weight: 5 - none, arbitrary: fc.array(mutation_arb, { minLength: 1, maxLength: max }) },
  );
}

function write_le(b: Uint8Array, f: Field, value: bigint): void {
  let v = value;
  for (let i = 0; i < f.width && f.at + i < b.length; i++) {
    b[f.at + i] = Number(v & 0xffn);
    v >>= 8n;
  }
}

/** Applies `muts` in order; `fields` are the structure fields a "lie" may overwrite. */
function mutate(bytes: Uint8Array, muts: readonly Mutation[], fields: readonly Field[]): Uint8Array {
  let b = bytes.slice();
  for (const m of muts) {
    if (m.kind === "flip" && b.length) b[m.at % b.length] ^= m.xor;
    else if (m.kind === "truncate") b = b.slice(0, m.at % (b.length + 1));
    else if (m.kind === "splice") {
      const at = m.at % (b.length + 1);
      const out = new Uint8Array(b.length - Math.min(m.remove, b.length - at) + m.insert.length);
      out.set(b.subarray(0, at));
      out.set(m.insert, at);
      out.set(b.subarray(at + m.remove), at + m.insert.length);
      b = out;
    } else if (m.kind === "lie" && fields.length) write_le(b, fields[m.field % fields.length], m.value);
  }
  return b;
}

const u32_at = (b: Uint8Array, p: number) =>
  p + 4 <= b.length ? new DataView(b.buffer, b.byteOffset).getUint32(p, true) : -1;
const u16_at = (b: Uint8Array, p: number) =>
  p + 2 <= b.length ? new DataView(b.buffer, b.byteOffset).getUint16(p, true) : 0;

/** The header fields of a zip's records (found by their signatures), for lying-size mutations. */
function zip_fields(b: Uint8Array): Field[] {
  const fields: Field[] = [];
  const add = (p: number, list: [number, Field["width"]][]) => {
    for (const [o, width] of list) if (p + o + width <= b.length) fields.push({ at: p + o, width });
  };
  for (let p = 0; p + 4 <= b.length; p++) {
    const sig = u32_at(b, p);
    if (sig === 0x04034b50) add(p, [[6, 2], [8, 2], [14, 4], [18, 4], [22, 4], [26, 2], [28, 2]]);
    else if (sig === 0x02014b50) {
      add(p, [[8, 2], [10, 2], [16, 4], [20, 4], [24, 4], [28, 2], [30, 2], [32, 2], [42, 4]]);
      const extra = p + 46 + u16_at(b, p + 28);
      if (u16_at(b, extra) === 1) add(extra, [[2, 2], [4, 8], [12, 8], [20, 8]]);
    } else if (sig === 0x06054b50) add(p, [[8, 2], [10, 2], [12, 4], [16, 4], [20, 2]]);
    else if (sig === 0x06064b50) add(p, [[24, 8], [32, 8], [40, 8], [48, 8]]);
    else if (sig === 0x07064b50) add(p, [[8, 8], [16, 4]]);
  }
  return fields;
}

// ---------------------------------------------------------------------------------------------------
// 1. Zip reader

const ZIP_PATH = "fuzz://archive.zip";

const entry_name_arb = fc.oneof(
  fc.constantFrom("archive/data.pkl", "archive/data/0", "archive/byteorder", "", "a"),
  fc.string({ unit: "grapheme", maxLength: 12 }),
);

const zip_entries_arb = fc.uniqueArray(
  fc.record({
    name: entry_name_arb,
    data: fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc.tuple(fc.integer({ min: 0, max: 255 }), fc.nat({ max: 3000 })).map(([v, n]) =>
        new Uint8Array(n).fill(v)
      ),
    ),
    method: fc.oneof(
      { weight: 8, arbitrary: fc.constantFrom(0, 8) },
      { weight: 1, arbitrary: fc.constantFrom(1, 12, 99) },
    ),
    declare_bytes: fc.option(fc.oneof(fc.nat({ max: 4000 }), fc.constantFrom(0xfffffffe, 0xffffffff)), {
      freq: 8,
    }),
  }, { requiredKeys: ["name", "data", "method"] }),
  { selector: (e) => e.name, maxLength: 4 },
);

const zip_input_arb = fc.oneof(
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 512 }).map((bytes) => ({ bytes, expect: null })) },
  {
    weight: 1,
    // Arbitrary bytes that at least begin like a zip and end with an end record.
    arbitrary: fc.tuple(fc.uint8Array({ maxLength: 256 }), fc.uint8Array({ minLength: 18, maxLength: 18 }))
      .map(([mid, end]) => ({
        bytes: Uint8Array.from([0x50, 0x4b, 3, 4, ...mid, 0x50, 0x4b, 5, 6, ...end]),
        expect: null,
      })),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      entries: zip_entries_arb,
      zip64: fc.boolean(),
      comment: fc.string({ maxLength: 8 }),
      muts: muts_arb(4),
    }).map(({ entries, zip64, comment, muts }) => {
      const clean = entries.map((e) => ({ ...e, declare_bytes: e.declare_bytes ?? undefined }));
      const valid = make_zip(clean, { zip64, comment });
      const bytes = mutate(valid, muts, zip_fields(valid));
      const honest = clean.every((e) => e.declare_bytes === undefined && (e.method === 0 || e.method === 8));
      return { bytes, expect: muts.length === 0 && honest ? clean : null };
    }),
  },
);

/** Reads one entry whole and in a range; a failure must be an Error naming the archive and entry. */
async function check_zip_entry(z: ZipReader, name: string, frac: [number, number]): Promise<void> {
  const e = z.entry(name);
  const size = z.size_bytes;
  for (const k of ["compressed_bytes", "uncompressed_bytes", "local_header_offset"] as const) {
    ensure(Number.isSafeInteger(e[k]) && e[k] >= 0, `entry "${name}": ${k} is ${e[k]}`);
  }
  ensure(e.local_header_offset + 30 + e.compressed_bytes <= size, `entry "${name}" overruns the file`);
  const names = [ZIP_PATH, `"${name}"`];
  const whole = await named_or(() => z.read(e), names, "entry read");
  if (whole) {
    ensure(whole.length === e.uncompressed_bytes, `"${name}": read ${whole.length} bytes, declared more`);
    // Bound: deflate expands at most 1032:1, so an entry never holds more than that of the file.
    ensure(whole.length <= 1032 * size + 1024, `"${name}": ${whole.length} bytes from a ${size}-byte file`);
    ensure(crc32(whole) === e.crc32, `"${name}": returned bytes fail the CRC the reader checked`);
  }
  const off = Math.floor(frac[0] * (e.uncompressed_bytes + 1));
  const len = Math.floor(frac[1] * (e.uncompressed_bytes - off + 1));
  const part = await named_or(() => z.read(e, off, len), names, "range read");
  if (whole) ensure(part !== null, `"${name}": a range read failed where the whole read worked`);
  if (part) {
    ensure(part.length === len, `"${name}": range read of ${len} gave ${part.length} bytes`);
    if (whole) ensure(same_bytes(part, whole.subarray(off, off + len)), `"${name}": range read differs`);
  }
}

function same_bytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Bound: opening reads at most 2 x the file size + 64 bytes (end records and central directory), no
 * read asks for more than the file holds, and each entry read returns exactly its declared size,
 * at most 1032 x the file size (deflate's ratio): the reader never holds more than ~1032 x the file.
 */
async function zip_case(bytes: Uint8Array, expect: ZipTestEntry[] | null, frac: [number, number]) {
  const src = new RecordingSource(ZIP_PATH, bytes);
  const z = await named_or(() => ZipReader.from_source(src), [ZIP_PATH], "open");
  if (!z) {
    ensure(src.closed, "a refused archive's source was left open");
    ensure(expect === null, "a valid archive was refused");
    return src.check();
  }
  try {
    ensure(src.served <= 2 * bytes.length + 64, `opening read ${src.served} bytes of ${bytes.length}`);
    for (const name of z.entries.keys()) await check_zip_entry(z, name, frac);
    if (expect) {
      ensure(same_list([...z.entries.keys()], expect.map((e) => e.name)), "entry names differ");
      for (const e of expect) ensure(same_bytes(await z.read(e.name), e.data), `"${e.name}" differs`);
    }
    src.check();
  } finally {
    z.close();
  }
}

function same_list(a: readonly unknown[], b: readonly unknown[]): boolean {
  return a.length === b.length && a.every((x, i) => Object.is(x, b[i]));
}

const unit_arb = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });
/** Where a range read starts and how much it takes, as fractions of what is left. */
const frac_arb = fc.tuple(unit_arb, unit_arb);

const zip_target: FuzzTarget = {
  name: "zip",
  bound: "open reads <= 2 x size + 64 bytes; no read asks for more than the file; entry <= 1032 x size",
  property: () =>
    fc.asyncProperty(
      zip_input_arb,
      frac_arb,
      timed_async(({ bytes, expect }, frac) => zip_case(bytes, expect, frac)),
    ),
};

// ---------------------------------------------------------------------------------------------------
// 2. Pickle reader

const PKL_WHAT = "fuzz://data.pkl";

/** Plain values as torch_writer's pickle() writes them (and meta.pkl holds). */
const plain_value_arb: fc.Arbitrary<unknown> = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.double(),
    fc.string({ unit: "grapheme", maxLength: 8 }),
    fc.array(tie("value"), { maxLength: 4 }).map((a) => Object.freeze(a)),
    fc.array(tie("value"), { maxLength: 4 }),
    fc.array(fc.tuple(tie("value"), tie("value")), { maxLength: 4 }).map((e) => new Map(e)),
  ),
})).value;

// The one-byte opcodes: MARK POP_MARK POP DUP EMPTY_DICT EMPTY_LIST EMPTY_TUPLE EMPTY_SET TUPLE1 TUPLE2
// TUPLE3 TUPLE LIST DICT FROZENSET SETITEM SETITEMS APPEND APPENDS ADDITEMS MEMOIZE NONE NEWTRUE
// NEWFALSE REDUCE NEWOBJ BUILD BINPERSID STACK_GLOBAL STOP.
const PY_OPS_1 = "28 31 30 32 7d 5d 29 8f 85 86 87 74 6c 64 91 73 75 61 65 90 94 4e 88 89 52 81 62 51 93 2e"
  .split(" ").map((h) => parseInt(h, 16));
const u32le = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
const u64le = (n: bigint) => Array.from({ length: 8 }, (_, i) => Number((n >> BigInt(8 * i)) & 0xffn));
const utf8 = new TextEncoder();

/** Module and attribute names: allowlisted, Python's dangerous ones, Object.prototype's, any. */
const global_name_arb = fc.oneof(
  fc.constantFrom(
    ..."collections OrderedDict builtins __builtin__ copy_reg set os system eval __proto__ constructor"
      .split(" "),
    ..."toString hasOwnProperty torch _utils _rebuild_tensor_v2 FloatStorage".split(" "),
  ),
  fc.string({ unit: "grapheme-ascii", maxLength: 6 }).filter((s) => !s.includes("\n")),
);

/** One opcode with plausible arguments, as bytes. */
const pickle_op_arb: fc.Arbitrary<number[]> = fc.oneof(
  fc.constantFrom(...PY_OPS_1).map((op) => [op]),
  fc.tuple(fc.constantFrom(0x71, 0x68, 0x4b, 0x80), fc.integer({ min: 0, max: 8 })).map(([o, a]) => [o, a]),
  fc.tuple(fc.constantFrom(0x72, 0x6a), fc.nat({ max: 8 })).map(([o, a]) => [o, ...u32le(a)]),
  fc.integer().map((v) => [0x4a, ...u32le(v)]),
  fc.integer({ min: 0, max: 0xffff }).map((v) => [0x4d, v & 0xff, v >> 8]),
  fc.uint8Array({ maxLength: 12 }).map((b) => [0x8a, b.length, ...b]),
  fc.tuple(fc.uint8Array({ maxLength: 12 }), fc.integer({ min: -2, max: 2 })).map((
    [b, d],
  ) => [0x8b, ...u32le(b.length + d), ...b]),
  fc.double().map((v) => {
    const b = new DataView(new ArrayBuffer(8));
    b.setFloat64(0, v, false);
    return [0x47, ...new Uint8Array(b.buffer)];
  }),
  fc.tuple(
    fc.constantFrom(0x8c, 0x58, 0x8d, 0x43, 0x42, 0x8e, 0x55, 0x54),
    fc.string({ maxLength: 8 }),
    fc.integer({
      min: -1,
      max: 1,
    }),
  ).map(([op, s, d]) => {
    const b = [...utf8.encode(s)];
    const n = Math.max(0, b.length + d);
    const len = op === 0x8c || op === 0x43 || op === 0x55
      ? [n & 0xff]
      : op === 0x8d || op === 0x8e
      ? u64le(BigInt(n))
      : u32le(n);
    return [op, ...len, ...b];
  }),
  fc.tuple(global_name_arb, global_name_arb).map(([m, n]) => [0x63, ...utf8.encode(`${m}\n${n}\n`)]),
  fc.tuple(global_name_arb, global_name_arb).map(([m, n]) => {
    const s = (x: string) => [0x8c, utf8.encode(x).length, ...utf8.encode(x)];
    return [...s(m), ...s(n), 0x93];
  }),
  fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map((n) => [0x95, ...u64le(n)]),
  fc.integer({ min: 0, max: 255 }).map((b) => [b]),
);

const pickle_program_arb = fc.tuple(fc.constantFrom(2, 4, 5), fc.array(pickle_op_arb, { maxLength: 40 }))
  .map(([proto, ops]) => Uint8Array.from([0x80, proto, ...ops.flat(), 0x2e]));

/** A deeply nested list (depth up to 20,000): the unpickler is iterative, and so must its callers be. */
const deep_pickle_arb = fc.integer({ min: 1, max: 20_000 }).map((n) =>
  Uint8Array.from([0x80, 2, ...new Array(n).fill(0x5d), ...new Array(n - 1).fill(0x61), 0x2e])
);

const torch_value_arb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: plain_value_arb },
  {
    weight: 1,
    arbitrary: fc.tuple(
      global_name_arb,
      global_name_arb,
      fc.option(fc.array(plain_value_arb, { maxLength: 2 })),
    )
      .map(([m, n, args]) => new FakeGlobal(m, n, args)),
  },
);

const meta_value_arb = fc.tuple(
  fc.uniqueArray(fc.string({ unit: "binary", minLength: 1, maxLength: 1 }), { maxLength: 12 }),
  fc.option(fc.nat({ max: 20 })),
).map(([chars, vocab]) =>
  new Map<string, unknown>([
    ["vocab_size", vocab ?? chars.length],
    ["itos", new Map(chars.map((c, i) => [i, c]))],
    ["stoi", new Map(chars.map((c, i) => [c, i]))],
  ])
);

const valid_pickle_arb = fc.oneof(plain_value_arb, torch_value_arb, meta_value_arb).map((value) => ({
  value,
  bytes: pickle(value, new Map()),
}));

const pickle_input_arb = fc.oneof(
  fc.uint8Array({ maxLength: 256 }).map((bytes) => ({ bytes, expect: undefined as unknown })),
  pickle_program_arb.map((bytes) => ({ bytes, expect: undefined as unknown })),
  deep_pickle_arb.map((bytes) => ({ bytes, expect: undefined as unknown })),
  fc.tuple(valid_pickle_arb, muts_arb(3)).map(([{ value, bytes }, muts]) => ({
    bytes: mutate(bytes, muts, []),
    expect: muts.length === 0 && !has_global(value) ? value : undefined,
  })),
);

function has_global(v: unknown): boolean {
  return [...reachable(v).objects].some((o) => o instanceof FakeGlobal);
}

/** The allowlist the pickle targets pass: recording factories, so every call is seen. */
const ALLOWED = ["collections.OrderedDict", "builtins.set", "builtins.frozenset", "_codecs.encode"];

function recording_globals(calls: string[]): Map<string, PyFactory> {
  return new Map(ALLOWED.map((name) => [name, (...args: unknown[]) => {
    calls.push(name);
    return { args };
  }]));
}

/** Structural equality of unpickled values (tuples frozen, lists not; -0 written as the int 0). */
function same_value(a: unknown, b: unknown): boolean {
  if (typeof b === "number" && Object.is(b, -0)) return Object.is(a, 0);
  if (a instanceof Map && b instanceof Map) {
    const ea = [...a], eb = [...b];
    return ea.length === eb.length &&
      ea.every(([k, v], i) => same_value(k, eb[i][0]) && same_value(v, eb[i][1]));
  }
  if (Array.isArray(a) && Array.isArray(b)) {
    return Object.isFrozen(a) === Object.isFrozen(b) && a.length === b.length &&
      a.every((x, i) => same_value(x, b[i]));
  }
  return Object.is(a, b);
}

/**
 * Bound: the distinct strings and byte strings of the result total at most the pickle's length, and
 * it holds at most one container per pickle byte (memo references share, they do not copy).
 */
function check_pickle_bound(v: unknown, bytes: Uint8Array): void {
  const { objects, strings } = reachable(v);
  let payload = 0;
  for (const s of strings) payload += s.length;
  for (const o of objects) if (o instanceof Uint8Array) payload += o.length;
  ensure(
    payload <= bytes.length,
    `the result holds ${payload} bytes of strings from a ${bytes.length}-byte pickle`,
  );
  ensure(objects.size <= bytes.length, `the result holds ${objects.size} objects from ${bytes.length} bytes`);
}

function pickle_case(bytes: Uint8Array, expect: unknown): void {
  const calls: string[] = [];
  let v: unknown;
  try {
    v = unpickle(bytes, {
      globals: recording_globals(calls),
      persistent_load: (pid) => ({ pid }),
      what: PKL_WHAT,
    });
  } catch (e) {
    expect_named_error(e, [PKL_WHAT]);
    ensure(expect === undefined, `a valid pickle was refused: ${(e as Error).message}`);
    return count("refused");
  }
  count(expect === undefined ? "loaded" : "loaded (valid, compared)");
  ensure(calls.every((c) => ALLOWED.includes(c)), `a factory outside the allowlist ran: ${calls}`);
  check_pickle_bound(v, bytes);
  if (expect !== undefined) ensure(same_value(v, expect), "a valid pickle decoded to a different value");
}

const pickle_target: FuzzTarget = {
  name: "pickle",
  bound: "distinct strings + bytes of the result <= pickle length; objects <= pickle length",
  property: () => fc.property(pickle_input_arb, timed(({ bytes, expect }) => pickle_case(bytes, expect))),
};

/** Opcodes that keep a pickle aligned (exact lengths, no STOP, no globals): a prefix for the global. */
const aligned_op_arb: fc.Arbitrary<number[]> = fc.oneof(
  fc.constantFrom(...PY_OPS_1.filter((op) => op !== 0x2e && op !== 0x93)).map((op) => [op]),
  fc.integer().map((v) => [0x4a, ...u32le(v)]),
  fc.string({ maxLength: 6 }).map((x) => [0x58, ...u32le(utf8.encode(x).length), ...utf8.encode(x)]),
);

/** A pickle that names `module.name` (GLOBAL or STACK_GLOBAL), called or not, after an aligned prefix. */
const forbidden_arb = fc.record({
  prefix: fc.array(aligned_op_arb, { maxLength: 8 }),
  module: global_name_arb,
  name: global_name_arb,
  stack: fc.boolean(),
  call: fc.boolean(),
}).filter(({ module, name }) => !ALLOWED.includes(`${py3_module(module)}.${name}`));

interface ForbiddenCase {
  prefix: number[][];
  module: string;
  name: string;
  stack: boolean;
  call: boolean;
}

function py3_module(m: string): string {
  return m === "__builtin__" ? "builtins" : m === "copy_reg" ? "copyreg" : m;
}

/**
 * The pickle fails: in its prefix (an error naming the pickle), or at the global (an error naming the
 * pickle and the global, as "module.name"); no factory outside the allowlist is ever called.
 */
function forbidden_case(f: ForbiddenCase): void {
  const s = (x: string) => [0x58, ...u32le(utf8.encode(x).length), ...utf8.encode(x)];
  const global = f.stack
    ? [...s(f.module), ...s(f.name), 0x93]
    : [0x63, ...utf8.encode(`${f.module}\n${f.name}\n`)];
  const call = f.call ? [0x29, 0x52] : [];
  const bytes = Uint8Array.from([0x80, 2, 0x28, ...f.prefix.flat(), 0x31, ...global, ...call, 0x2e]);
  const calls: string[] = [];
  try {
    unpickle(bytes, { globals: recording_globals(calls), what: PKL_WHAT });
  } catch (e) {
    expect_named_error(e, [PKL_WHAT]);
    ensure(calls.every((c) => ALLOWED.includes(c)), `a factory outside the allowlist ran: ${calls}`);
    const msg = (e as Error).message;
    const full = `${py3_module(f.module)}.${f.name}`;
    if (msg.includes("forbidden global")) {
      ensure(msg.includes(`"${full}"`), `the error does not name "${full}": ${msg}`);
    }
    return count(msg.includes("forbidden global") ? "refused at the global" : "refused in the prefix");
  }
  fail(`a pickle naming the forbidden global ${f.module}.${f.name} loaded`);
}

const pickle_globals_target: FuzzTarget = {
  name: "pickle_globals",
  bound: "only allowlisted factories are ever called; a forbidden global is an error naming it",
  property: () => fc.property(forbidden_arb, timed(forbidden_case)),
};

// ---------------------------------------------------------------------------------------------------
// 2b. meta.pkl (load_char_vocab) and torch checkpoints (zip + pickle + the torch allowlist)

let tmp_dir: string | null = null;

function tmp_path(name: string): string {
  if (tmp_dir === null) {
    const dir = Deno.makeTempDirSync({ prefix: "ngpt_fuzz_" });
    tmp_dir = dir;
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
  }
  return `${tmp_dir}/${name}`;
}

/** A meta.pkl-like tree: a vocabulary, one with a wrong entry, or any plain value. */
const meta_tree_arb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: meta_value_arb },
  {
    weight: 2,
    arbitrary: fc.tuple(
      meta_value_arb,
      fc.constantFrom("stoi", "itos", "vocab_size"),
      plain_value_arb,
      plain_value_arb,
    )
      .map(([m, key, k, v]) => {
        const inner = m.get(key);
        if (inner instanceof Map && k !== null) inner.set(k, v);
        else m.set(key, v);
        return m;
      }),
  },
  { weight: 1, arbitrary: plain_value_arb },
);

/** One opcode that pushes one value: ints (BININT, LONG1 up to 2^95), floats, strings, None, ... */
const scalar_op_arb: fc.Arbitrary<number[]> = fc.oneof(
  fc.integer().map((v) => [0x4a, ...u32le(v)]),
  fc.uint8Array({ minLength: 1, maxLength: 12 }).map((b) => [0x8a, b.length, ...b]),
  fc.double().map((v) => {
    const b = new DataView(new ArrayBuffer(8));
    b.setFloat64(0, v, false);
    return [0x47, ...new Uint8Array(b.buffer)];
  }),
  fc.string({ unit: "binary", maxLength: 2 }).map(py_str),
  fc.constantFrom(0x4e, 0x88, 0x89, 0x29, 0x5d, 0x7d).map((op) => [op]),
);

/** BINUNICODE of `x`. */
function py_str(x: string): number[] {
  const b = utf8.encode(x);
  return [0x58, ...u32le(b.length), ...b];
}

/** {"stoi": {k: v, ...}, "itos": {k: v, ...}} with keys and values of any type, big ints included. */
const raw_meta_arb = fc.tuple(
  fc.array(fc.tuple(scalar_op_arb, scalar_op_arb), { maxLength: 4 }),
  fc.array(fc.tuple(scalar_op_arb, scalar_op_arb), { maxLength: 4 }),
).map(([stoi, itos]) =>
  Uint8Array.from([
    ...[0x80, 2, 0x7d, 0x28],
    ...[...py_str("stoi"), 0x7d, 0x28, ...stoi.flat(2), 0x75],
    ...[...py_str("itos"), 0x7d, 0x28, ...itos.flat(2), 0x75],
    ...[0x75, 0x2e],
  ])
);

const meta_input_arb = fc.record({
  bytes: fc.oneof(
    {
      weight: 8,
      arbitrary: fc.tuple(meta_tree_arb, muts_arb(2)).map(([v, muts]) =>
        mutate(pickle(v, new Map()), muts, [])
      ),
    },
    { weight: 2, arbitrary: raw_meta_arb },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 20_000 }).map(deep_meta) },
  ),
  vocab_size: fc.option(fc.nat({ max: 20 })),
}).map(({ bytes, vocab_size }) => ({ bytes, vocab_size: vocab_size ?? undefined }));

/** {"stoi": {[[[...]]]: 1}, "itos": {}}: a key nested `depth` lists deep. */
function deep_meta(depth: number): Uint8Array {
  const key = [...new Array(depth).fill(0x5d), ...new Array(depth - 1).fill(0x61)];
  return Uint8Array.from([
    ...[0x80, 2, 0x7d, ...py_str("stoi"), 0x7d, ...key, 0x4b, 1, 0x73, 0x73],
    ...[...py_str("itos"), 0x7d, 0x73, 0x2e],
  ]);
}

/**
 * load_char_vocab either names meta.pkl in its error, or gives a vocabulary a CharTokenizer accepts,
 * with ids below `vocab_size`. Bound: the file is read whole (a meta.pkl over MAX_PICKLE_BYTES is
 * refused before reading), and the vocabulary has at most one entry per byte of it.
 */
async function meta_case(bytes: Uint8Array, vocab_size: number | undefined): Promise<void> {
  const path = tmp_path(`meta_${cases}.pkl`);
  await Deno.writeFile(path, bytes);
  try {
    const spec = await named_or(() => load_char_vocab(path, vocab_size), [path], "load");
    if (!spec) return;
    const entries = spec.stoi.size + spec.itos.size;
    ensure(entries <= bytes.length, `a ${bytes.length}-byte meta.pkl gave ${entries} vocabulary entries`);
    for (const [s, i] of spec.stoi) ensure(typeof s === "string" && typeof i === "number", "stoi types");
    const tok = new CharTokenizer(spec.stoi, spec.itos);
    if (vocab_size !== undefined) ensure(tok.vocab_size <= vocab_size, `ids reach ${tok.vocab_size}`);
    for (const [i, s] of spec.itos) {
      if (spec.stoi.get(s) === i) ensure(tok.decode(tok.encode(s)) === s, `${JSON.stringify(s)} round trip`);
    }
  } finally {
    await Deno.remove(path);
  }
}

const meta_target: FuzzTarget = {
  name: "meta_pkl",
  bound: "stoi + itos entries <= file bytes; case time and sampled RSS",
  property: () =>
    fc.asyncProperty(meta_input_arb, timed_async(({ bytes, vocab_size }) => meta_case(bytes, vocab_size))),
};

const CKPT_PATH = "fuzz://ckpt.pt";
const TORCH_DTYPES = ["f32", "f16", "bf16"] as const;

const fake_tensor_arb = fc.record({
  key: fc.constantFrom("0", "1", "2"),
  dtype: fc.constantFrom(...TORCH_DTYPES),
  shape: fc.array(fc.nat({ max: 5 }), { maxLength: 3 }),
  stride: fc.oneof(
    { weight: 4, arbitrary: fc.constant(null) },
    { weight: 2, arbitrary: fc.array(fc.nat({ max: 6 }), { minLength: 3, maxLength: 3 }) },
    { weight: 1, arbitrary: fc.array(fc.nat({ max: 6 }), { maxLength: 3 }).map((s) => ({ any_rank: s })) },
  ),
  offset: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat({ max: 8 }) }),
}).map(({ key, dtype, shape, stride, offset }) =>
  new FakeTensor(
    key,
    dtype,
    shape,
    stride === null
      ? contiguous_stride(shape)
      : Array.isArray(stride)
      ? stride.slice(0, shape.length)
      : stride.any_rank,
    offset,
  )
);

function contiguous_stride(shape: number[]): number[] {
  const s: number[] = [];
  let e = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = e;
    e *= shape[d];
  }
  return s;
}

/** Elements a view needs from its storage (0 when it has none). */
function view_extent(t: FakeTensor): number {
  if (t.shape.some((d) => d === 0)) return 0;
  let last = t.offset;
  t.shape.forEach((d, i) => (last += (d - 1) * (t.stride[i] ?? 0)));
  return last + 1;
}

const checkpoint_arb = fc.record({
  tensors: fc.array(fc.tuple(fc.string({ maxLength: 6 }), fake_tensor_arb), { maxLength: 4 }),
  extra: fc.array(fc.tuple(fc.string({ maxLength: 6 }), torch_value_arb), { maxLength: 2 }),
  slack: fc.array(fc.integer({ min: -3, max: 3 }), { minLength: 3, maxLength: 3 }),
  deflate: fc.boolean(),
  byteorder: fc.constantFrom("little", "little", "little", "little", "little", "big", "", "little\n"),
  muts: fc.tuple(fc.constantFrom("none", "none", "pickle", "zip"), muts_arb(2)),
}).map((c) => {
  // Storages sized for every view of them (dtype of the first view), give or take `slack` elements.
  const storages = new Map<string, Uint8Array>();
  ["0", "1", "2"].forEach((key, i) => {
    const views = c.tensors.map(([, t]) => t).filter((t) => t.key === key);
    if (!views.length) return;
    const n = Math.max(0, Math.max(...views.map(view_extent)) + c.slack[i]);
    const es = torch_dtype_bytes(views[0].dtype as "f32");
    storages.set(key, Uint8Array.from({ length: n * es }, (_, j) => (j * 7 + i) & 0xff));
  });
  const root = new Map<unknown, unknown>([["model", new Map(c.tensors)], ...c.extra]);
  const pkl = mutate(pickle(root, storages), c.muts[0] === "pickle" ? c.muts[1] : [], []);
  const entries: ZipTestEntry[] = [
    { name: "archive/data.pkl", data: pkl },
    { name: "archive/byteorder", data: utf8.encode(c.byteorder) },
    ...[...storages].map(([k, data]) => ({ name: `archive/data/${k}`, data, method: c.deflate ? 8 : 0 })),
  ];
  const valid = make_zip(entries);
  return c.muts[0] === "zip" ? mutate(valid, c.muts[1], zip_fields(valid)) : valid;
});

/** `good` (an opcode's bytes) mostly, else any one value. */
const slot = (good: number[]) =>
  fc.oneof({ weight: 4, arbitrary: fc.constant(good) }, { weight: 1, arbitrary: scalar_op_arb });

/** A tuple of ints `good` mostly, else a tuple of any values. */
const tuple_slot = (good: number[]) =>
  fc.oneof(
    { weight: 4, arbitrary: fc.constant([0x28, ...good.flatMap((d) => [0x4a, ...u32le(d)]), 0x74]) },
    {
      weight: 1,
      arbitrary: fc.array(scalar_op_arb, { maxLength: 3 }).map((ops) => [0x28, ...ops.flat(), 0x74]),
    },
  );

/**
 * {"model": {"w": _rebuild_tensor_v2(persistent id, offset, size, stride, False)} over a 4-float
 * storage, with any slot (the persistent id's parts too) possibly a value of another type.
 */
const raw_checkpoint_arb = fc.tuple(
  slot(py_str("storage")),
  slot([0x63, ...utf8.encode("torch\nFloatStorage\n")]),
  slot(py_str("0")),
  slot(py_str("cpu")),
  slot([0x4a, ...u32le(4)]),
  slot([0x4a, ...u32le(0)]),
  tuple_slot([2, 2]),
  tuple_slot([2, 1]),
).map(([tag, type, key, location, numel, offset, size, stride]) => {
  const pkl = Uint8Array.from([
    ...[0x80, 2, 0x7d, ...py_str("model"), 0x7d, ...py_str("w")],
    ...[0x63, ...utf8.encode("torch._utils\n_rebuild_tensor_v2\n"), 0x28],
    ...[0x28, ...tag, ...type, ...key, ...location, ...numel, 0x74, 0x51],
    ...[...offset, ...size, ...stride, 0x89, 0x74, 0x52, 0x73, 0x73, 0x2e],
  ]);
  return make_zip([
    { name: "archive/data.pkl", data: pkl },
    { name: "archive/data/0", data: new Uint8Array(16).fill(1) },
  ]);
});

/**
 * Bound: as the zip reader's, and each tensor reads exactly its nbytes, never more than its
 * storage's bytes (so at most ~1032 x the file size).
 */
async function checkpoint_case(bytes: Uint8Array): Promise<void> {
  const src = new RecordingSource(CKPT_PATH, bytes);
  const ckpt = await named_or(() => TorchCheckpoint.from_source(src), [CKPT_PATH], "open");
  if (!ckpt) {
    ensure(src.closed, "a refused checkpoint's source was left open");
    return src.check();
  }
  try {
    for (const t of reachable(ckpt.root).objects) {
      if (!(t instanceof TorchTensor)) continue;
      const storage_bytes = t.storage.numel * torch_dtype_bytes(t.dtype);
      ensure(
        t.nbytes <= storage_bytes,
        `a [${t.shape}] view reads ${t.nbytes} bytes of a ${storage_bytes}-byte storage`,
      );
      const b = await named_or(() => t.read(), [CKPT_PATH], "tensor read");
      if (b) ensure(b.length === t.nbytes, `a tensor read ${b.length} bytes, expected ${t.nbytes}`);
    }
    src.check();
  } finally {
    ckpt.close();
  }
}

const checkpoint_target: FuzzTarget = {
  name: "torch_checkpoint",
  bound: "no read asks for more than the file; a tensor reads its nbytes <= its storage's bytes",
  property: () =>
    fc.asyncProperty(
      fc.oneof({ weight: 4, arbitrary: checkpoint_arb }, { weight: 1, arbitrary: raw_checkpoint_arb }),
      timed_async(checkpoint_case),
    ),
};

// ---------------------------------------------------------------------------------------------------
// 3. Safetensors reader

const ST_PATH = "fuzz://model.safetensors";
const DTYPES = Object.keys(SAFETENSORS_DTYPE_BYTES);

const weird_json_arb = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(-1, 1.5, 2 ** 53, 1e300, "F32", [], [1, 2, 3], [0], [-1, 4], [4, 0], null),
);

/** A generated value, and whether it is one a valid file may hold. */
interface Tagged<T> {
  v: T;
  ok: boolean;
}

/** `good` values (tagged ok) `weight` times as often as `bad` ones. */
function good_or_bad<T>(good: fc.Arbitrary<T>, bad: fc.Arbitrary<T>, weight = 12): fc.Arbitrary<Tagged<T>> {
  return fc.oneof(
    { weight, arbitrary: good.map((v) => ({ v, ok: true })) },
    { weight: 1, arbitrary: bad.map((v) => ({ v, ok: false })) },
  );
}

const st_tensor_arb = fc.record({
  name: good_or_bad<string>(
    fc.oneof(fc.constantFrom("wte", "h.0.ln_1.weight", ""), fc.string({ maxLength: 6 })),
    fc.constant("__metadata__"),
  ),
  dtype: good_or_bad<unknown>(fc.constantFrom(...DTYPES), weird_json_arb),
  shape: good_or_bad<unknown>(
    fc.array(fc.nat({ max: 5 }), { maxLength: 3 }),
    fc.oneof(fc.array(fc.constantFrom(2 ** 20, 2 ** 30, 0, 3), { maxLength: 4 }), weird_json_arb),
  ),
  offsets: good_or_bad<unknown>(
    fc.constant("packed"),
    fc.oneof(fc.tuple(fc.nat({ max: 600 }), fc.nat({ max: 600 })), weird_json_arb),
  ),
});

const small_delta_arb = good_or_bad(fc.constant(0), fc.integer({ min: -9, max: 9 }), 5);

const st_input_arb = fc.oneof(
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 256 }).map((bytes) => ({ bytes, valid: false })) },
  {
    weight: 1,
    arbitrary: fc.tuple(
      fc.json({ maxDepth: 3 }),
      fc.integer({ min: -4, max: 4 }),
      fc.uint8Array({ maxLength: 64 }),
    )
      .map(([json, d, tail]) => ({ bytes: st_file(utf8.encode(json), d, tail), valid: false })),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      tensors: fc.array(st_tensor_arb, { maxLength: 5 }),
      metadata: fc.option(
        good_or_bad<unknown>(
          fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 })),
          weird_json_arb,
          5,
        ),
      ),
      pad: fc.nat({ max: 9 }),
      len_delta: small_delta_arb,
      data_delta: small_delta_arb,
      muts: muts_arb(2, 4),
    }).map(st_structured),
  },
);

/** 8-byte length (off by `delta`), header, tail. */
function st_file(header: Uint8Array, delta: number, tail: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + header.length + tail.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(Math.max(0, header.length + delta)), true);
  out.set(header, 8);
  out.set(tail, 8 + header.length);
  return out;
}

interface SafetensorsCase {
  tensors: {
    name: Tagged<string>;
    dtype: Tagged<unknown>;
    shape: Tagged<unknown>;
    offsets: Tagged<unknown>;
  }[];
  metadata: Tagged<unknown> | null;
  pad: number;
  len_delta: Tagged<number>;
  data_delta: Tagged<number>;
  muts: Mutation[];
}

/** A safetensors file laid out as write_safetensors does, with the case's lies; `valid` when it has none. */
function st_structured(c: SafetensorsCase): { bytes: Uint8Array; valid: boolean } {
  const header: Record<string, unknown> = {};
  if (c.metadata !== null) header.__metadata__ = c.metadata.v;
  let end = 0;
  let valid = (c.metadata?.ok ?? true) && c.len_delta.ok && c.data_delta.ok && c.muts.length === 0;
  for (const t of c.tensors) {
    let offsets = t.offsets.v;
    if (offsets === "packed") {
      const n = Array.isArray(t.shape.v) ? t.shape.v.reduce((a: number, b) => a * Number(b), 1) : 1;
      const nbytes = n * (SAFETENSORS_DTYPE_BYTES[String(t.dtype.v)] ?? 1);
      offsets = [end, end + nbytes];
      end += Number.isFinite(nbytes) ? nbytes : 0;
    }
    header[t.name.v] = { dtype: t.dtype.v, shape: t.shape.v, data_offsets: offsets };
    valid &&= t.name.ok && t.dtype.ok && t.shape.ok && t.offsets.ok;
  }
  const json = utf8.encode(JSON.stringify(header) + " ".repeat(c.pad));
  const data_len = Math.max(0, Math.min(end, 4096) + c.data_delta.v);
  const data = Uint8Array.from({ length: data_len }, (_, i) => (i * 13) & 0xff);
  return { bytes: mutate(st_file(json, c.len_delta.v, data), c.muts, []), valid: valid && end <= 4096 };
}

/**
 * Bound: no read asks for more than the file holds (the header length is checked against the file
 * before it is read); each tensor read returns exactly its nbytes, from within the file.
 */
async function safetensors_case(bytes: Uint8Array, valid: boolean): Promise<void> {
  const src = new RecordingSource(ST_PATH, bytes);
  const f = await named_or(() => SafetensorsFile.from_source(src), [ST_PATH], "open");
  if (!f) {
    ensure(src.closed, "a refused file's source was left open");
    ensure(!valid, "a valid file was refused");
    return src.check();
  }
  try {
    const meta = f.metadata;
    if (meta !== null) {
      ensure(typeof meta === "object" && !Array.isArray(meta), "__metadata__ is not an object");
      for (const [k, v] of Object.entries(meta)) {
        ensure(typeof v === "string", `__metadata__.${k} is a ${typeof v}`);
      }
    }
    const spans: [number, number][] = [];
    for (const e of f.entries.values()) {
      ensure(DTYPES.includes(e.dtype), `dtype ${e.dtype}`);
      ensure(e.shape.every((d) => Number.isSafeInteger(d) && d >= 0), `shape ${e.shape}`);
      const n = e.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_BYTES[e.dtype];
      ensure(e.nbytes === n, `"${e.name}": nbytes ${e.nbytes} != ${n}`);
      ensure(
        e.offset_bytes >= 8 && e.offset_bytes + e.nbytes <= bytes.length,
        `"${e.name}" is outside the file`,
      );
      const b = await f.read(e.name);
      ensure(same_bytes(b, bytes.subarray(e.offset_bytes, e.offset_bytes + e.nbytes)), `"${e.name}" differs`);
      if (e.nbytes) spans.push([e.offset_bytes, e.offset_bytes + e.nbytes]);
    }
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) ensure(spans[i][0] >= spans[i - 1][1], "tensors overlap");
    src.check();
  } finally {
    f.close();
  }
}

const safetensors_target: FuzzTarget = {
  name: "safetensors",
  bound: "no read asks for more than the file; each tensor read = its nbytes, within the file",
  property: () =>
    fc.asyncProperty(st_input_arb, timed_async(({ bytes, valid }) => safetensors_case(bytes, valid))),
};

// ---------------------------------------------------------------------------------------------------
// 4. Config validation

const CFG_WHAT = "fuzz-config.json";

const ANYTHING: fc.ObjectConstraints = {
  maxDepth: 2,
  withBigInt: true,
  withBoxedValues: true,
  withDate: true,
  withMap: true,
  withSet: true,
  withNullPrototype: true,
  withSparseArray: true,
  withTypedArray: true,
};

const weird_number_arb = fc.oneof(
  fc.constantFrom(
    0,
    -0,
    -1,
    1.5,
    NaN,
    Infinity,
    -Infinity,
    2 ** 53,
    2 ** 53 - 1,
    1e300,
    1e-5,
    Number.MIN_VALUE,
  ),
  fc.double(),
  fc.bigInt({ min: -4n, max: 2048n }),
);

const ACTIVATION_NAMES = ["gelu_erf", "gelu_tanh", "gelu_new", "gelu_pytorch_tanh", "gelu", "relu"];

/** A field's value: wrong types, negatives, floats, huge numbers, NaN, or anything at all. */
const bad_field_arb = fc.oneof(
  weird_number_arb,
  fc.anything(ANYTHING),
  fc.constantFrom(...ACTIVATION_NAMES, "gpt2", "", null, undefined, true, false, "12"),
);

/** A valid object from `base`, with up to 3 fields (known or not) replaced by bad values or deleted. */
function corrupted(base: fc.Arbitrary<Record<string, unknown>>, keys: readonly string[]) {
  const edit = fc.tuple(
    fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...keys) }, {
      weight: 1,
      arbitrary: fc.string({ maxLength: 5 }),
    }),
    fc.option(bad_field_arb, { freq: 5 }),
  );
  return fc.tuple(base, fc.array(edit, { maxLength: 3 })).map(([b, edits]) => {
    const o: Record<string, unknown> = { ...b };
    for (const [k, v] of edits) {
      if (v === null) delete o[k];
      else o[k] = v;
    }
    return o;
  });
}

const dims_arb = fc.record({
  n_layer: fc.integer({ min: 1, max: 48 }),
  n_head: fc.constantFrom(1, 2, 3, 4, 12),
  head_dim: fc.constantFrom(1, 4, 64),
  block: fc.integer({ min: 1, max: 2048 }),
  vocab_size: fc.integer({ min: 1, max: 60000 }),
});

const config_base_arb = fc.tuple(
  dims_arb,
  fc.boolean(),
  fc.constantFrom("gelu_erf", "gelu_tanh"),
  fc.constantFrom(1e-5, 0.1),
)
  .map(([d, bias, activation, layer_norm_eps]) => ({
    n_layer: d.n_layer,
    n_head: d.n_head,
    n_embd: d.n_head * d.head_dim,
    block_size: d.block,
    vocab_size: d.vocab_size,
    bias,
    activation,
    layer_norm_eps,
  }));

const hf_base_arb = fc.tuple(dims_arb, fc.constantFrom("gelu_new", "gelu_pytorch_tanh", "gelu"), fc.boolean())
  .map(([d, activation_function, with_inner]) => ({
    model_type: "gpt2",
    n_layer: d.n_layer,
    n_head: d.n_head,
    n_embd: d.n_head * d.head_dim,
    n_positions: d.block,
    n_ctx: d.block,
    vocab_size: d.vocab_size,
    activation_function,
    layer_norm_epsilon: 1e-5,
    n_inner: with_inner ? 4 * d.n_head * d.head_dim : null,
  }));

const CONFIG_KEYS = "n_layer n_head n_embd block_size vocab_size bias activation layer_norm_eps".split(" ");
const HF_KEYS = [
  ..."model_type n_layer n_head n_embd n_positions n_ctx vocab_size activation_function".split(" "),
  ..."layer_norm_epsilon n_inner scale_attn_by_inverse_layer_idx scale_attn_weights".split(" "),
];

const config_input_arb = fc.oneof(
  { weight: 4, arbitrary: corrupted(config_base_arb, CONFIG_KEYS) },
  { weight: 4, arbitrary: corrupted(hf_base_arb, HF_KEYS) },
  { weight: 1, arbitrary: fc.json({ maxDepth: 2 }).map((s) => JSON.parse(s) as unknown) },
  { weight: 1, arbitrary: fc.anything(ANYTHING) },
);

/** What a config error names: a field, or the kind of object expected. */
const CONFIG_FIELDS = [...CONFIG_KEYS, ...HF_KEYS, "object", "dict"];

/** Every field of a returned config is one the model can run. */
function check_config(c: GPTConfig, label: string): void {
  for (const k of ["n_layer", "n_head", "n_embd", "block_size", "vocab_size"] as const) {
    ensure(Number.isSafeInteger(c[k]) && c[k] > 0, `${label}: accepted ${k} = ${String(c[k])}`);
  }
  ensure(c.n_embd % c.n_head === 0, `${label}: accepted n_embd ${c.n_embd} with n_head ${c.n_head}`);
  ensure(typeof c.bias === "boolean", `${label}: accepted bias ${String(c.bias)}`);
  ensure(
    c.activation === "gelu_erf" || c.activation === "gelu_tanh",
    `${label}: activation ${String(c.activation)}`,
  );
  const eps = c.layer_norm_eps;
  ensure(
    typeof eps === "number" && Number.isFinite(eps) && eps > 0,
    `${label}: accepted layer_norm_eps ${String(eps)}`,
  );
}

function config_attempt(label: string, f: () => GPTConfig | void, x: object | null): void {
  let c: GPTConfig | void;
  try {
    c = f();
  } catch (e) {
    expect_named_error(e, [CFG_WHAT]);
    const msg = (e as Error).message;
    ensure(CONFIG_FIELDS.some((k) => msg.includes(k)), `${label}: the error names no field: ${msg}`);
    return count(`${label} refused`);
  }
  count(`${label} ok`);
  check_config(c ?? (x as GPTConfig), label);
}

function config_case(x: unknown): void {
  const obj = x !== null && typeof x === "object" ? x : null;
  if (obj) config_attempt("validate_config", () => validate_config(obj as GPTConfig, CFG_WHAT), obj);
  if (obj) {
    const m = new Map<unknown, unknown>(Object.entries(obj));
    config_attempt("nanogpt_config", () => nanogpt_config(m, CFG_WHAT), null);
  }
  config_attempt("nanogpt_config (not a Map)", () => nanogpt_config(x, CFG_WHAT), null);
  config_attempt("hf_config", () => hf_config(x, CFG_WHAT), null);
}

const config_target: FuzzTarget = {
  name: "config",
  bound: "allocates nothing input-sized: case time and sampled RSS only",
  property: () => fc.property(config_input_arb, timed(config_case)),
};

// ---------------------------------------------------------------------------------------------------
// 5. Tokenizers

let gpt2: Promise<Tokenizer> | null = null;

const text_unit_arb = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: "grapheme", maxLength: 6 }) },
  { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 4 }) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      "<|endoftext|>",
      "<|endoftext",
      "|>",
      "\uFEFF",
      "e\u0301",
      "\u{1F469}\u200D\u{1F4BB}",
      "\u{1F1FA}\u{1F1F8}",
      " ",
      "  ",
      "\n\n",
      "\r\n",
      "'s",
      "\u0000",
      "\uFFFD",
      "\u{10FFFF}",
      "123",
    ),
  },
  { weight: 1, arbitrary: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)) },
);

// Lone surrogates are generated so that a high and a low one may meet and join; any left alone are
// filtered out (encode turns them into U+FFFD, which cannot round-trip).
const text_arb = fc.array(text_unit_arb, { maxLength: 24 }).map((parts) => parts.join(""))
  .filter((s) => s.isWellFormed());

function gpt2_case(tok: Tokenizer, s: string): void {
  const ids = tok.encode(s);
  ensure(ids.every((i) => Number.isInteger(i) && i >= 0 && i < tok.vocab_size), `ids out of range: ${ids}`);
  const back = tok.decode(ids);
  ensure(back === s, `decode(encode(${JSON.stringify(s)})) = ${JSON.stringify(back)}`);
}

const gpt2_target: FuzzTarget = {
  name: "gpt2_tokenizer",
  bound: "ids in [0, 50257); case time and sampled RSS",
  // The tables load and the BPE builds (about 0.8 s) once, before the first case's clock starts.
  property: () =>
    fc.asyncProperty(text_arb, async (s) => {
      gpt2 ??= create_tokenizer({ kind: "gpt2" }).then((t) => (t.encode(""), t));
      timed(gpt2_case)(await gpt2, s);
    }),
};

const char_arb = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: "binary", minLength: 1, maxLength: 1 }) },
  { weight: 2, arbitrary: fc.string({ unit: "grapheme", minLength: 1, maxLength: 1 }) },
  // Lone high surrogates only: a high then a low one would join into one character of the text.
  { weight: 1, arbitrary: fc.integer({ min: 0xd800, max: 0xdbff }).map((c) => String.fromCharCode(c)) },
);

const char_input_arb = fc.uniqueArray(char_arb, { minLength: 1, maxLength: 16 }).chain((alphabet) =>
  fc.record({
    alphabet: fc.constant(alphabet),
    ids: fc.shuffledSubarray([...Array(40).keys()], {
      minLength: alphabet.length,
      maxLength: alphabet.length,
    }),
    text: fc.array(fc.constantFrom(...alphabet), { maxLength: 30 }),
    stranger: fc.option(fc.tuple(char_arb, fc.nat())),
  })
);

/** The first code point of `text` that is not a key of `stoi`. */
function first_unknown(text: string, stoi: Map<string, number>): string | undefined {
  for (const ch of text) if (!stoi.has(ch)) return ch;
  return undefined;
}

interface CharCase {
  alphabet: string[];
  ids: number[];
  text: string[];
  stranger: [string, number] | null;
}

/**
 * A vocabulary of single characters is accepted (any other is refused naming the entry); text over
 * it round-trips, and text with a character outside it is refused naming that character.
 */
function char_case(c: CharCase): void {
  const stoi = new Map(c.alphabet.map((ch, i) => [ch, c.ids[i]]));
  const itos = new Map(c.alphabet.map((ch, i) => [c.ids[i], ch]));
  let tok: CharTokenizer;
  try {
    tok = new CharTokenizer(stoi, itos);
  } catch (e) {
    const bad = c.alphabet.find((ch) => [...ch].length !== 1);
    ensure(bad !== undefined, `a vocabulary of single characters was refused: ${(e as Error).message}`);
    return expect_named_error(e, [JSON.stringify(bad)]);
  }
  const over = c.text.join("");
  const ids = tok.encode(over);
  ensure(ids.every((i) => i >= 0 && i < tok.vocab_size), "ids out of range");
  ensure(tok.decode(ids) === over, `decode(encode(${JSON.stringify(over)})) differs`);
  if (!c.stranger) return;
  const parts = [...c.text];
  parts.splice(c.stranger[1] % (parts.length + 1), 0, c.stranger[0]);
  const text = parts.join("");
  const unknown = first_unknown(text, stoi);
  let ids2: number[];
  try {
    ids2 = tok.encode(text);
  } catch (e) {
    ensure(unknown !== undefined, `encode refused ${JSON.stringify(text)}: ${(e as Error).message}`);
    return expect_named_error(e, [JSON.stringify(unknown)]);
  }
  ensure(unknown === undefined, `encode accepted ${JSON.stringify(unknown)}, not in the vocabulary`);
  ensure(tok.decode(ids2) === text, `decode(encode(${JSON.stringify(text)})) differs`);
}

const char_target: FuzzTarget = {
  name: "char_tokenizer",
  bound: "ids below vocab_size; case time and sampled RSS",
  property: () => fc.property(char_input_arb, timed(char_case)),
};

// ---------------------------------------------------------------------------------------------------
// 6. Request validation

const REQUEST_KEYS: readonly string[] = ["prompt", ...SAMPLING_KEYS];

const sampling_value_arb = fc.oneof(
  fc.integer({ min: -2, max: 1000 }),
  weird_number_arb,
  fc.double({ min: 0, max: 1 }),
  fc.constantFrom("slide", "error", "", "x", true, false, null, undefined),
  fc.array(fc.string({ maxLength: 3 }), { maxLength: 3 }),
  fc.sparseArray(fc.string({ minLength: 1, maxLength: 2 }), { maxLength: 3 }),
  fc.anything(ANYTHING),
);

const request_arb = fc.oneof(
  { weight: 1, arbitrary: fc.anything(ANYTHING) },
  {
    weight: 3,
    arbitrary: fc.dictionary(
      fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...REQUEST_KEYS) }, {
        weight: 1,
        arbitrary: fc.string({ maxLength: 6 }),
      }),
      sampling_value_arb,
      { maxKeys: 6 },
    ),
  },
  {
    weight: 3,
    arbitrary: fc.record(Object.fromEntries(SAMPLING_KEYS.map((k) => [k, sampling_value_arb])), {
      requiredKeys: [],
    }),
  },
);

const is_count = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** Whether `v` is a valid value of sampling option `k` (an independent statement of the rules). */
function valid_option(k: string, v: unknown): boolean {
  switch (k) {
    case "max_new_tokens":
    case "top_k":
    case "seed":
      return is_count(v);
    case "temperature":
      return typeof v === "number" && Number.isFinite(v) && v >= 0;
    case "top_p":
      return typeof v === "number" && v > 0 && v <= 1;
    case "stop":
      if (!Array.isArray(v)) return false;
      for (let i = 0; i < v.length; i++) if (typeof v[i] !== "string" || v[i].length === 0) return false;
      return true;
    case "stop_at_eot":
      return typeof v === "boolean";
    case "context_overflow":
      return v === "slide" || v === "error";
  }
  return false;
}

function request_case(o: unknown): void {
  const plain = o !== null && typeof o === "object" && !Array.isArray(o);
  const rec = (plain ? o : {}) as Record<string, unknown>;
  const unknown_key = Object.keys(rec).find((k) => !REQUEST_KEYS.includes(k));
  const invalid = SAMPLING_KEYS.filter((k) => rec[k] !== undefined && !valid_option(k, rec[k]));
  let r: Required<SamplingOptions>;
  try {
    check_request_keys(o, "request", ["prompt"]);
    r = resolve_sampling(o as SamplingOptions);
  } catch (e) {
    const names = !plain && o !== undefined
      ? ["request"]
      : unknown_key !== undefined
      ? [`"${unknown_key}"`]
      : [];
    expect_named_error(e, names);
    if (plain && unknown_key === undefined) {
      const msg = (e as Error).message;
      // Every sampling error begins with the option's name.
      ensure(
        invalid.some((k) => msg.startsWith(`${k} `)),
        `the error names no invalid key (${invalid}): ${msg}`,
      );
    }
    return count("refused");
  }
  ensure(plain || o === undefined, `a ${typeof o} request was accepted`);
  ensure(unknown_key === undefined, `unknown key "${unknown_key}" was accepted`);
  ensure(invalid.length === 0, `invalid ${invalid.join(", ")} accepted`);
  for (const k of SAMPLING_KEYS) {
    ensure(valid_option(k, r[k]), `resolved ${k} = ${String(r[k])} is out of range`);
    if (rec[k] !== undefined) ensure(Object.is(r[k], rec[k]), `${k} was not the given value`);
  }
  count("accepted");
}

const request_target: FuzzTarget = {
  name: "request",
  bound: "allocates nothing input-sized: case time and sampled RSS only",
  property: () => fc.property(request_arb, timed(request_case)),
};

/** Every fuzz target, in run order. */
export const TARGETS: readonly FuzzTarget[] = [
  zip_target,
  pickle_target,
  pickle_globals_target,
  meta_target,
  checkpoint_target,
  safetensors_target,
  config_target,
  gpt2_target,
  char_target,
  request_target,
];
