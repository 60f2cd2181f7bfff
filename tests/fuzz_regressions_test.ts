/**
 * Every failure `deno task fuzz` found, as a deterministic test: the minimal counterexample (as the
 * fuzzer shrank it, literal bytes or values) and the clear error or correct result it must give now.
 * Each test names the target that found it.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import { type ByteSource, MemoryFile, ZipReader } from "../src/loaders/zip.ts";
import { type PyFactory, unpickle } from "../src/loaders/pickle.ts";
import { SafetensorsFile } from "../src/loaders/safetensors.ts";
import { TorchCheckpoint, type TorchTensor } from "../src/loaders/torch_checkpoint.ts";
import { load_char_vocab, nanogpt_config } from "../src/loaders/nanogpt.ts";
import { hf_config } from "../src/loaders/hf.ts";
import { type GPTConfig, validate_config } from "../src/model/config.ts";
import { CharTokenizer } from "../src/tokenizer/char.ts";
import { create_tokenizer } from "../src/tokenizer/tokenizer.ts";
import { resolve_sampling, type SamplingOptions } from "../src/engine/sampling.ts";
import { make_zip } from "./helpers/zip_writer.ts";
import { FakeTensor, pickle } from "./helpers/torch_writer.ts";

const tmp_dir = Deno.makeTempDirSync({ prefix: "ngpt_fuzz_regressions_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp_dir, { recursive: true }));

const ascii = (s: string) => Array.from(s, (c) => c.charCodeAt(0));
/** BINUNICODE of an ASCII string. */
const str = (s: string) => [0x58, s.length, 0, 0, 0, ...ascii(s)];
/** BININT. */
const int = (n: number) => [0x4a, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24];
/** LONG1 of 7 bytes: 2^53, past Number.MAX_SAFE_INTEGER, so it unpickles as a bigint. */
const BIG = [0x8a, 7, 0, 0, 0, 0, 0, 0, 32];

/** A MemoryFile that records every read request. */
class Recorder implements ByteSource {
  readonly file: MemoryFile;
  readonly requests: number[] = [];
  constructor(readonly path: string, bytes: Uint8Array) {
    this.file = new MemoryFile(path, bytes);
  }
  get size_bytes(): number {
    return this.file.size_bytes;
  }
  read_at(offset: number, length: number, what?: string): Promise<Uint8Array> {
    this.requests.push(length);
    return this.file.read_at(offset, length, what);
  }
  close(): void {
    this.file.close();
  }
}

// --- zip ----------------------------------------------------------------------------------------

