#!/usr/bin/env bash
# One GPU-machine call for where the fused decode's phases go: tests/gpu/barrier_probe.cu (a grid
# barrier alone, and a phase's store-barrier-load skeleton) built with the machine's nvcc, then Nsight
# Compute on one launch of the fused decode kernel (gpt2 at batch 1 unless NCU_CASES says
# model:batch ...; NCU_CASES= for none): speed of light, scheduler and warp-state statistics, source
# counters (the full report stays in $OUT/ncu_*.txt); PROBE=0 skips the barrier probe; ATTN_KV="dtype
# int8" adds decode attention at batch 256 under Nsight Compute for each KV cache dtype; GEMV_NCU
# ("model:batch:weights[:mma] ...") the first five gemv launches of one decode step (layer 0's four
# and the next layer's first) with memory-workload and warp-state sections, mma = NGPT_GEMV_MMA;
# GEMV_NCU_CLOCKS=none runs them at the card's own clocks with warm caches (ncu's default locks the
# SM clock at base, 1.47 GHz on an H200, and flushes the caches before each kernel).
# Prepare with tests/gpu/prepare_device.sh; results in $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/device_env.sh
CUDA=${CUDA_HOME:-/usr/local/cuda}
[[ "${PROBE:-1}" == 1 ]] && stamp "barrier probe" && "$CUDA/bin/nvcc" -O3 -arch=sm_90 -o /tmp/barrier_probe tests/gpu/barrier_probe.cu && /tmp/barrier_probe | tee "$OUT/barrier_probe.jsonl"
ncu=$(command -v ncu || ls "$CUDA"/bin/ncu 2>/dev/null)
for c in ${NCU_CASES-gpt2:1}; do
  IFS=: read -r m b <<<"$c"
  stamp "ncu $c"
  NGPT_FUSED_DECODE=1 timeout "${NCU_S:-240}" "$ncu" --target-processes all -k regex:ng_decode_fused -s 3 -c 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section SourceCounters \
    "${run[@]}" tests/gpu/fused_trace.ts --model "$m" --batch "$b" --graphs off >"$OUT/ncu_${m}_b$b.txt" 2>&1
  grep -vE "^==PROF==|^\s*$" "$OUT/ncu_${m}_b$b.txt" | tail -90
done
# Decode attention at batch 256 (KV from 192 positions), 16-bit against int8 cache: limits, occupancy.
for kv in ${ATTN_KV:-}; do
  stamp "ncu attention_decode kv $kv"
  timeout "${NCU_S:-240}" "$ncu" --target-processes all --profile-from-start off -k regex:attention_decode -c 2 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    "${run[@]}" tests/gpu/profile_decode.ts --model gpt2 --batch 256 --prompt 192 --steps 1 --kv-dtype "$kv" \
    >"$OUT/ncu_attn_$kv.txt" 2>&1
  grep -E "Duration|DRAM Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit Reg|Stall|Warp Cycles Per Issued|Grid Size|Block Size" "$OUT/ncu_attn_$kv.txt" | head -24
done
# The small-batch matmuls of one decode step (KV from 64): what bounds each gemv launch.
for c in ${GEMV_NCU:-}; do
  IFS=: read -r m b w mma <<<"$c"
  f="$OUT/ncu_gemv_${m}_b${b}_$w${mma:+_$mma}.txt"
  stamp "ncu gemv $c"
  clocks=()
  [[ ${GEMV_NCU_CLOCKS:-} == none ]] && clocks=(--clock-control none --cache-control none)
  NGPT_GEMV_MMA=${mma:-all} timeout "${NCU_S:-240}" "$ncu" --target-processes all --profile-from-start off "${clocks[@]}" \
    -k regex:gemv -c 5 --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    --section LaunchStats --section WarpStateStats --section SchedulerStats \
    --metrics lts__t_sectors_srcunit_tex_op_read.sum,dram__bytes_read.sum \
    "${run[@]}" tests/gpu/profile_decode.ts --model "$m" --batch "$b" --prompt 64 --steps 1 --weights "$w" >"$f" 2>&1
  grep -E "^  ng_gemv|Duration|DRAM Throughput|L2 Cache Throughput|L1/TEX Hit|lts__t_sectors_srcunit|dram__bytes_read|Registers Per|Achieved Occupancy|Grid Size|Block Size|Dynamic Shared|Warp Cycles Per Issued|Stall|Issue Slots Busy" "$f" | cut -c1-150 | head -120
done
stamp "done"
