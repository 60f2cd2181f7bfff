/**
 * Opens a `torch.save` checkpoint (the zip format of PyTorch >= 1.6): unpickles `<prefix>/data.pkl`
 * through a small allowlist (tensors, storages, OrderedDict, sets, numpy scalars) and gives its tensors
 * lazily: each knows its dtype, shape, stride and storage, and reads only its own bytes from the zip.
 * @module
 */
import type { DType } from "../backend/backend.ts";
import { PY_SETSTATE, type PyFactory, PyGlobal, unpickle } from "./pickle.ts";
import { type ByteSource, RandomAccessFile, type ZipEntry, ZipReader } from "./zip.ts";
import { describe } from "../util/check.ts";

/** Element types of torch storages. */
export type TorchDType = DType | "f64" | "i64" | "i32" | "i16" | "i8" | "u8" | "bool";

/** Bytes per element of a TorchDType. */
export function torch_dtype_bytes(d: TorchDType): number {
  switch (d) {
    case "f64":
    case "i64":
      return 8;
    case "f32":
    case "i32":
      return 4;
    case "f16":
    case "bf16":
    case "i16":
      return 2;
    default:
      return 1;
  }
}

const STORAGE_DTYPES: Record<string, TorchDType> = {
  FloatStorage: "f32",
  HalfStorage: "f16",
  BFloat16Storage: "bf16",
  DoubleStorage: "f64",
  LongStorage: "i64",
  IntStorage: "i32",
  ShortStorage: "i16",
  CharStorage: "i8",
  ByteStorage: "u8",
  BoolStorage: "bool",
  UntypedStorage: "u8",
};

/** One storage (a `<prefix>/data/<key>` entry) of a checkpoint. */
export class TorchStorage {
  constructor(
    readonly key: string,
    readonly dtype: TorchDType,
    /** Elements in the storage. */
    readonly numel: number,
    /** Device it was saved from ("cuda:0", "cpu"); irrelevant here. */
    readonly location: string,
    /** Its zip entry. */
    readonly entry: ZipEntry,
  ) {}
}

type ByteReader = (entry: ZipEntry, offset_bytes: number, length_bytes: number) => Promise<Uint8Array>;

/** A tensor of a checkpoint, not yet read. */
export class TorchTensor {
  readonly #read_bytes: ByteReader;

  constructor(
    readonly storage: TorchStorage,
    /** Offset into the storage, in elements. */
    readonly storage_offset: number,
    readonly shape: readonly number[],
    /** Strides in elements. */
    readonly stride: readonly number[],
    read_bytes: ByteReader,
  ) {
    this.#read_bytes = read_bytes;
  }

  /** Element type. */
  get dtype(): TorchDType {
    return this.storage.dtype;
  }

  /** Number of elements. */
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** Size of the tensor's contiguous bytes. */
  get nbytes(): number {
    return this.numel * torch_dtype_bytes(this.dtype);
  }

  /** Whether the elements sit row-major and dense in the storage (dimensions of size 1 ignored). */
  get is_contiguous(): boolean {
    let expect = 1;
    for (let d = this.shape.length - 1; d >= 0; d--) {
      if (this.shape[d] !== 1 && this.stride[d] !== expect) return false;
      expect *= this.shape[d];
    }
    return true;
  }

  /** True when both tensors view the same bytes (same storage, offset, shape and strides). */
  same_view(other: TorchTensor): boolean {
    return this.storage === other.storage && this.storage_offset === other.storage_offset &&
      this.shape.length === other.shape.length && this.shape.every((s, i) => s === other.shape[i]) &&
      this.stride.every((s, i) => s === other.stride[i]);
  }

