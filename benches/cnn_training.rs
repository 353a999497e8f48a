//! Training throughput of one imaging hospital (the candle CNN on 64x64
//! SYNTHETIC images), reported as images/s and as achieved GFLOP/s relative
//! to a plain candle f32 matmul measured in the same run — the practical
//! ceiling of this CPU through the same library. Also: the same training
//! with batches of one image, which is what per-example gradients (DP-SGD)
//! would cost with candle, since it has no vectorised per-example gradients.

use std::hint::black_box;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use criterion::{Criterion, Throughput};

use medfed_models::data::images::synth::{generate, SynthSpec};
use medfed_models::learner::cnn::{CnnConfig, CnnLearner};
use medfed_models::learner::{GlobalModel, Learner, TrainPlan};

const IMAGES: usize = 256;
const MATMUL: usize = 512;
const PER_EXAMPLE_IMAGES: usize = 64;

mod support;
use support::{mean_ns, output_dir};

fn main() {
    let dir = output_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    let config = CnnConfig::default(); // 64x64, channels [8, 16, 32]
    let images = generate(&SynthSpec {
        count: IMAGES,
        size: config.size,
        seed: 1,
        pneumonia_share: 0.5,
    })
    .expect("valid spec");
    let mut learner = CnnLearner::new("bench", images, config).expect("sizes match");
    let global = GlobalModel {
        params: Arc::new(config.init_params(1)),
        standardizer: None,
    };
    let plan = TrainPlan {
        round: 1,
        attempt: 0,
        local_epochs: 1,
        batch_size: 32,
        learning_rate: 0.003,
        l2: 1e-4,
        seed: 1,
        proximal_mu: 0.0,
        privacy: None,
    };
    let a = Tensor::randn(0f32, 1.0, (MATMUL, MATMUL), &Device::Cpu).expect("cpu tensor");
    let b = Tensor::randn(0f32, 1.0, (MATMUL, MATMUL), &Device::Cpu).expect("cpu tensor");

    let mut group = c.benchmark_group("cnn");
    group.sample_size(10);
    group.throughput(Throughput::Elements(IMAGES as u64));
    group.bench_function("train_epoch_64x64", |bench| {
        bench.iter(|| black_box(learner.train(&global, &plan).expect("trains")))
    });
    let per_example = TrainPlan {
        batch_size: 1,
        ..plan.clone()
    };
    let mut small = CnnLearner::new(
        "bench-per-example",
        generate(&SynthSpec {
            count: PER_EXAMPLE_IMAGES,
            size: config.size,
            seed: 2,
            pneumonia_share: 0.5,
        })
        .expect("valid spec"),
        config,
    )
    .expect("sizes match");
    group.throughput(Throughput::Elements(PER_EXAMPLE_IMAGES as u64));
    group.bench_function("train_per_example_64x64", |bench| {
        bench.iter(|| black_box(small.train(&global, &per_example).expect("trains")))
    });
    group.throughput(Throughput::Elements((2 * MATMUL * MATMUL * MATMUL) as u64));
    group.bench_function("matmul_512", |bench| {
        bench.iter(|| black_box(a.matmul(&b).expect("square matmul")))
    });
    group.finish();
    c.final_summary();

    if let (Some(epoch), Some(mm)) = (
        mean_ns(&dir, "cnn", "train_epoch_64x64"),
        mean_ns(&dir, "cnn", "matmul_512"),
    ) {
        let images_per_s = IMAGES as f64 / (epoch / 1e9);
        let train_gflops = config.training_flops_per_image() * IMAGES as f64 / epoch;
        let matmul_gflops = 2.0 * (MATMUL as f64).powi(3) / mm;
        println!(
            "cnn training 64x64: {images_per_s:.0} images/s, {train_gflops:.2} GFLOP/s \
             ({:.1} MFLOP/image); candle matmul {MATMUL}: {matmul_gflops:.2} GFLOP/s; ratio {:.3}",
            config.training_flops_per_image() / 1e6,
            train_gflops / matmul_gflops
        );
        if let Some(single) = mean_ns(&dir, "cnn", "train_per_example_64x64") {
            let single_per_s = PER_EXAMPLE_IMAGES as f64 / (single / 1e9);
            println!(
                "per-example gradients (batches of 1, as DP-SGD would need): {single_per_s:.0} images/s, \
                 {:.1}x slower than batches of 32",
                images_per_s / single_per_s
            );
        }
    }
}
