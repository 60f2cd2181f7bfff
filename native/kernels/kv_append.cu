// kv_append (prefill): for every row r of a packed prefill that belongs to a sequence
// (b = row_seq[r] >= 0), copies the row's k and v (columns C..2C and 2C..3C of qkv, C = H * D) into
// the paged pools (num_blocks, H, 2^bs_log2, D) at position positions[r], through the sequence's
// block-table row. 16-byte copies when a head's row is a multiple of 16 bytes (qkv and the pools
// 16-byte aligned), else one element at a time. Padding rows (row_seq -1) write nothing.
// Grid: rows blocks, one per row; block: any multiple of 32 threads striding over the row.
// With -DNG_KV8=1 (an int8 cache) the pools hold int8 and k_scale / v_scale one f32 per pool row:
// a warp takes one head's k or v row, s = max |x| / 127 (a warp reduction), stores round(x / s)
// and s (as the CPU backend's attention.zig does).
#ifndef NG_KV8
#define NG_KV8 0
#endif
#if NG_KV8
typedef signed char kv_t;
#else
typedef st_t kv_t;
#endif
extern "C" __global__ void ng_kv_append(kv_t* __restrict__ k_pool, kv_t* __restrict__ v_pool,
                                        const st_t* __restrict__ qkv, const int* __restrict__ block_table,
                                        const int* __restrict__ row_seq, const int* __restrict__ positions, int H,
                                        int D, int bs_log2, int mb
#if NG_KV8
                                        , float* __restrict__ k_scale, float* __restrict__ v_scale
#endif
) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int r = blockIdx.x, b = row_seq[r];
  if (b < 0) return;
  const int pos = positions[r];
  const int* table = block_table + (size_t)b * mb;
  const int C = H * D;
  const st_t* k = qkv + (size_t)r * 3 * C + C;
  const st_t* v = k + C;
#if NG_KV8
  for (int w = threadIdx.x >> 5; w < 2 * H; w += blockDim.x >> 5) {  // warp-uniform
    const bool is_v = w >= H;
    const int h = is_v ? w - H : w;
    const size_t row = kv_row(table, pos, h, H, bs_log2, D);
    ng_kv8_store_row((is_v ? v_pool : k_pool) + row, (is_v ? v_scale : k_scale) + row / D, (is_v ? v : k) + h * D,
                     D, threadIdx.x & 31);
  }
#else
  if ((D * NG_DTYPE_BYTES) % 16 == 0) {
    const int dv = D / NG_VEC;  // vectors per head row
    for (int i = threadIdx.x; i < H * dv; i += blockDim.x) {
      const int h = i / dv, e = i - h * dv;
      const size_t dst = kv_row(table, pos, h, H, bs_log2, D) + e * NG_VEC;
      *reinterpret_cast<uint4*>(k_pool + dst) = reinterpret_cast<const uint4*>(k)[i];
      *reinterpret_cast<uint4*>(v_pool + dst) = reinterpret_cast<const uint4*>(v)[i];
    }
    return;
  }
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    const int h = i / D, d = i - h * D;
    const size_t dst = kv_row(table, pos, h, H, bs_log2, D) + d;
    k_pool[dst] = k[i];
    v_pool[dst] = v[i];
  }
#endif
}
