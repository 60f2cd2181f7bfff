/** The safe unpickler: real meta.pkl, pickles Python wrote (protocols 2, 4, 5), and hand-made bad ones. */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { PY_STATE, type PyFactory, PyGlobal, unpickle } from "../src/loaders/pickle.ts";
import { needs_shared, SHAKESPEARE } from "./helpers/shared.ts";

const hex = (s: string) => Uint8Array.from(s.match(/../g)!, (b) => parseInt(b, 16));
const bytes = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));

// pickle.dumps(OBJ, protocol=P) by CPython 3.11, where
// OBJ = {"a": [1, 2**70, -5, -(2**40), 3.5, None, True, False, b"xy", (1, 2), {7}, frozenset([3]), "é",
//              65536, -1], 3: "int key", (1, "t"): "tuple key"}
const PY = {
  2: "80027d71002858010000006171015d7102284b018a090000000000000000404afbffffff8a060000000000ff47400c00000000" +
    "00004e8889635f636f646563730a656e636f64650a710358020000007879710458060000006c6174696e3171058671065271" +
    "074b014b02867108635f5f6275696c74696e5f5f0a7365740a71095d710a4b076185710b52710c635f5f6275696c74696e5f" +
    "5f0a66726f7a656e7365740a710d5d710e4b036185710f5271105802000000c3a971114a000001004affffffff654b035807" +
    "000000696e74206b657971124b01580100000074711386711458090000007475706c65206b65797115752e",
  4: "80049578000000000000007d94288c0161945d94284b018a090000000000000000404afbffffff8a060000000000ff47400c00" +
    "00000000004e888943027879944b014b0286948f94284b0790284b0391948c02c3a9944a000001004affffffff654b038c07" +
    "696e74206b6579944b018c01749486948c097475706c65206b657994752e",
  5: "80059578000000000000007d94288c0161945d94284b018a090000000000000000404afbffffff8a060000000000ff47400c00" +
    "00000000004e888943027879944b014b0286948f94284b0790284b0391948c02c3a9944a000001004affffffff654b038c07" +
    "696e74206b6579944b018c01749486948c097475706c65206b657994752e",
};

// What protocol 2 needs for sets and bytes (Python 3 maps __builtin__ -> builtins).
const py2_globals = new Map<string, PyFactory>([
  ["builtins.set", (items) => new Set(items as unknown[])],
  ["builtins.frozenset", (items) => new Set(items as unknown[])],
  ["_codecs.encode", (s) => bytes(s as string)],
]);

for (const [proto, h] of Object.entries(PY)) {
  Deno.test(`unpickle: Python protocol ${proto} data`, () => {
    const v = unpickle(hex(h), { globals: py2_globals, what: `proto${proto}.pkl` });
    assert(v instanceof Map);
    const a = v.get("a") as unknown[];
    assertEquals(a.length, 15);
    assertEquals(a[0], 1);
    assertEquals(a[1], 2n ** 70n);
    assertEquals(a[2], -5);
    assertEquals(a[3], -(2 ** 40));
    assertEquals(a[4], 3.5);
    assertEquals(a[5], null);
    assertEquals(a[6], true);
    assertEquals(a[7], false);
    assertEquals([...(a[8] as Uint8Array)], [0x78, 0x79]);
    assertEquals(a[9], [1, 2]);
    assert(Object.isFrozen(a[9]), "tuples are frozen arrays");
    assertEquals(a[10], new Set([7]));
    assertEquals(a[11], new Set([3]));
    assertEquals(a[12], "é");
    assertEquals(a[13], 65536);
    assertEquals(a[14], -1);
    assertEquals(v.get(3), "int key");
    const tuple_key = [...v.keys()].find((k) => Array.isArray(k)) as unknown[];
    assertEquals(tuple_key, [1, "t"]);
    assertEquals(v.get(tuple_key), "tuple key");
  });
}

