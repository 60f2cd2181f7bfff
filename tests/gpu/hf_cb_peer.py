"""The serving peer: Hugging Face transformers' own continuous batching (model.generate_batch, its
ContinuousBatchingManager underneath) on the same request set as `deno task bench:serve`: N requests
with prompt lengths uniform in [P0, P1] and NEW new tokens each, random GPT-2 weights, greedy, the
end-of-text token ignored. Prints one JSON line per configuration tried (its defaults first, then
with CUDA graphs asked for), with output tokens/s.

  python3 tests/gpu/hf_cb_peer.py --model gpt2 --requests 500 --prompt 16,512 --new 128 [--configs defaults,graphs]
"""
import argparse, json, random, time, traceback
import torch

CONFIGS = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--prompt", default="16,512")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default="defaults,graphs", help="which of defaults,graphs to run, in order")
    a = ap.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel, GenerationConfig
    import transformers
    L, H, C = CONFIGS[a.model]
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=L, n_head=H, n_embd=C, n_positions=1024, vocab_size=50257)
    model = GPT2LMHeadModel(cfg).to("cuda", dtype=torch.bfloat16).eval()
    p0, p1 = map(int, a.prompt.split(","))
    rnd = random.Random(a.seed)
    inputs = [[rnd.randrange(50257) for _ in range(rnd.randint(p0, p1))] for _ in range(a.requests)]
    base = dict(max_new_tokens=a.new, do_sample=False, eos_token_id=None, pad_token_id=0)
    known = {"defaults": {}, "graphs": {"use_cuda_graph": True}}
    tries = [(name, known[name]) for name in a.configs.split(",")]
    for name, extra in tries:
        row = {"engine": "hf-continuous-batching", "config": name, "model": a.model, "requests": a.requests,
               "new": a.new, "transformers": transformers.__version__, "device": torch.cuda.get_device_name()}
        try:
            gen = GenerationConfig(**base, **extra)
            model.generate_batch(inputs=inputs[:8], generation_config=gen, progress_bar=False)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate_batch(inputs=inputs, generation_config=gen, progress_bar=False)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            tokens = sum(len(getattr(o, "generated_tokens", []) or []) for o in out.values())
            row.update(seconds=dt, output_tokens=tokens, output_tok_s=tokens / dt, req_s=a.requests / dt)
        except Exception as e:  # the peer's failure is a result too
            row.update(error=f"{type(e).__name__}: {e}"[:300], trace=traceback.format_exc()[-600:])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
