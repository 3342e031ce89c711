//! Every fused kernel against the composition of tensor ops it replaces, on burn-flex: values
//! (inference backend) and gradients of every input (under autodiff), on random shapes with odd
//! sizes, grouped queries, biases broadcast over batch or heads, and strided inputs.

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use mdm_kernels::{composed, Kernels};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Ad = Autodiff<Flex>;

fn random<B: Backend, const D: usize>(shape: [usize; D], rng: &mut ChaCha8Rng) -> Tensor<B, D> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || (g - w).abs() <= tolerance * scale;
        assert!(ok, "{what}[{i}]: fused {g}, composed {w}");
    }
}

/// A causal bias `[1, 1, T, K]` for queries that follow `K - T` cached keys.
fn causal_bias<B: Backend>(queries: usize, keys: usize) -> Tensor<B, 4> {
    let offset = keys - queries;
    let values: Vec<f32> = (0..queries * keys)
        .map(|i| {
            if i % keys > i / keys + offset {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_data(
        TensorData::new(values, [1, 1, queries, keys]),
        &Default::default(),
    )
}

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    heads: usize,
    groups: usize,
    queries: usize,
    keys: usize,
    head_size: usize,
}

fn cases(rng: &mut ChaCha8Rng) -> Vec<Case> {
    let mut cases = vec![
        // the 6M model's layer at a short length, and a length past one query block
        Case {
            batch: 2,
            heads: 4,
            groups: 4,
            queries: 16,
            keys: 16,
            head_size: 64,
        },
        Case {
            batch: 1,
            heads: 2,
            groups: 1,
            queries: 300,
            keys: 300,
            head_size: 8,
        },
    ];
    for _ in 0..6 {
        let groups = rng.random_range(1..4);
        let queries = rng.random_range(1..40);
        cases.push(Case {
            batch: rng.random_range(1..4),
            heads: groups * rng.random_range(1..4),
            groups,
            queries,
            keys: queries + rng.random_range(0..5),
            head_size: rng.random_range(1..20),
        });
    }
    cases
}

/// q/k/v as strided views of one fused tensor, as the model makes them.
fn qkv<B: Backend>(c: Case, rng: &mut ChaCha8Rng) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let per_group = c.heads / c.groups;
    let q = random::<B, 5>([c.batch, c.queries, c.groups, per_group, c.head_size], rng)
        .reshape([c.batch, c.queries, c.heads, c.head_size])
        .swap_dims(1, 2);
    let fused = random::<B, 5>([c.batch, c.keys, c.groups, 2, c.head_size], rng);
    let k = fused
        .clone()
        .narrow(3, 0, 1)
        .reshape([c.batch, c.keys, c.groups, c.head_size])
        .swap_dims(1, 2);
    let v = fused
        .narrow(3, 1, 1)
        .reshape([c.batch, c.keys, c.groups, c.head_size])
        .swap_dims(1, 2);
    (q, k, v)
}

#[test]
fn attention_forward_matches_the_composition() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for c in cases(&mut rng) {
        let (q, k, v) = qkv::<Flex>(c, &mut rng);
        let scale = 1.0 / (c.head_size as f64).sqrt();
        let biases = [
            None,
            Some(causal_bias::<Flex>(c.queries, c.keys)),
            Some(random::<Flex, 4>([c.batch, 1, c.queries, c.keys], &mut rng)),
            Some(random::<Flex, 4>([1, c.heads, c.queries, c.keys], &mut rng)),
        ];
        for bias in biases {
            let fused = Flex::attention(q.clone(), k.clone(), v.clone(), bias.clone(), scale);
            // the kernel writes [B, T, H, D] contiguous; the composition returns a transposed view
            let primitive = fused.clone().into_primitive().tensor();
            assert!(primitive.is_contiguous(), "the fused kernel ran");
            let want = composed::attention(q.clone(), k.clone(), v.clone(), bias, scale);
            assert_eq!(fused.dims(), [c.batch, c.queries, c.heads, c.head_size]);
            assert_close(
                &format!("attention {c:?}"),
                &values(fused),
                &values(want),
                2e-5,
            );
        }
    }
}

