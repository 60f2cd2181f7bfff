// kv_append (prefill, T > 1; decode appends inside attention_decode): for every valid slot
// (t < n_new[b]) copies the slot's k and v (columns C..2C and 2C..3C of qkv, C = H * D) into the
// caches (B, H, max_T, D) at position lengths[b] + t. 16-byte copies when a head's row is a
// multiple of 16 bytes (qkv and the caches 16-byte aligned), else one element at a time.
// Grid: B*T blocks, one per slot; block: any multiple of 32 threads striding over the row.
extern "C" __global__ void ng_kv_append(st_t* __restrict__ k_cache, st_t* __restrict__ v_cache,
                                        const st_t* __restrict__ qkv, const int* __restrict__ lengths,
                                        const int* __restrict__ n_new, int T, int H, int D, int max_T) {
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int r = blockIdx.x, b = r / T, t = r - b * T;
  if (t >= n_new[b]) return;
  const int pos = lengths[b] + t;
  if (pos < 0 || pos >= max_T) return;
  const int C = H * D;
  const st_t* k = qkv + (size_t)r * 3 * C + C;
  const st_t* v = k + C;
  if ((D * NG_DTYPE_BYTES) % 16 == 0) {
    const int dv = D / NG_VEC;  // vectors per head row
    for (int i = threadIdx.x; i < H * dv; i += blockDim.x) {
      const int h = i / dv, e = i - h * dv;
      const size_t dst = (((size_t)b * H + h) * max_T + pos) * D + e * NG_VEC;
      *reinterpret_cast<uint4*>(k_cache + dst) = reinterpret_cast<const uint4*>(k)[i];
      *reinterpret_cast<uint4*>(v_cache + dst) = reinterpret_cast<const uint4*>(v)[i];
    }
    return;
  }
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    const int h = i / D, d = i - h * D;
    const size_t dst = (((size_t)b * H + h) * max_T + pos) * D + d;
    k_cache[dst] = k[i];
    v_cache[dst] = v[i];
  }
}
