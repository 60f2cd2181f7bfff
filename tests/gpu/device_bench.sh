#!/usr/bin/env bash
# One GPU-machine call for a release's numbers, everything in the same call on the same card:
# the GPU tests, the closed-batch bench of this tree, the PyTorch peers, and (when .old/ holds an
# earlier tree with its own zig-out, prepared by the caller) that tree's bench, for an A/B.
# Each part has its own time limit so the call returns within the device's 10 minutes. Results
# under $OUT. Prepare with tests/gpu/prepare_device.sh.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/device_env.sh
BATCHES=${BATCHES:-1,8,32,64,128,256,512}
if [[ "${TESTS:-1}" == 1 ]]; then
  NGPT_TEST_TIMEOUT=100 OUT=$OUT timeout 130 bash tests/gpu/run_on_device.sh 2>&1 | tee "$OUT/tests.txt" | tail -12
fi
timeout "${BENCH_S:-170}" deno run -A --cached-only --lock=.device/gpu.lock examples/bench.ts --device cuda --models gpt2,gpt2-xl --batches "$BATCHES" \
  --graphs on --prompt 64 --new 256 --json "$OUT/bench.json" >"$OUT/bench.txt" 2>"$OUT/bench.err"
PYTHONUNBUFFERED=1 timeout "${PEER_S:-200}" python3 .device/torch_baseline.py --engines graph,gptfast --models gpt2,gpt2-xl \
  --batches "${PEER_BATCHES:-1,64,256}" --prompt 64 --new 256 >"$OUT/peer.jsonl" 2>"$OUT/peer.err"
if [[ -d .old ]]; then
  (cd .old && NGPT_LIB=$PWD/zig-out/lib/libngpt.so timeout "${OLD_S:-110}" deno run -A --cached-only examples/bench.ts --device cuda \
    --models gpt2,gpt2-xl --batches "$BATCHES" --graphs on --steps 8 --prompt 64 --new 256 --json "$OUT/old.json" \
    >"$OUT/old.txt" 2>"$OUT/old.err")
fi
grep -A20 "^model" "$OUT/bench.txt"
grep -A20 "^model" "$OUT/old.txt" 2>/dev/null
grep -v "^{" "$OUT/peer.jsonl" | tail -12