/// The gradients of `sum(out * weights)` for every input, fused and composed.
fn attention_grads(c: Case, fused: bool, seed: u64, bias: bool) -> (Vec<f32>, [Vec<f32>; 3]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (q, k, v) = qkv::<Ad>(c, &mut rng);
    let (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
    let bias = bias.then(|| causal_bias::<Ad>(c.queries, c.keys));
    let weights = random::<Ad, 4>([c.batch, c.queries, c.heads, c.head_size], &mut rng);
    let scale = 1.0 / (c.head_size as f64).sqrt();
    let out = if fused {
        Ad::attention(q.clone(), k.clone(), v.clone(), bias, scale)
    } else {
        composed::attention(q.clone(), k.clone(), v.clone(), bias, scale)
    };
    let grads = (out.clone() * weights).sum().backward();
    let grad = |t: &Tensor<Ad, 4>| values(t.grad(&grads).expect("a gradient"));
    (values(out), [grad(&q), grad(&k), grad(&v)])
}

#[test]
fn attention_gradients_match_the_composition() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (i, c) in cases(&mut rng).into_iter().enumerate() {
        for bias in [false, true] {
            let (out, fused) = attention_grads(c, true, i as u64, bias);
            let (want_out, composed) = attention_grads(c, false, i as u64, bias);
            assert_close("attention output under autodiff", &out, &want_out, 2e-5);
            for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(fused.iter().zip(&composed)) {
                assert_close(&format!("{name} {c:?} bias {bias}"), g, w, 5e-5);
            }
        }
    }
}

fn targets<B: Backend>(rows: usize, vocab: usize, rng: &mut ChaCha8Rng) -> Tensor<B, 1, Int> {
    let ids: Vec<i64> = (0..rows)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect();
    Tensor::from_data(TensorData::new(ids, [rows]), &Default::default())
}

#[test]
fn cross_entropy_matches_the_composition_with_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (rows, vocab) in [(1, 1), (3, 7), (17, 1000), (40, 33)] {
        let logits = random::<Flex, 2>([rows, vocab], &mut rng) * 4.0;
        let ids = targets::<Flex>(rows, vocab, &mut rng);
        let fused = Flex::cross_entropy(logits.clone(), ids.clone());
        let want = composed::cross_entropy(logits.clone(), ids.clone());
        assert_close("cross-entropy", &values(fused), &values(want), 1e-5);

        let weights = random::<Ad, 1>([rows], &mut rng);
        let grads = |fused: bool| {
            let logits =
                Tensor::<Ad, 2>::from_data(logits.to_data(), &Default::default()).require_grad();
            let ids = Tensor::<Ad, 1, Int>::from_data(ids.to_data(), &Default::default());
            let loss = if fused {
                Ad::cross_entropy(logits.clone(), ids)
            } else {
                composed::cross_entropy(logits.clone(), ids)
            };
            let g = (loss * weights.clone()).sum().backward();
            values(logits.grad(&g).unwrap())
        };
        assert_close("d logits", &grads(true), &grads(false), 1e-5);
    }
}

#[test]
fn rms_norm_matches_the_composition_with_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (batch, len, width) in [(1, 1, 1), (2, 5, 7), (3, 33, 256)] {
        let x = random::<Flex, 3>([batch, len, width], &mut rng);
        let gain = random::<Flex, 1>([width], &mut rng);
        let fused = Flex::rms_norm(x.clone(), gain.clone(), 1e-5);
        let want = composed::rms_norm(x.clone(), gain.clone(), 1e-5);
        assert_close("rms norm", &values(fused), &values(want), 1e-5);
        // a strided input: the transpose of a [len, batch, width] tensor
        let strided = random::<Flex, 3>([len, batch, width], &mut rng).swap_dims(0, 1);
        assert_close(
            "rms norm, strided",
            &values(Flex::rms_norm(strided.clone(), gain.clone(), 1e-5)),
            &values(composed::rms_norm(strided, gain.clone(), 1e-5)),
            1e-5,
        );

        let weights = random::<Ad, 3>([batch, len, width], &mut rng);
        let grads = |fused: bool| {
            let x = Tensor::<Ad, 3>::from_data(x.to_data(), &Default::default()).require_grad();
            let g = Tensor::<Ad, 1>::from_data(gain.to_data(), &Default::default()).require_grad();
            let y = if fused {
                Ad::rms_norm(x.clone(), g.clone(), 1e-5)
            } else {
                composed::rms_norm(x.clone(), g.clone(), 1e-5)
            };
            let grads = (y * weights.clone()).sum().backward();
            (
                values(x.grad(&grads).unwrap()),
                values(g.grad(&grads).unwrap()),
            )
        };
        let ((dx, dg), (want_dx, want_dg)) = (grads(true), grads(false));
        assert_close("rms norm dx", &dx, &want_dx, 1e-4);
        assert_close("rms norm d gain", &dg, &want_dg, 1e-4);
    }
}

