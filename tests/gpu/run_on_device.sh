#!/usr/bin/env bash
# What a GPU machine runs: every CUDA test, each file in its own `deno test` (so one file that
# fails to load cannot hide the others), full logs into $OUT/log.txt, a short summary on stdout.
#
# Prepare here first (the GPU machine has no Deno, no Zig, no network):
#   deno run -A src/native/build.ts --force -- -Dcpu=x86_64_v3   # a library for any x86-64-v3 CPU
#   ../shared/device/pack-deno.sh tests/gpu/*.ts src/tokenizer/gpt2.ts  # .device/deno.xz + its cache
# then run `bash tests/gpu/run_on_device.sh` there with .device and zig-out carried, and rebuild the
# local library afterwards (deno run -A src/native/build.ts --force).
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! command -v deno >/dev/null; then
  xz -dc .device/deno.xz >/tmp/deno && chmod +x /tmp/deno || exit 1
  export PATH=/tmp:$PATH
fi
export DENO_DIR=${DENO_DIR:-$PWD/.device/deno-dir}
export NGPT_CACHE=${NGPT_CACHE:-$(mktemp -d)}
OUT=${OUT:-$(mktemp -d)}
log=$OUT/log.txt
: >"$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$log"
failed=0
# The npm packages prepare_device.sh packed, as a lockfile (Deno otherwise asks for every package of
# deno.lock at the first npm import, the test-only ones it left out included).
lock=()
[[ -f .device/gpu.lock ]] && lock=(--cached-only --lock=.device/gpu.lock)
# (tests/nvrtc_compile_test.ts compiles every kernel without a GPU: CI runs it.)
for f in tests/cuda_nocuda_test.ts tests/gpu/*_test.ts; do
  echo "=== $f" >>"$log"
  start=$SECONDS
  if timeout "${NGPT_TEST_TIMEOUT:-150}" deno test -A --no-check "${lock[@]}" "$f" >>"$log" 2>&1; then
    echo "ok     $f ($((SECONDS - start)) s)"
  else
    failed=1
    echo "FAILED $f ($((SECONDS - start)) s)"
  fi
done
echo "--- failures (full log: $log)"
grep -aE "\.\.\. .*FAILED|^error: |AssertionError|Error: " "$log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-400 | head -40
exit $failed
