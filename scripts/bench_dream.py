"""Dream decoding, PyTorch reference against mdm-rs, back to back (docs/benchmarks.md, "Dream").

Makes a random Dream folder with Dream's own code (seeded, float32, safetensors), times Dream's
`diffusion_generate` and Fast-dLLM's Dream block decoding (dual cache, threshold) on it with
`torch.set_num_threads(THREADS)`, and prints the tokens, so the same settings through our
`generate --hf` can be timed and compared. Needs torch, transformers 4.57 and the `dream/model`
folder of NVlabs/Fast-dLLM (its modeling, generation and block-generation code):

    python scripts/bench_dream.py --dream-code PATH/TO/Fast-dLLM/dream --out /tmp/dream-bench
"""
import argparse
import json
import sys
import time
import types

import torch

p = argparse.ArgumentParser()
p.add_argument("--dream-code", required=True, help="Fast-dLLM's dream/ folder (holds model/)")
p.add_argument("--out", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--hidden", type=int, default=1024)
p.add_argument("--layers", type=int, default=12)
p.add_argument("--heads", type=int, default=16)
p.add_argument("--kv-heads", type=int, default=4)
p.add_argument("--intermediate", type=int, default=2816)
p.add_argument("--vocab", type=int, default=32000)
p.add_argument("--prompt", type=int, default=64)
p.add_argument("--gen", type=int, default=128)
p.add_argument("--repeats", type=int, default=2)
a = p.parse_args()

sys.path.insert(0, a.dream_code)
from model.configuration_dream import DreamConfig  # noqa: E402
from model.modeling_dream import DreamModel  # noqa: E402
from model import generation_utils_block  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(a.threads)
config = DreamConfig(
    vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
    num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
    max_position_embeddings=1024, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
    mask_token_id=a.vocab - 1, pad_token_id=a.vocab - 2, eos_token_id=a.vocab - 2,
    bos_token_id=a.vocab - 3, attn_implementation="sdpa",
)
model = DreamModel(config).eval()
model.save_pretrained(a.out, safe_serialization=True)
params = sum(p.numel() for p in model.parameters())
prompt = torch.randint(0, a.vocab - 3, (1, a.prompt), generator=torch.Generator().manual_seed(1))
mask = a.vocab - 1


def timed(run):
    best = None
    out = None
    for _ in range(a.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            out = run()
        took = time.perf_counter() - start
        best = took if best is None else min(best, took)
    return out, best


# Dream's diffusion_generate: one token per step, entropy
x, t_full = timed(lambda: model.diffusion_generate(
    prompt, max_new_tokens=a.gen, steps=a.gen, alg="entropy", temperature=0.0,
    mask_token_id=mask, output_history=False, return_dict_in_generate=False))
full = x[0, a.prompt:].tolist()
# Fast-dLLM's Dream block decoding: blocks of 32, dual cache, threshold 0.9
model.diffusion_generate = types.MethodType(generation_utils_block.DreamGenerationMixin.diffusion_generate, model)
model._sample = types.MethodType(generation_utils_block.DreamGenerationMixin._sample, model)
x, t_block = timed(lambda: model.diffusion_generate(
    prompt, max_new_tokens=a.gen, steps=a.gen, alg="confidence_threshold", threshold=0.9,
    temperature=0.0, mask_token_id=mask, block_length=32, dual_cache=True,
    output_history=False, return_dict_in_generate=False))
block = x[0, a.prompt:].tolist()
print(json.dumps({
    "torch": torch.__version__, "threads": a.threads, "parameters": params,
    "prompt": prompt[0].tolist(), "gen": a.gen,
    "diffusion_generate_s": round(t_full, 3), "diffusion_generate_tokens": full,
    "block_dual_threshold_s": round(t_block, 3), "block_dual_threshold_tokens": block,
}))
