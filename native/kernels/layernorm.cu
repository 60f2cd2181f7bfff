// layernorm: out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * weight + bias over C columns
// (biased variance, two passes as torch). bias may be null. Grid: rows blocks; block: 256 threads.
extern "C" __global__ void __launch_bounds__(256)
ng_layernorm(st_t* __restrict__ out, const st_t* __restrict__ x, const st_t* __restrict__ weight,
             const st_t* __restrict__ bias, int C, float eps) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  __shared__ float scratch[32];
  const st_t* xr = x + (size_t)blockIdx.x * C;
  st_t* orow = out + (size_t)blockIdx.x * C;
  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += to_f32(xr[c]);
  const float mean = block_sum(s, scratch) / (float)C;
  float v = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = to_f32(xr[c]) - mean;
    v += d * d;
  }
  const float var = block_sum(v, scratch) / (float)C;
  const float rstd = rsqrtf(var + eps);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float y = (to_f32(xr[c]) - mean) * rstd * to_f32(weight[c]);
    if (bias) y += to_f32(bias[c]);
    orow[c] = from_f32(y);
  }
}
