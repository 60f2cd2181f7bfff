/**
 * The CUDA backend's launch plans are pure functions of shapes: checked here without a GPU
 * (decode attention's split over warps and chunks; the padded vocabulary of the LM head).
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { DECODE_MIN_KEYS_PER_WARP, decode_plan } from "../src/backend/cuda/ops.ts";
import { padded_vocab, VOCAB_ALIGN } from "../src/model/gpt.ts";

const SMS = 132;

Deno.test("decode_plan: few heads get up to 8 warps each and, on long caches, chunks of keys", () => {
  const p = decode_plan(1, 12, 320, SMS); // gpt2 b1: 12 (b, head) pairs, far fewer than SMs
  assertEquals(p.warps_per_head, 8);
  assertEquals(p.n_chunks, 1); // below DECODE_SPLIT_MIN_T: one launch
  const long = decode_plan(1, 12, 1024, SMS);
  assert(long.n_chunks > 1 && long.chunk * long.n_chunks >= 1024, JSON.stringify(long));
});

Deno.test("decode_plan: once the heads fill the SMs, short caches cap the warps per head", () => {
  // gpt2-xl b64, max_T 320: 1600 pairs >= 132 SMs; 8 warps would leave 40 keys each.
  const p = decode_plan(64, 25, 320, SMS);
  assert(p.warps_per_head * DECODE_MIN_KEYS_PER_WARP <= 320, JSON.stringify(p));
  assertEquals(p.warps_per_head, 4);
  // A long cache keeps 8; an explicit cap of 2 wins.
  assertEquals(decode_plan(64, 25, 1024, SMS).warps_per_head, 8);
  assertEquals(decode_plan(64, 25, 320, SMS, 2).warps_per_head, 2);
  // Many pairs: one warp per head and several heads per block (dividing H).
  const big = decode_plan(512, 12, 40, SMS);
  assertEquals(big.warps_per_head, 1);
  assert(big.heads_per_block > 1 && 12 % big.heads_per_block === 0, JSON.stringify(big));
});

Deno.test("padded_vocab: rows of the LM head and logits are a multiple of VOCAB_ALIGN, never fewer", () => {
  assertEquals(padded_vocab(50257), 50304);
  assertEquals(padded_vocab(65), 128);
  assertEquals(padded_vocab(VOCAB_ALIGN * 3), VOCAB_ALIGN * 3);
  for (const v of [1, 63, 64, 65, 300, 50257]) {
    const p = padded_vocab(v);
    assert(p >= v && p % VOCAB_ALIGN === 0 && p - v < VOCAB_ALIGN, `${v} -> ${p}`);
  }
});
