/**
 * A safe unpickler for the subset of pickle protocols 2-5 that `torch.save` and `pickle.dump` of plain
 * data produce. Nothing from the file is ever executed: GLOBAL / STACK_GLOBAL resolve only through an
 * allowlist of JavaScript factories given by the caller, and persistent ids go to a caller's hook.
 *
 * Python values map to: None -> null, bool -> boolean, int -> number (bigint beyond 2^53),
 * float -> number, str -> string, bytes -> Uint8Array, tuple -> frozen Array, list -> Array,
 * dict -> Map (keys may be any value), set / frozenset -> Set, allowed global -> PyGlobal.
 * @module
 */

/** Builds a Python object from REDUCE / NEWOBJ arguments: the JavaScript side of an allowed global. */
export type PyFactory = (...args: unknown[]) => unknown;

/** A reference to an allowed Python global (a class or function), as it sits on the pickle stack. */
export class PyGlobal {
  constructor(
    /** "module.name", e.g. "torch.FloatStorage". */
    readonly name: string,
    readonly factory: PyFactory,
  ) {}
}

/**
 * Objects may carry this method to receive BUILD's state (Python `__setstate__`); otherwise BUILD
 * stores the state on the object under PY_STATE.
 */
export const PY_SETSTATE: unique symbol = Symbol("py_setstate");
/** Where BUILD leaves an object's state (its `__dict__`) when the object has no PY_SETSTATE. */
export const PY_STATE: unique symbol = Symbol("py_state");

/** Options of `unpickle`. */
export interface UnpickleOptions {
  /** Allowed globals, "module.name" -> factory. Anything else is an error naming the global. */
  globals?: Map<string, PyFactory>;
  /** BINPERSID hook (torch storages); without one a persistent id is an error. */
  persistent_load?: (pid: unknown) => unknown;
  /** Names the input in messages (a file path, or "ckpt.pt/archive/data.pkl"). */
  what?: string;
}

// Python 2 names that protocol 2 pickles use for Python 3 modules (pickle's fix_imports).
const PY2_MODULES: Record<string, string> = { __builtin__: "builtins", copy_reg: "copyreg" };

const utf8 = new TextDecoder("utf-8", { fatal: true });
const latin1 = new TextDecoder("latin1");

