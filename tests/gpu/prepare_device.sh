#!/usr/bin/env bash
# Prepares what a GPU machine (no Deno, no Zig, no network) needs, within its 64 MiB transfer limit:
# a portable libngpt, Deno and its npm cache (pruned to the GPT-2 ranks), the shakespeare-char
# checkpoint and the PyTorch peer baseline. Carry `.device` and `zig-out`, then run
# tests/gpu/device_session.sh there. Rebuild the local library afterwards: deno task build -- --force.
set -euo pipefail
cd "$(dirname "$0")/../.."
deno run -A src/native/build.ts --force --quiet -- -Dcpu=x86_64_v3
../shared/device/pack-deno.sh mod.ts examples/bench.ts tests/gpu/*.ts >/dev/null
tk=$(ls -d .device/deno-dir/npm/registry.npmjs.org/js-tiktoken/*/dist)
rm -f "$tk"/index.js "$tk"/index.cjs "$tk"/lite.cjs
find "$tk/ranks" -type f ! -name 'gpt2.*' -delete
mkdir -p .device/shakespeare
cp ../shared/models/shakespeare-char/{ckpt-slim.pt,meta.pkl,reference.json} .device/shakespeare/
cp ../shared/bench/torch_baseline.py .device/
du -sh .device zig-out
