/**
 * Reads `.safetensors` files: an 8-byte little-endian header length, a JSON header mapping tensor names
 * to dtype, shape and data offsets, then the data. Only the header is read up front; each tensor's
 * bytes when asked. The header is checked: lengths, JSON, dtypes, offsets within the file, no overlaps.
 * @module
 */
import type { DType } from "../backend/backend.ts";
import { type ByteSource, RandomAccessFile } from "./zip.ts";

/** Bytes per element of each safetensors dtype. */
export const SAFETENSORS_DTYPE_BYTES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

/** One tensor of a safetensors file. */
export interface SafetensorsEntry {
  readonly name: string;
  /** The file's dtype string: "F32", "F16", "BF16", ... */
  readonly dtype: string;
  readonly shape: readonly number[];
  /** Absolute offset of its bytes in the file. */
  readonly offset_bytes: number;
  readonly nbytes: number;
}

const MAX_HEADER_BYTES = 100_000_000;

/** A safetensors file open for lazy tensor reads. */
export class SafetensorsFile implements Disposable {
  private constructor(
    readonly file: ByteSource,
    /** Tensors by name, in header order. */
    readonly entries: Map<string, SafetensorsEntry>,
    /** The header's `__metadata__` (string -> string), or null. */
    readonly metadata: Record<string, string> | null,
  ) {}

  /** The file's path. */
  get path(): string {
    return this.file.path;
  }

  /** Opens `path` and validates its header; errors name the file and what was wrong. */
  static async open(path: string): Promise<SafetensorsFile> {
    return await SafetensorsFile.from_source(await RandomAccessFile.open(path));
  }

  /** Validates the header of `file`, which the result then owns (closed on error too). */
  static async from_source(file: ByteSource): Promise<SafetensorsFile> {
    const path = file.path;
    try {
      const size = file.size_bytes;
      if (size < 8) throw new Error(`${path}: truncated safetensors file: ${size} bytes, no header length`);
      const n_big = new DataView((await file.read_at(0, 8, "header length")).buffer).getBigUint64(0, true);
      if (n_big > BigInt(size - 8)) {
        throw new Error(
          `${path}: bad safetensors header length ${n_big}: the file has only ${size - 8} bytes after it ` +
            `(truncated or not a safetensors file)`,
        );
      }
      const n = Number(n_big);
      if (n < 2 || n > MAX_HEADER_BYTES) throw new Error(`${path}: bad safetensors header length ${n}`);
      const raw = await file.read_at(8, n, "safetensors header");
      let header: unknown;
      try {
        header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
      } catch (e) {
        throw new Error(`${path}: safetensors header is not valid JSON: ${(e as Error).message}`, {
          cause: e,
        });
      }
      if (header === null || typeof header !== "object" || Array.isArray(header)) {
        throw new Error(`${path}: safetensors header is not a JSON object`);
      }
      const data_start = 8 + n;
      const data_bytes = size - data_start;
      const entries = new Map<string, SafetensorsEntry>();
      let metadata: Record<string, string> | null = null;
      for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
        if (name === "__metadata__") {
          if (v !== null && (typeof v !== "object" || Array.isArray(v))) {
            throw new Error(`${path}: safetensors __metadata__ is not an object`);
          }
          for (const [k, x] of Object.entries(v ?? {})) {
            if (typeof x !== "string") {
              throw new Error(`${path}: safetensors __metadata__.${k} is not a string: ${JSON.stringify(x)}`);
            }
          }
          metadata = v as Record<string, string> | null;
          continue;
        }
        const bad = (why: string) => new Error(`${path}: safetensors tensor "${name}": ${why}`);
        if (v === null || typeof v !== "object") throw bad("header entry is not an object");
        const { dtype, shape, data_offsets } = v as Record<string, unknown>;
        if (typeof dtype !== "string" || !(dtype in SAFETENSORS_DTYPE_BYTES)) {
          throw bad(`unknown dtype ${JSON.stringify(dtype)}`);
        }
        if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
          throw bad(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
        }
        if (
          !Array.isArray(data_offsets) || data_offsets.length !== 2 ||
          !data_offsets.every((d) => Number.isSafeInteger(d) && d >= 0) || data_offsets[0] > data_offsets[1]
        ) {
          throw bad(`data_offsets ${JSON.stringify(data_offsets)} is not [begin, end]`);
        }
        const [begin, end] = data_offsets as number[];
        const nbytes = (shape as number[]).reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_BYTES[dtype];
        if (end - begin !== nbytes) {
          throw bad(
            `data_offsets [${begin}, ${end}] hold ${
              end - begin
            } bytes, but ${dtype} [${shape}] needs ${nbytes}`,
          );
        }
        if (end > data_bytes) {
          throw bad(
            `data_offsets [${begin}, ${end}] go past the end of the data (${data_bytes} bytes): file truncated?`,
          );
        }
        entries.set(name, {
          name,
          dtype,
          shape: shape as number[],
          offset_bytes: data_start + begin,
          nbytes,
        });
      }
      const sorted = [...entries.values()].filter((e) => e.nbytes > 0).sort((a, b) =>
        a.offset_bytes - b.offset_bytes
      );
      for (let i = 1; i < sorted.length; i++) {
        const a = sorted[i - 1];
        const b = sorted[i];
        if (b.offset_bytes < a.offset_bytes + a.nbytes) {
          throw new Error(`${path}: safetensors tensors "${a.name}" and "${b.name}" overlap`);
        }
      }
      return new SafetensorsFile(file, entries, metadata);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Reads one tensor's raw bytes; the error names the tensor and file when it is not there. */
  read(name: string): Promise<Uint8Array> {
    const e = this.entries.get(name);
    if (!e) return Promise.reject(new Error(`${this.path}: no tensor "${name}"`));
    return this.file.read_at(e.offset_bytes, e.nbytes, `tensor "${name}"`);
  }

  /** Closes the file. */
  close(): void {
    this.file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Safetensors dtype names of the model's storage types. */
export const SAFETENSORS_DTYPE: Record<DType, string> = { f32: "F32", f16: "F16", bf16: "BF16" };

/** A tensor to write: its name, dtype, shape and raw little-endian bytes (read when written). */
export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: readonly number[];
  read(): Promise<Uint8Array>;
}

/**
 * Writes a safetensors file: the header (tensors in the given order, `metadata` as its
 * `__metadata__` of strings), then each tensor's bytes, read one at a time. The header is padded
 * with spaces to a multiple of 8 bytes, as the reference implementation does.
 */
export async function write_safetensors(
  path: string,
  tensors: TensorToWrite[],
  metadata: Record<string, string> = {},
): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const nbytes = t.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_BYTES[SAFETENSORS_DTYPE[t.dtype]];
    header[t.name] = {
      dtype: SAFETENSORS_DTYPE[t.dtype],
      shape: t.shape,
      data_offsets: [offset, offset + nbytes],
    };
    offset += nbytes;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > json.length) {
    json = new TextEncoder().encode(JSON.stringify(header) + " ".repeat(padded - json.length));
  }
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
  await write_all(file, len);
  await write_all(file, json);
  for (const t of tensors) {
    const bytes = await t.read();
    const want = (header[t.name] as { data_offsets: number[] }).data_offsets;
    if (bytes.length !== want[1] - want[0]) {
      throw new Error(
        `write_safetensors ${path}: tensor "${t.name}" gave ${bytes.length} bytes, expected ${
          want[1] - want[0]
        }`,
      );
    }
    await write_all(file, bytes);
  }
}

async function write_all(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await file.write(bytes.subarray(off));
}
