"""The load-balancing loss of a LLaDA-MoE folder as the references compute it
(tests/data/lladamoe-aux-loss, read by `tests/suite/moe_families.rs`).

LLaDA-MoE's own code cannot train with its auxiliary loss: `modeling_lladamoe.py`
(ZHZisZZ/dllm) copies OLMoE's `load_balancing_loss_func`, but its decoder layer never returns the
router logits, so with `output_router_logits: true` the model hands each layer's *hidden states* to
that function (a softmax over the hidden size, `one_hot` over the experts), which fails or measures
nothing. This script records that (`reference_with_output_router_logits` in the manifest) and the
loss the code intends: the routers' logits of the reference model, captured by forward hooks on
every `mlp.gate`, passed to the file's own `load_balancing_loss_func` (no attention mask, as a
diffusion model calls it; checked equal to transformers' OLMoE one), and its gradient with respect
to every router's weight.

Needs torch, transformers 4.57, safetensors and a dllm checkout:

    python scripts/moe_aux_loss_fixture.py --dllm PATH/TO/dllm \
        --model tests/data/lladamoe-parity/model --out tests/data/lladamoe-aux-loss
"""
import argparse
import hashlib
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("--dllm", required=True, help="a ZHZisZZ/dllm checkout")
p.add_argument("--model", required=True, help="a LLaDA-MoE folder (lladamoe-parity/model)")
p.add_argument("--out", required=True)
p.add_argument("--seed", type=int, default=5)
p.add_argument("--rows", type=int, default=2)
p.add_argument("--cols", type=int, default=12)
a = p.parse_args()

code = Path(a.dllm) / "dllm/pipelines/llada/models"
pkg = types.ModuleType("lladamoe_ref")
pkg.__path__ = [str(code)]
sys.modules["lladamoe_ref"] = pkg
from lladamoe_ref.configuration_lladamoe import LLaDAMoEConfig  # noqa: E402
from lladamoe_ref.modeling_lladamoe import LLaDAMoEModelLM, load_balancing_loss_func  # noqa: E402
from transformers.models.olmoe.modeling_olmoe import (  # noqa: E402
    load_balancing_loss_func as olmoe_loss,
)

torch.manual_seed(a.seed)
config = LLaDAMoEConfig.from_pretrained(a.model)
model = LLaDAMoEModelLM.from_pretrained(
    a.model, config=config, torch_dtype=torch.float32, attn_implementation="sdpa"
)
model.eval()
mask_id = int(config.mask_token_id)
ids = torch.randint(0, mask_id, (a.rows, a.cols))
masked = torch.rand(a.rows, a.cols) < 0.5
ids[masked] = mask_id

# what the reference does when asked for the loss
try:
    out = model(input_ids=ids, output_router_logits=True)
    aux = out.aux_loss
    reference = f"returned aux_loss {float(aux)}" if aux is not None else "returned no aux_loss"
except Exception as e:  # noqa: BLE001
    reference = f"{type(e).__name__}: {e}"
print("reference with output_router_logits:", reference)

# the loss it intends: OLMoE's function on the routers' logits
gates = {}
layers = []
for i, layer in enumerate(model.model.layers):
    gate = getattr(layer.mlp, "gate", None)
    if gate is not None:
        layers.append(i)
        gate.register_forward_hook(lambda m, inp, out, i=i: gates.__setitem__(i, out))
model.zero_grad()
model(input_ids=ids, output_router_logits=False)
router_logits = tuple(gates[i] for i in layers)
loss = load_balancing_loss_func(
    router_logits, config.num_experts, config.num_experts_per_tok, None
)
loss.backward()
olmoe = float(olmoe_loss(tuple(g.detach() for g in router_logits), config.num_experts,
                         config.num_experts_per_tok, None))
assert abs(olmoe - float(loss)) < 1e-6, (olmoe, float(loss))

cases = {
    "ids": ids.to(torch.int64),
    "aux_loss": loss.detach().reshape(1).to(torch.float32),
}
for i in layers:
    gate = model.model.layers[i].mlp.gate
    cases[f"gate_grad.{i}"] = gate.weight.grad.detach().to(torch.float32).contiguous()
    cases[f"router_logits.{i}"] = gates[i].detach().to(torch.float32).contiguous()

out_dir = Path(a.out)
out_dir.mkdir(parents=True, exist_ok=True)
save_file(cases, str(out_dir / "cases.safetensors"))
weights = sorted(Path(a.model).glob("*.safetensors"))
digest = hashlib.sha256(b"".join(w.read_bytes() for w in weights)).hexdigest()
manifest = {
    "made_by": "scripts/moe_aux_loss_fixture.py",
    "reference": "ZHZisZZ/dllm dllm/pipelines/llada/models/modeling_lladamoe.py; "
    "transformers.models.olmoe.modeling_olmoe.load_balancing_loss_func",
    "model_weights_sha256": digest,
    "moe_layers": layers,
    "n_experts": config.num_experts,
    "top_k": config.num_experts_per_tok,
    "seed": a.seed,
    "reference_with_output_router_logits": reference,
    "torch": torch.__version__,
}
(out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
print(f"aux loss {float(loss):.6f} over layers {layers} -> {out_dir}")