#[test]
fn swiglu_matches_the_composition_with_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for shape in [[1, 1, 1], [2, 3, 5], [4, 64, 1024]] {
        let gate = random::<Flex, 3>(shape, &mut rng) * 5.0;
        let up = random::<Flex, 3>(shape, &mut rng);
        assert_close(
            "swiglu",
            &values(Flex::swiglu(gate.clone(), up.clone())),
            &values(composed::swiglu(gate.clone(), up.clone())),
            1e-5,
        );
        let weights = random::<Ad, 3>(shape, &mut rng);
        let grads = |fused: bool| {
            let a = Tensor::<Ad, 3>::from_data(gate.to_data(), &Default::default()).require_grad();
            let b = Tensor::<Ad, 3>::from_data(up.to_data(), &Default::default()).require_grad();
            let y = if fused {
                Ad::swiglu(a.clone(), b.clone())
            } else {
                composed::swiglu(a.clone(), b.clone())
            };
            let g = (y * weights.clone()).sum().backward();
            (values(a.grad(&g).unwrap()), values(b.grad(&g).unwrap()))
        };
        let ((da, db), (want_da, want_db)) = (grads(true), grads(false));
        assert_close("swiglu d gate", &da, &want_da, 1e-5);
        assert_close("swiglu d up", &db, &want_db, 1e-5);
    }
}

/// A RoPE pairing of `features`: the halves of each head of `head` features swapped in the first
/// `rotated` heads, the rest paired with themselves (values).
fn rope_perm(features: usize, head: usize, rotated: usize) -> Vec<i64> {
    (0..features)
        .map(|f| {
            let (h, j) = (f / head, f % head);
            let half = head / 2;
            if h < rotated && half > 0 && j < 2 * half {
                (h * head + (j + half) % (2 * half)) as i64
            } else {
                f as i64
            }
        })
        .collect()
}

#[test]
fn rope_matches_the_composition_with_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (batch, len, head, heads) in [(1, 1, 2, 3), (2, 7, 8, 6), (3, 33, 64, 6), (1, 5, 5, 3)] {
        let features = head * heads;
        let shape = [batch, len, features];
        let x = random::<Flex, 3>(shape, &mut rng);
        let cos = random::<Flex, 3>(shape, &mut rng);
        let sin = random::<Flex, 3>(shape, &mut rng);
        let perm = Tensor::<Flex, 1, Int>::from_data(
            TensorData::new(rope_perm(features, head, heads - 1), [features]),
            &Default::default(),
        );
        let fused = Flex::rope(x.clone(), cos.clone(), sin.clone(), perm.clone());
        let want = composed::rope(x.clone(), cos.clone(), sin.clone(), perm.clone());
        // the composition's arithmetic, rounding for rounding
        assert_close("rope", &values(fused), &values(want), 0.0);

        let weights = random::<Ad, 3>(shape, &mut rng);
        let grads = |fused: bool| {
            let device = Default::default();
            let x = Tensor::<Ad, 3>::from_data(x.to_data(), &device).require_grad();
            let cos = Tensor::<Ad, 3>::from_data(cos.to_data(), &device);
            let sin = Tensor::<Ad, 3>::from_data(sin.to_data(), &device);
            let perm = Tensor::<Ad, 1, Int>::from_data(perm.to_data(), &device);
            let y = if fused {
                Ad::rope(x.clone(), cos, sin, perm)
            } else {
                composed::rope(x.clone(), cos, sin, perm)
            };
            let g = (y * weights.clone()).sum().backward();
            values(x.grad(&g).unwrap())
        };
        assert_close("rope dx", &grads(true), &grads(false), 1e-6);
    }
}

