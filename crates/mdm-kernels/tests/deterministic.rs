//! Every fused kernel, forward and backward, gives the same bits whatever the number of threads it
//! runs on: each is run inside rayon pools of 1, 2, 3 and 8 threads, and at a size where it splits
//! its work over many tasks (attention: 3 x 4 batch x group tasks and several query blocks; the
//! norm, the loss, RoPE and SwiGLU: many more rows or elements than one task takes). A kernel whose
//! split or reduction order followed the pool (rayon's `fold` + `reduce`, a chunk size derived from
//! the thread count) would differ between these pools.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use mdm_kernels::Kernels;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Ad = Autodiff<Flex>;

/// The pool sizes every kernel runs under.
const POOLS: [usize; 4] = [1, 2, 3, 8];

fn random<const D: usize>(shape: [usize; D], rng: &mut ChaCha8Rng) -> Tensor<Ad, D> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default()).require_grad()
}

fn bits<const D: usize>(t: Tensor<Flex, D>) -> Vec<u32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("f32 values")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Runs `kernel` (which returns the output and the gradient of every input, as bits) in each pool
/// of [`POOLS`] and asserts they all agree with the first.
fn same_bits_in_every_pool(name: &str, kernel: impl Fn() -> Vec<Vec<u32>> + Sync) {
    let mut first: Option<Vec<Vec<u32>>> = None;
    for threads in POOLS {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a rayon pool");
        // several runs in the same pool too: stealing differs from run to run
        for _ in 0..3 {
            let got = pool.install(&kernel);
            match &first {
                None => first = Some(got),
                Some(want) => {
                    for (i, (g, w)) in got.iter().zip(want).enumerate() {
                        let differ = g.iter().zip(w).filter(|(a, b)| a != b).count();
                        assert_eq!(
                            differ, 0,
                            "{name}: tensor {i} (0: output, then the inputs' gradients) differs in \
                             {differ} of {} values on {threads} threads",
                            w.len()
                        );
                    }
                }
            }
        }
    }
}

/// The output and its inputs' gradients for the objective `sum(out * weights)`.
fn output_and_grads<const D: usize, const E: usize>(
    out: Tensor<Ad, D>,
    weights: Tensor<Ad, D>,
    inputs: &[Tensor<Ad, E>],
) -> Vec<Vec<u32>> {
    let grads = (out.clone() * weights.detach()).sum().backward();
    let mut all = vec![bits(out.inner())];
    for x in inputs {
        all.push(bits(x.grad(&grads).expect("a gradient for every input")));
    }
    all
}

#[test]
fn attention_is_bitwise_reproducible_across_pools() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // 3 x 4 (batch, group) tasks, 8 heads in groups of 2, 300 queries: three query blocks
    let (b, h, g, t, d) = (3, 8, 4, 300, 16);
    let (q, k, v) = (
        random([b, h, t, d], &mut rng),
        random([b, g, t, d], &mut rng),
        random([b, g, t, d], &mut rng),
    );
    let weights = random([b, t, h, d], &mut rng);
    same_bits_in_every_pool("attention", || {
        let (q, k, v) = (q.clone(), k.clone(), v.clone());
        let out = Ad::attention(q.clone(), k.clone(), v.clone(), None, 0.25);
        output_and_grads(out, weights.clone(), &[q, k, v])
    });
}

#[test]
fn rms_norm_and_its_gain_gradient_are_bitwise_reproducible_across_pools() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // 1,000 rows: many blocks of rows, each a partial sum of the gain's gradient
    let (x, gain) = (random([4, 250, 96], &mut rng), random([96], &mut rng));
    let weights = random([4, 250, 96], &mut rng);
    same_bits_in_every_pool("rms_norm", || {
        let out = Ad::rms_norm(x.clone(), gain.clone(), 1e-5);
        let grads = (out.clone() * weights.clone().detach()).sum().backward();
        vec![
            bits(out.inner()),
            bits(x.grad(&grads).expect("x's gradient")),
            bits(gain.grad(&grads).expect("the gain's gradient")),
        ]
    });
}

#[test]
fn cross_entropy_is_bitwise_reproducible_across_pools() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (rows, vocab) = (600, 301);
    let logits = random([rows, vocab], &mut rng);
    let targets: Vec<i64> = (0..rows)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect();
    let targets =
        Tensor::<Ad, 1, Int>::from_data(TensorData::new(targets, [rows]), &Default::default());
    let weights = random([rows], &mut rng);
    same_bits_in_every_pool("cross_entropy", || {
        let out = Ad::cross_entropy(logits.clone(), targets.clone());
        output_and_grads(out, weights.clone(), std::slice::from_ref(&logits))
    });
}

#[test]
fn swiglu_and_rope_are_bitwise_reproducible_across_pools() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (gate, up) = (
        random([5, 200, 176], &mut rng),
        random([5, 200, 176], &mut rng),
    );
    let weights = random([5, 200, 176], &mut rng);
    same_bits_in_every_pool("swiglu", || {
        let out = Ad::swiglu(gate.clone(), up.clone());
        output_and_grads(out, weights.clone(), &[gate.clone(), up.clone()])
    });

    let (batch, len, features) = (4, 130, 48);
    let x = random([batch, len, features], &mut rng);
    let cos = random([batch, len, features], &mut rng).detach();
    let sin = random([batch, len, features], &mut rng).detach();
    // pairs feature f with f ^ 1 (a permutation that is its own inverse)
    let perm: Vec<i64> = (0..features as i64).map(|f| f ^ 1).collect();
    let perm =
        Tensor::<Ad, 1, Int>::from_data(TensorData::new(perm, [features]), &Default::default());
    let weights = random([batch, len, features], &mut rng);
    same_bits_in_every_pool("rope", || {
        let out = Ad::rope(x.clone(), cos.clone(), sin.clone(), perm.clone());
        output_and_grads(out, weights.clone(), std::slice::from_ref(&x))
    });
}

#[test]
fn packed_linear_is_bitwise_reproducible_across_pools() {
    use mdm_kernels::quant::GgmlType;
    use mdm_kernels::PackedMatrix;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (rows, cols) = (300, 256);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x: Tensor<Flex, 2> = random([17, cols], &mut rng).inner();
    // the integer kernels' types and the float kernels'
    const TYPES: [GgmlType; 5] = [
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
    ];
    for dtype in TYPES {
        let packed = PackedMatrix::quantize(dtype, rows, cols, &w).unwrap();
        same_bits_in_every_pool(dtype.name(), || {
            vec![bits(Flex::linear_packed(x.clone(), &packed))]
        });
    }
    // every integer- and float-kernel path this CPU has, the portable one included: the same
    // bits in every pool and on every path
    let values = x.into_data().to_vec::<f32>().unwrap();
    for dtype in TYPES {
        let packed = PackedMatrix::quantize(dtype, rows, cols, &w).unwrap();
        let mut first: Option<Vec<u32>> = None;
        for path in mdm_kernels::cpu::qdot::available() {
            let run = || {
                let y = mdm_kernels::cpu::qdot::matmul_on(path, &values, 17, &packed)
                    .or_else(|| mdm_kernels::cpu::fdot::matmul_on(path, &values, 17, &packed))
                    .unwrap();
                vec![y.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()]
            };
            same_bits_in_every_pool(&format!("{} {path:?}", dtype.name()), run);
            let got = run().remove(0);
            assert_eq!(first.get_or_insert_with(|| got.clone()), &got, "{path:?}");
        }
    }
}
