"""A Dream parity fixture made by the references' own code (tests/data/dream-tied-parity).

Runs Dream's model, tokenizer and `diffusion_generate` and Fast-dLLM's Dream block decoding
(`dream/model/` of NVlabs/Fast-dLLM: `modeling_dream.py`, `tokenization_dream.py`,
`generation_utils.py`, `generation_utils_block.py`) on CPU in float32 with a tiny random
configuration whose head is **tied** to the embedding, and writes a folder laid out like
`tests/data/dream-parity` (a published Dream folder, `cases.safetensors`, `manifest.json`), read by
`tests/suite/parity_dream.rs` through `MDM_DREAM_PARITY_DIR`.

The settings reach every branch the published fixture does not:
- a tied head (`tie_word_embeddings: true`, no `lm_head.weight` in the shards): with the head tied,
  a masked position's output leans towards the mask token's own row, so the model sometimes
  predicts `mask_id`; the mask row is scaled (`--mask-scale`) so that this happens at some
  positions and not at all (a "revealed" mask token leaves the position masked);
- Dream's `confidence_threshold` with thresholds that some steps do not reach (tokens carried to the
  next step), steps added at the end, and an extra step count that does not divide the length
  for the other algorithms;
- Fast-dLLM's fixed-step block branch with a block left holding a mask after its steps (the
  reference then makes one more forward pass and discards it);
- EOS made likely (`--eos-scale`), so generations and blocks end with EOS.
Cases that would not end in the reference (its block threshold loop waits for a block to hold no
mask; a model that keeps predicting the mask token never ends) are left out after `--max-nfe`
passes, and named in the manifest's `skipped`.

Needs torch, transformers 4.57, safetensors and Fast-dLLM's `dream/` folder:

    python scripts/dream_fixture.py --dream-code PATH/TO/Fast-dLLM/dream \
        --tokenizer tests/data/dream-parity/model --out tests/data/dream-tied-parity
"""
import argparse
import json
import shutil
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("--dream-code", required=True, help="Fast-dLLM's dream/ folder (holds model/)")
p.add_argument("--tokenizer", required=True, help="a Dream folder whose tokenizer files to ship")
p.add_argument("--out", required=True)
p.add_argument("--seed", type=int, default=11)
p.add_argument("--layers", type=int, default=3)
p.add_argument("--hidden", type=int, default=96)
p.add_argument("--heads", type=int, default=6)
p.add_argument("--kv-heads", type=int, default=2)
p.add_argument("--intermediate", type=int, default=136)
p.add_argument("--vocab", type=int, default=352)
p.add_argument("--rope-theta", type=float, default=10000.0)
p.add_argument("--eps", type=float, default=1e-5)
p.add_argument("--embed-std", type=float, default=0.7)
p.add_argument("--linear-std", type=float, default=0.12)
p.add_argument("--mask-scale", type=float, default=1.15)
p.add_argument("--eos-scale", type=float, default=2.0)
p.add_argument("--shard-kb", type=int, default=24)
p.add_argument("--max-nfe", type=int, default=120)
a = p.parse_args()

sys.path.insert(0, a.dream_code)
from model.configuration_dream import DreamConfig  # noqa: E402
from model.modeling_dream import DreamModel  # noqa: E402
from model.tokenization_dream import DreamTokenizer  # noqa: E402
from model import generation_utils, generation_utils_block  # noqa: E402

torch.manual_seed(a.seed)
tok_src = Path(a.tokenizer)
special = json.loads((tok_src / "tokenizer_config.json").read_text())["added_tokens_decoder"]
ids_of = {v["content"]: int(k) for k, v in special.items()}
EOS, BOS, MASK = ids_of["<|endoftext|>"], ids_of["<|beginoftext|>"], ids_of["<|mask|>"]
REGULAR = min(ids_of.values())

config = DreamConfig(
    vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
    num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
    max_position_embeddings=256, rope_theta=a.rope_theta, rms_norm_eps=a.eps,
    tie_word_embeddings=True, mask_token_id=MASK, pad_token_id=EOS, eos_token_id=EOS,
    bos_token_id=BOS, attn_implementation="sdpa", use_cache=False,
)
model = DreamModel(config).eval()
with torch.no_grad():
    emb = model.get_input_embeddings().weight
    emb.normal_(0.0, a.embed_std)
    emb[MASK] *= a.mask_scale
    emb[EOS] *= a.eos_scale
    for name, param in model.named_parameters():
        if name.endswith("proj.weight"):
            param.normal_(0.0, a.linear_std)
        elif name.endswith("norm.weight"):
            param.uniform_(0.8, 1.2)
        elif name.endswith(".bias"):
            param.normal_(0.0, 0.1)
assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

out = Path(a.out)
if out.exists():
    shutil.rmtree(out)
folder = out / "model"
model.save_pretrained(folder, safe_serialization=True, max_shard_size=f"{a.shard_kb}KB")
for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
    shutil.copy(tok_src / name, folder / name)
(folder / "generation_config.json").write_text(json.dumps({
    "mask_token_id": MASK, "pad_token_id": EOS, "bos_token_id": BOS, "eos_token_id": EOS,
    "alg": "entropy", "steps": 16, "temperature": 0.0, "top_p": None, "top_k": None, "eps": 0.001,
}, indent=1))
index = json.loads((folder / "model.safetensors.index.json").read_text())
assert "lm_head.weight" not in index["weight_map"], "a tied folder holds no lm_head.weight"
shards = len(set(index["weight_map"].values()))

nfe = [0]
model.register_forward_pre_hook(lambda *_: nfe.__setitem__(0, nfe[0] + 1))


class TooLong(Exception):
    pass


def guard(*_):
    if nfe[0] > a.max_nfe:
        raise TooLong()


model.register_forward_pre_hook(guard)
gen = torch.Generator().manual_seed(a.seed + 1)
cases = {}

# forward: rows with about 40 % masks; raw (unshifted) logits
ids = torch.randint(0, REGULAR, (3, 29), generator=gen)
ids[torch.rand(3, 29, generator=gen) < 0.4] = MASK
with torch.no_grad():
    cases["forward.ids"] = ids
    cases["forward.logits"] = model(ids).logits.float().contiguous()

# left padding as Dream's generate builds it
ids = torch.randint(0, REGULAR, (2, 20), generator=gen)
ids[torch.rand(2, 20, generator=gen) < 0.4] = MASK
att = torch.ones(2, 20, dtype=torch.long)
att[1, :6] = 0
ids[1, :6] = EOS
tok_idx = att.cumsum(-1) - 1
tok_idx.masked_fill_(att == 0, 1)
square = torch.logical_and(att.unsqueeze(1).unsqueeze(-2), att.unsqueeze(1).unsqueeze(-1))
with torch.no_grad():
    logits = model(ids, square, tok_idx).logits.float()
logits[att == 0] = 0.0
cases.update({"forward_padded.ids": ids, "forward_padded.attention_mask": att,
              "forward_padded.position_ids": tok_idx, "forward_padded.logits": logits.contiguous()})

dream_generate = types.MethodType(generation_utils.DreamGenerationMixin.diffusion_generate, model)
block_generate = types.MethodType(generation_utils_block.DreamGenerationMixin.diffusion_generate, model)


def run(function, prompt, attention_mask, **kw):
    """The reference's output, its forward passes, and how many decoded tokens (prompt or
    generated) it turned back into the mask token: Dream's `diffusion_generate` gives every row
    of a batch the count of the batch's mean mask count, and `torch.topk` over a row with fewer
    masks picks positions whose confidence is -inf, where it writes the mask token."""
    remasked = [0]
    if function == "diffusion_generate":
        model._sample = types.MethodType(generation_utils.DreamGenerationMixin._sample, model)
        call = dream_generate
        previous = [None]

        def hook(step, x, logits):
            if previous[0] is not None:
                remasked[0] += int(((previous[0] != MASK) & (x == MASK)).sum())
            previous[0] = x.clone()
            return x

        kw = dict(kw, generation_tokens_hook_func=hook)
    else:
        model._sample = types.MethodType(generation_utils_block.DreamGenerationMixin._sample, model)
        call = block_generate
    nfe[0] = 0
    with torch.no_grad():
        x = call(prompt, attention_mask=attention_mask, temperature=0.0, mask_token_id=MASK,
                 output_history=False, return_dict_in_generate=False, **kw)
    return x, nfe[0], remasked[0]