Deno.test(needs_shared("unpickle: meta.pkl gives a vocabulary with int keys in a Map"), async () => {
  const path = `${SHAKESPEARE}meta.pkl`;
  const meta = unpickle(await Deno.readFile(path), { what: path }) as Map<string, unknown>;
  assertEquals(meta.get("vocab_size"), 65);
  const itos = meta.get("itos") as Map<number, string>;
  const stoi = meta.get("stoi") as Map<string, number>;
  assertEquals(itos.size, 65);
  assertEquals(stoi.size, 65);
  assertEquals(itos.get(0), "\n");
  assertEquals(itos.get(1), " ");
  for (const [i, c] of itos) assertEquals(stoi.get(c), i);
});

Deno.test("unpickle: a forbidden GLOBAL is an error naming it and the file", () => {
  // os.system("echo pwned") as pickle protocol 2 would spell it.
  const evil = bytes("\x80\x02cos\nsystem\nX\x0a\x00\x00\x00echo pwnedq\x00\x85R.");
  const e = assertThrows(
    () => unpickle(evil, { globals: py2_globals, what: "evil.pkl" }),
    Error,
    `forbidden global "os.system" in evil.pkl`,
  );
  assert(e.message.includes("builtins.set"), e.message);
  assertThrows(() => unpickle(evil, { what: "evil.pkl" }), Error, "no globals are allowed");
});

Deno.test("unpickle: a forbidden STACK_GLOBAL is an error naming it", () => {
  const evil = bytes("\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.");
  assertThrows(
    () => unpickle(evil, { globals: py2_globals, what: "e.pkl" }),
    Error,
    `"builtins.eval" in e.pkl`,
  );
  // __builtin__ (protocol 2 spelling) is resolved to builtins before the allowlist check.
  const evil2 = bytes("\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.");
  assertThrows(() => unpickle(evil2, { globals: py2_globals }), Error, `forbidden global "builtins.eval"`);
});

Deno.test("unpickle: allowed globals are called through their factory only", () => {
  const calls: unknown[][] = [];
  const globals = new Map<string, PyFactory>([["my.thing", (...args) => {
    calls.push(args);
    return { made: args };
  }]]);
  const v = unpickle(bytes("\x80\x02cmy\nthing\nK\x05X\x01\x00\x00\x00a\x86R}X\x01\x00\x00\x00kK\x01sb."), {
    globals,
  }) as { made: unknown[]; [PY_STATE]: unknown };
  assertEquals(calls, [[5, "a"]]);
  assertEquals(v.made, [5, "a"]);
  assertEquals(v[PY_STATE], new Map([["k", 1]]));
});

Deno.test("unpickle: persistent ids go to the hook", () => {
  const pkl = bytes("\x80\x02(X\x07\x00\x00\x00storagecmy\nStorage\nX\x01\x00\x00\x000K\x04tQ.");
  const globals = new Map<string, PyFactory>([["my.Storage", () => null]]);
  const v = unpickle(pkl, {
    globals,
    persistent_load: (pid) => {
      const p = pid as unknown[];
      assert(p[1] instanceof PyGlobal);
      return `loaded ${p[0]} ${(p[1] as PyGlobal).name} ${p[2]} ${p[3]}`;
    },
  });
  assertEquals(v, "loaded storage my.Storage 0 4");
  assertThrows(() => unpickle(pkl, { globals, what: "p.pkl" }), Error, "no persistent_load hook");
});

Deno.test("unpickle: unknown opcode, truncation and bad memo are clear errors", () => {
  assertThrows(() => unpickle(bytes("\x80\x02K\x01I1\n."), { what: "x.pkl" }), Error, "opcode 0x49 ('I')");
  assertThrows(() => unpickle(bytes("\x80\x02K\x01I1\n."), { what: "x.pkl" }), Error, "offset 4");
  assertThrows(
    () => unpickle(bytes("\x80\x02X\x10\x00\x00\x00abc"), { what: "t.pkl" }),
    Error,
    "t.pkl: truncated",
  );
  assertThrows(() => unpickle(bytes("\x80\x02K\x01"), { what: "t.pkl" }), Error, "truncated");
  assertThrows(() => unpickle(bytes("\x80\x02h\x07."), { what: "m.pkl" }), Error, "memo entry 7 not found");
  assertThrows(() => unpickle(bytes("\x80\x02s."), { what: "s.pkl" }), Error, "stack underflow");
  assertThrows(
    () => unpickle(bytes("\x80\x09N."), { what: "v.pkl" }),
    Error,
    "unsupported pickle protocol 9",
  );
});
