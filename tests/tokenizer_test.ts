/** Tokenizers: GPT-2 BPE (js-tiktoken ranks) and nanoGPT's character vocabulary from meta.pkl. */
import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import { create_tokenizer } from "../src/tokenizer/tokenizer.ts";
import { TextStream } from "../src/engine/text_stream.ts";
import { rng, test_seed } from "./helpers/rng.ts";
import { load_char_vocab } from "../src/loaders/nanogpt.ts";
import { open_model } from "../src/loaders/open_model.ts";
import { DEFAULT_MODEL } from "../src/load.ts";
import { needs_shared, SHAKESPEARE, shakespeare_reference } from "./helpers/shared.ts";

const dir = SHAKESPEARE.replace(/\/$/, "");

async function embedded_char_tokenizer() {
  using src = await open_model(DEFAULT_MODEL);
  return await create_tokenizer(src.tokenizer);
}

Deno.test("gpt2: Hello world -> [15496, 995], and back", async () => {
  const t = await create_tokenizer({ kind: "gpt2" });
  assertEquals(t.vocab_size, 50257);
  assertEquals(t.eot_id, 50256);
  assertEquals(t.encode("Hello world"), [15496, 995]);
  assertEquals(t.decode([15496, 995]), "Hello world");
});

Deno.test("gpt2: <|endoftext|> encodes as the special token 50256", async () => {
  const t = await create_tokenizer({ kind: "gpt2" });
  const ids = t.encode("Hi<|endoftext|>there");
  assert(ids.includes(50256), `ids ${ids}`);
  assertEquals(ids.filter((i) => i === 50256).length, 1);
  assertEquals(t.decode(ids), "Hi<|endoftext|>there");
});

Deno.test("gpt2: decode round trip of mixed text", async () => {
  const t = await create_tokenizer({ kind: "gpt2" });
  for (
    const text of [
      "The quick brown fox jumps over the lazy dog.",
      "  leading spaces, tabs\tand\nnewlines\n\n",
      "naïve café — 日本語のテキスト 🙂👍🏽",
      "code: for (let i = 0; i < n; i++) { x += 1e-5; }",
    ]
  ) {
    const ids = t.encode(text);
    assert(ids.every((i) => Number.isInteger(i) && i >= 0 && i < 50257));
    assertEquals(t.decode(ids), text);
    assertEquals(new TextDecoder().decode(t.decode_bytes(ids)), text);
  }
});

Deno.test("gpt2: decode_bytes of a token that splits a multi-byte character", async () => {
  const t = await create_tokenizer({ kind: "gpt2" });
  const text = "日本語🙂";
  const ids = t.encode(text);
  const pieces = ids.map((id) => t.decode_bytes([id]));
  // Some single token must not be a whole UTF-8 sequence.
  const partial = pieces.filter((b) => {
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(b);
      return false;
    } catch {
      return true;
    }
  });
  assert(partial.length > 0, "expected a token holding part of a character");
  // Concatenated bytes are exactly the UTF-8 of the text, and a streaming decoder rebuilds it.
  const all = t.decode_bytes(ids);
  assertEquals([...all], [...new TextEncoder().encode(text)]);
  const dec = new TextDecoder();
  let streamed = "";
  for (const b of pieces) streamed += dec.decode(b, { stream: true });
  streamed += dec.decode();
  assertEquals(streamed, text);
  // Decoding a lone partial token gives a replacement character, not an exception.
  const partial_id = ids[pieces.indexOf(partial[0])];
  assert(t.decode([partial_id]).includes("\uFFFD"));
});

Deno.test("gpt2: an out-of-range id is an error naming it", async () => {
  const t = await create_tokenizer({ kind: "gpt2" });
  assertThrows(() => t.decode([1, 50257]), Error, "token id 50257 at index 1");
  assertThrows(() => t.decode_bytes([-1]), Error, "token id -1");
});

Deno.test(needs_shared("char: the shared meta.pkl is the embedded model's vocabulary"), async () => {
  const shared = await create_tokenizer(await load_char_vocab(`${dir}/meta.pkl`));
  const embedded = await embedded_char_tokenizer();
  const all = Array.from({ length: 65 }, (_, i) => i);
  assertEquals(shared.decode(all), embedded.decode(all));
  assertEquals(shared.vocab_size, embedded.vocab_size);
});

Deno.test("char: the embedded model's vocabulary round-trips reference.json's prompt", async () => {
  const ref = shakespeare_reference();
  const t = await embedded_char_tokenizer();
  assertEquals(t.vocab_size, 65);
  assertEquals(t.eot_id, null);
  assertEquals(t.encode(ref.prompt), ref.prompt_ids);
  assertEquals(t.decode(ref.prompt_ids), ref.prompt);
  assertEquals(t.decode(ref.greedy_ids), ref.greedy_text);
  assertEquals(new TextDecoder().decode(t.decode_bytes(ref.prompt_ids)), ref.prompt);
});

Deno.test("char: an unknown character is an error naming it (JSON-escaped) and its index", async () => {
  const t = await embedded_char_tokenizer();
  assertThrows(() => t.encode("abc\u00e9d"), Error, `character "é" at index 3`);
  assertThrows(() => t.encode("ab\tc"), Error, `character "\\t" at index 2`);
  // Index counts characters (code points), not UTF-16 units.
  assertThrows(() => t.encode("ab🙂"), Error, `"🙂" at index 2`);
  assertThrows(() => t.decode([0, 65]), Error, "token id 65 at index 1");
});

Deno.test("char: inconsistent stoi/itos is rejected", async () => {
  const stoi = new Map([["a", 0], ["b", 1]]);
  const itos = new Map([[0, "a"], [1, "c"]]);
  await assertRejects(
    () => create_tokenizer({ kind: "char", stoi, itos }),
    Error,
    `stoi["b"] = 1 but itos[1] = "c"`,
  );
});

Deno.test("TextStream: token by token, the text of the whole byte stream (split characters, bad bytes, BOM)", async () => {
  const tok = await create_tokenizer({ kind: "gpt2" });
  const r = rng(test_seed());
  // Text with multi-byte characters, whose tokens split some of them; plus random ids (the first
  // 256 hold single bytes, many not valid alone) and a BOM.
  const base = tok.encode("héllo wörld ✓ 日本語のテキスト 🙂🚀 \uFEFFend");
  for (let trial = 0; trial < 200; trial++) {
    const ids = trial % 2 === 0 ? [...base] : [];
    for (let i = 0; i < 40; i++) {
      ids.push(r() < 0.5 ? Math.floor(r() * 256) : Math.floor(r() * tok.vocab_size));
    }
    if (trial % 3 === 0) ids.reverse();
    const ts = new TextStream(tok, []);
    let out = "";
    for (const id of ids) out += ts.push(id);
    out += ts.finish();
    const want = new TextDecoder("utf-8", { ignoreBOM: true }).decode(tok.decode_bytes(ids));
    assertEquals(out, want, `ids ${JSON.stringify(ids)}`);
    assertEquals(ts.text, want);
  }
});
