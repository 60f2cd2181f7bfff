#!/usr/bin/env bash
# One GPU-machine call for issue 11's decode: the fused decode's tests against the op-by-op decode
# (and the int8 and parity suites), where the fused step's time goes (`trace`:
# tests/gpu/fused_trace.ts), the decode bench at batch 1 and 8 for gpt2 and gpt2-xl with the fused
# decode on (NGPT_FUSED_DECODE=1) and off, where an op-by-op step's time goes (`steps`:
# tests/gpu/step_trace.ts), with int8 weights, with the tensor-core gemv off (MODES:
# fused, unfused, int8, unfused-int8, ...-kv8, ...-nomma, ...-mma, ...-nosplit, ...-loop1; STEP_ENV:
# variables for the step traces, e.g. NGPT_LOOP=1), gpt2 at batch 256 with the
# 16-bit and int8 KV cache (`big`), the decode attention alone (`attn`), cuBLASLt's matmuls at M = 256 (`mm`), and torch_baseline.py's peers in the same call. TREES="base ."
# benches prepare_device.sh's BASE commit too, alternating with this tree mode by mode. Prepare with
# tests/gpu/prepare_device.sh; results in $OUT/results.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
. tests/gpu/device_env.sh
test=(deno test -A --no-check --cached-only --lock=.device/gpu.lock)
PARTS=" ${PARTS:-tests trace bench peers} "
part() { [[ $PARTS == *" $1 "* ]]; }
if part tests; then
  for t in ${TESTS:-fused parity int8}; do
    stamp "test $t"
    timeout "${TEST_S:-150}" "${test[@]}" "tests/gpu/${t}_test.ts" >"$OUT/test_$t.txt" 2>&1
    grep -E "FAILED|passed|failed|^error" "$OUT/test_$t.txt" | tail -4
  done
fi
if part trace; then
  for c in ${TRACES:-gpt2:1 gpt2:8 gpt2-xl:1 gpt2-xl:8}; do  # model:batch[:int8]
    stamp "trace $c"
    IFS=: read -r m b w <<<"$c"
    NGPT_FUSED_DECODE=1 timeout 60 "${run[@]}" tests/gpu/fused_trace.ts --model $m --batch $b --weights ${w:-dtype} 2>&1 | grep -v "^    at" | tail -2 | tee -a "$OUT/trace.txt"
  done
fi
if part steps; then
  for c in ${STEP_TRACES:-gpt2:1 gpt2-xl:1 gpt2:8}; do  # model:batch[:int8]: where an op-by-op step's time goes
    stamp "step trace $c"
    IFS=: read -r m b w <<<"$c"
    n=24 raw=() && [[ $m == gpt2-xl ]] && n=6
    [[ $c == gpt2:1 ]] && raw=(--raw "$OUT/steps_gpt2_b1.bin")  # about 12 MB
    env ${STEP_ENV:-} NGPT_TRACE=2000000 timeout 120 "${run[@]}" tests/gpu/step_trace.ts --model $m --batch $b --weights ${w:-dtype} --new $n \
      --json "$OUT/steps_${m}_b${b}_${w:-dtype}.json" "${raw[@]}" 2>&1 | grep -v "^    at" | tee -a "$OUT/steps.txt" | tail -24
  done
fi
if [[ " ${TREES:-.} " == *" base "* ]]; then  # the BASE commit's sources beside this tree's library and model
  # Old mtimes: its native/ must not look newer than the carried library (src/native/build.ts is_stale).
  rm -rf /tmp/base && cp -r .device/base /tmp/base && find /tmp/base -exec touch -d @0 {} + && ln -s "$PWD/models" "$PWD/zig-out" "$PWD/.device" /tmp/base/
fi
if part bench; then
  for mode in ${MODES:-fused unfused int8}; do
   for tree in ${TREES:-.}; do
    [[ $tree == base ]] && cd /tmp/base
    stamp "bench $mode $tree"
    tag=$mode && [[ $tree == base ]] && tag+=-base
    env=(NGPT_FUSED_DECODE=1) q=()
    [[ $mode == unfused* ]] && env=(NGPT_FUSED_DECODE=0)
    [[ $mode == *int8* ]] && q=(--weights int8)
    [[ $mode == *kv8* ]] && q+=(--kv-dtype int8)
    [[ $mode == *nomma* ]] && env+=(NGPT_GEMV_MMA=off)  # gemv on CUDA cores only (gemv_mma.cu off)
    [[ $mode == *-mma* ]] && env+=(NGPT_GEMV_MMA=all)   # every gemv of M >= 3 on tensor cores (the default)
    [[ $mode == *nosplit* ]] && env+=(NGPT_GEMV_SPLIT=1)  # the tensor-core gemv never splits K across blocks
    [[ $mode == *loop1* ]] && env+=(NGPT_LOOP=1)  # the steps of a launch as a WHILE node's loop on the device
    env "${env[@]}" timeout "${BENCH_S:-90}" "${run[@]}" examples/bench.ts --device cuda --models "${MODELS:-gpt2,gpt2-xl}" \
      --batches "${BATCHES:-1,8}" --graphs on --prompt 64 --new 256 "${q[@]}" --json "$OUT/bench_$tag.json" \
      >"$OUT/bench_$tag.txt" 2>&1
    grep -A6 "^model" "$OUT/bench_$tag.txt" | sed "s/^/$tag: /"
    cd "$root"
   done
  done
