"""GGUF files of the masked diffusion families written by llama.cpp's own converter, next to the
Hugging Face folders they were converted from (tests/suite/parity_gguf.rs loads both and compares).

For LLaDA, Dream, LLaDA-MoE and RND1 (`--families llada,dream,lladamoe,rnd1`): a tiny random Hugging Face folder (f16 safetensors, tied embeddings, a real
tokenizer the converter recognises: GPT-2's byte-level BPE with a mask token added for LLaDA,
Llama-2's SentencePiece for Dream), then `convert_hf_to_gguf.py --outtype f16` from the llama.cpp
source that `../shared/tools/build-llama-diffusion.sh` unpacks. Needs torch, transformers < 5,
safetensors, sentencepiece and that llama.cpp's gguf-py:

    python scripts/gguf_models.py --llama /tmp/llama-diffusion --out tests/data/gguf-parity
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("--llama", required=True, help="the folder build-llama-diffusion.sh made (holds src/)")
p.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
p.add_argument("--out", required=True)
p.add_argument("--outtype", default="f16")
p.add_argument("--seed", type=int, default=7)
p.add_argument("--families", default="llada,dream")
# sizes (the defaults are the test fixtures'; the benchmark's 0.82 B LLaDA: --d 2048 --layers 12
# --heads 16 --kv 16 --hidden 5632 --dtype float32 --outtype f32)
p.add_argument("--d", type=int, default=16)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--heads", type=int, default=2)
p.add_argument("--kv", type=int, default=1)
p.add_argument("--hidden", type=int, default=32)
p.add_argument("--untied", action="store_true", help="LLaDA: an output head of its own")
p.add_argument("--vocab", type=int, default=50304, help="LLaDA's embedding rows")
p.add_argument("--sharded", action="store_true",
               help="one safetensors shard per layer (a model larger than memory)")
p.add_argument("--no-convert", action="store_true", help="the Hugging Face folder alone")
p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
p.add_argument("--experts", type=int, default=4, help="LLaDA-MoE / RND1: routed experts per layer")
p.add_argument("--top-k", type=int, default=2, help="LLaDA-MoE / RND1: experts per token")
p.add_argument("--groups", type=int, default=4, help="LLaDA2: expert groups")
p.add_argument("--top-groups", type=int, default=2, help="LLaDA2: groups chosen per token")
p.add_argument("--head-dim", type=int, default=16, help="LLaDA2: head size")
p.add_argument("--rotary", type=float, default=0.5, help="LLaDA2: rotary fraction of each head")
p.add_argument("--dense-hidden", type=int, default=96, help="LLaDA2: the dense first layer's SwiGLU")
args = p.parse_args()
DTYPE = getattr(torch, args.dtype)
tokenizers = os.path.join(args.shared, "data", "tokenizers")
gen = torch.Generator().manual_seed(args.seed)


def weight(*shape):
    fan_in = shape[-1]
    return (torch.randn(*shape, generator=gen) / fan_in ** 0.5).to(DTYPE)


def gain(n):
    return (1.0 + 0.1 * torch.randn(n, generator=gen)).to(DTYPE)


def convert(folder, gguf):
    converter = os.path.join(args.llama, "src", "convert_hf_to_gguf.py")
    subprocess.run([sys.executable, converter, folder, "--outtype", args.outtype, "--outfile", gguf],
                   check=True)


def save(hf, parts, count):
    """The tensors `parts` yields (`count` of them) as one safetensors file, or with `--sharded`
    one shard per part and an index (a model larger than memory is never held whole)."""
    if args.sharded:
        weight_map = {}
        for n, tensors in enumerate(parts):
            name = f"model-{n + 1:05d}-of-{count:05d}.safetensors"
            save_file(tensors, os.path.join(hf, name), metadata={"format": "pt"})
            weight_map.update({k: name for k in tensors})
            del tensors
        json.dump({"metadata": {}, "weight_map": weight_map},
                  open(os.path.join(hf, "model.safetensors.index.json"), "w"), indent=1)
    else:
        tensors = {}
        for part in parts:
            tensors.update(part)
        save_file(tensors, os.path.join(hf, "model.safetensors"), metadata={"format": "pt"})


def llada(out):
    hf = os.path.join(out, "llada", "hf")
    os.makedirs(hf, exist_ok=True)
    d, heads, kv, hidden, layers, vocab = args.d, args.heads, args.kv, args.hidden, args.layers, args.vocab
    config = {
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu",
        "alibi": False, "alibi_bias_max": 8.0, "attention_dropout": 0.0,
        "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": None, "block_group_size": 1, "block_type": "llama", "d_model": d,
        "embedding_dropout": 0.0, "embedding_size": vocab, "eos_token_id": 50256,
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
        "init_cutoff_factor": None, "init_device": "cpu", "init_fn": "normal", "init_std": 0.02,
        "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "mask_token_id": 50257, "max_sequence_length": 256, "mlp_hidden_size": hidden,
        "mlp_ratio": 4, "multi_query_attention": None, "n_heads": heads, "n_kv_heads": kv,
        "n_layers": layers, "pad_token_id": 50256, "precision": None, "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
        "scale_logits": False, "dtype": args.dtype, "use_cache": False, "vocab_size": vocab,
        "weight_tying": not args.untied,
    }
    json.dump(config, open(os.path.join(hf, "config.json"), "w"), indent=1)
    t = "model.transformer."
    hd = d // heads

    def shards():
        yield {t + "wte.weight": weight(vocab, d), t + "ln_f.weight": gain(d)}
        if args.untied:
            yield {t + "ff_out.weight": weight(vocab, d)}
        for i in range(layers):
            b = f"{t}blocks.{i}."
            yield {
                b + "attn_norm.weight": gain(d), b + "ff_norm.weight": gain(d),
                b + "q_proj.weight": weight(heads * hd, d), b + "k_proj.weight": weight(kv * hd, d),
                b + "v_proj.weight": weight(kv * hd, d), b + "attn_out.weight": weight(d, d),
                b + "ff_proj.weight": weight(hidden, d), b + "up_proj.weight": weight(hidden, d),
                b + "ff_out.weight": weight(d, hidden),
            }

    save(hf, shards(), layers + 1 + args.untied)
    tok = json.load(open(os.path.join(tokenizers, "gpt2", "tokenizer.json")))
    tok.setdefault("added_tokens", []).append({
        "id": 50257, "content": "<|mdm_mask|>", "single_word": False, "lstrip": False,
        "rstrip": False, "normalized": False, "special": True})
    json.dump(tok, open(os.path.join(hf, "tokenizer.json"), "w"))
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "mask_token": "<|mdm_mask|>",
               "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
               "model_max_length": 256}, open(os.path.join(hf, "tokenizer_config.json"), "w"))
    if not args.no_convert:
        convert(hf, os.path.join(out, "llada", f"model-{args.outtype}.gguf"))


def dream(out):
    hf = os.path.join(out, "dream", "hf")
    os.makedirs(hf, exist_ok=True)
    d, heads, kv, hidden, layers, vocab = args.d, args.heads, args.kv, args.hidden, args.layers, 32000
    config = {
        "architectures": ["DreamModel"], "model_type": "Dream", "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu",
        "hidden_size": d, "initializer_range": 0.02, "intermediate_size": hidden,
        "mask_token_id": 31999, "max_position_embeddings": 256, "max_window_layers": 28,
        "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": None, "tie_word_embeddings": True, "dtype": args.dtype,
        "use_cache": False, "use_sliding_window": False, "vocab_size": vocab,
    }
    json.dump(config, open(os.path.join(hf, "config.json"), "w"), indent=1)
    hd = d // heads
    tensors = {"model.embed_tokens.weight": weight(vocab, d), "model.norm.weight": gain(d)}
    for i in range(layers):
        b = f"model.layers.{i}."
        tensors.update({
            b + "input_layernorm.weight": gain(d), b + "post_attention_layernorm.weight": gain(d),
            b + "self_attn.q_proj.weight": weight(heads * hd, d),
            b + "self_attn.k_proj.weight": weight(kv * hd, d),
            b + "self_attn.v_proj.weight": weight(kv * hd, d),
            b + "self_attn.q_proj.bias": weight(heads * hd),
            b + "self_attn.k_proj.bias": weight(kv * hd),
            b + "self_attn.v_proj.bias": weight(kv * hd),
            b + "self_attn.o_proj.weight": weight(d, heads * hd),
            b + "mlp.gate_proj.weight": weight(hidden, d), b + "mlp.up_proj.weight": weight(hidden, d),
            b + "mlp.down_proj.weight": weight(d, hidden),
        })
    save_file(tensors, os.path.join(hf, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(tokenizers, "llama2", "tokenizer.model"), hf)
    convert(hf, os.path.join(out, "dream", f"model-{args.outtype}.gguf"))


def gpt2_tokenizer(hf, mask_id, mask="<|mdm_mask|>"):
    """GPT-2's tokenizer (which the converter recognises) with the mask token at `mask_id`."""
    tok = json.load(open(os.path.join(tokenizers, "gpt2", "tokenizer.json")))
    tok.setdefault("added_tokens", []).append({
        "id": mask_id, "content": mask, "single_word": False, "lstrip": False,
        "rstrip": False, "normalized": False, "special": True})
    json.dump(tok, open(os.path.join(hf, "tokenizer.json"), "w"))
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "mask_token": mask,
               "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
               "model_max_length": 256}, open(os.path.join(hf, "tokenizer_config.json"), "w"))


