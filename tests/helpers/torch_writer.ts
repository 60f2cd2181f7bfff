/**
 * A tiny torch.save writer for tests: a pickle (protocol 2) of the values torch checkpoints hold,
 * and FakeTensor views of named storages; tests/helpers/zip_writer.ts puts them in a zip.
 */

/** A tensor to write: a view of storage `key`. */
export class FakeTensor {
  constructor(
    readonly key: string,
    readonly dtype: string,
    readonly shape: number[],
    readonly stride: number[],
    readonly offset = 0,
  ) {}
}
/** A global to write (and, with args, to call): lets a test smuggle in a forbidden one. */
export class FakeGlobal {
  constructor(readonly module: string, readonly name: string, readonly args: unknown[] | null = null) {}
}

const STORAGE_CLASS: Record<string, string> = {
  f32: "FloatStorage",
  f16: "HalfStorage",
  bf16: "BFloat16Storage",
};
const ELEM_BYTES: Record<string, number> = { f32: 4, f16: 2, bf16: 2 };

/** Pickles (protocol 2) the subset of values torch checkpoints hold; storage sizes from `storages`. */
export function pickle(root: unknown, storages: Map<string, Uint8Array>): Uint8Array {
  const out: number[] = [0x80, 0x02];
  const enc = new TextEncoder();
  const u32 = (n: number) => out.push(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
  const ascii = (s: string) => out.push(...enc.encode(s));
  const str = (s: string) => {
    const b = enc.encode(s);
    out.push(0x58);
    u32(b.length);
    out.push(...b);
  };
  const int = (n: number) => {
    out.push(0x4a);
    u32(n);
  };
  const global = (module: string, name: string) => {
    out.push(0x63);
    ascii(`${module}\n${name}\n`);
  };
  const w = (v: unknown): void => {
    if (v === null) out.push(0x4e);
    else if (v === true) out.push(0x88);
    else if (v === false) out.push(0x89);
    else if (typeof v === "number" && Number.isInteger(v) && Math.abs(v) < 2 ** 31) int(v);
    else if (typeof v === "number") {
      const b = new DataView(new ArrayBuffer(8));
      b.setFloat64(0, v, false);
      out.push(0x47, ...new Uint8Array(b.buffer));
    } else if (typeof v === "string") str(v);
    else if (v instanceof FakeGlobal) {
      global(v.module, v.name);
      if (v.args) {
        out.push(0x28);
        v.args.forEach(w);
        out.push(0x74, 0x52); // TUPLE, REDUCE
      }
    } else if (v instanceof FakeTensor) {
      global("torch._utils", "_rebuild_tensor_v2");
      out.push(0x28, 0x28); // MARK (args), MARK (persistent id)
      str("storage");
      global("torch", STORAGE_CLASS[v.dtype]);
      str(v.key);
      str("cpu");
      int((storages.get(v.key)?.length ?? 0) / ELEM_BYTES[v.dtype]); // numel
      out.push(0x74, 0x51); // TUPLE, BINPERSID
      int(v.offset);
      w(Object.freeze([...v.shape]));
      w(Object.freeze([...v.stride]));
      out.push(0x89); // requires_grad
      global("collections", "OrderedDict");
      out.push(0x29, 0x52, 0x74, 0x52); // EMPTY_TUPLE, REDUCE, TUPLE, REDUCE
    } else if (Array.isArray(v) && Object.isFrozen(v)) {
      out.push(0x28);
      v.forEach(w);
      out.push(0x74);
    } else if (Array.isArray(v)) {
      out.push(0x5d, 0x28);
      v.forEach(w);
      out.push(0x65);
    } else if (v instanceof Map) {
      out.push(0x7d, 0x28);
      for (const [k, x] of v) {
        w(k);
        w(x);
      }
      out.push(0x75);
    } else throw new Error(`test pickler: cannot write ${v}`);
  };
  w(root);
  out.push(0x2e);
  return new Uint8Array(out);
}
