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

// layernorm_vec: the same for rows of whole 16-byte vectors (C % NG_VEC == 0, 16-byte aligned x,
// out, weight, bias) of at most NG_LAYERNORM_VPT * blockDim.x vectors. Each thread holds vectors
// v = threadIdx.x + j * blockDim.x of its row in registers, read once (the scalar kernel above
// reads x three times, 2 bytes a load: 4.9 us a launch for gpt2's 256 x 768 under Nsight
// Compute, H200); the weight and bias are loaded before the programmatic-launch wait. Loads are
// issued at clamped addresses with no branch between them, so they are all in flight at once.
// Grid: rows blocks; block: a multiple of 32 threads, <= 256 (ops.ts sizes it to the row).
#ifndef NG_LAYERNORM_VPT
#error "layernorm needs -DNG_LAYERNORM_VPT"
#endif
extern "C" __global__ void __launch_bounds__(256)
ng_layernorm_vec(st_t* __restrict__ out, const st_t* __restrict__ x, const st_t* __restrict__ weight,
                 const st_t* __restrict__ bias, int C, float eps) {
  NG_TRACE_KERNEL;
  constexpr int J = NG_LAYERNORM_VPT;
  __shared__ float scratch[32];
  const int nvec = C / NG_VEC, last = nvec - 1;
  const uint4* w4 = reinterpret_cast<const uint4*>(weight);
  const uint4* b4 = reinterpret_cast<const uint4*>(bias);
  uint4 g[J], b[J], r[J];
#pragma unroll
  for (int j = 0; j < J; j++) {
    const int v = min(threadIdx.x + j * blockDim.x, last);
    g[j] = w4[v];
    b[j] = bias ? b4[v] : make_uint4(0, 0, 0, 0);
  }
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)blockIdx.x * C);
#pragma unroll
  for (int j = 0; j < J; j++) r[j] = xr[min(threadIdx.x + j * blockDim.x, last)];
  const float s = ng_held_vec_sum<J>(r, threadIdx.x, blockDim.x, nvec, [](float v) { return v; });
  const float mean = block_sum(s, scratch) / (float)C;
  const float q = ng_held_vec_sum<J>(r, threadIdx.x, blockDim.x, nvec, [=](float v) { return (v - mean) * (v - mean); });
  const float rstd = rsqrtf(block_sum(q, scratch) / (float)C + eps);
  uint4* orow = reinterpret_cast<uint4*>(out + (size_t)blockIdx.x * C);
#pragma unroll
  for (int j = 0; j < J; j++) {
    const int v = threadIdx.x + j * blockDim.x;
    if (v >= nvec) break;
    float f[NG_VEC], gw[NG_VEC], bb[NG_VEC];
    unpack_vec(r[j], f);
    unpack_vec(g[j], gw);
    unpack_vec(b[j], bb);
#pragma unroll
    for (int e = 0; e < NG_VEC; e++) f[e] = (f[e] - mean) * rstd * gw[e] + bb[e];
    orow[v] = pack_vec(f);
  }
}
