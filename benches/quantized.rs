//! `y = x W^T` with packed weights on the CPU, at the 0.82 B LLaDA's FFN shape (`W` 5632 x 2048,
//! 128 activation rows, and 32 rows: a window pass): each quantized type on every integer-kernel
//! path this CPU has (`portable` is left out: it is the reference, not a speed path), the f32,
//! f16 and bf16 matrices on the float kernels (widened in registers), then every type widened to
//! f32 panels and multiplied by `gemm` (`widened`).
//!
//! `cargo bench --bench quantized`; throughput is multiply-adds per second (read Gelem/s as
//! GMAC/s). Results in docs/benchmarks.md with the machine's instruction set.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mdm::kernels::cpu::{fdot, packed, qdot};
use mdm::kernels::quant::GgmlType;
use mdm::kernels::PackedMatrix;

fn benches(c: &mut Criterion) {
    let (n, k) = (5632usize, 2048usize);
    // fixed pseudo-random values in [-1, 1): no RNG needed for a speed measurement
    let value = |i: usize, p: usize| ((i * p) % 1000) as f32 / 500.0 - 1.0;
    let w: Vec<f32> = (0..n * k).map(|i| value(i, 7919)).collect();
    for m in [128usize, 32] {
        let x: Vec<f32> = (0..m * k).map(|i| value(i, 104_729)).collect();
        let mut group = c.benchmark_group(format!("quantized matmul {m} x {k} x {n}"));
        group
            .throughput(Throughput::Elements((m * n * k) as u64))
            .sample_size(10)
            .measurement_time(Duration::from_secs(5));
        mdm::kernels::set_quantized_product(mdm::kernels::QuantizedProduct::Integer);
        for dtype in [GgmlType::Q8_0, GgmlType::Q4K] {
            let q = PackedMatrix::quantize(dtype, n, k, &w).expect("quantize");
            for path in qdot::available()
                .into_iter()
                .filter(|&p| p != qdot::Path::Portable)
            {
                group.bench_function(format!("{} {path:?}", dtype.name()), |b| {
                    b.iter(|| qdot::matmul_on(path, &x, m, &q))
                });
            }
        }
        // the float kernels: weights widened in registers ([`fdot`])
        for dtype in [GgmlType::F32, GgmlType::F16, GgmlType::Bf16] {
            let q = PackedMatrix::quantize(dtype, n, k, &w).expect("convert");
            for path in qdot::available()
                .into_iter()
                .filter(|&p| p != qdot::Path::Portable && p != qdot::Path::Avx512Vnni)
            {
                group.bench_function(format!("{} {path:?}", dtype.name()), |b| {
                    b.iter(|| fdot::matmul_on(path, &x, m, &q))
                });
            }
        }
        // every type widened to f32 panels and multiplied by `gemm`
        mdm::kernels::set_quantized_product(mdm::kernels::QuantizedProduct::Widened);
        for dtype in [
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Bf16,
        ] {
            let q = PackedMatrix::quantize(dtype, n, k, &w).expect("quantize");
            group.bench_function(format!("{} widened", dtype.name()), |b| {
                b.iter(|| packed::matmul(&x, m, &q))
            });
        }
        group.finish();
    }
}

criterion_group!(quantized_benches, benches);
criterion_main!(quantized_benches);
