/**
 * A minimal zip writer for tests: stored or deflated entries, ZIP64 records as in archives over
 * 4 GiB, and entries that declare a size they do not have.
 */
import { deflateRawSync } from "node:zlib";

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export interface ZipTestEntry {
  name: string;
  data: Uint8Array;
  /** 0 stored (default), 8 deflate, anything else: written stored but labelled with this method. */
  method?: number;
  /** The uncompressed size to declare instead of the real one (a lying entry). */
  declare_bytes?: number;
}

/** A minimal zip writer; with `zip64`, sizes and offsets go to ZIP64 records as in archives over 4 GiB. */
export function make_zip(
  entries: ZipTestEntry[],
  opts: { zip64?: boolean; comment?: string } = {},
): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let off = 0;
  const push = (b: Uint8Array) => {
    parts.push(b);
    off += b.length;
  };
  for (const e of entries) {
    const name = enc.encode(e.name);
    const method = e.method ?? 0;
    const body = method === 8 ? new Uint8Array(deflateRawSync(e.data)) : e.data;
    const crc = crc32(e.data);
    const lh = new DataView(new ArrayBuffer(30));
    lh.setUint32(0, 0x04034b50, true);
    lh.setUint16(4, 45, true);
    lh.setUint16(8, method, true);
    lh.setUint32(14, crc, true);
    lh.setUint32(18, body.length, true);
    const declared = e.declare_bytes ?? e.data.length;
    lh.setUint32(22, declared, true);
    lh.setUint16(26, name.length, true);
    const lho = off;
    push(new Uint8Array(lh.buffer));
    push(name);
    push(body);
    const extra = opts.zip64 ? new DataView(new ArrayBuffer(4 + 24)) : null;
    if (extra) {
      extra.setUint16(0, 0x0001, true);
      extra.setUint16(2, 24, true);
      extra.setBigUint64(4, BigInt(declared), true);
      extra.setBigUint64(12, BigInt(body.length), true);
      extra.setBigUint64(20, BigInt(lho), true);
    }
    const ch = new DataView(new ArrayBuffer(46));
    ch.setUint32(0, 0x02014b50, true);
    ch.setUint16(4, 45, true);
    ch.setUint16(6, 45, true);
    ch.setUint16(10, method, true);
    ch.setUint32(16, crc, true);
    ch.setUint32(20, opts.zip64 ? 0xffffffff : body.length, true);
    ch.setUint32(24, opts.zip64 ? 0xffffffff : declared, true);
    ch.setUint16(28, name.length, true);
    ch.setUint16(30, extra ? extra.byteLength : 0, true);
    ch.setUint32(42, opts.zip64 ? 0xffffffff : lho, true);
    central.push(new Uint8Array(ch.buffer), name);
    if (extra) central.push(new Uint8Array(extra.buffer));
  }
  const cd_offset = off;
  for (const c of central) push(c);
  const cd_size = off - cd_offset;
  if (opts.zip64) {
    const z = new DataView(new ArrayBuffer(56));
    z.setUint32(0, 0x06064b50, true);
    z.setBigUint64(4, 44n, true);
    z.setUint16(12, 45, true);
    z.setUint16(14, 45, true);
    z.setBigUint64(24, BigInt(entries.length), true);
    z.setBigUint64(32, BigInt(entries.length), true);
    z.setBigUint64(40, BigInt(cd_size), true);
    z.setBigUint64(48, BigInt(cd_offset), true);
    const z_off = off;
    push(new Uint8Array(z.buffer));
    const loc = new DataView(new ArrayBuffer(20));
    loc.setUint32(0, 0x07064b50, true);
    loc.setBigUint64(8, BigInt(z_off), true);
    loc.setUint32(16, 1, true);
    push(new Uint8Array(loc.buffer));
  }
  const comment = enc.encode(opts.comment ?? "");
  const eocd = new DataView(new ArrayBuffer(22));
  eocd.setUint32(0, 0x06054b50, true);
  eocd.setUint16(8, opts.zip64 ? 0xffff : entries.length, true);
  eocd.setUint16(10, opts.zip64 ? 0xffff : entries.length, true);
  eocd.setUint32(12, opts.zip64 ? 0xffffffff : cd_size, true);
  eocd.setUint32(16, opts.zip64 ? 0xffffffff : cd_offset, true);
  eocd.setUint16(20, comment.length, true);
  push(new Uint8Array(eocd.buffer));
  push(comment);
  const out = new Uint8Array(off);
  let p = 0;
  for (const b of parts) {
    out.set(b, p);
    p += b.length;
  }
  return out;
}
