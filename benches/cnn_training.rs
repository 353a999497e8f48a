//! Training throughput of one imaging hospital (the `small` CNN on 64x64
//! SYNTHETIC images, all threads): plain mini-batch training at batch 32,
//! and DP-SGD (per-example gradients of the Poisson-sampled images in one
//! batched pass, clipped, summed, noised, then the optimiser's step).
//! Reported as images/s and as nominal GFLOP/s (3x the forward pass's)
//! relative to a plain candle f32 matmul measured in the same run — the
//! practical ceiling of this CPU. `scripts/imaging_speed.py` runs this
//! bench and PyTorch on the same network and prints the ratios.

use std::hint::black_box;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use criterion::{Criterion, Throughput};

use medfed_models::data::images::synth::{generate, SynthSpec};
use medfed_models::learner::cnn::{CnnConfig, CnnLearner};
use medfed_models::learner::logistic::LocalDp;
use medfed_models::learner::{DpLearner, GlobalModel, Learner, TrainPlan};
use medfed_models::privacy::mechanisms::NoiseSource;

const IMAGES: usize = 256;
const MATMUL: usize = 512;
/// DP-SGD: 8 steps sampling 1/8 of the 256 images each: 256 images expected.
const DP_STEPS: u64 = 8;

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
    let mut learner = CnnLearner::new("bench", images.clone(), config).expect("sizes match");
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
    let mut private = CnnLearner::new("bench-dp", images, config)
        .expect("sizes match")
        .with_privacy(
            LocalDp::DpSgd {
                sampling_rate: 1.0 / DP_STEPS as f64,
                max_grad_norm: 1.0,
                noise_multiplier: 1.0,
                local_steps: DP_STEPS,
            },
            NoiseSource::seeded(1),
        )
        .expect("valid DP settings");
    let a = Tensor::randn(0f32, 1.0, (MATMUL, MATMUL), &Device::Cpu).expect("cpu tensor");
    let b = Tensor::randn(0f32, 1.0, (MATMUL, MATMUL), &Device::Cpu).expect("cpu tensor");

    let mut group = c.benchmark_group("cnn");
    group.sample_size(10);
    group.throughput(Throughput::Elements(IMAGES as u64));
    group.bench_function("train_epoch_64x64", |bench| {
        bench.iter(|| black_box(learner.train(&global, &plan).expect("trains")))
    });
    group.bench_function("dp_sgd_64x64", |bench| {
        bench.iter(|| {
            black_box(
                private
                    .train_private(&global, &plan, Some(IMAGES as u64))
                    .expect("trains"),
            )
        })
    });
    group.throughput(Throughput::Elements((2 * MATMUL * MATMUL * MATMUL) as u64));
    group.bench_function("matmul_512", |bench| {
        bench.iter(|| black_box(a.matmul(&b).expect("square matmul")))
    });
    group.finish();
    c.final_summary();

    let Some(mm) = mean_ns(&dir, "cnn", "matmul_512") else {
        return;
    };
    let matmul_gflops = 2.0 * (MATMUL as f64).powi(3) / mm;
    let flops = config.training_flops_per_image();
    let report = |label: &str, bench: &str| {
        if let Some(ns) = mean_ns(&dir, "cnn", bench) {
            let images_per_s = IMAGES as f64 / (ns / 1e9);
            let gflops = flops * IMAGES as f64 / ns;
            println!(
                "{label}: {images_per_s:.0} images/s, {gflops:.2} GFLOP/s ({:.1} MFLOP/image); \
                 candle matmul {MATMUL}: {matmul_gflops:.2} GFLOP/s; ratio {:.3}",
                flops / 1e6,
                gflops / matmul_gflops
            );
        }
    };
    report("cnn training 64x64", "train_epoch_64x64");
    report("cnn dp-sgd 64x64", "dp_sgd_64x64");
}
