/**
 * The FFI boundary checks itself: src/native/symbols.ts and native/abi.zig are what the generator
 * makes from the Zig exports now, so a Zig signature changed without regenerating fails here (and
 * in `deno task check`), and a changed signature changes the ABI version the loader checks.
 */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import {
  abi_version,
  abi_zig_text,
  native_exports,
  parse_exports,
  symbols_text,
} from "../src/native/gen_symbols.ts";
import { native, NATIVE_ABI_VERSION } from "../src/native/lib.ts";

const root = decodeURIComponent(new URL("../", import.meta.url).pathname);

Deno.test("ffi: symbols.ts and abi.zig are generated from the current Zig exports", async () => {
  const exports = native_exports(root);
  const abi = await abi_version(exports);
  assertEquals(Deno.readTextFileSync(`${root}src/native/symbols.ts`), symbols_text(exports, abi));
  assertEquals(Deno.readTextFileSync(`${root}native/abi.zig`), abi_zig_text(abi));
  assertEquals(NATIVE_ABI_VERSION, abi);
  assertEquals(native().symbols.ng_version(), abi, "the built library is older than its sources: rebuild");
});

Deno.test("ffi: a changed signature changes the table and the ABI version", async () => {
  const exports = native_exports(root);
  const abi = await abi_version(exports);
  const i = exports.findIndex((e) => e.name === "ng_cpu_sample");
  assert(i >= 0);
  const changed = exports.map((e, j) => j === i ? { ...e, parameters: e.parameters.slice(0, -1) } : e);
  assert(symbols_text(changed, abi) !== symbols_text(exports, abi));
  assert((await abi_version(changed)) !== abi);
});

Deno.test("ffi: the parser reads doc comments, pointer types and results; unknown types are errors", () => {
  const src =
    `/// Adds.\n/// Twice.\nexport fn ng_x(a: u64, b: *u64, c: ?[*]const u8, d: [*:0]const u8, e: f32) i32 {\n}\n` +
    `export fn ng_y() void {}\n`;
  assertEquals(parse_exports(src, "f.zig"), [
    {
      name: "ng_x",
      parameters: ["u64", "buffer", "buffer", "buffer", "f32"],
      result: "i32",
      doc: "Adds. Twice.",
      file: "f.zig",
    },
    { name: "ng_y", parameters: [], result: "void", doc: "", file: "f.zig" },
  ]);
  assertThrows(
    () => parse_exports("export fn ng_z(a: SomeStruct) i32 {}", "g.zig"),
    Error,
    'g.zig: ng_z: no FFI mapping for the Zig type "SomeStruct"',
  );
});
