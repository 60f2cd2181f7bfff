#!/usr/bin/env bash
# One GPU-machine call for where the fused decode's phases go: tests/gpu/barrier_probe.cu (a grid
# barrier alone, and a phase's store-barrier-load skeleton) built with the machine's nvcc, then Nsight
# Compute on one launch of the fused decode kernel (gpt2 at batch 1 unless NCU_CASES says
# model:batch ...): speed of light, scheduler and warp-state statistics, source counters (the full
# report stays in $OUT/ncu_*.txt). Prepare with
# tests/gpu/prepare_device.sh; results in $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/device_env.sh
CUDA=${CUDA_HOME:-/usr/local/cuda}
stamp "barrier probe"
"$CUDA/bin/nvcc" -O3 -arch=sm_90 -o /tmp/barrier_probe tests/gpu/barrier_probe.cu && /tmp/barrier_probe | tee "$OUT/barrier_probe.jsonl"
ncu=$(command -v ncu || ls "$CUDA"/bin/ncu 2>/dev/null)
for c in ${NCU_CASES:-gpt2:1}; do
  IFS=: read -r m b <<<"$c"
  stamp "ncu $c"
  NGPT_FUSED_DECODE=1 timeout "${NCU_S:-240}" "$ncu" --target-processes all -k regex:ng_decode_fused -s 3 -c 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section SourceCounters \
    "${run[@]}" tests/gpu/fused_trace.ts --model "$m" --batch "$b" --graphs off >"$OUT/ncu_${m}_b$b.txt" 2>&1
  grep -vE "^==PROF==|^\s*$" "$OUT/ncu_${m}_b$b.txt" | tail -90
done
stamp "done"