  /** Reads the tensor's bytes, little-endian, contiguous row-major (strided tensors are gathered). */
  async read(): Promise<Uint8Array> {
    const es = torch_dtype_bytes(this.dtype);
    const n = this.numel;
    if (n === 0) return new Uint8Array(0);
    if (this.is_contiguous) {
      return await this.#read_bytes(this.storage.entry, this.storage_offset * es, n * es);
    }
    // Strided: read the span the view touches, then gather rows.
    let span = 1;
    for (let d = 0; d < this.shape.length; d++) span += (this.shape[d] - 1) * this.stride[d];
    const src = await this.#read_bytes(this.storage.entry, this.storage_offset * es, span * es);
    const out = new Uint8Array(n * es);
    const nd = this.shape.length;
    const inner = this.shape[nd - 1];
    const inner_stride = this.stride[nd - 1];
    const idx = new Array(Math.max(nd - 1, 0)).fill(0);
    let o = 0;
    for (;;) {
      let base = 0;
      for (let d = 0; d < nd - 1; d++) base += idx[d] * this.stride[d];
      if (inner_stride === 1) {
        out.set(src.subarray(base * es, (base + inner) * es), o);
        o += inner * es;
      } else {
        for (let j = 0; j < inner; j++) {
          const s = (base + j * inner_stride) * es;
          out.set(src.subarray(s, s + es), o);
          o += es;
        }
      }
      let d = nd - 2;
      for (; d >= 0; d--) {
        if (++idx[d] < this.shape[d]) break;
        idx[d] = 0;
      }
      if (d < 0) break;
    }
    return out;
  }
}

// numpy scalars (e.g. a float64 best_val_loss) decode from their dtype and raw bytes; nothing runs.
class NumpyDType {
  byteorder = "<";
  constructor(readonly name: string) {}
  [PY_SETSTATE](state: unknown): void {
    if (Array.isArray(state) && typeof state[1] === "string") this.byteorder = state[1];
  }
}

function numpy_scalar(dtype: unknown, raw: unknown): number | bigint | boolean {
  if (!(dtype instanceof NumpyDType)) throw new Error("numpy scalar without a numpy dtype");
  const b = raw instanceof Uint8Array
    ? raw
    : typeof raw === "string"
    ? Uint8Array.from(raw, (c) => c.charCodeAt(0))
    : null;
  if (!b) throw new Error("numpy scalar without bytes");
  const le = dtype.byteorder !== ">";
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const need = (n: number) => {
    if (b.length < n) throw new Error(`numpy ${dtype.name} scalar needs ${n} bytes, got ${b.length}`);
  };
  switch (dtype.name) {
    case "f8":
      need(8);
      return dv.getFloat64(0, le);
    case "f4":
      need(4);
      return dv.getFloat32(0, le);
    case "i8":
      need(8);
      return dv.getBigInt64(0, le);
    case "u8":
      need(8);
      return dv.getBigUint64(0, le);
    case "i4":
      need(4);
      return dv.getInt32(0, le);
    case "u4":
      need(4);
      return dv.getUint32(0, le);
    case "i2":
      need(2);
      return dv.getInt16(0, le);
    case "u2":
      need(2);
      return dv.getUint16(0, le);
    case "i1":
      need(1);
      return dv.getInt8(0);
    case "u1":
      need(1);
      return dv.getUint8(0);
    case "b1":
      need(1);
      return b[0] !== 0;
    default:
      throw new Error(`unsupported numpy scalar dtype "${dtype.name}"`);
  }
}

/**
 * The most bytes a checkpoint's data.pkl may declare. It holds the object tree, not the tensors:
 * nanoGPT's is 15 KB with the optimizer state, a transformers GPT-2 state dict's about 20 KB.
 */
export const MAX_PICKLE_BYTES = 64 * 1024 * 1024;

const LEGACY_MAGIC = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/** A `torch.save` zip checkpoint, open for lazy tensor reads. */
export class TorchCheckpoint implements Disposable {
  private constructor(
    /** The zip archive. */
    readonly zip: ZipReader,
    /** The archive's folder name (`<prefix>/data.pkl`). */
    readonly prefix: string,
    /** The unpickled object (for nanoGPT: a Map with "model", "model_args", "config", ...). */
    readonly root: unknown,
  ) {}