Deno.test("fuzz regression (zip): an empty ZIP64 archive, which begins with its ZIP64 end record, opens", async () => {
  // make_zip([], { zip64: true }): the reader took its first 4 bytes, PK\x06\x06, for a wrong magic.
  const bytes = Uint8Array.from([
    ...[80, 75, 6, 6, 44, 0, 0, 0, 0, 0, 0, 0, 45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ...[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 80, 75, 6, 7, 0, 0, 0, 0],
    ...[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 80, 75, 5, 6, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255],
    ...[255, 255, 255, 255, 0, 0],
  ]);
  using z = await ZipReader.from_source(new MemoryFile("empty64.zip", bytes));
  assertEquals(z.entries.size, 0);
});

Deno.test("fuzz regression (zip): a local header's lying name length is refused before it is read", async () => {
  // One entry "" whose local header declares a 99-byte name, in a 98-byte file: the reader asked the
  // file for 99 bytes (more than it holds) before noticing.
  const bytes = Uint8Array.from([
    ...[80, 75, 3, 4, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 0],
    ...[80, 75, 1, 2, 45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ...[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ...[80, 75, 5, 6, 0, 0, 0, 0, 1, 0, 1, 0, 46, 0, 0, 0, 30, 0, 0, 0, 0, 0],
  ]);
  const src = new Recorder("lying_name.zip", bytes);
  using z = await ZipReader.from_source(src);
  await assertRejects(
    () => z.read(""),
    Error,
    `lying_name.zip: corrupt zip: the local header of "" at offset 0 declares a 99-byte name`,
  );
  assert(src.requests.every((n) => n <= bytes.length), `read requests ${src.requests}`);
});

// --- pickle -------------------------------------------------------------------------------------

for (const module of ["constructor", "toString"]) {
  Deno.test(`fuzz regression (pickle_globals): a global in module "${module}" is named as written`, () => {
    // GLOBAL "constructor\n\n": the Python-2 module table was read through Object.prototype, so the
    // error named "function Object() { [native code] }." instead.
    const bytes = Uint8Array.from([0x80, 2, 0x28, 0x31, 0x63, ...ascii(`${module}\n\n`), 0x2e]);
    const calls: string[] = [];
    const globals = new Map<string, PyFactory>([["builtins.set", () => calls.push("builtins.set")]]);
    assertThrows(
      () => unpickle(bytes, { globals, what: "g.pkl" }),
      Error,
      `forbidden global "${module}." in g.pkl`,
    );
    assertEquals(calls, []);
  });
}

// --- meta.pkl -----------------------------------------------------------------------------------

async function write_meta(name: string, bytes: number[]): Promise<string> {
  const path = `${tmp_dir}/${name}`;
  await Deno.writeFile(path, Uint8Array.from(bytes));
  return path;
}

Deno.test("fuzz regression (meta_pkl): stoi and itos that disagree are an error naming meta.pkl", async () => {
  // {"vocab_size": 1, "itos": {1: "𐀀"}, "stoi": {"𐀀": 0}}: loaded, then the tokenizer refused it
  // with an error that did not name the file.
  const path = await write_meta("disagree.pkl", [
    ...[0x80, 2, 0x7d, 0x28, ...str("vocab_size"), ...int(1)],
    ...[...str("itos"), 0x7d, 0x28, ...int(1), 0x58, 4, 0, 0, 0, 240, 144, 128, 128, 0x75],
    ...[...str("stoi"), 0x7d, 0x28, 0x58, 4, 0, 0, 0, 240, 144, 128, 128, ...int(0), 0x75, 0x75, 0x2e],
  ]);
  await assertRejects(
    () => load_char_vocab(path),
    Error,
    `${path}: char vocabulary: stoi["𐀀"] = 0 but itos[0]`,
  );
});

Deno.test("fuzz regression (meta_pkl): a big-int key of stoi or value of itos is an error naming meta.pkl", async () => {
  // {"stoi": {2**53: None}, "itos": {}} and {"stoi": {}, "itos": {0: 2**53}}: the message's
  // JSON.stringify threw "Do not know how to serialize a BigInt".
  const stoi = await write_meta("big_stoi.pkl", [
    ...[0x80, 2, 0x7d, 0x28, ...str("stoi"), 0x7d, 0x28, ...BIG, 0x4e, 0x75],
    ...[...str("itos"), 0x7d, 0x28, 0x75, 0x75, 0x2e],
  ]);
  await assertRejects(
    () => load_char_vocab(stoi),
    Error,
    `${stoi}: stoi must map str -> int, found 9007199254740992n -> null`,
  );
  const itos = await write_meta("big_itos.pkl", [
    ...[0x80, 2, 0x7d, 0x28, ...str("stoi"), 0x7d, 0x28, 0x75],
    ...[...str("itos"), 0x7d, 0x28, ...int(0), ...BIG, 0x75, 0x75, 0x2e],
  ]);
  await assertRejects(
    () => load_char_vocab(itos),
    Error,
    `${itos}: itos must map int -> str, found 0 -> 9007199254740992n`,
  );
});

// --- torch checkpoints --------------------------------------------------------------------------

Deno.test("fuzz regression (torch_checkpoint): a zero-stride view larger than its storage is refused", async () => {
  // The fuzzer's case: a [1, 1, 2] view with strides [0, 0, 0] over a 1-element storage read 8 bytes
  // from 4; the same view as [2^20, 2^20] would have allocated 4 TiB from a file of a few hundred bytes.
  for (const shape of [[1, 1, 2], [2 ** 20, 2 ** 20]]) {
    const storages = new Map([["0", new Uint8Array(4)]]);
    const root = new Map([["w", new FakeTensor("0", "f32", shape, shape.map(() => 0))]]);
    const bytes = make_zip([
      { name: "archive/data.pkl", data: pickle(root, storages) },
      { name: "archive/data/0", data: storages.get("0")! },
    ]);
    await assertRejects(
      () => TorchCheckpoint.from_source(new MemoryFile("bcast.pt", bytes)),
      Error,
      `bcast.pt (archive/data.pkl): torch._utils._rebuild_tensor_v2: tensor of shape [${shape}]`,
    );
  }
  // A zero-stride view no larger than its storage still loads.
  const storages = new Map([["0", new Uint8Array(8)]]);
  const root = new Map([["w", new FakeTensor("0", "f32", [2], [0])]]);
  const bytes = make_zip([
    { name: "archive/data.pkl", data: pickle(root, storages) },
    { name: "archive/data/0", data: storages.get("0")! },
  ]);
  using ckpt = await TorchCheckpoint.from_source(new MemoryFile("ok.pt", bytes));
  const w = (ckpt.root as Map<string, TorchTensor>).get("w")!;
  assertEquals((await w.read()).length, 8);
});

/** A data.pkl of {"model": {"w": _rebuild_tensor_v2(pid, offset, size, stride, False)}} in a zip. */
function raw_checkpoint(pid: number[], offset: number[], size: number[], stride: number[]): Uint8Array {
  const pkl = Uint8Array.from([
    ...[0x80, 2, 0x7d, ...str("model"), 0x7d, ...str("w")],
    ...[0x63, ...ascii("torch._utils\n_rebuild_tensor_v2\n"), 0x28, 0x28, ...pid, 0x74, 0x51],
    ...[...offset, ...size, ...stride, 0x89, 0x74, 0x52, 0x73, 0x73, 0x2e],
  ]);
  return make_zip([
    { name: "archive/data.pkl", data: pkl },
    { name: "archive/data/0", data: new Uint8Array(16).fill(1) },
  ]);
}

Deno.test("fuzz regression (torch_checkpoint): big ints in a tensor's size or persistent id are named", async () => {
  const storage = [
    ...str("storage"),
    0x63,
    ...ascii("torch\nFloatStorage\n"),
    ...str("0"),
    ...str("cpu"),
    ...int(4),
  ];
  const stride = [0x28, ...int(2), ...int(1), 0x74];
  // size (2**53,): the message's JSON.stringify threw inside the allowed factory.
  const big_size = raw_checkpoint(storage, int(0), [0x28, ...BIG, 0x74], stride);
  await assertRejects(
    () => TorchCheckpoint.from_source(new MemoryFile("size.pt", big_size)),
    Error,
    "size.pt (archive/data.pkl): torch._utils._rebuild_tensor_v2: tensor size [9007199254740992n] is not",
  );
  // persistent id (2**53, FloatStorage, 0, "cpu", 0.0): the hook's JSON.stringify threw a bare TypeError.
  const pid = [
    ...BIG,
    0x63,
    ...ascii("torch\nFloatStorage\n"),
    ...int(0),
    ...str("cpu"),
    0x47,
    ...new Array(8).fill(0),
  ];
  const big_pid = raw_checkpoint(pid, int(0), [0x28, 0x74], stride);
  await assertRejects(
    () => TorchCheckpoint.from_source(new MemoryFile("pid.pt", big_pid)),
    Error,
    "pid.pt (archive/data.pkl): unsupported persistent id [9007199254740992n,",
  );
});

// --- safetensors --------------------------------------------------------------------------------

Deno.test("fuzz regression (safetensors): a __metadata__ value that is not a string is refused", async () => {
  // {"__metadata__":{"":0}}: loaded, with a number where every reader expects a string.
  const header = ascii('{"__metadata__":{"":0}}');
  const bytes = Uint8Array.from([header.length, 0, 0, 0, 0, 0, 0, 0, ...header]);
  await assertRejects(
    () => SafetensorsFile.from_source(new MemoryFile("meta.safetensors", bytes)),
    Error,
    "meta.safetensors: safetensors __metadata__. is not a string: 0",
  );
});

// --- configs ------------------------------------------------------------------------------------

const CONFIG: GPTConfig = {
  n_layer: 1,
  n_head: 1,
  n_embd: 1,
  block_size: 1,
  vocab_size: 1,
  bias: false,
  activation: "gelu_erf",
  layer_norm_eps: 1e-5,
};

Deno.test("fuzz regression (config): validate_config refuses what the model cannot run, naming the field", () => {
  const bad = (patch: Record<string, unknown>) => ({ ...CONFIG, ...patch }) as GPTConfig;
  const cases: [Record<string, unknown>, string][] = [
    [{ n_layer: 2 ** 53 }, "c: n_layer must be a positive integer, got 9007199254740992"], // not a safe integer
    [{ layer_norm_eps: 1n }, "c: layer_norm_eps must be a finite number > 0, got 1"], // 1n > 0 is true
    [{ layer_norm_eps: Infinity }, "c: layer_norm_eps must be a finite number > 0, got Infinity"],
    [{ bias: undefined }, "c: bias must be a boolean, got undefined"],
    [{ activation: undefined }, `c: activation must be "gelu_erf" or "gelu_tanh", got undefined`],
    // A null-prototype object made the message's template literal throw a TypeError.
    [{ n_layer: Object.create(null) }, "c: n_layer must be a positive integer, got {}"],
    [{ layer_norm_eps: Object.create(null) }, "c: layer_norm_eps must be a finite number > 0, got {}"],
  ];
  for (const [patch, msg] of cases) assertThrows(() => validate_config(bad(patch), "c"), Error, msg);
  validate_config(CONFIG, "c");
});

Deno.test("fuzz regression (config): nanogpt_config names a big-int or null-prototype field", () => {
  // {"n_layer": [[0n]]}: JSON.stringify threw "Do not know how to serialize a BigInt".
  const args = (patch: Record<string, unknown>) => new Map(Object.entries({ ...CONFIG, ...patch }));
  const e = assertThrows(
    () => nanogpt_config(args({ n_layer: [[0n]] }), "ck.pt"),
    Error,
    "ck.pt: model_args.n_layer",
  );
  assert(!(e instanceof TypeError), e.message);
  assertThrows(
    () => nanogpt_config(args({ bias: Object.create(null) }), "ck.pt"),
    Error,
    "ck.pt: model_args.bias must be a bool, got {}",
  );
});

Deno.test("fuzz regression (config): hf_config names big-int and null-prototype fields", () => {
  const base = {
    model_type: "gpt2",
    n_layer: 1,
    n_head: 1,
    n_embd: 1,
    n_positions: 1,
    n_ctx: 1,
    vocab_size: 1,
    activation_function: "gelu_new",
    layer_norm_epsilon: 1e-5,
    n_inner: null,
  };
  const cases: [Record<string, unknown>, string][] = [
    [{ model_type: 0n }, "c.json: model_type is 0n"],
    [{ n_layer: 0n }, `c.json: field "n_layer" must be a positive integer, got 0n`],
    [{ activation_function: 0n }, "c.json: activation_function 0n is unsupported"],
    [{ layer_norm_epsilon: 0n }, `c.json: field "layer_norm_epsilon" must be a positive number, got 0n`],
    [{ n_inner: Object.create(null) }, `c.json: field "n_inner" is {}`],
  ];
  for (const [patch, msg] of cases) {
    assertThrows(() => hf_config({ ...base, ...patch }, "c.json"), Error, msg);
  }
});

// --- tokenizers ---------------------------------------------------------------------------------

Deno.test("fuzz regression (gpt2_tokenizer): a leading U+FEFF survives decode(encode(s))", async () => {
  // "\uFEFF" decoded to "": TextDecoder drops a leading byte order mark unless told not to.
  const t = await create_tokenizer({ kind: "gpt2" });
  for (const s of ["\uFEFF", "\uFEFFhello", "a\uFEFF"]) assertEquals(t.decode(t.encode(s)), s);
});

Deno.test("fuzz regression (char_tokenizer): a vocabulary entry of two code points is refused, naming it", () => {
  // ["A\u0300"] (À, decomposed): accepted, then encode() of "A\u0300" said "A" is not in the vocabulary.
  assertThrows(
    () => new CharTokenizer(new Map([["A\u0300", 5]]), new Map([[5, "A\u0300"]])),
    Error,
    `char vocabulary: stoi key "A\u0300" is not a single character`,
  );
});

// --- requests -----------------------------------------------------------------------------------

Deno.test("fuzz regression (request): a sparse stop array is refused, naming stop", () => {
  // { stop: [,] }: Array.prototype.some skips holes, so the hole passed as a stop string.
  // deno-lint-ignore no-sparse-arrays
  const stop = [, "x"] as string[];
  assertThrows(() => resolve_sampling({ stop } as SamplingOptions), TypeError, "stop must be an array");
  assertEquals(resolve_sampling({ stop: ["x"] }).stop, ["x"]);
});