prompt1 = torch.randint(0, REGULAR, (1, 7), generator=gen)
prompt1[0, -2] = EOS  # EOS in the prompt makes it likely in the generation
prompt2 = torch.randint(0, REGULAR, (2, 9), generator=gen)
padded = torch.randint(0, REGULAR, (2, 8), generator=gen)
padded_mask = torch.ones(2, 8, dtype=torch.long)
padded_mask[0, :3] = 0
padded[0, :3] = EOS

plans = []
for alg in ("maskgit_plus", "topk_margin", "entropy"):
    for steps in (20, 7, 3):  # 20 tokens: steps that do not divide it
        plans.append(("diffusion_generate", prompt2, None,
                      dict(max_new_tokens=20, steps=steps, alg=alg)))
for top_p, top_k in ((0.9, None), (None, 4)):
    plans.append(("diffusion_generate", prompt2, None,
                  dict(max_new_tokens=12, steps=5, alg="maskgit_plus", top_p=top_p, top_k=top_k)))
plans.append(("diffusion_generate", padded, padded_mask,
              dict(max_new_tokens=12, steps=6, alg="entropy")))
for steps, length in ((4, 16), (8, 24), (3, 12)):
    for threshold in (0.95, 0.7, 0.4, 0.1):
        plans.append(("diffusion_generate", prompt1, None,
                      dict(max_new_tokens=length, steps=steps, alg="confidence_threshold",
                           threshold=threshold)))
for dual in (False, True):
    for threshold in (0.9, 0.5, 0.2):
        plans.append(("diffusion_generate_block", prompt1, None,
                      dict(max_new_tokens=24, steps=12, block_length=8,
                           alg="confidence_threshold", threshold=threshold, dual_cache=dual)))
    for steps in (12, 6, 3):
        plans.append(("diffusion_generate_block", prompt1, None,
                      dict(max_new_tokens=24, steps=steps, block_length=8, alg="entropy",
                           dual_cache=dual)))

generations, skipped = [], []
for function, prompt, attention_mask, kw in plans:
    name = f"gen{len(generations)}"
    try:
        x, passes, remasked = run(function, prompt, attention_mask, **kw)
    except TooLong:
        skipped.append({"function": function, **kw})
        continue
    except AssertionError as e:  # the reference's own preconditions
        skipped.append({"function": function, **kw, "reason": str(e)})
        continue
    entry = {"name": name, "function": function, "nfe": passes, "temperature": 0.0,
             "mask_token_id": MASK, **kw}
    gen_part = x[:, prompt.shape[1]:]
    entry["masks_left"] = int((gen_part == MASK).sum())
    entry["eos"] = int((gen_part == EOS).sum())
    entry["remasked_decoded"] = remasked
    generations.append(entry)
    cases[f"{name}.prompt"] = prompt.clone()
    cases[f"{name}.x"] = x.contiguous()
    if attention_mask is not None:
        cases[f"{name}.attention_mask"] = attention_mask.clone()

save_file({k: v.contiguous() for k, v in cases.items()}, out / "cases.safetensors")

tokenizer = DreamTokenizer.from_pretrained(folder)
texts = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "7 x 8 = 56<|endoftext|> and\tthen",
]
tokenizer_cases = []
for text in texts:
    t_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokenizer_cases.append({"text": text, "ids": t_ids, "decoded": tokenizer.decode(t_ids)})
messages = [{"role": "user", "content": "What is 7 x 8?"}, {"role": "assistant", "content": "56."},
            {"role": "user", "content": "And 9 x 9?"}]
chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)

manifest = {
    "variant": "tied", "seed": a.seed, "mask_id": MASK, "pad_id": EOS, "eos_id": EOS,
    "bos_id": BOS, "vocab_size": a.vocab, "shards": shards, "tokenizer_regular_tokens": REGULAR,
    "made_by": "scripts/dream_fixture.py " + " ".join(sys.argv[1:]),
    "torch": torch.__version__, "generations": generations, "skipped": skipped,
    "tokenizer": tokenizer_cases,
    "chat": {"messages": messages, "add_generation_prompt": True, "ids": chat_ids},
}
(out / "manifest.json").write_text(json.dumps(manifest, indent=1))
print(json.dumps({"generations": len(generations), "skipped": len(skipped), "shards": shards,
                  "masks_left": sum(g["masks_left"] > 0 for g in generations),
                  "with_eos": sum(g["eos"] > 0 for g in generations),
                  "remasking": sum(g["remasked_decoded"] > 0 for g in generations),
                  "nfe": [g["nfe"] for g in generations]}))