function int_from_le(bytes: Uint8Array): number | bigint {
  if (bytes.length === 0) return 0;
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]);
  if (bytes[bytes.length - 1] & 0x80) v -= 1n << BigInt(8 * bytes.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** Decodes one pickle. Throws an Error naming `opts.what` and the offset on anything unsupported. */
export function unpickle(data: Uint8Array, opts: UnpickleOptions = {}): unknown {
  const what = opts.what ?? "pickle";
  const globals = opts.globals ?? new Map<string, PyFactory>();
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  let pos = 0;
  let op_pos = 0;

  const fail = (msg: string) => new Error(`${what}: ${msg} (pickle opcode at offset ${op_pos})`);
  const need = (n: number) => {
    if (pos + n > data.length) throw fail(`truncated pickle: need ${n} more bytes at offset ${pos}`);
  };
  const u8 = () => {
    need(1);
    return data[pos++];
  };
  const u16 = () => {
    need(2);
    const v = dv.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = () => {
    need(4);
    const v = dv.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const i32 = () => {
    need(4);
    const v = dv.getInt32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = () => {
    need(8);
    const v = dv.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw fail(`length ${v} is too large`);
    return Number(v);
  };
  const bytes = (n: number) => {
    need(n);
    const b = data.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const line = () => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0) throw fail("truncated pickle: unterminated line");
    const s = latin1.decode(data.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const str = (n: number) => {
    try {
      return utf8.decode(bytes(n));
    } catch (e) {
      if (e instanceof Error && e.message.includes("truncated")) throw e;
      throw fail("invalid UTF-8 in a string");
    }
  };
  const pop = () => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1])) {
      throw fail("stack underflow");
    }
    return stack.pop();
  };
  const top = () => {
    if (stack.length === 0) throw fail("stack underflow");
    return stack[stack.length - 1];
  };
  const pop_mark = () => {
    const m = marks.pop();
    if (m === undefined) throw fail("no MARK on the stack");
    return stack.splice(m);
  };
  const as_map = (v: unknown, op: string) => {
    if (!(v instanceof Map)) throw fail(`${op} on a ${describe(v)}, expected a dict`);
    return v;
  };
  const as_list = (v: unknown, op: string) => {
    if (!Array.isArray(v) || Object.isFrozen(v)) throw fail(`${op} on a ${describe(v)}, expected a list`);
    return v;
  };
  const as_set = (v: unknown, op: string) => {
    if (!(v instanceof Set)) throw fail(`${op} on a ${describe(v)}, expected a set`);
    return v;
  };
  const tuple = (items: unknown[]) => Object.freeze(items);
  const resolve_global = (module: string, name: string) => {
    // Own keys only: a module named "constructor" or "toString" is itself, not Object.prototype's.
    const full = `${Object.hasOwn(PY2_MODULES, module) ? PY2_MODULES[module] : module}.${name}`;
    const f = globals.get(full);
    if (!f) {
      const allowed = [...globals.keys()];
      throw new Error(
        `forbidden global "${full}" in ${what}: ` +
          (allowed.length
            ? `only ${allowed.join(", ")} ${allowed.length === 1 ? "is" : "are"} allowed`
            : "no globals are allowed"),
      );
    }
    return new PyGlobal(full, f);
  };
  const call = (fn: unknown, args: unknown, op: string) => {
    if (!(fn instanceof PyGlobal)) throw fail(`${op} of a ${describe(fn)}, expected an allowed global`);
    if (!Array.isArray(args)) throw fail(`${op} arguments are a ${describe(args)}, expected a tuple`);
    try {
      return fn.factory(...args);
    } catch (e) {
      throw new Error(`${what}: ${fn.name}: ${(e as Error).message}`, { cause: e });
    }
  };

  for (;;) {
    op_pos = pos;
    const op = u8();
    switch (op) {
      case 0x80: { // PROTO
        const v = u8();
        if (v > 5) throw fail(`unsupported pickle protocol ${v}`);
        break;
      }
      case 0x95: // FRAME
        u64();
        break;
      case 0x2e: { // STOP
        const v = pop();
        return v;
      }
      case 0x28: // MARK
        marks.push(stack.length);
        break;
      case 0x31: // POP_MARK
        pop_mark();
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(tuple([]));
        break;
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x85: // TUPLE1
        stack.push(tuple([pop()]));
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b, c]));
        break;
      }
      case 0x74: // TUPLE
        stack.push(tuple(pop_mark()));
        break;
      case 0x6c: // LIST
        stack.push(pop_mark());
        break;
      case 0x64: { // DICT
        const items = pop_mark();
        if (items.length % 2) throw fail("DICT with an odd number of items");
        const m = new Map();
        for (let i = 0; i < items.length; i += 2) m.set(items[i], items[i + 1]);
        stack.push(m);
        break;
      }
      case 0x91: // FROZENSET
        stack.push(new Set(pop_mark()));
        break;
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        as_map(top(), "SETITEM").set(k, v);
        break;
      }
      case 0x75: { // SETITEMS
        const items = pop_mark();
        if (items.length % 2) throw fail("SETITEMS with an odd number of items");
        const m = as_map(top(), "SETITEMS");
        for (let i = 0; i < items.length; i += 2) m.set(items[i], items[i + 1]);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        as_list(top(), "APPEND").push(v);
        break;
      }
      case 0x65: { // APPENDS
        const items = pop_mark();
        const l = as_list(top(), "APPENDS");
        for (const v of items) l.push(v);
        break;
      }
      case 0x90: { // ADDITEMS
        const items = pop_mark();
        const s = as_set(top(), "ADDITEMS");
        for (const v of items) s.add(v);
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: { // LONG_BINGET
        const i = op === 0x68 ? u8() : u32();
        if (!memo.has(i)) throw fail(`memo entry ${i} not found`);
        stack.push(memo.get(i));
        break;
      }
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(int_from_le(bytes(u8())));
        break;
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0 || n > 1 << 20) throw fail(`LONG4 of ${n} bytes is unsupported`);
        stack.push(int_from_le(bytes(n)));
        break;
      }
      case 0x47: { // BINFLOAT (big-endian)
        need(8);
        stack.push(dv.getFloat64(pos, false));
        pos += 8;
        break;
      }
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(str(u8()));
        break;
      case 0x58: // BINUNICODE
        stack.push(str(u32()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(str(u64()));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(bytes(u8()).slice());
        break;
      case 0x42: // BINBYTES
        stack.push(bytes(u32()).slice());
        break;
      case 0x8e: // BINBYTES8
        stack.push(bytes(u64()).slice());
        break;
      case 0x55: // SHORT_BINSTRING (Python 2 str)
        stack.push(latin1.decode(bytes(u8())));
        break;
      case 0x54: { // BINSTRING
        const n = i32();
        if (n < 0) throw fail(`BINSTRING with negative length ${n}`);
        stack.push(latin1.decode(bytes(n)));
        break;
      }
      case 0x63: { // GLOBAL
        const module = line();
        const name = line();
        stack.push(resolve_global(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") throw fail("STACK_GLOBAL of non-strings");
        stack.push(resolve_global(module, name));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const fn = pop();
        stack.push(call(fn, args, "REDUCE"));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop();
        const cls = pop();
        stack.push(call(cls, args, "NEWOBJ"));
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        const obj = top();
        const target = obj as { [PY_SETSTATE]?: (s: unknown) => void; [PY_STATE]?: unknown };
        if (obj !== null && typeof obj === "object" && typeof target[PY_SETSTATE] === "function") {
          target[PY_SETSTATE](state);
        } else if (obj !== null && typeof obj === "object" && !Object.isFrozen(obj)) {
          target[PY_STATE] = state;
        } else {
          throw fail(`BUILD on a ${describe(obj)}`);
        }
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (!opts.persistent_load) throw fail("persistent id found but no persistent_load hook was given");
        stack.push(opts.persistent_load(pid));
        break;
      }
      default:
        throw fail(
          `unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")} ('${String.fromCharCode(op)}')`,
        );
    }
  }
}

function describe(v: unknown): string {
  if (v === null) return "None";
  if (v instanceof Map) return "dict";
  if (v instanceof Set) return "set";
  if (Array.isArray(v)) return Object.isFrozen(v) ? "tuple" : "list";
  if (v instanceof PyGlobal) return `global ${v.name}`;
  if (v instanceof Uint8Array) return "bytes";
  if (typeof v === "object") return v.constructor?.name ?? "object";
  return typeof v;
}
