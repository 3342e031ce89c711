//! A family defined outside `mdm-models`, the way `docs/families.md` walks through: its config
//! reader, its names for the network's slots, and an architecture variant (q/k/v biases, a head
//! tied to the embedding's first `V` rows, the mask token the extra row `V`). A folder written for it loads
//! (the same network as its weights fused into our SMDM layout by hand), generates with the dual
//! cache, and trains a step. Adding it touched this file and one line of `main.rs`.

use mdm::backend::{self, Default as B, Training};
use mdm::burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use mdm::burn::tensor::{Bool, Int, Tensor, TensorData};
use mdm::models::families::{Family, Mapped};
use mdm::models::hf::HfFolder;
use mdm::models::slots::{slots, LayerSlot, Role, Slot};
use mdm::models::{MaskPredictor, MaskedTransformer, ModelConfig, WeightFormat};
use mdm::samplers::{options::CacheMode, DecodingOptions, MaskedDiffusionSampler};
use safetensors::tensor::TensorView;

/// The toy family's `config.json` keys onto the shared network.
fn toy_config(json: &serde_json::Value) -> ModelConfig {
    let n = |key: &str| json[key].as_u64().expect(key) as usize;
    let mut config = ModelConfig::custom(
        n("vocab"),
        n("layers"),
        n("heads"),
        n("width"),
        n("ffn"),
        n("context"),
    )
    .with_query_groups(n("kv_heads"));
    config.name = "toy".into();
    config.padding_multiple = 1;
    config.padded_vocab_size = Some(n("vocab"));
    // the variant
    config.qkv_bias = true;
    config.tie_embeddings = true;
    config
}

/// The toy family's tensor names: q, k and v apart, fused on load.
fn toy_names(slot: Slot) -> Option<Mapped> {
    use LayerSlot::*;
    let one = |name: String| Some(Mapped::One(name));
    let Slot::Layer(l, part) = slot else {
        return match slot {
            Slot::Embedding => one("toy.embed".into()),
            Slot::FinalNorm => one("toy.norm".into()),
            _ => None, // the head is the embedding
        };
    };
    let qkv = |what: &str| {
        Some(Mapped::Grouped {
            q: format!("toy.{l}.q.{what}"),
            k: format!("toy.{l}.k.{what}"),
            v: format!("toy.{l}.v.{what}"),
            interleaved: false,
        })
    };
    let name = match part {
        Qkv => return qkv("weight"),
        QkvBias => return qkv("bias"),
        AttnNorm => "attn_norm",
        AttnOut => "attn_out",
        FfnNorm => "ffn_norm",
        FfnGate => "gate",
        FfnUp => "up",
        FfnDown => "down",
        // the slots of architectures the toy does not have (q/k norms, experts)
        _ => return None,
    };
    one(format!("toy.{l}.{name}"))
}