def moe_tensors(layers, d, heads, kv, hd, experts, expert_hidden, vocab):
    """Qwen-named weights of a network whose every layer is a Mixture of Experts with q/k norms,
    saved as `save` does (one part for the embedding, norm and head, then one per layer)."""
    def parts():
        yield {"model.embed_tokens.weight": weight(vocab, d), "model.norm.weight": gain(d),
               "lm_head.weight": weight(vocab, d)}
        for i in range(layers):
            yield layer(i)

    def layer(i):
        b = f"model.layers.{i}."
        tensors = {}
        tensors.update({
            b + "input_layernorm.weight": gain(d), b + "post_attention_layernorm.weight": gain(d),
            b + "self_attn.q_proj.weight": weight(heads * hd, d),
            b + "self_attn.k_proj.weight": weight(kv * hd, d),
            b + "self_attn.v_proj.weight": weight(kv * hd, d),
            b + "self_attn.o_proj.weight": weight(d, heads * hd),
            b + "self_attn.q_norm.weight": gain(hd), b + "self_attn.k_norm.weight": gain(hd),
            # a router with spread-out logits, so that the top-k choice is never a near tie
            b + "mlp.gate.weight": (weight(experts, d).float() * 4).to(DTYPE),
        })
        for e in range(experts):
            x = f"{b}mlp.experts.{e}."
            tensors.update({
                x + "gate_proj.weight": weight(expert_hidden, d),
                x + "up_proj.weight": weight(expert_hidden, d),
                x + "down_proj.weight": weight(d, expert_hidden),
            })
        return tensors
    return parts(), layers + 1


