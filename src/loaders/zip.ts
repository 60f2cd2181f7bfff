/**
 * Reads zip archives (the container of `torch.save` checkpoints) entry by entry, without reading the
 * whole file: only the central directory is read up front, and an entry's bytes (or a range of them)
 * when asked. ZIP64 archives (over 4 GiB) are supported; entries are stored or deflated.
 * @module
 */
import { crc32, inflateRawSync } from "node:zlib";

/** Bytes read at explicit offsets: a file on disk (RandomAccessFile) or a buffer (MemoryFile). */
export interface ByteSource {
  /** Names the bytes in error messages (a file path). */
  readonly path: string;
  /** Total size in bytes. */
  readonly size_bytes: number;
  /** Reads exactly `length` bytes at `offset` into a new buffer; out of range is an Error naming `path`. */
  read_at(offset: number, length: number, what?: string): Promise<Uint8Array>;
  /** Releases the source (idempotent). */
  close(): void;
}

/** The error for a read of `what` outside a source's bytes, or null when the read is in range. */
function bad_read(src: ByteSource, offset: number, length: number, what: string): Error | null {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    return new Error(`${src.path}: invalid read of ${what} at ${offset} (${length} bytes)`);
  }
  if (offset + length > src.size_bytes) {
    return new Error(
      `${src.path}: truncated file: ${what} spans bytes ${offset}..${offset + length} ` +
        `but the file has ${src.size_bytes} bytes`,
    );
  }
  return null;
}

/** A ByteSource over bytes in memory (tests, fuzzing): reads return copies, `path` names it in errors. */
export class MemoryFile implements ByteSource, Disposable {
  #bytes: Uint8Array;
  #closed = false;

