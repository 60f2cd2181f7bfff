/**
 * The CUDA backend's launch plans are pure functions of shapes: checked here without a GPU
 * (decode attention's split over warps and chunks; the gemv kernel's launch shapes and the auto
 * policy; gemm_mma's K split; the padded vocabulary of the LM head).
 */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { with_env } from "./helpers/env.ts";
import {
  DECODE_FEW_PAIRS_MIN_KEYS_PER_WARP,
  DECODE_KV8_MIN_KEYS_PER_WARP,
  DECODE_MANY_PAIRS_PER_SM,
  DECODE_MIN_KEYS_PER_WARP,
  decode_min_keys_per_warp,
  decode_plan,
} from "../src/backend/cuda/ops.ts";
import type { Buf, DType, MatmulArgs } from "../src/backend/backend.ts";
import {
  default_gemv_split,
  default_gemv_tensor_cores,
  forced_gemm_split,
  gemm_fits,
  gemm_split,
  GEMM_SPLIT_MAX,
  gemv_fits,
  gemv_launch,
  gemv_preferred,
  GEMV_SPLIT_MAX,
  gemv_tensor_cores_for,
  type GemvShape,
} from "../src/backend/cuda/matmul.ts";

const DTYPES: DType[] = ["f32", "bf16", "f16"];
import { padded_vocab, VOCAB_ALIGN } from "../src/model/gpt.ts";

const SMS = 132;

/** A buffer standing for any device memory (the plans only read its address). */
const buf: Buf = { ptr: 0n, bytes: 1 << 30, label: "b" };
/** Matmul arguments of M x K times N x K over `buf`, with `more` on top. */
const mm = (M: number, N: number, K: number, more: Partial<MatmulArgs> = {}): MatmulArgs => ({
  out: buf,
  x: buf,
  w: buf,
  bias: null,
  M,
  N,
  K,
  act: "none",
  accumulate: false,
  ...more,
});

Deno.test("decode_plan: few heads get up to 8 warps each and, on long caches, chunks of keys", () => {
  const p = decode_plan(1, 12, 320, SMS); // gpt2 b1: 12 (b, head) pairs, far fewer than SMs
  assertEquals(p.warps_per_head, 8);
  assertEquals(p.n_chunks, 1); // below DECODE_SPLIT_MIN_T: one launch
  const long = decode_plan(1, 12, 1024, SMS);
  assert(long.n_chunks > 1 && long.chunk * long.n_chunks >= 1024, JSON.stringify(long));
});

Deno.test("decode_plan: once the heads fill the SMs, short caches cap the warps per head", () => {
  // gpt2-xl b64, max_T 384 (the engine's bucket at 320): 1600 pairs >= 132 SMs; 8 warps would leave
  // 48 keys each.
  const p = decode_plan(64, 25, 384, SMS);
  assert(p.warps_per_head * DECODE_MIN_KEYS_PER_WARP <= 384, JSON.stringify(p));
  assertEquals(p.warps_per_head, 2);
  // A long cache keeps 8; an explicit cap of 1 wins.
  assertEquals(decode_plan(64, 25, 1024, SMS).warps_per_head, 8);
  assertEquals(decode_plan(64, 25, 384, SMS, 1).warps_per_head, 1);
  // Many pairs: one warp per head and several heads per block (dividing H).
  const big = decode_plan(512, 12, 40, SMS);
  assertEquals(big.warps_per_head, 1);
  assert(big.heads_per_block > 1 && 12 % big.heads_per_block === 0, JSON.stringify(big));
  // The int8 cache's larger minimum: gpt2 b256 at the bench's longest bucket (384) gets one warp per
  // head (the 16-bit cache 2), four heads a block; 1024 keys get 4.
  const kv8 = decode_plan(256, 12, 384, SMS, 8, DECODE_KV8_MIN_KEYS_PER_WARP);
  assertEquals([kv8.warps_per_head, kv8.heads_per_block], [1, 4]);
  assertEquals(decode_plan(256, 12, 384, SMS).warps_per_head, 2);
  assertEquals(decode_plan(256, 12, 1024, SMS, 8, DECODE_KV8_MIN_KEYS_PER_WARP).warps_per_head, 4);
});

