// bias_gelu: x[i] = gelu(x[i] + bias[i % N]) in place over n elements of rows of N; bias may be
// null. act: the activation code (1 exact erf GELU, nanoGPT's nn.GELU(); 2 tanh approximation,
// HF gelu_new), applied by common.cuh's ng_gelu. Grid-stride; any grid and block.
extern "C" __global__ void ng_bias_gelu(st_t* __restrict__ x, const st_t* __restrict__ bias, long long n, int N,
                                        int act) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    float v = to_f32(x[i]);
    if (bias) v += to_f32(bias[i % N]);
    x[i] = from_f32(ng_gelu(v, act));
  }
}