fn write_safetensors(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors.iter().zip(&bytes).map(|((name, shape, _), b)| {
        let view = TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap();
        (name.clone(), view)
    });
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// Writes a toy folder of seeded weights, and the same weights as an SMDM file (q/k/v fused into
/// the grouped layout here, by hand: for each key/value group its query heads, its key, its
/// value).
fn write_toy(dir: &std::path::Path, config_json: &serde_json::Value) -> std::path::PathBuf {
    let config = toy_config(config_json);
    let (h, g, d) = (config.n_head, config.query_groups(), config.head_size());
    let mut value = 0x2545_f491u32;
    let mut draw = |n: usize, role: Role| -> Vec<f32> {
        (0..n)
            .map(|_| match role {
                Role::Norm => 1.0,
                _ => {
                    value = value.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    ((value >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
                }
            })
            .collect()
    };
    let (mut toy, mut smdm) = (Vec::new(), Vec::new());
    let rows = config.masked_embedding_rows();
    for slot in slots(&config) {
        let shape = slot.shape(&config, rows);
        let width: usize = shape[1..].iter().product();
        let smdm_name = mdm::models::smdm::smdm_name(slot);
        match toy_names(slot).expect("every slot has a name") {
            Mapped::One(name) => {
                let values = draw(shape.iter().product(), slot.role());
                toy.push((name, shape.clone(), values.clone()));
                smdm.push((smdm_name, shape, values));
            }
            Mapped::Grouped { q, k, v, .. } => {
                let part = |rows: usize| {
                    let mut s = shape.clone();
                    s[0] = rows;
                    s
                };
                let parts = [(q, h * d), (k, g * d), (v, g * d)]
                    .map(|(name, rows)| (name, part(rows), draw(rows * width, slot.role())));
                let per = h / g;
                let mut fused = Vec::new();
                for group in 0..g {
                    let take = |p: &Vec<f32>, from: usize, n: usize| {
                        p[from * d * width..(from + n) * d * width].to_vec()
                    };
                    fused.extend(take(&parts[0].2, group * per, per));
                    fused.extend(take(&parts[1].2, group, 1));
                    fused.extend(take(&parts[2].2, group, 1));
                }
                toy.extend(parts);
                smdm.push((smdm_name, shape, fused));
            }
            other => panic!("the toy names no slot as {other:?}"),
        }
    }
    std::fs::write(dir.join("config.json"), config_json.to_string()).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &toy);
    let smdm_file = dir.join("as-smdm.safetensors");
    write_safetensors(&smdm_file, &smdm);
    smdm_file
}

fn logits(model: &MaskedTransformer<B>, ids: &[i64]) -> Vec<f32> {
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        &model.device(),
    );
    let out = model.logits(input).unwrap();
    out.into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn a_family_of_ones_own_loads_generates_with_the_dual_cache_and_trains() {
    let json = serde_json::json!({
        "model_type": "toy", "vocab": 48, "layers": 2, "heads": 4, "kv_heads": 2,
        "width": 32, "ffn": 64, "context": 64
    });
    let dir = tempfile::tempdir().unwrap();
    let smdm_file = write_toy(dir.path(), &json);
    let folder = HfFolder::open(dir.path()).unwrap();
    let family = Family {
        name: "toy",
        config: toy_config(folder.config()),
        names: toy_names,
    };
    let device = backend::device();
    let model: MaskedTransformer<B> = family
        .build(&folder, WeightFormat::Stored, &device)
        .unwrap();
    assert!(model.net.lm_head.is_none(), "the head is the embedding");
    let m = model.mask_id() as i64;
    assert_eq!(m, 48, "row V of the embedding");
    // the toy layout fused on load = the same weights fused by hand
    let by_hand = MaskedTransformer::<B>::load_smdm(&smdm_file, &family.config, &device).unwrap();
    let ids = [5i64, 9, m, 17, m, m, 40, 3];
    assert_eq!(logits(&model, &ids), logits(&by_hand, &ids));

    drop(folder);

    // the dual cache, blocks of 4
    let options = DecodingOptions {
        cache: CacheMode::Dual,
        block_length: Some(4),
        ..DecodingOptions::default().with_gen_length(8).with_steps(8)
    };
    let prompts = vec![vec![1usize, 2, 3], vec![7, 8]];
    let rows = MaskedDiffusionSampler::new(&model, options.clone())
        .generate(&prompts, |_| {})
        .unwrap();
    let again = MaskedDiffusionSampler::new(&by_hand, options)
        .generate(&prompts, |_| {})
        .unwrap();
    assert_eq!(rows, again);
    for row in &rows {
        assert_eq!(row.len(), 8);
        assert!(row.iter().all(|&t| t < 48), "every mask revealed: {row:?}");
    }

    // a training step moves the tied matrix and lowers the loss on its batch
    let folder = HfFolder::open(dir.path()).unwrap();
    let train: MaskedTransformer<Training> = family
        .build(&folder, WeightFormat::Stored, &device)
        .unwrap();
    let x0 = Tensor::<Training, 2, Int>::from_data(
        TensorData::new(vec![5i64, 9, 11, 17, 2, 30, 40, 3], [1, 8]),
        &device,
    );
    let mask = Tensor::<Training, 2, Bool>::from_bool(
        TensorData::new(
            vec![false, true, true, false, true, false, true, false],
            [1, 8],
        ),
        &device,
    );
    let p_mask = Tensor::<Training, 1>::from_data(TensorData::new(vec![0.5f32], [1]), &device);
    let loss_of = |model: &MaskedTransformer<Training>| {
        let noisy = x0.clone().mask_fill(mask.clone(), m);
        let logits = model.forward(noisy).unwrap();
        mdm::diffusion::loss::pretrain_loss(logits, x0.clone(), mask.clone(), p_mask.clone())
            .unwrap()
            .loss
    };
    let loss = loss_of(&train);
    let before: f32 = loss.clone().into_scalar();
    let grads = GradientsParams::from_grads(loss.backward(), &train);
    let trained = AdamWConfig::new().init().step(1e-2, train, grads);
    assert!(trained.net.lm_head.is_none(), "still one matrix");
    let after: f32 = loss_of(&trained).into_scalar();
    assert!(before.is_finite() && after < before, "{before} -> {after}");
}
