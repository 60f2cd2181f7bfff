// dequant_rows: out[n, k] = q[n, k] * scale[n] rounded to st_t, over an (N, K) int8 weight with one
// f32 scale per row (weight-only int8: the large-batch matmul dequantizes a layer into a scratch
// buffer and runs the 16-bit GEMM on it; gemv reads the int8 weights directly). Grid-stride over
// groups of 4 elements (K % 4 == 0, q 4-byte aligned); any grid and block.
extern "C" __global__ void ng_dequant_rows(st_t* __restrict__ out, const signed char* __restrict__ q,
                                           const float* __restrict__ scale, int N, int K) {
  NG_TRACE_KERNEL;
  // The scratch may still be read by the previous matmul: wait for it before writing.
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const long long groups = (long long)N * K / 4;
  for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
       g += (long long)gridDim.x * blockDim.x) {
    const long long i = 4 * g;
    const float s = scale[i / K];
    const char4 v = reinterpret_cast<const char4*>(q)[g];
    out[i] = from_f32((float)v.x * s);
    out[i + 1] = from_f32((float)v.y * s);
    out[i + 2] = from_f32((float)v.z * s);
    out[i + 3] = from_f32((float)v.w * s);
  }
}
