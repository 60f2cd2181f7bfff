#!/usr/bin/env bash
# One GPU-machine call for the serving numbers (issue 10's targets), everything on the same card in
# the same call, most important first, each part under its own time limit (the device allows a few
# minutes in all; HF's continuous batching needed more than 45 s for gpt2's set and 70 s for
# gpt2-xl's, import and warm-up included, on an H200); results under $OUT/results.tgz:
#   serve_<model>.json   bench:serve offline + closed (2,000 requests), Poisson at half saturation,
#                        prefix cache on/off
#   peerset_<model>.json ours on the peer's set (500 requests, 16-512 prompt, 128 new)
#   hf_<model>.jsonl     HF transformers' continuous batching on that set (tests/gpu/hf_cb_peer.py)
#   new.json, old.json   the closed-batch bench of this tree and of .old/ (an earlier tree with its
#                        own zig-out, prepared by the caller), for the A/B
#   eval_<dtype>.txt     deno task eval on the shakespeare validation split
# Prepare with tests/gpu/prepare_device.sh (it writes .device/gpu.lock: the lockfile's npm packages
# the GPU runs load, so Deno does not ask for the test-only ones it left out).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/device_env.sh
# PARTS picks what runs (default all but int8): serve peerset hf parity ab hfxl eval evalspeed prefill
# int8
# (int8: the 8-bit GPU tests, the eval gates with int8 weights and KV, and the decode bench of bf16,
# int8 weights and int8 KV at batch 1, 8 and 256 beside torch_baseline.py's peers; PEERS=0 leaves
# the peers out).
PARTS=" ${PARTS:-serve peerset hf parity ab hfxl eval} "
part() { [[ $PARTS == *" $1 "* ]]; }

