#!/usr/bin/env bash
# One GPU-machine call: the GPU tests, then the bench (ours, and the PyTorch peers in the same run),
# a short table printed last, full logs and results under $OUT. Prepare with tests/gpu/prepare_device.sh.
#   MODE=quick  ours only, a few cases;  MODE=full  the whole sweep with peers (default)
#   TESTS=0     skip the tests
set -uo pipefail
cd "$(dirname "$0")/../.."
xz -dc .device/deno.xz >/tmp/deno && chmod +x /tmp/deno
export PATH=/tmp:$PATH DENO_DIR=$PWD/.device/deno-dir NGPT_CACHE=/tmp/ngpt-cache NGPT_SHAKESPEARE=$PWD/.device/shakespeare
OUT=${OUT:-$(mktemp -d)}
MODE=${MODE:-full}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ "${TESTS:-1}" == 1 ]]; then
  OUT=$OUT bash tests/gpu/run_on_device.sh 2>&1 | tee "$OUT/tests.txt" | tail -25
fi
bench() { deno run -A --cached-only examples/bench.ts --device cuda "$@"; }
if [[ "$MODE" == quick ]]; then
  bench --models gpt2 --batches 1,256 --graphs on --json "$OUT/ours_gpt2.json" >"$OUT/bench.txt" 2>&1
  bench --models gpt2-xl --batches 1,64 --graphs on --json "$OUT/ours_xl.json" >>"$OUT/bench.txt" 2>&1
  grep -A20 "^model" "$OUT/bench.txt"
  exit 0
fi
PYTHONUNBUFFERED=1 timeout 300 python3 .device/torch_baseline.py --engines graph,gptfast --models gpt2,gpt2-xl \
  --batches "${PEER_BATCHES:-1,64,256}" --prompt 64 --new 256 >"$OUT/peer.jsonl" 2>"$OUT/peer.err"
bench --models gpt2,gpt2-xl --batches "${BATCHES:-1,8,32,64,128,256,512}" --graphs "${GRAPHS:-both}" \
  --prompt 64 --new 256 --peer "$OUT/peer.jsonl" --json "$OUT/bench.json" --svg "$OUT/throughput.svg" \
  >"$OUT/bench.txt" 2>&1
grep -A60 "^model" "$OUT/bench.txt"
