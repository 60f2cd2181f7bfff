#!/usr/bin/env bash
# Prepares what a GPU machine (no Deno, no Zig, no network) needs, within its 64 MiB transfer limit:
# a portable libngpt, Deno and its npm cache (pruned to the GPT-2 ranks) and the PyTorch peer
# baselines. The embedded model (models/) travels with the working tree. Carry `.device` and
# `zig-out`, then run tests/gpu/device_session.sh there. Rebuild the local library afterwards:
# deno task build -- --force. BASE=<rev> also packs that commit's sources (.device/base) for
# device_fused.sh's TREES="base ." (the same call benches both; the native library must not differ).
set -euo pipefail
cd "$(dirname "$0")/../.."
deno run -A src/native/build.ts --force --quiet -- -Dcpu=x86_64_v3
# The GPT-2 tokenizer is imported lazily (a computed specifier): name it so its npm package is cached.
../shared/device/pack-deno.sh mod.ts examples/*.ts src/tokenizer/gpt2.ts tests/gpu/*.ts tests/bench/*.ts $( [[ -d .old ]] && echo .old/examples/bench.ts ) >/dev/null
tk=$(ls -d .device/deno-dir/npm/registry.npmjs.org/js-tiktoken/*/dist)
rm -f "$tk"/index.js "$tk"/index.cjs "$tk"/lite.cjs
find "$tk/ranks" -type f ! -name 'gpt2.*' -delete
# Packages the GPU machine's runs never load (the openai client: bench:serve --url and the server
# tests; fast-check: the fuzz tests) would take half the transfer limit.
rm -rf .device/deno-dir/npm/registry.npmjs.org/{openai,fast-check,pure-rand}
# Deno caches every npm package of the lockfile at the first npm import, so the GPU runs pass
# --lock=.device/gpu.lock: the lockfile cut to what is left (js-tiktoken and its dependencies).
deno eval '
const lock = JSON.parse(Deno.readTextFileSync("deno.lock"));
const keep = new Set(["js-tiktoken"]);
for (let grew = true; grew;) {
  grew = false;
  for (const [k, v] of Object.entries(lock.npm)) {
    if (!keep.has(k.slice(0, k.lastIndexOf("@")))) continue;
    for (const d of v.dependencies ?? []) if (!keep.has(d)) keep.add(d), grew = true;
  }
}
const kept = (k) => keep.has(k.replace(/^npm:/, "").slice(0, k.replace(/^npm:/, "").lastIndexOf("@")));
lock.specifiers = Object.fromEntries(Object.entries(lock.specifiers).filter(([k]) => kept(k)));
lock.npm = Object.fromEntries(Object.entries(lock.npm).filter(([k]) => kept(k)));
Deno.writeTextFileSync(".device/gpu.lock", JSON.stringify(lock, null, 2) + "\n");
'
rm -rf .device/base
if [[ -n "${BASE:-}" ]]; then
  git diff --quiet "$BASE" -- native/*.zig native/*.h build.zig || { echo "BASE=$BASE: the native library differs" >&2; exit 1; }
  mkdir -p .device/base && git archive "$BASE" -- mod.ts deno.json src native examples | tar -x -C .device/base
fi
cp ../shared/bench/torch_baseline.py .device/
cp ../shared/data/tinyshakespeare/input.txt .device/
du -sh .device zig-out models
