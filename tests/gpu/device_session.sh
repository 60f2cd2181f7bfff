#!/usr/bin/env bash
# One GPU-machine call: the GPU tests, then the bench (ours, and the PyTorch peers in the same run),
# a short table printed last, full logs and results under $OUT. Prepare with tests/gpu/prepare_device.sh.
#   MODE=quick  ours only, a few cases;  MODE=full  the whole sweep with peers (default); MODE=none
#   TESTS=0     skip the tests
#   MEMORY=1    peak host memory while loading onto the GPU (tests/bench/load_memory.ts)
#   PROFILE=1   also profile a few decode steps of four cases (or PROFILE_CASES) under ncu ($OUT/profile.md)
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/device_env.sh
MODE=${MODE:-full}
if [[ "${TESTS:-1}" == 1 ]]; then
  OUT=$OUT bash tests/gpu/run_on_device.sh 2>&1 | tee "$OUT/tests.txt" | tail -25
fi
bench() { deno run -A --cached-only --lock=.device/gpu.lock examples/bench.ts --device cuda "$@"; }
if [[ "${MEMORY:-0}" == 1 ]]; then
  mkdir -p /tmp/gpt2m && deno run -A --cached-only --lock=.device/gpu.lock tests/bench/load_memory.ts --make-gpt2 /tmp/gpt2m 2>/dev/null
  for m in embedded:shakespeare-char /tmp/gpt2m/gpt2-ckpt.pt /tmp/gpt2m/gpt2.safetensors; do
    deno run -A --cached-only --lock=.device/gpu.lock tests/bench/load_memory.ts --model "$m" --device cuda 2>&1 | tail -1 | tee -a "$OUT/memory.txt"
  done
fi
if [[ "${PROFILE:-0}" == 1 ]]; then
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  # model:batch:prompt:steps[:weights[:kv_dtype]] (prompt = the KV length profiled: 64 at the start,
  # 192 the bench's mean; weights and kv_dtype: dtype or int8)
  for c in ${PROFILE_CASES:-gpt2:1:64:4 gpt2-xl:1:64:3 gpt2:256:192:2 gpt2-xl:64:192:2}; do
    IFS=: read -r m b p s w kv <<<"$c"
    w=${w:-dtype} kv=${kv:-dtype} f="$OUT/ncu_${m}_b${b}_w${w}_kv${kv}"
    timeout 300 "$ncu" --profile-from-start off --clock-control none --csv --log-file "$f.csv" \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      deno run -A --cached-only --lock=.device/gpu.lock tests/gpu/profile_decode.ts --model "$m" --batch "$b" --prompt "$p" --steps "$s" \
      --weights "$w" --kv-dtype "$kv" >"$f.log" 2>&1 || echo "ncu $c failed: $(tail -3 "$f.log")"
    python3 tests/gpu/ncu_summary.py "$f.csv" "$m b$b, KV from $p, weights $w, KV $kv" >>"$OUT/profile.md" 2>&1
  done
  (cd "$OUT" && tar -cJf ncu.tar.xz ncu_* && rm -f ncu_*)  # fewer files to bring back
  grep "^## " "$OUT/profile.md"
fi
if [[ "$MODE" == quick ]]; then
  bench --models gpt2 --batches "${BATCHES:-1,256}" --graphs on --steps "${STEPS:-8}" --json "$OUT/ours_gpt2.json" >"$OUT/bench.txt" 2>&1
  bench --models gpt2-xl --batches "${XL_BATCHES:-1,64}" --graphs on --steps "${STEPS:-8}" --json "$OUT/ours_xl.json" >>"$OUT/bench.txt" 2>&1
  grep -A20 "^model" "$OUT/bench.txt"
  exit 0
fi
[[ "$MODE" == none ]] && exit 0
deno run -A --cached-only --lock=.device/gpu.lock tests/gpu/host_bench.ts >"$OUT/host.txt" 2>&1
PYTHONUNBUFFERED=1 timeout 300 python3 .device/torch_baseline.py --engines graph,gptfast --models gpt2,gpt2-xl \
  --batches "${PEER_BATCHES:-1,64,256}" --prompt 64 --new 256 >"$OUT/peer.jsonl" 2>"$OUT/peer.err"
bench --models gpt2,gpt2-xl --batches "${BATCHES:-1,8,32,64,128,256,512}" --graphs "${GRAPHS:-both}" \
  --prompt 64 --new 256 --peer "$OUT/peer.jsonl" --json "$OUT/bench.json" --svg "$OUT/throughput.svg" \
  >"$OUT/bench.txt" 2>&1
cat "$OUT/host.txt"
grep -A60 "^model" "$OUT/bench.txt"