def lladamoe(out):
    """LLaDA-MoE: llama.cpp's converter writes mask id 156895 whatever the config says, so the
    vocabulary reaches past it (GPT-2's tokens, then the converter's padding)."""
    hf = os.path.join(out, "lladamoe", "hf")
    os.makedirs(hf, exist_ok=True)
    d, heads, kv, layers = args.d, args.heads, args.kv, args.layers
    experts, top_k, expert_hidden, vocab, mask = args.experts, args.top_k, args.hidden, 156928, 156895
    config = {
        "architectures": ["LLaDAMoEModelLM"], "model_type": "lladamoe", "attention_bias": False,
        "attention_dropout": 0.0, "clip_qkv": None, "dense_intermediate_size": expert_hidden,
        "eos_token_id": 50256, "pad_token_id": 50256, "expert_intermediate_size": expert_hidden,
        "hidden_act": "silu", "hidden_size": d, "initializer_range": 0.02,
        "mask_token_id": mask, "max_position_embeddings": 256, "moe_layer_freq": 1,
        "moe_router_enable_expert_bias": False, "moe_router_score_function": "softmax",
        "num_attention_heads": heads, "num_experts": experts, "num_experts_per_tok": top_k,
        "num_hidden_layers": layers, "num_key_value_heads": kv, "partial_rotary_factor": 1.0,
        "qk_layernorm": True, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 50000.0,
        "tie_word_embeddings": False, "dtype": args.dtype, "use_cache": False, "vocab_size": vocab,
    }
    json.dump(config, open(os.path.join(hf, "config.json"), "w"), indent=1)
    save(hf, *moe_tensors(layers, d, heads, kv, d // heads, experts, expert_hidden, vocab))
    gpt2_tokenizer(hf, mask)
    if not args.no_convert:
        convert(hf, os.path.join(out, "lladamoe", f"model-{args.outtype}.gguf"))


def rnd1(out):
    """RND1 (Qwen3-MoE): a head size apart from width / heads, renormalised top-k, shifted logits."""
    hf = os.path.join(out, "rnd1", "hf")
    os.makedirs(hf, exist_ok=True)
    d, heads, kv, layers = args.d, args.heads, args.kv, args.layers
    experts, top_k, expert_hidden = args.experts, args.top_k, args.hidden
    vocab, mask, hd = 50304, 50257, 2 * (args.d // args.heads)
    config = {
        "architectures": ["RND1"], "model_type": "rnd1", "attention_bias": False,
        "attention_dropout": 0.0, "eos_token_id": 50256, "pad_token_id": 50256, "head_dim": hd,
        "hidden_act": "silu", "hidden_size": d, "initializer_range": 0.02,
        "intermediate_size": expert_hidden, "mask_token_id": mask, "max_position_embeddings": 256,
        "mlp_only_layers": [], "moe_intermediate_size": expert_hidden, "norm_topk_prob": True,
        "num_attention_heads": heads, "num_experts": experts, "num_experts_per_tok": top_k,
        "num_hidden_layers": layers, "num_key_value_heads": kv, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "dtype": args.dtype, "use_cache": False,
        "use_sliding_window": False, "vocab_size": vocab,
    }
    json.dump(config, open(os.path.join(hf, "config.json"), "w"), indent=1)
    save(hf, *moe_tensors(layers, d, heads, kv, hd, experts, expert_hidden, vocab))
    gpt2_tokenizer(hf, mask)
    if not args.no_convert:
        convert(hf, os.path.join(out, "rnd1", f"model-{args.outtype}.gguf"))


def llada2(out):
    """LLaDA2.0 (`llada2_moe`): fused query_key_value, q/k norms, RoPE on `--rotary` of each head,
    the first layer dense (`--dense-hidden`), then sigmoid group-limited MoE (`--experts`,
    `--top-k`, `--groups`, `--top-groups`) with an expert bias and one shared expert of
    `--hidden`. A Hugging Face folder only (llama.cpp's converter writes no LLaDA2)."""
    hf = os.path.join(out, "llada2", "hf")
    os.makedirs(hf, exist_ok=True)
    d, heads, kv, layers, hd = args.d, args.heads, args.kv, args.layers, args.head_dim
    experts, top_k, expert_hidden, dense_hidden = args.experts, args.top_k, args.hidden, args.dense_hidden
    vocab, mask, eos = 157184, 156895, 50256
    config = {
        "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe", "attention_dropout": 0.0,
        "dtype": args.dtype, "embedding_dropout": 0.0, "eos_token_id": eos,
        "first_k_dense_replace": 1, "head_dim": hd, "hidden_act": "silu", "hidden_size": d,
        "initializer_range": 0.02, "intermediate_size": dense_hidden, "mask_token_id": mask,
        "max_position_embeddings": 8192, "max_window_layers": 28, "moe_intermediate_size": expert_hidden,
        "n_group": args.groups, "norm_head": False, "num_attention_heads": heads,
        "num_experts": experts, "num_experts_per_tok": top_k, "num_hidden_layers": layers,
        "num_key_value_heads": kv, "num_shared_experts": 1, "output_dropout": 0.0,
        "output_router_logits": False, "pad_token_id": eos, "partial_rotary_factor": args.rotary,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 600000.0,
        "routed_scaling_factor": 2.5, "sliding_window": 4096, "tie_word_embeddings": False,
        "topk_group": args.top_groups, "use_bias": False, "use_cache": True, "use_qk_norm": True,
        "use_qkv_bias": False, "use_sliding_window": False, "vocab_size": vocab,
    }
    json.dump(config, open(os.path.join(hf, "config.json"), "w"), indent=1)

    def parts():
        yield {"model.word_embeddings.weight": weight(vocab, d), "model.norm.weight": gain(d),
               "lm_head.weight": weight(vocab, d)}
        for i in range(layers):
            b = f"model.layers.{i}."
            t = {
                b + "input_layernorm.weight": gain(d), b + "post_attention_layernorm.weight": gain(d),
                b + "attention.query_key_value.weight": weight((heads + 2 * kv) * hd, d),
                b + "attention.dense.weight": weight(d, heads * hd),
                b + "attention.query_layernorm.weight": gain(hd),
                b + "attention.key_layernorm.weight": gain(hd),
            }
            if i == 0:
                t.update({b + "mlp.gate_proj.weight": weight(dense_hidden, d),
                          b + "mlp.up_proj.weight": weight(dense_hidden, d),
                          b + "mlp.down_proj.weight": weight(d, dense_hidden)})
            else:
                t[b + "mlp.gate.weight"] = (weight(experts, d).float() * 4).to(DTYPE)
                t[b + "mlp.gate.expert_bias"] = (0.1 * torch.randn(experts, generator=gen)).float()
                for w, (o, n) in {"gate_proj": (expert_hidden, d), "up_proj": (expert_hidden, d),
                                  "down_proj": (d, expert_hidden)}.items():
                    t[f"{b}mlp.shared_experts.{w}.weight"] = weight(o, n)
                    for e in range(experts):
                        t[f"{b}mlp.experts.{e}.{w}.weight"] = weight(o, n)
            yield t

    save(hf, parts(), layers + 1)
    gpt2_tokenizer(hf, mask)


for family in args.families.split(","):
    {"llada": llada, "dream": dream, "lladamoe": lladamoe, "rnd1": rnd1,
     "llada2": llada2}[family](args.out)
