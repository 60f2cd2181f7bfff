// layernorm: out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * weight + bias over C columns
// (biased variance, two passes as torch). bias may be null. One warp per row (no block barriers:
// the short rows of a decode step are latency-bound). Grid: ceil(rows / 8) blocks of 256 threads.
#define NG_LN_ROWS_PER_BLOCK 8
extern "C" __global__ void __launch_bounds__(256)
ng_layernorm(st_t* __restrict__ out, const st_t* __restrict__ x, const st_t* __restrict__ weight,
             const st_t* __restrict__ bias, int rows, int C, float eps) {
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * NG_LN_ROWS_PER_BLOCK + (threadIdx.x >> 5);
  if (r >= rows) return;
  const st_t* xr = x + (size_t)r * C;
  st_t* orow = out + (size_t)r * C;
  float s = 0.0f;
  for (int c = lane; c < C; c += 32) s += to_f32(xr[c]);
  const float mean = warp_sum(s) / (float)C;
  float v = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float d = to_f32(xr[c]) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(warp_sum(v) / (float)C + eps);
  for (int c = lane; c < C; c += 32) {
    float y = (to_f32(xr[c]) - mean) * rstd * to_f32(weight[c]);
    if (bias) y += to_f32(bias[c]);
    orow[c] = from_f32(y);
  }
}
