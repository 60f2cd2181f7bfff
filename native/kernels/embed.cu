// embed: out[r, :] = wte[tokens[r], :] + wpe[min(positions[r], max_pos - 1), :] for every row,
// padding too (token ids are clamped into [0, vocab) and positions into [0, max_pos) so garbage
// padding stays in bounds). Grid: rows blocks; block: any multiple of 32 threads striding over C.
extern "C" __global__ void ng_embed(st_t* __restrict__ out, const int* __restrict__ tokens,
                                    const int* __restrict__ positions, const st_t* __restrict__ wte,
                                    const st_t* __restrict__ wpe, int C, int max_pos, int vocab) {
  NG_TRACE_KERNEL;
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int r = blockIdx.x;
  int tok = tokens[r];
  tok = tok < 0 ? 0 : (tok >= vocab ? vocab - 1 : tok);
  int pos = positions[r];
  pos = pos < 0 ? 0 : (pos >= max_pos ? max_pos - 1 : pos);
  const st_t* we = wte + (size_t)tok * C;
  const st_t* pe = wpe + (size_t)pos * C;
  st_t* o = out + (size_t)r * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = from_f32(to_f32(we[c]) + to_f32(pe[c]));
}