  /** Wraps `bytes` (not copied), named `path` in error messages. */
  constructor(readonly path: string, bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  /** Size of the bytes. */
  get size_bytes(): number {
    return this.#bytes.length;
  }

  /** Reads exactly `length` bytes at `offset`, as a new buffer; out of range is an Error naming the path. */
  read_at(offset: number, length: number, what = "data"): Promise<Uint8Array> {
    if (this.#closed) return Promise.reject(new Error(`${this.path}: read after close`));
    const err = bad_read(this, offset, length, what);
    return err ? Promise.reject(err) : Promise.resolve(this.#bytes.slice(offset, offset + length));
  }

  /** Marks the source closed (idempotent). */
  close(): void {
    this.#closed = true;
  }

  /** Closes the source. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A file read at explicit offsets. Reads are serialised, so concurrent `read_at` calls never interleave
 * their seek and read.
 */
export class RandomAccessFile implements ByteSource, Disposable {
  #file: Deno.FsFile;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(readonly path: string, file: Deno.FsFile, readonly size_bytes: number) {
    this.#file = file;
  }

  /** Opens `path` for reading; the error names the path when it cannot be opened. */
  static async open(path: string): Promise<RandomAccessFile> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw new Error(`cannot open ${path}: ${(e as Error).message}`, { cause: e });
    }
    try {
      const st = await file.stat();
      if (!st.isFile) throw new Error(`${path} is not a regular file`);
      return new RandomAccessFile(path, file, st.size);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Reads exactly `length` bytes at `offset`; a read past the end of the file is an error naming it. */
  read_at(offset: number, length: number, what = "data"): Promise<Uint8Array> {
    if (this.#closed) return Promise.reject(new Error(`${this.path}: read after close`));
    const err = bad_read(this, offset, length, what);
    if (err) return Promise.reject(err);
    const run = async () => {
      const out = new Uint8Array(length);
      await this.#file.seek(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < length) {
        const n = await this.#file.read(out.subarray(done));
        if (n === null || n === 0) {
          throw new Error(
            `${this.path}: truncated file: unexpected end of file reading ${what} at ${offset + done}`,
          );
        }
        done += n;
      }
      return out;
    };
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => {});
    return p;
  }

  /** Closes the file (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** One entry of a zip's central directory. */
export interface ZipEntry {
  /** Path inside the archive. */
  readonly name: string;
  /** Compression method: 0 stored, 8 deflate. */
  readonly method: number;
  /** General purpose flags (bit 0: encrypted). */
  readonly flags: number;
  readonly compressed_bytes: number;
  readonly uncompressed_bytes: number;
  /** Offset of the entry's local header in the file. */
  readonly local_header_offset: number;
  readonly crc32: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const EOCD_BYTES = 22;
const MAX_COMMENT_BYTES = 0xffff;

function u64(dv: DataView, off: number, what: string): number {
  const v = dv.getBigUint64(off, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${what}: 64-bit value ${v} is too large`);
  return Number(v);
}

const utf8 = new TextDecoder("utf-8");

/** A zip archive opened for random access. */
export class ZipReader implements Disposable {
  /** Every entry, by name, in central directory order. */
  readonly entries: Map<string, ZipEntry>;
  #file: ByteSource;
  #data_offsets = new Map<string, number>();

  private constructor(file: ByteSource, entries: Map<string, ZipEntry>) {
    this.#file = file;
    this.entries = entries;
  }

  /** The archive's path. */
  get path(): string {
    return this.#file.path;
  }

  /** Size of the archive in bytes. */
  get size_bytes(): number {
    return this.#file.size_bytes;
  }

  /** Opens `path` and reads its central directory. Errors name the file and what was wrong. */
  static async open(path: string): Promise<ZipReader> {
    return await ZipReader.from_source(await RandomAccessFile.open(path));
  }

  /** Reads the central directory of `file`, which the reader then owns (closed on error too). */
  static async from_source(file: ByteSource): Promise<ZipReader> {
    try {
      const entries = await read_central_directory(file);
      return new ZipReader(file, entries);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** The entry named `name`, or an Error naming it and the archive. */
  entry(name: string): ZipEntry {
    const e = this.entries.get(name);
    if (!e) throw new Error(`${this.path}: zip entry "${name}" not found`);
    return e;
  }

  /** Offset in the file of an entry's (possibly compressed) data, from its local header. */
  async data_offset(entry: ZipEntry): Promise<number> {
    const cached = this.#data_offsets.get(entry.name);
    if (cached !== undefined) return cached;
    const where = `local header of "${entry.name}"`;
    if (entry.local_header_offset + 30 > this.size_bytes) {
      throw new Error(
        `${this.path}: corrupt zip: ${where} at offset ${entry.local_header_offset} is past the end of the file ` +
          `(${this.size_bytes} bytes)`,
      );
    }
    const h = await this.#file.read_at(entry.local_header_offset, 30, where);
    const dv = new DataView(h.buffer);
    if (dv.getUint32(0, true) !== SIG_LOCAL) {
      throw new Error(
        `${this.path}: corrupt zip: bad signature in the ${where} at offset ${entry.local_header_offset}`,
      );
    }
    const name_len = dv.getUint16(26, true);
    const extra_len = dv.getUint16(28, true);
    // Checked before reading the name: a lying length must not become a read past the end.
    if (entry.local_header_offset + 30 + name_len + extra_len > this.size_bytes) {
      throw new Error(
        `${this.path}: corrupt zip: the ${where} at offset ${entry.local_header_offset} declares a ` +
          `${name_len}-byte name and ${extra_len}-byte extra field, past the end of the file (${this.size_bytes} bytes)`,
      );
    }
    const name = await this.#file.read_at(entry.local_header_offset + 30, name_len, where);
    if (utf8.decode(name) !== entry.name) {
      throw new Error(
        `${this.path}: corrupt zip: the ${where} names "${utf8.decode(name)}" (central directory disagrees)`,
      );
    }
    const off = entry.local_header_offset + 30 + name_len + extra_len;
    if (off + entry.compressed_bytes > this.size_bytes) {
      throw new Error(
        `${this.path}: zip entry "${entry.name}" (${entry.compressed_bytes} bytes at offset ${off}) extends past ` +
          `the end of the file (${this.size_bytes} bytes): truncated or corrupt`,
      );
    }
    this.#data_offsets.set(entry.name, off);
    return off;
  }

  /**
   * Reads an entry's uncompressed bytes, or `length` of them from `offset`. A stored entry reads only
   * the requested range from disk; a deflated one is inflated whole, then sliced. Whenever the whole
   * entry is at hand, its CRC-32 is checked.
   */
  async read(name_or_entry: string | ZipEntry, offset = 0, length?: number): Promise<Uint8Array> {
    const e = typeof name_or_entry === "string" ? this.entry(name_or_entry) : name_or_entry;
    const len = length ?? e.uncompressed_bytes - offset;
    if (offset < 0 || len < 0 || offset + len > e.uncompressed_bytes) {
      throw new Error(
        `${this.path}: read of bytes ${offset}..${offset + len} is past the end of zip entry "${e.name}" ` +
          `(${e.uncompressed_bytes} bytes)`,
      );
    }
    if (e.flags & 1) throw new Error(`${this.path}: zip entry "${e.name}" is encrypted (unsupported)`);
    const start = await this.data_offset(e);
    if (e.method === 0) {
      if (e.compressed_bytes !== e.uncompressed_bytes) {
        throw new Error(
          `${this.path}: corrupt zip: stored entry "${e.name}" has compressed size ${e.compressed_bytes} ` +
            `!= uncompressed size ${e.uncompressed_bytes}`,
        );
      }
      const data = await this.#file.read_at(start + offset, len, `zip entry "${e.name}"`);
      if (len === e.uncompressed_bytes) this.#check_crc(e, data);
      return data;
    }
    if (e.method === 8) {
      // Deflate packs at most 1032:1; more compressed bytes than that can only be garbage.
      if (e.compressed_bytes > 1032 * e.uncompressed_bytes + 64) {
        throw new Error(
          `${this.path}: corrupt zip: entry "${e.name}" has ${e.compressed_bytes} compressed bytes for ` +
            `${e.uncompressed_bytes} uncompressed`,
        );
      }
      const raw = await this.#file.read_at(start, e.compressed_bytes, `zip entry "${e.name}"`);
      let data: Uint8Array;
      try {
        // Capped at the declared size: an entry that inflates to more fails before taking the memory.
        const out = inflateRawSync(raw, { maxOutputLength: Math.max(1, e.uncompressed_bytes) });
        data = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
      } catch (err) {
        const too_big = (err as { code?: string }).code === "ERR_BUFFER_TOO_LARGE";
        throw new Error(
          too_big
            ? `${this.path}: zip entry "${e.name}" inflates to more than its declared ${e.uncompressed_bytes} bytes`
            : `${this.path}: corrupt deflate data in zip entry "${e.name}": ${(err as Error).message}`,
          { cause: err },
        );
      }
      if (data.length !== e.uncompressed_bytes) {
        throw new Error(
          `${this.path}: zip entry "${e.name}" inflated to ${data.length} bytes, expected ${e.uncompressed_bytes}`,
        );
      }
      this.#check_crc(e, data);
      return offset === 0 && len === data.length ? data : data.slice(offset, offset + len);
    }
    throw new Error(
      `${this.path}: unsupported compression method ${e.method} for zip entry "${e.name}" ` +
        `(only 0 stored and 8 deflate are supported)`,
    );
  }

  #check_crc(e: ZipEntry, data: Uint8Array): void {
    const crc = crc32(data) >>> 0;
    if (crc !== e.crc32) {
      throw new Error(
        `${this.path}: corrupt zip: entry "${e.name}" fails its CRC-32 check ` +
          `(0x${crc.toString(16)} != 0x${e.crc32.toString(16)})`,
      );
    }
  }

  /** Closes the file. */
  close(): void {
    this.#file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

async function read_central_directory(file: ByteSource): Promise<Map<string, ZipEntry>> {
  const path = file.path;
  const size = file.size_bytes;
  if (size < 4) throw new Error(`${path}: not a zip file: only ${size} bytes`);
  const magic = new DataView((await file.read_at(0, 4, "magic")).buffer).getUint32(0, true);
  // An empty archive begins with its end record (a ZIP64 one when written as ZIP64).
  if (magic !== SIG_LOCAL && magic !== SIG_EOCD && magic !== SIG_ZIP64_EOCD) {
    throw new Error(
      `${path}: not a zip file (wrong magic 0x${
        magic.toString(16).padStart(8, "0")
      }, expected "PK\\x03\\x04")`,
    );
  }
  if (size < EOCD_BYTES) throw new Error(`${path}: truncated zip: ${size} bytes is too small for a zip`);

  // End of central directory record: the last one in the final 64 KiB + 22 bytes.
  const tail_len = Math.min(size, EOCD_BYTES + MAX_COMMENT_BYTES);
  const tail_start = size - tail_len;
  const tail = await file.read_at(tail_start, tail_len, "end of central directory");
  const tv = new DataView(tail.buffer);
  let eocd = -1;
  for (let i = tail_len - EOCD_BYTES; i >= 0; i--) {
    if (tv.getUint32(i, true) === SIG_EOCD && i + EOCD_BYTES + tv.getUint16(i + 20, true) <= tail_len) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) {
    throw new Error(`${path}: truncated or corrupt zip: end of central directory record not found`);
  }
  const eocd_pos = tail_start + eocd;
  let n_entries = tv.getUint16(eocd + 10, true);
  let cd_size = tv.getUint32(eocd + 12, true);
  let cd_offset = tv.getUint32(eocd + 16, true);
  let cd_end_limit = eocd_pos;

  const needs_zip64 = n_entries === 0xffff || cd_size === 0xffffffff || cd_offset === 0xffffffff;
  const loc_pos = eocd_pos - 20;
  const has_locator = loc_pos >= 0 && loc_pos >= tail_start &&
    tv.getUint32(loc_pos - tail_start, true) === SIG_ZIP64_LOCATOR;
  if (needs_zip64 && !has_locator) {
    throw new Error(`${path}: corrupt zip: ZIP64 end of central directory locator not found`);
  }
  if (has_locator) {
    const z64_pos = u64(tv, loc_pos - tail_start + 8, `${path}: ZIP64 locator`);
    if (z64_pos + 56 > loc_pos) {
      throw new Error(`${path}: corrupt zip: ZIP64 end of central directory offset ${z64_pos} is invalid`);
    }
    const z = new DataView((await file.read_at(z64_pos, 56, "ZIP64 end of central directory")).buffer);
    if (z.getUint32(0, true) !== SIG_ZIP64_EOCD) {
      throw new Error(
        `${path}: corrupt zip: bad ZIP64 end of central directory signature at offset ${z64_pos}`,
      );
    }
    n_entries = u64(z, 32, `${path}: ZIP64 entry count`);
    cd_size = u64(z, 40, `${path}: ZIP64 central directory size`);
    cd_offset = u64(z, 48, `${path}: ZIP64 central directory offset`);
    cd_end_limit = z64_pos;
  }
  if (cd_offset + cd_size > cd_end_limit) {
    throw new Error(
      `${path}: truncated or corrupt zip: central directory (offset ${cd_offset}, ${cd_size} bytes) ` +
        `overruns its end record at ${cd_end_limit}`,
    );
  }

  const cd = await file.read_at(cd_offset, cd_size, "central directory");
  const dv = new DataView(cd.buffer);
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  for (let i = 0; i < n_entries; i++) {
    const bad = (why: string) =>
      new Error(`${path}: corrupt zip central directory: entry ${i} at offset ${cd_offset + p}: ${why}`);
    if (p + 46 > cd_size) throw bad("runs past the end of the central directory");
    if (dv.getUint32(p, true) !== SIG_CENTRAL) throw bad("bad signature");
    const flags = dv.getUint16(p + 8, true);
    const method = dv.getUint16(p + 10, true);
    const crc32 = dv.getUint32(p + 16, true);
    let compressed = dv.getUint32(p + 20, true);
    let uncompressed = dv.getUint32(p + 24, true);
    const name_len = dv.getUint16(p + 28, true);
    const extra_len = dv.getUint16(p + 30, true);
    const comment_len = dv.getUint16(p + 32, true);
    let lho = dv.getUint32(p + 42, true);
    const rec_end = p + 46 + name_len + extra_len + comment_len;
    if (rec_end > cd_size) throw bad("name or extra field runs past the end of the central directory");
    let name: string;
    try {
      name = new TextDecoder("utf-8", { fatal: true }).decode(cd.subarray(p + 46, p + 46 + name_len));
    } catch {
      throw bad("entry name is not valid UTF-8");
    }
    // ZIP64 extended information: the 64-bit values of whichever fields are saturated, in order.
    if (uncompressed === 0xffffffff || compressed === 0xffffffff || lho === 0xffffffff) {
      let q = p + 46 + name_len;
      const extra_end = q + extra_len;
      let found = false;
      while (q + 4 <= extra_end) {
        const id = dv.getUint16(q, true);
        const len = dv.getUint16(q + 2, true);
        if (q + 4 + len > extra_end) throw bad(`extra field of "${name}" overruns its record`);
        if (id === 0x0001) {
          let r = q + 4;
          const take = (what: string) => {
            if (r + 8 > q + 4 + len) throw bad(`ZIP64 extra field of "${name}" is too short for ${what}`);
            const v = u64(dv, r, `${path}: "${name}" ${what}`);
            r += 8;
            return v;
          };
          if (uncompressed === 0xffffffff) uncompressed = take("uncompressed size");
          if (compressed === 0xffffffff) compressed = take("compressed size");
          if (lho === 0xffffffff) lho = take("local header offset");
          found = true;
          break;
        }
        q += 4 + len;
      }
      if (!found) throw bad(`"${name}" has saturated sizes but no ZIP64 extra field`);
    }
    if (lho + 30 + compressed > cd_offset) {
      throw new Error(
        `${path}: zip entry "${name}" (${compressed} bytes, local header at ${lho}) extends past the end of ` +
          `the file data (central directory at ${cd_offset}): truncated or corrupt`,
      );
    }
    if (entries.has(name)) throw bad(`duplicate entry "${name}"`);
    entries.set(name, {
      name,
      method,
      flags,
      compressed_bytes: compressed,
      uncompressed_bytes: uncompressed,
      local_header_offset: lho,
      crc32,
    });
    p = rec_end;
  }
  return entries;
}
