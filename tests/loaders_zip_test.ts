/** ZipReader: real torch checkpoints, hand-built archives (stored, deflate, ZIP64), and broken files. */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { ZipReader } from "../src/loaders/zip.ts";
import { fixture } from "./helpers/compare.ts";
import { make_zip } from "./helpers/zip_writer.ts";
import { needs_shared, SHAKESPEARE } from "./helpers/shared.ts";

const tmp_dir = Deno.makeTempDirSync({ prefix: "ngpt_zip_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp_dir, { recursive: true }));
let tmp_count = 0;

async function write_tmp(bytes: Uint8Array, name = "test.zip"): Promise<string> {
  const path = `${tmp_dir}/${tmp_count++}_${name}`;
  await Deno.writeFile(path, bytes);
  return path;
}

const sample = (n: number, seed: number) =>
  Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7 + (i >> 5)) & 0xff);

Deno.test(needs_shared("zip: the real checkpoint's entries, and range reads of a stored entry"), async () => {
  using z = await ZipReader.open(`${SHAKESPEARE}ckpt.pt`);
  // 27 parameters, 2 x 27 AdamW moments + 27 step counters, best_val_loss, and 6 bookkeeping entries.
  assertEquals(z.entries.size, 115);
  const pkl = z.entry("ckpt/data.pkl");
  assertEquals(pkl.uncompressed_bytes, 15162);
  const data = await z.read(pkl);
  assertEquals(data[0], 0x80); // pickle PROTO
  assertEquals(data[data.length - 1], 0x2e); // STOP
  assertEquals(new TextDecoder().decode(await z.read("ckpt/byteorder")), "little");
  const e = z.entry("ckpt/data/0");
  assertEquals(e.uncompressed_bytes, 65 * 256 * 4);
  const whole = await z.read(e);
  assertEquals([...(await z.read(e, 1000, 24))], [...whole.subarray(1000, 1024)]);
  // Concurrent reads do not interleave.
  const [a, b] = await Promise.all([z.read(e, 0, 4096), z.read("ckpt/data/1", 0, 4096)]);
  assertEquals([...a], [...whole.subarray(0, 4096)]);
  assertEquals([...b], [...(await z.read("ckpt/data/1")).subarray(0, 4096)]);
});

for (const zip64 of [false, true]) {
  Deno.test(`zip: stored and deflated entries${zip64 ? " (ZIP64 records)" : ""}`, async () => {
    const e1 = sample(5000, 1);
    const e2 = new TextEncoder().encode("hello ".repeat(500));
    const path = await write_tmp(make_zip([
      { name: "a/data.pkl", data: e1 },
      { name: "a/data/0", data: e2, method: 8 },
      { name: "a/empty", data: new Uint8Array(0) },
    ], { zip64, comment: "a comment" }));
    using z = await ZipReader.open(path);
    assertEquals([...z.entries.keys()], ["a/data.pkl", "a/data/0", "a/empty"]);
    assertEquals(z.entry("a/data/0").method, 8);
    assert(z.entry("a/data/0").compressed_bytes < e2.length);
    assertEquals([...(await z.read("a/data.pkl"))], [...e1]);
    assertEquals([...(await z.read("a/data.pkl", 4000, 1000))], [...e1.subarray(4000)]);
    assertEquals(new TextDecoder().decode(await z.read("a/data/0")), "hello ".repeat(500));
    assertEquals([...(await z.read("a/data/0", 6, 5))], [...e2.subarray(6, 11)]);
    assertEquals((await z.read("a/empty")).length, 0);
    await assertRejects(() => z.read("a/data.pkl", 4990, 20), Error, "past the end of zip entry");
    await assertRejects(() => z.read("nope"), Error, `zip entry "nope" not found`);
  });
}

Deno.test("zip: wrong magic is 'not a zip' naming the file", async () => {
  const path = await write_tmp(new TextEncoder().encode("this is not a zip file at all, just text"), "x.pt");
  await assertRejects(() => ZipReader.open(path), Error, `${path}: not a zip file (wrong magic`);
});