Deno.test("decode_min_keys_per_warp: fewer keys a warp until the pairs fill the SMs several times over", () => {
  const many = DECODE_MANY_PAIRS_PER_SM * SMS;
  assertEquals(decode_min_keys_per_warp(many - 1, SMS, false), DECODE_FEW_PAIRS_MIN_KEYS_PER_WARP);
  assertEquals(decode_min_keys_per_warp(many, SMS, false), DECODE_MIN_KEYS_PER_WARP);
  for (const pairs of [1, 200, many, 4096]) {
    assertEquals(decode_min_keys_per_warp(pairs, SMS, true), DECODE_KV8_MIN_KEYS_PER_WARP);
  }
  // gpt2-xl b8 (200 pairs) at the bucket of 256 keys: 4 warps a head (128 keys a warp would give 2);
  // gpt2-xl b64 (1600 pairs) at 384: 2, as above.
  assertEquals(decode_plan(8, 25, 256, SMS).warps_per_head, 4);
  assertEquals(decode_plan(8, 25, 256, SMS, 8, DECODE_MIN_KEYS_PER_WARP).warps_per_head, 2);
  assertEquals(decode_plan(64, 25, 384, SMS).warps_per_head, 2);
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

Deno.test("gemv launch shapes and the auto policy (host logic, no GPU needed)", () => {
  const shapes = [[768, 768], [2304, 768], [768, 3072], [1600, 6400], [50257, 1600], [5, 8], [37, 64], [
    3,
    24,
  ]];
  const bounds: Record<string, number> = {
    gemv_m1: 1,
    gemv_m2: 2,
    gemv_m4: 4,
    gemv_m8: 8,
    gemv_m16: 16,
    gemv_mma_m8: 8,
    gemv_mma_m16: 16,
    gemv_mma_split_m8: 8,
    gemv_mma_split_m16: 16,
  };
  for (const dtype of DTYPES) {
    const es = dtype === "f32" ? 4 : 2;
    for (let M = 1; M <= 16; M++) {
      for (const [N, K] of shapes) {
        for (const [tc, ln] of [[true, false], [false, false], [true, true]]) {
          const what = `${dtype} M=${M} N=${N} K=${K} tensor cores ${tc} ln ${ln}`;
          const a = mm(M, N, K, ln ? { ln: { weight: buf, bias: buf, eps: 1e-5 } } : {});
          // Whole 16-byte vectors per row, and x (with ln, its weight and bias after it) staged in
          // shared memory (227 KiB less 4 KiB static).
          // x' (M rows of K), then with a layernorm its weight and bias, and at M = 1 x (gemv.cu).
          const rows = ln ? M + 2 + (M === 1 ? 1 : 0) : M;
          const fits = K * es % 16 === 0 && rows * K * es <= 232448 - 4096;
          assertEquals(gemv_fits(a, dtype, 232448), fits, `fits ${what}`);
          if (!fits) continue;
          const l = gemv_launch(a, dtype, 132, 232448, tc);
          // The tensor-core kernel: 16-bit storage, M >= 3, K a multiple of 64, 8-row groups.
          const mma = tc && dtype !== "f32" && M >= 3 && K % 64 === 0;
          assertEquals(l.kernel.startsWith("gemv_mma_"), mma, `${what}: ${l.kernel}`);
          const warps = l.threads / 32;
          assert(Number.isInteger(warps) && warps >= 1 && warps <= 8, `${what}: ${l.threads} threads`);
          assert(l.ks >= 1 && warps % l.ks === 0, `${what}: ${warps} warps, ks ${l.ks}`);
          assert(l.ks <= (M <= 2 || mma ? 8 : 4), `${what}: ks ${l.ks}`);
          // K split across blocks: tensor cores only, each slice at least one chunk of 64-k blocks,
          // block b taking slice b % kslices of x, staged alone.
          assert(l.kslices >= 1 && l.kslices <= GEMV_SPLIT_MAX && (mma || l.kslices === 1), `${what}: split`);
          assert(!ln || l.kslices === 1, `${what}: a split with a layernorm`);
          assert(l.kslices === 1 || K / 64 / l.kslices >= 8, `${what}: ${l.kslices} slices`);
          assert(l.blocks % l.kslices === 0, `${what}: ${l.blocks} blocks, ${l.kslices} slices`);
          const tiles = Math.ceil(N / (mma ? 8 : 4));
          assert(l.blocks >= 1 && l.blocks <= tiles * l.kslices, `${what}: ${l.blocks} blocks`);
          // A split block passes at most 32 tiles (a bit each in gemv_mma.cu).
          const tile_rows = 8 * l.threads / 32 / l.ks;
          assert(
            l.kslices === 1 || Math.ceil(N / tile_rows) <= 32 * l.blocks / l.kslices,
            `${what}: tiles a block`,
          );
          // Unsplit grouped shapes (M <= 2, tensor cores): full blocks (no room for another row
          // group), never more blocks than fit the SMs at once (128 registers a thread; the rest
          // loop), and on tensor cores K over at least 2 warps where it has two 64-k blocks.
          if (l.kslices === 1 && (M <= 2 || mma)) {
            assert(warps + l.ks > 8, `${what}: ${warps} warps of ${l.ks} leave room`);
            const fit = Math.min(
              8,
              Math.floor(65536 / (128 * l.threads)),
              Math.floor(232448 / (l.smem_bytes + 4096)),
            );
            assert(l.blocks <= 132 * Math.max(1, fit), `${what}: ${l.blocks} blocks, ${fit} fit an SM`);
            assert(!mma || l.ks >= Math.min(2, K / 64), `${what}: ks ${l.ks}`);
          }
          const slice_k = l.kslices === 1 ? K : Math.ceil(K / 64 / l.kslices) * 64;
          assertEquals(l.smem_bytes, (l.kslices === 1 ? rows : M) * slice_k * es, what);
          const bound = bounds[l.kernel];
          const least = mma ? 8 : 1; // the tensor-core kernel's smallest bound is 8 (M from 3)
          assert(bound >= M && (bound === least || bound / 2 < M), `${what}: variant ${l.kernel}`);
        }
      }
    }
  }
  // Int8 weights: the W8 variant of the same bound. On CUDA cores the same grid (a lane's vector
  // covers the same K elements of x and w); on tensor cores a lane's 16 bytes hold twice the k, so
  // K is split over at most as many warps.
  for (const M of [1, 3, 16]) {
    for (const tc of [true, false]) {
      const plain = gemv_launch(mm(M, 2304, 768), "bf16", 132, 232448, tc);
      const w8 = gemv_launch(mm(M, 2304, 768, { w_scale: buf }), "bf16", 132, 232448, tc);
      assertEquals(w8.kernel, plain.kernel.replace(/gemv_(mma_)?m/, "gemv_$1w8_m"));
      if (plain.kernel.startsWith("gemv_mma_")) {
        assert(w8.ks <= plain.ks, `M=${M}: ks ${w8.ks} > ${plain.ks}`);
      } else assertEquals({ ...w8, kernel: plain.kernel }, plain);
    }
  }
  // The split: gpt2-xl's mlp.c_proj at M = 8 stages 100 KB of x a block unsplit, 25 KB in 4 slices;
  // never with a layernorm (its statistics need the whole row) nor past max_split, nor where 8 warps
  // load a row group in one chunk each (int8 weights: 16 k a lane; gpt2's K = 3072).
  const fc2 = gemv_launch(mm(8, 1600, 6400), "bf16", 132, 232448, true);
  assertEquals([fc2.kslices, fc2.smem_bytes, fc2.ks], [4, 8 * 1600 * 2, 4]);
  assertEquals(gemv_launch(mm(8, 1600, 6400), "bf16", 132, 232448, true, 1).kslices, 1);
  const ln = { weight: buf, bias: buf, eps: 1e-5 };
  assertEquals(gemv_launch(mm(8, 1600, 6400, { ln }), "bf16", 132, 232448, true).kslices, 1);
  assertEquals(gemv_launch(mm(8, 1600, 6400), "bf16", 132, 232448, false).kslices, 1);
  assertEquals(gemv_launch(mm(8, 1600, 6400, { w_scale: buf }), "bf16", 132, 232448, true).kslices, 1);
  assertEquals(gemv_launch(mm(8, 768, 3072), "bf16", 132, 232448, true).kslices, 1);
  const flags = (more: Partial<MatmulArgs>) => gemv_launch(mm(1, 8, 8, more), "bf16", 132, 232448).flags;
  assertEquals(
    [
      flags({}),
      flags({ act: "gelu_erf" }),
      flags({ act: "gelu_tanh" }),
      flags({ accumulate: true }),
      flags({
        out_f32: true,
      }),
    ],
    [0, 1, 2, 4, 8],
  );
  // The auto policy on GPT-2 decode shapes (bf16): qkv, proj, fc, fc2, LM head of gpt2 and gpt2-xl.
  // On CUDA cores only (tensor cores off):
  const step = (M: number, C: number, tc = false) =>
    [[3 * C, C], [C, C], [4 * C, C], [C, 4 * C], [50257, C]].map(([N, K]) =>
      gemv_preferred(mm(M, N, K), "bf16", tc)
    );
  assertEquals(step(1, 768), [true, true, true, true, true]);
  assertEquals(step(1, 1600), [true, true, true, true, true]);
  assertEquals(step(2, 768), [true, true, true, true, true]);
  assertEquals(step(2, 1600), [true, true, true, true, true]);
  assertEquals(step(4, 768), [false, false, false, false, true]);
  assertEquals(step(8, 1600), [false, false, false, false, true]);
  assertEquals(step(9, 768), [false, false, false, false, false]);
  // With tensor cores, 16-bit weights for M up to 8 (K a multiple of 64), cuBLASLt above; int8
  // weights up to 16.
  for (const M of [3, 4, 8]) {
    assertEquals(step(M, 768, true), [true, true, true, true, true]);
    assertEquals(step(M, 1600, true), [true, true, true, true, true]);
  }
  for (const M of [9, 16]) {
    assertEquals(step(M, 1600, true), [false, false, false, false, false]);
    assert(gemv_preferred(mm(M, 1600, 6400, { w_scale: buf }), "bf16", true), `int8 M=${M}`);
  }
  assertEquals(step(17, 768, true), [false, false, false, false, false]);
  assertEquals(gemv_preferred(mm(8, 768, 80), "bf16", true), false); // K = 80: not 64-k blocks
  assertEquals(gemv_preferred(mm(8, 768, 768), "f32", true), false);
});

Deno.test("gemv tensor cores policy: all by default, int8 weights only, or off", async () => {
  const buf: Buf = { ptr: 0n, bytes: 1 << 30, label: "b" };
  const a: MatmulArgs = {
    out: buf,
    x: buf,
    w: buf,
    bias: null,
    M: 8,
    N: 768,
    K: 768,
    act: "none",
    accumulate: false,
  };
  const w8: MatmulArgs = { ...a, w_scale: buf };
  assertEquals(
    (["int8", "all", "off"] as const).map((p) => [gemv_tensor_cores_for(p, a), gemv_tensor_cores_for(p, w8)]),
    [[false, true], [true, true], [false, false]],
  );
  await with_env({ NGPT_GEMV_MMA: undefined }, (set) => {
    assertEquals(default_gemv_tensor_cores(), "all");
    set("NGPT_GEMV_MMA", "int8");
    assertEquals(default_gemv_tensor_cores(), "int8");
    set("NGPT_GEMV_MMA", "1");
    assertThrows(() => default_gemv_tensor_cores(), Error, "NGPT_GEMV_MMA");
  });
});

Deno.test("gemv split policy: NGPT_GEMV_SPLIT caps the K slices, bad values name the variable", async () => {
  await with_env({ NGPT_GEMV_SPLIT: undefined }, (set) => {
    assertEquals(default_gemv_split(), GEMV_SPLIT_MAX);
    set("NGPT_GEMV_SPLIT", "1");
    assertEquals(default_gemv_split(), 1);
    for (const bad of ["0", "5", "2.5", "two"]) {
      set("NGPT_GEMV_SPLIT", bad);
      assertThrows(() => default_gemv_split(), Error, "NGPT_GEMV_SPLIT");
    }
  });
});

Deno.test("gemm_split: K split only where the tiles leave SMs idle, within its bounds; NGPT_GEMM_SPLIT", async () => {
  // gpt2 at M = 256: c_attn 144 tiles and c_fc 192 fill 132 SMs; both c_proj shapes make 48 tiles.
  assertEquals(gemm_split(mm(256, 2304, 768), SMS), 1);
  assertEquals(gemm_split(mm(256, 3072, 768), SMS), 1);
  assertEquals(gemm_split(mm(256, 768, 768), SMS), 3); // ceil(132 / 48); 12 k-tiles allow 3 of >= 4
  assertEquals(gemm_split(mm(256, 768, 3072), SMS), 3);
  assertEquals(gemm_split(mm(17, 64, 3072), SMS), GEMM_SPLIT_MAX); // one tile: as many as allowed
  assertEquals(gemm_split(mm(17, 64, 512), SMS), 2); // 8 k-tiles: slices of at least 4
  assertEquals(gemm_split(mm(17, 64, 256), SMS), 1);
  assertEquals(gemm_split(mm(256, 768, 3072), SMS, 2), 2); // forced
  assertEquals(gemm_split(mm(256, 768, 768), SMS, 8), 3); // forced, still within the k-tile bound
  for (const M of [1, 17, 64, 100, 256, 2048]) {
    for (const [N, K] of [[768, 768], [2304, 768], [64, 3072], [50304, 1600]]) {
      const S = gemm_split(mm(M, N, K), SMS);
      assert(S >= 1 && S <= GEMM_SPLIT_MAX && (S === 1 || K / 64 / S >= 4), `M=${M} N=${N} K=${K}: ${S}`);
    }
  }
  assert(gemm_fits(mm(256, 768, 768), "bf16"));
  assert(!gemm_fits(mm(256, 768, 768), "f32"), "16-bit storage only");
  assert(!gemm_fits(mm(256, 760, 768), "bf16"), "N a multiple of 64");
  assert(!gemm_fits({ ...mm(256, 768, 768), out: { ...buf, ptr: 8n } }, "bf16"), "16-byte aligned out");
  await with_env({ NGPT_GEMM_SPLIT: undefined }, (set) => {
    assertEquals(forced_gemm_split(), undefined);
    set("NGPT_GEMM_SPLIT", "2");
    assertEquals(forced_gemm_split(), 2);
    for (const bad of ["0", String(GEMM_SPLIT_MAX + 1), "1.5", "two"]) {
      set("NGPT_GEMM_SPLIT", bad);
      assertThrows(() => forced_gemm_split(), Error, "NGPT_GEMM_SPLIT");
    }
  });
});

Deno.test("gemv_shape: a hand-picked grid replaces the rule's; grids a kernel cannot run are refused", () => {
  const launch = (a: MatmulArgs, shape: GemvShape) => gemv_launch(a, "bf16", 132, 232448, true, 4, shape);
  // gemv.cu at M = 1: the rule's variant, staging and flags with the given grid.
  const rule = gemv_launch(mm(1, 4800, 1600), "bf16", 132, 232448);
  const l = launch(mm(1, 4800, 1600), { ks: 1, per_tile: 7, blocks: 172 });
  assertEquals(l, { ...rule, ks: 1, threads: 224, blocks: 172 });
  // Tensor cores, unsplit and split (the split kernel, its slice of x staged).
  assertEquals(launch(mm(8, 2304, 768), { ks: 2, per_tile: 4, blocks: 72 }).kernel, "gemv_mma_m8");
  const split = launch(mm(8, 1600, 6400), { ks: 4, per_tile: 1, blocks: 400, kslices: 4 });
  assertEquals([split.kernel, split.kslices, split.smem_bytes], ["gemv_mma_split_m8", 4, 8 * 1600 * 2]);
  const bad: [MatmulArgs, GemvShape][] = [
    [mm(1, 768, 768), { ks: 0, per_tile: 1, blocks: 1 }],
    [mm(1, 768, 768), { ks: 3, per_tile: 3, blocks: 1 }], // 9 warps
    [mm(1, 768, 768), { ks: 1, per_tile: 1, blocks: 0 }],
    [mm(1, 768, 768), { ks: 1, per_tile: 1.5, blocks: 4 }],
    [mm(1, 768, 768), { ks: 1, per_tile: 1, blocks: 4, kslices: 2 }], // no split on CUDA cores
    [mm(8, 1600, 6400, { ln: { weight: buf, bias: buf, eps: 1e-5 } }), {
      ks: 1,
      per_tile: 1,
      blocks: 4,
      kslices: 2,
    }],
    [mm(8, 1600, 6400), { ks: 1, per_tile: 1, blocks: 6, kslices: 4 }], // blocks not a multiple
    [mm(8, 1600, 6400), { ks: 1, per_tile: 1, blocks: 4, kslices: 4 }], // 200 tiles, 32 a block at most
  ];
  for (const [a, shape] of bad) {
    assertThrows(() => launch(a, shape), Error, `gemv shape ${JSON.stringify(shape)}`);
  }
});