  /** The checkpoint's path. */
  get path(): string {
    return this.zip.path;
  }

  /**
   * Opens a checkpoint and unpickles its data.pkl. Errors name the file: not a zip, legacy format,
   * no data.pkl, big-endian byte order, forbidden globals, storages missing or too small.
   */
  static async open(path: string): Promise<TorchCheckpoint> {
    return await TorchCheckpoint.from_source(await RandomAccessFile.open(path));
  }

  /** Opens the checkpoint in `file`, which the result then owns (closed on error too). */
  static async from_source(file: ByteSource): Promise<TorchCheckpoint> {
    const path = file.path;
    try {
      const head = await file.read_at(0, Math.min(file.size_bytes, LEGACY_MAGIC.length), "magic");
      if (head.length === LEGACY_MAGIC.length && LEGACY_MAGIC.every((b, i) => head[i] === b)) {
        throw new Error(
          `${path}: legacy (pre-1.6, non-zip) torch.save format is unsupported: re-save it with a recent ` +
            `PyTorch (torch.save(torch.load(path), path))`,
        );
      }
    } catch (e) {
      file.close();
      throw e;
    }
    const zip = await ZipReader.from_source(file);
    try {
      const pkl = [...zip.entries.keys()].filter((n) => n === "data.pkl" || n.endsWith("/data.pkl"))
        .sort((a, b) => a.length - b.length)[0];
      if (pkl === undefined) {
        throw new Error(`${path}: not a torch checkpoint: the zip has no data.pkl entry`);
      }
      const prefix = pkl.slice(0, pkl.length - "data.pkl".length);
      const bo = zip.entries.get(prefix + "byteorder");
      if (bo) {
        const order = new TextDecoder().decode(await zip.read(bo)).trim();
        if (order !== "little") {
          throw new Error(`${path}: byteorder is "${order}": only little-endian checkpoints are supported`);
        }
      }
      const storages = new Map<string, TorchStorage>();
      const read_bytes: ByteReader = (entry, off, len) => zip.read(entry, off, len);
      const what = `${path} (${pkl})`;
      const persistent_load = (pid: unknown): TorchStorage => {
        if (!Array.isArray(pid) || pid.length < 5 || pid[0] !== "storage") {
          throw new Error(`${what}: unsupported persistent id ${describe(pid)}`);
        }
        const [, type, key, location, numel] = pid;
        const tname = type instanceof PyGlobal ? type.name : String(type);
        const dtype = STORAGE_DTYPES[tname.replace(/^torch\./, "")];
        if (!dtype || !tname.startsWith("torch.")) {
          throw new Error(`${what}: unsupported storage type ${tname}`);
        }
        if (typeof key !== "string") throw new Error(`${what}: storage key is not a string`);
        if (typeof numel !== "number" || !Number.isSafeInteger(numel) || numel < 0) {
          throw new Error(`${what}: storage "${key}" has an invalid size ${numel}`);
        }
        const prev = storages.get(key);
        if (prev) {
          if (prev.dtype !== dtype) {
            throw new Error(`${what}: storage "${key}" is used as both ${prev.dtype} and ${dtype}`);
          }
          return prev;
        }
        const entry = zip.entries.get(`${prefix}data/${key}`);
        if (!entry) {
          throw new Error(`${path}: storage "${key}" not found (no zip entry ${prefix}data/${key})`);
        }
        // torch.save writes exactly the storage's bytes: an entry that declares more or less is
        // corrupt, and is refused before anything is read (reads are capped at this size).
        const need = numel * torch_dtype_bytes(dtype);
        if (entry.uncompressed_bytes !== need) {
          throw new Error(
            `${path}: storage "${key}" has ${entry.uncompressed_bytes} bytes, expected ${need} ` +
              `(${numel} x ${dtype})`,
          );
        }
        const s = new TorchStorage(key, dtype, numel, String(location), entry);
        storages.set(key, s);
        return s;
      };
      const rebuild_tensor = (storage: unknown, offset: unknown, size: unknown, stride: unknown) => {
        if (!(storage instanceof TorchStorage)) throw new Error("tensor without a storage");
        const ints = (v: unknown, what: string) => {
          if (!Array.isArray(v) || !v.every((x) => Number.isSafeInteger(x) && x >= 0)) {
            throw new Error(`tensor ${what} ${describe(v)} is not a tuple of non-negative integers`);
          }
          return [...v] as number[];
        };
        const shape = ints(size, "size");
        const strides = ints(stride, "stride");
        if (strides.length !== shape.length) throw new Error(`tensor stride rank != size rank`);
        if (typeof offset !== "number" || !Number.isSafeInteger(offset) || offset < 0) {
          throw new Error(`tensor storage offset ${offset} is invalid`);
        }
        const t = new TorchTensor(storage, offset, shape, strides, read_bytes);
        // A zero-stride (broadcast) view could claim any size over a one-element storage: a tensor
        // is read into its own buffer, so it may not hold more elements than its storage does.
        if (t.numel > storage.numel) {
          throw new Error(
            `tensor of shape [${shape}] (${t.numel} elements) is larger than its storage "${storage.key}" ` +
              `(${storage.numel} elements): broadcast views are unsupported`,
          );
        }
        if (t.numel > 0) {
          let last = offset;
          for (let d = 0; d < shape.length; d++) last += (shape[d] - 1) * strides[d];
          if (last >= storage.numel) {
            throw new Error(
              `tensor of shape [${shape}] at offset ${offset} overruns storage "${storage.key}" ` +
                `(${storage.numel} elements)`,
            );
          }
        }
        return t;
      };
      const not_callable = (name: string) => () => {
        throw new Error(`${name} is not callable`);
      };
      const globals = new Map<string, PyFactory>([
        ["collections.OrderedDict", (items?: unknown) => new Map(Array.isArray(items) ? items : [])],
        ["torch._utils._rebuild_tensor_v2", rebuild_tensor],
        ["torch._utils._rebuild_tensor", rebuild_tensor],
        ["torch._utils._rebuild_parameter", (data: unknown) => data],
        ["torch._utils._rebuild_parameter_with_state", (data: unknown) => data],
        ["torch.Size", (dims?: unknown) => Object.freeze([...(Array.isArray(dims) ? dims : [])])],
        [
          "torch.device",
          (type: unknown, index?: unknown) => index == null ? String(type) : `${type}:${index}`,
        ],
        ["builtins.set", (items?: unknown) => new Set(Array.isArray(items) ? items : [])],
        ["builtins.frozenset", (items?: unknown) => new Set(Array.isArray(items) ? items : [])],
        ["_codecs.encode", (s: unknown) => Uint8Array.from(String(s), (c) => c.charCodeAt(0) & 0xff)],
        ["numpy.dtype", (name: unknown) => new NumpyDType(String(name))],
        ["numpy.core.multiarray.scalar", numpy_scalar],
        ["numpy._core.multiarray.scalar", numpy_scalar],
      ]);
      for (const s of Object.keys(STORAGE_DTYPES)) globals.set(`torch.${s}`, not_callable(`torch.${s}`));
      const pkl_bytes = zip.entry(pkl).uncompressed_bytes;
      if (pkl_bytes > MAX_PICKLE_BYTES) {
        throw new Error(
          `${path}: ${pkl} declares ${pkl_bytes} bytes, more than the ${MAX_PICKLE_BYTES} a checkpoint's pickle ` +
            "may hold (its tensors live in separate entries)",
        );
      }
      const root = unpickle(await zip.read(pkl), { globals, persistent_load, what });
      return new TorchCheckpoint(zip, prefix.replace(/\/$/, ""), root);
    } catch (e) {
      zip.close();
      throw e;
    }
  }

  /** Closes the file; tensors cannot be read afterwards. */
  close(): void {
    this.zip.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