Deno.test("zip: a truncated file names the file", async () => {
  const full = await Deno.readFile(fixture("nano_bias.pt"));
  const path = await write_tmp(full.subarray(0, Math.floor(full.length / 2)), "half.pt");
  await assertRejects(() => ZipReader.open(path), Error, `${path}: truncated or corrupt zip`);
  const tiny = await write_tmp(full.subarray(0, 10), "tiny.pt");
  await assertRejects(() => ZipReader.open(tiny), Error, `${tiny}: truncated zip`);
  // Bytes missing in the middle: the central directory no longer sits where the end record says.
  const z = make_zip([{ name: "a", data: sample(100, 2) }, { name: "b", data: sample(100, 3) }]);
  const cut = new Uint8Array(z.length - 30);
  cut.set(z.subarray(0, 140));
  cut.set(z.subarray(170), 140);
  const cut_path = await write_tmp(cut, "cut.zip");
  await assertRejects(
    () => ZipReader.open(cut_path),
    Error,
    `${cut_path}: truncated or corrupt zip: central directory`,
  );
});

Deno.test("zip: flipped bytes in the central directory are 'corrupt' naming the file", async () => {
  const z = make_zip([{ name: "x/data.pkl", data: sample(64, 4) }, {
    name: "x/data/0",
    data: sample(64, 5),
  }]);
  const first_cd = new DataView(z.buffer).getUint32(z.length - 22 + 16, true);
  const second_cd = first_cd + 46 + "x/data.pkl".length;
  // Signature, the second record's name length, the first record's local header offset.
  for (const at of [first_cd, second_cd + 28, first_cd + 42]) {
    const bad = z.slice();
    bad[at] ^= 0xff;
    bad[at + 1] ^= 0x5a;
    const path = await write_tmp(bad, "flipped.zip");
    const e = await assertRejects(async () => {
      using r = await ZipReader.open(path);
      for (const e of r.entries.values()) await r.read(e);
    });
    assert(e.message.startsWith(`${path}: `) && e.message.includes("corrupt"), e.message);
  }
});

Deno.test("zip: an entry past the end of the file is an error naming it", async () => {
  const z = make_zip([{ name: "big", data: sample(256, 6) }]);
  const cd = new DataView(z.buffer).getUint32(z.length - 22 + 16, true);
  const dv = new DataView(z.buffer);
  dv.setUint32(cd + 20, 1 << 20, true); // compressed size
  dv.setUint32(cd + 24, 1 << 20, true); // uncompressed size
  const path = await write_tmp(z, "past.zip");
  await assertRejects(() => ZipReader.open(path), Error, `zip entry "big" (1048576 bytes`);
});

Deno.test("zip: a corrupt local header is an error naming the entry", async () => {
  const z = make_zip([{ name: "x/data.pkl", data: sample(64, 7) }]);
  z[0] = 0x50; // keep "PK" magic, break the local header's name
  z[30] ^= 0x20;
  const path = await write_tmp(z, "local.zip");
  using r = await ZipReader.open(path);
  await assertRejects(() => r.read("x/data.pkl"), Error, `corrupt zip: the local header of "x/data.pkl"`);
});

Deno.test("zip: unsupported compression is an error naming the entry and method", async () => {
  const path = await write_tmp(make_zip([{ name: "lzma", data: sample(64, 8), method: 14 }]), "lzma.zip");
  using r = await ZipReader.open(path);
  await assertRejects(() => r.read("lzma"), Error, `unsupported compression method 14 for zip entry "lzma"`);
});

Deno.test("zip: a CRC-32 mismatch of a whole entry is 'corrupt' naming the entry", async () => {
  const z = make_zip([{ name: "x/data.pkl", data: sample(64, 9) }]);
  z[30 + "x/data.pkl".length + 5] ^= 1; // one bit of the stored data
  const path = await write_tmp(z, "crc.zip");
  using r = await ZipReader.open(path);
  await assertRejects(
    () => r.read("x/data.pkl"),
    Error,
    `${path}: corrupt zip: entry "x/data.pkl" fails its CRC-32`,
  );
  assertEquals((await r.read("x/data.pkl", 0, 4)).length, 4); // a partial read cannot check it
});