for m in gpt2 gpt2-xl; do
  part prefill || continue
  # Prefill alone (bench.ts TTFT): 2,048 prompt tokens as 4 x 512, 16 x 128 and 32 x 64.
  stamp "prefill $m"
  for bp in 4:512 16:128 32:64; do
    timeout 40 "${run[@]}" examples/bench.ts --device cuda --models $m --batches ${bp%:*} --prompt ${bp#*:} \
      --new 8 --graphs on --steps 8 2>&1 | grep -A1 "^model" | tail -1 | tee -a "$OUT/prefill.txt"
  done
done
for m in gpt2 gpt2-xl; do
  part serve || continue
  stamp "serve $m"
  limit=$([[ $m == gpt2 ]] && echo "${SERVE_S:-60}" || echo "${SERVE_XL_S:-100}")
  timeout "$limit" "${run[@]}" examples/bench_serve.ts --device cuda --model $m \
    --modes "${SERVE_MODES:-offline,closed,closed-free,poisson,prefix}" --json "$OUT/serve_$m.json" \
    --trace "$OUT/trace_$m.jsonl" \
    >"$OUT/serve_$m.txt" 2>"$OUT/serve_$m.err"
done
for m in gpt2 gpt2-xl; do
  part peerset || continue
  stamp "peer set $m"
  timeout "${PEERSET_S:-25}" "${run[@]}" examples/bench_serve.ts --device cuda --model $m \
    --modes offline --requests 500 --prompt 16,512 --output 128,128 --json "$OUT/peerset_$m.json" \
    >"$OUT/peerset_$m.txt" 2>"$OUT/peerset_$m.err"
done
part hf && stamp "hf gpt2" && timeout "${HF_S:-90}" python3 tests/gpu/hf_cb_peer.py --model gpt2 --requests 500 --prompt 16,512 --new 128 \
  --configs "${HF_CONFIGS:-defaults,graphs}" \
  >"$OUT/hf_gpt2.jsonl" 2>"$OUT/hf_gpt2.err"
if part parity; then
  stamp "parity"
  timeout "${PARITY_S:-30}" deno test -A --no-check --cached-only --lock=.device/gpu.lock tests/gpu/parity_test.ts \
    >"$OUT/parity.txt" 2>&1
  tail -3 "$OUT/parity.txt"
fi
part ab && stamp "closed-batch A/B"
for tree in new old; do
  part ab || continue
  dir=$([[ $tree == new ]] && echo . || echo .old)
  [[ -d $dir/zig-out ]] || continue
  lock=$([[ $tree == new ]] && echo "--lock=.device/gpu.lock" || echo "")
  (cd "$dir" && NGPT_LIB=$PWD/zig-out/lib/libngpt.so timeout "${AB_S:-45}" deno run -A --cached-only $lock \
    examples/bench.ts --device cuda --models gpt2,gpt2-xl --batches "${AB_BATCHES:-1,64,256}" --graphs on \
    --steps 8 --prompt 64 --new 256 --json "$OUT/$tree.json" >"$OUT/$tree.txt" 2>"$OUT/$tree.err")
done
part hfxl && stamp "hf gpt2-xl" && timeout "${HF_XL_S:-150}" python3 tests/gpu/hf_cb_peer.py --model gpt2-xl --requests 500 --prompt 16,512 --new 128 \
  --configs "${HF_XL_CONFIGS:-defaults}" >"$OUT/hf_gpt2-xl.jsonl" 2>"$OUT/hf_gpt2-xl.err"
for dtype in ${EVAL_DTYPES:-bf16}; do
  part eval || continue
  stamp "eval $dtype"
  timeout "${EVAL_S:-20}" "${run[@]}" examples/eval.ts --device cuda --dtype "$dtype" \
    --text .device/input.txt --split val >"$OUT/eval_$dtype.txt" 2>"$OUT/eval_$dtype.err"
done
if part evalspeed; then
  # The issue's speed bar: gpt2 (random weights), --batch 16, 1,024-token windows.
  stamp "eval speed"
  timeout "${EVAL_S:-30}" "${run[@]}" examples/eval.ts --device cuda --model gpt2 --batch 16 \
    --text .device/input.txt 2>/dev/null | tail -1 | sed "s/^/eval gpt2 b16: /" | tee "$OUT/eval_speed.txt"
fi
if part int8; then
  stamp "int8"
  timeout "${INT8_TEST_S:-60}" deno test -A --no-check --cached-only --lock=.device/gpu.lock tests/gpu/int8_test.ts \
    >"$OUT/int8_test.txt" 2>&1
  tail -3 "$OUT/int8_test.txt"
  for q in "--weights int8" "--kv-dtype int8" "--weights int8 --kv-dtype int8"; do
    timeout 30 "${run[@]}" examples/eval.ts --device cuda $q --text .device/input.txt --split val 2>/dev/null |
      tail -1 | sed "s/^/eval $q: /" | tee -a "$OUT/eval_8bit.txt"
  done
  for q in "" "--weights int8" "--kv-dtype int8"; do
    timeout 60 "${run[@]}" examples/bench.ts --device cuda --models gpt2,gpt2-xl --batches 1,8,256 --graphs on \
      --prompt 64 --new 256 $q >"$OUT/bench_8bit.txt" 2>&1
    grep -A7 "^model" "$OUT/bench_8bit.txt" | tee -a "$OUT/bench_8bit_all.txt"
  done
  [[ ${PEERS:-1} == 1 ]] && timeout 120 python3 .device/torch_baseline.py --models gpt2,gpt2-xl --batches 1,8 --engines graph,gptfast \
    --prompt 64 --new 256 >"$OUT/peers.jsonl" 2>"$OUT/peers.err"
  cut -c1-200 "$OUT/peers.jsonl"
fi
stamp "done"
cat "$OUT/prefill.txt" 2>/dev/null
for m in gpt2 gpt2-xl; do grep -A12 "^mode" "$OUT/serve_$m.txt" "$OUT/peerset_$m.txt"; done
grep -h "output_tok_s\|error" "$OUT"/hf_*.jsonl | cut -c1-300
grep -h -A8 "^model" "$OUT/new.txt" "$OUT/old.txt" 2>/dev/null
tail -1 "$OUT"/eval_*.txt
# A call brings back a limited number of files: one archive, and the short summary above.
(cd "$OUT" && tar -czf results.tgz -- *.json *.jsonl *.txt *.err 2>/dev/null && find . -maxdepth 1 -type f \
  ! -name results.tgz ! -name times.txt -delete)
