//! llama.cpp's tensor names (its `LLM_TENSOR_NAMES`, one table for every architecture), by slot:
//! the GGUF layout of the families whose files its converter writes.
//!
//! | GGUF tensor | slot |
//! |---|---|
//! | `token_embd.weight` | embedding |
//! | `blk.{i}.attn_norm.weight` | block `i`'s attention norm |
//! | `blk.{i}.attn_q.weight`, `attn_k`, `attn_v` (and `.bias`) | fused q/k/v (grouped), its bias |
//! | `blk.{i}.attn_output.weight` | attention output |
//! | `blk.{i}.ffn_norm.weight` | feed-forward norm |
//! | `blk.{i}.ffn_gate.weight`, `ffn_up`, `ffn_down` | SwiGLU gate, up, down |
//! | `blk.{i}.attn_q_norm.weight`, `attn_k_norm` | per-head q / k norms |
//! | `blk.{i}.ffn_gate_inp.weight` | the router `[E, C]` |
//! | `blk.{i}.ffn_gate_exps.weight`, `ffn_up_exps`, `ffn_down_exps` | every expert's gate, up, down, stacked `[E, rows, cols]` |
//! | `blk.{i}.ffn_gate_shexp.weight`, `ffn_up_shexp`, `ffn_down_shexp` | the shared expert |
//! | `output_norm.weight` | final norm |
//! | `output.weight` (absent: tied to `token_embd`) | head |

use crate::params::Mapped;
use crate::slots::{LayerSlot, Slot};

/// The GGUF tensor(s) of `slot`; `interleaved`: the converter permuted the q and k rows of each
/// head for llama.cpp's interleaved RoPE (LLaDA's files). The routed experts are one matrix each
/// of the tensor llama.cpp stacks them in.
pub(crate) fn tensor_name(slot: Slot, interleaved: bool) -> Option<Mapped> {
    use LayerSlot::*;
    let Slot::Layer(l, part) = slot else {
        let name = match slot {
            Slot::Embedding => "token_embd.weight",
            Slot::FinalNorm => "output_norm.weight",
            _ => "output.weight",
        };
        return Some(Mapped::One(name.into()));
    };
    let grouped = |what: &str| Mapped::Grouped {
        q: format!("blk.{l}.attn_q.{what}"),
        k: format!("blk.{l}.attn_k.{what}"),
        v: format!("blk.{l}.attn_v.{what}"),
        interleaved,
    };
    let name = match part {
        Qkv => return Some(grouped("weight")),
        QkvBias => return Some(grouped("bias")),
        RouterBias => return Some(Mapped::One(format!("blk.{l}.exp_probs_b.bias"))),
        AttnNorm => "attn_norm",
        QNorm => "attn_q_norm",
        KNorm => "attn_k_norm",
        AttnOut => "attn_output",
        FfnNorm => "ffn_norm",
        FfnGate => "ffn_gate",
        FfnUp => "ffn_up",
        FfnDown => "ffn_down",
        Router => "ffn_gate_inp",
        SharedGate => "ffn_gate_shexp",
        SharedUp => "ffn_up_shexp",
        SharedDown => "ffn_down_shexp",
        ExpertGate(e) => return Some(expert(l, "ffn_gate_exps", e)),
        ExpertUp(e) => return Some(expert(l, "ffn_up_exps", e)),
        ExpertDown(e) => return Some(expert(l, "ffn_down_exps", e)),
    };
    Some(Mapped::One(format!("blk.{l}.{name}.weight")))
}

/// Expert `index` of block `l`'s stacked tensor `what`.
fn expert(l: usize, what: &str, index: usize) -> Mapped {
    Mapped::Expert {
        name: format!("blk.{l}.{what}.weight"),
        index,
    }
}
