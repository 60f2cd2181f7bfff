// embed: out[b*T+t, :] = wte[tokens[b*T+t], :] + wpe[min(lengths[b] + t, max_pos - 1), :] for every
// slot, padding too (token ids are clamped into [0, vocab) so garbage padding stays in bounds).
// Grid: B*T blocks; block: any multiple of 32 threads striding over C.
extern "C" __global__ void ng_embed(st_t* __restrict__ out, const int* __restrict__ tokens,
                                    const int* __restrict__ lengths, const st_t* __restrict__ wte,
                                    const st_t* __restrict__ wpe, int T, int C, int max_pos, int vocab) {
  ng_grid_dep_wait();
  ng_grid_dep_launch();
  const int r = blockIdx.x, b = r / T, t = r - b * T;
  int tok = tokens[r];
  tok = tok < 0 ? 0 : (tok >= vocab ? vocab - 1 : tok);
  int pos = lengths[b] + t;
  pos = pos < 0 ? 0 : (pos >= max_pos ? max_pos - 1 : pos);
  const st_t* we = wte + (size_t)tok * C;
  const st_t* pe = wpe + (size_t)pos * C;
  st_t* o = out + (size_t)r * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = from_f32(to_f32(we[c]) + to_f32(pe[c]));
}