fi
if part big; then
  # Issue 11's 8-bit KV target: gpt2 at batch 256, 16-bit and int8 KV cache (each tree of TREES; a tree
  # may carry environment settings joined by +, e.g. ".+NGPT_DECODE_MIN_KEYS=128").
  for t in ${TREES:-.}; do
    tree=${t%%+*} tenv=NGPT_NONE=0 && [[ $t == *+* ]] && tenv=${t#*+}
    [[ $tree == base ]] && cd /tmp/base
    for q in "" "--kv-dtype int8"; do
      stamp "bench b256 $t $q"
      echo "tree $t $q" >>"$OUT/bench_b256.txt"
      env ${tenv//+/ } timeout 60 "${run[@]}" examples/bench.ts --device cuda --models gpt2 --batches 256 --graphs on \
        --prompt 64 --new 256 $q >>"$OUT/bench_b256.txt" 2>&1
    done
    cd "$root"
  done
  grep -E "^tree|^gpt2 " "$OUT/bench_b256.txt"
fi
if part attn; then
  # The decode attention alone at gpt2 batch 256 (tests/gpu/attention_bench.ts), each env of ATTN_ENVS
  # (VAR=VALUE, several joined by +).
  for e in ${ATTN_ENVS:-NGPT_NONE=0}; do
    stamp "attention bench $e"
    env ${e//+/ } timeout 120 "${run[@]}" tests/gpu/attention_bench.ts --T "${ATTN_T:-192,448}" --json "$OUT/attn_$e.json" 2>&1 |
      grep -v "^    at" | sed "s/^/$e: /" | tee -a "$OUT/attn.txt"
  done
fi
if part attnprof; then
  # Nsight Compute on one decode-attention launch of attention_bench.ts (gpt2 b256, ATTN_PROF_T keys),
  # each env of ATTN_PROF_ENVS (as ATTN_ENVS) and KV dtype of ATTN_PROF_KV.
  ncu=$(command -v ncu || ls "$CUDA"/bin/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  for e in ${ATTN_PROF_ENVS:-NGPT_NONE=0}; do
    for kv in ${ATTN_PROF_KV:-int8}; do
      stamp "ncu attention $e $kv"
      env ${e//+/ } timeout 200 "$ncu" --target-processes all -k regex:ng_attention_decode -s 14 -c 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
        --section MemoryWorkloadAnalysis "${run[@]}" tests/gpu/attention_bench.ts --T "${ATTN_PROF_T:-192}" --kv $kv --layers 2 \
        >"$OUT/ncu_attn_${e//[^A-Za-z0-9]/_}_$kv.txt" 2>&1
      grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Issued Warp|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Dynamic Shared|Stall|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth" \
        "$OUT/ncu_attn_${e//[^A-Za-z0-9]/_}_$kv.txt" | sed "s/^/$e $kv: /" | head -40
    done
  done
fi
if part mm; then
  # cuBLASLt (the layernorm kernel included) and gemm_mma.cu at gpt2's and gpt2-xl's matmul shapes for
  # M = MM_MS (tests/gpu/gemv_bench.ts; MM_ARGS replaces --gemm).
  stamp "matmul bench"
  timeout 150 "${run[@]}" tests/gpu/gemv_bench.ts --ms "${MM_MS:-256}" ${MM_ARGS:---gemm} --json "$OUT/mm.json" 2>&1 |
    grep -v "^    at" | tee "$OUT/mm.txt"
fi
if part peers; then
  stamp "peers"
  timeout "${PEERS_S:-150}" python3 .device/torch_baseline.py --models "${MODELS:-gpt2,gpt2-xl}" --batches "${BATCHES:-1,8}" \
    --engines graph,gptfast --prompt 64 --new 256 >"$OUT/peers.jsonl" 2>"$OUT/peers.err"
  cut -c1-220 "$OUT/peers.jsonl"
fi
stamp "done"
(cd "$OUT" && shopt -s nullglob && tar -czf results.tgz -- *.json *.jsonl *.txt *.bin && find . -maxdepth 1 -type f \
  ! -name results.tgz ! -name times.txt -delete)
