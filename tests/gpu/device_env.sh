# Sourced by the device_*.sh scripts on the GPU machine (from the repository root): unpacks the Deno
# that prepare_device.sh packed, points Deno and the kernel cache at the carried and temporary
# directories, sets OUT (the caller's, or a new directory), `run` (deno run against the carried
# cache and lockfile) and `stamp` (a timestamped line into $OUT/times.txt), and records the card.
xz -dc .device/deno.xz >/tmp/deno && chmod +x /tmp/deno
export PATH=/tmp:$PATH DENO_DIR=$PWD/.device/deno-dir NGPT_CACHE=/tmp/ngpt-cache PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}
run=(deno run -A --cached-only --lock=.device/gpu.lock)
stamp() { echo "$(date +%T) $*" | tee -a "$OUT/times.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