#[test]
fn half_precision_takes_the_composition() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x = random::<Flex, 2>([3, 8], &mut rng);
    let gain = random::<Flex, 1>([8], &mut rng);
    let bf16 = burn::tensor::FloatDType::BF16;
    let (half, half_gain) = (x.clone().cast(bf16), gain.clone().cast(bf16));
    let y = Flex::rms_norm(half.clone(), half_gain.clone(), 1e-5);
    assert_eq!(y.dtype(), burn::tensor::DType::BF16);
    assert_close(
        "bf16 rms norm",
        &values(y),
        &values(composed::rms_norm(half, half_gain, 1e-5)),
        0.0,
    );
    let q = Tensor::<Flex, 4>::random([1, 2, 3, 4], Distribution::Default, &Default::default());
    let out = Flex::attention(q.clone(), q.clone(), q, None, 0.5);
    assert_eq!(out.dims(), [1, 3, 2, 4]);
}

#[test]
fn packed_linear_matches_the_dense_product_of_its_widened_weights() {
    use mdm_kernels::quant::GgmlType;
    use mdm_kernels::PackedMatrix;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // 3 x 5 activations, 131 output features (two full panels and an odd one), 512 inputs
    let (rows, cols) = (131, 512);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x = random::<Flex, 3>([3, 5, cols], &mut rng);
    for dtype in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q8_0,
        GgmlType::Q4K,
    ] {
        let packed = PackedMatrix::quantize(dtype, rows, cols, &w).unwrap();
        let fused = Flex::linear_packed(x.clone(), &packed);
        assert_eq!(fused.dims(), [3, 5, rows]);
        let dense = Tensor::<Flex, 2>::from_data(
            TensorData::new(packed.to_f32(), [rows, cols]),
            &Default::default(),
        );
        let want = x.clone().matmul(dense.transpose().unsqueeze::<3>());
        // quantized weights multiply quantized activations (integer dot products): off by at most
        // half an activation step per value, about 1 % of the largest output here; the others
        // multiply f32 activations
        let tolerance = if mdm_kernels::cpu::qdot::path().is_some()
            && mdm_kernels::cpu::qdot::supports(dtype)
        {
            1e-2
        } else {
            1e-5
        };
        assert_close(dtype.name(), &values(fused), &values(want), tolerance);
        let composed = composed::linear_packed(x.clone(), &packed);
        assert_close(
            dtype.name(),
            &values(composed),
            &values(
                x.clone().matmul(
                    Tensor::<Flex, 2>::from_data(
                        TensorData::new(packed.to_f32(), [rows, cols]),
                        &Default::default(),
                    )
                    .transpose()
                    .unsqueeze::<3>(),
                ),
            ),
            1e-5,
        );
    }
}

/// Requantizing a packed matrix chunk by chunk gives the bytes of quantizing its whole widened
/// copy (rows over several chunks: 700 rows of 256 make three chunks of 257).
#[test]
fn requantized_chunk_by_chunk_equals_quantized_whole() {
    use mdm_kernels::quant::GgmlType;
    use mdm_kernels::PackedMatrix;
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (rows, cols) = (700, 256);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    for from in [GgmlType::Bf16, GgmlType::F16, GgmlType::F32] {
        let stored = PackedMatrix::quantize(from, rows, cols, &w).unwrap();
        for to in [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::F16] {
            let chunked = stored.requantize(to).unwrap();
            let whole = PackedMatrix::quantize(to, rows, cols, &stored.to_f32()).unwrap();
            assert_eq!(
                chunked.bytes(),
                whole.bytes(),
                "{} -> {}",
                from.name(),
                to.name()
            );
            assert_eq!((chunked.rows(), chunked.cols()), (rows, cols));
        }
    }
}
