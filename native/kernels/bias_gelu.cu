// bias_gelu: x[i] = gelu(x[i] + bias[i % N]) in place over n elements of rows of N; bias may be
// null. mode 0: exact erf GELU (nanoGPT nn.GELU()); mode 1: tanh approximation (HF gelu_new).
// Grid-stride; any grid and block.
extern "C" __global__ void ng_bias_gelu(st_t* __restrict__ x, const st_t* __restrict__ bias, long long n, int N,
                                        int mode) {
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    float v = to_f32(x[i]);
    if (bias) v += to_f32(bias[i % N]);
    float g;
    if (mode == 0) {
      g = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    } else {
      const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
      g = 0.5f * v * (1.0f + tanhf(u));
    }
    x[i] = from_f32(g);
  }
}
