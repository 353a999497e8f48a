//! Training throughput of one imaging hospital (SYNTHETIC images, all
//! threads) for the `small` CNN at 64x64 and ResNet-18 at 64x64 and
//! 128x128: plain mini-batch training at batch 32, and DP-SGD (each
//! Poisson-sampled image's gradient clipped — rows for `small`, ghost
//! clipping for ResNet-18 — summed, noised, then the optimiser's step).
//! The `small` lines keep their names (`cnn training 64x64: N images/s`).
//! Reported as images/s and as nominal GFLOP/s (3x the forward pass's)
//! relative to a plain candle f32 matmul measured in the same run — the
//! practical ceiling of this CPU. `scripts/imaging_speed.py` runs this
//! bench and PyTorch on the same network and prints the ratios.

use std::hint::black_box;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use criterion::{Criterion, Throughput};

use medfed_models::data::images::synth::{generate, SynthSpec};
use medfed_models::learner::cnn::{Arch, CnnConfig, CnnLearner};
use medfed_models::learner::logistic::LocalDp;
use medfed_models::learner::{DpLearner, GlobalModel, Learner, TrainPlan};
use medfed_models::privacy::mechanisms::NoiseSource;

const MATMUL: usize = 512;

mod support;
use support::{mean_ns, output_dir};

/// One network's benches: plain training (batch 32) over `images`, and
/// DP-SGD (`steps` steps sampling 1/`steps` of them: `images` expected).
struct Case {
    /// Printed label and bench-name prefix.
    label: &'static str,
    config: CnnConfig,
    images: usize,
    steps: u64,
}

fn plan() -> TrainPlan {
    TrainPlan {
        round: 1,
        attempt: 0,
        local_epochs: 1,
        batch_size: 32,
        learning_rate: 0.003,
        l2: 1e-4,
        seed: 1,
        proximal_mu: 0.0,
        privacy: None,
    }
}

fn bench_case(c: &mut Criterion, case: &Case) {
    let config = case.config;
    let images = generate(&SynthSpec {
        count: case.images,
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
    let mut private = CnnLearner::new("bench-dp", images, config)
        .expect("sizes match")
        .with_privacy(
            LocalDp::DpSgd {
                sampling_rate: 1.0 / case.steps as f64,
                max_grad_norm: 1.0,
                noise_multiplier: 1.0,
                local_steps: case.steps,
            },
            NoiseSource::seeded(1),
        )
        .expect("valid DP settings");
    let mut group = c.benchmark_group("cnn");
    group.sample_size(10);
    group.throughput(Throughput::Elements(case.images as u64));
    let id = case.label.replace(' ', "_");
    group.bench_function(format!("{id}_train"), |bench| {
        bench.iter(|| black_box(learner.train(&global, &plan()).expect("trains")))
    });
    group.bench_function(format!("{id}_dp_sgd"), |bench| {
        bench.iter(|| {
            black_box(
                private
                    .train_private(&global, &plan(), Some(case.images as u64))
                    .expect("trains"),
            )
        })
    });
    group.finish();
}

fn main() {
    // As the medfed binary runs (src/allocator.rs says why).
    let kept = medfed::allocator::keep_freed_memory();
    eprintln!("allocator: freed memory kept in the process: {kept}");
    let dir = output_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    let resnet = |size| CnnConfig {
        arch: Arch::Resnet18,
        size,
        ..CnnConfig::default()
    };
    let cases = [
        // 64x64, channels [8, 16, 32]
        Case {
            label: "cnn 64x64",
            config: CnnConfig::default(),
            images: 256,
            steps: 8,
        },
        Case {
            label: "resnet18 64x64",
            config: resnet(64),
            images: 64,
            steps: 2,
        },
        Case {
            label: "resnet18 128x128",
            config: resnet(128),
            images: 32,
            steps: 1,
        },
    ];
    for case in &cases {
        bench_case(&mut c, case);
    }
    let a = Tensor::randn(0f32, 1.0, (MATMUL, MATMUL), &Device::Cpu).expect("cpu tensor");
    let b = Tensor::randn(0f32, 1.0, (MATMUL, MATMUL), &Device::Cpu).expect("cpu tensor");
    let mut group = c.benchmark_group("cnn");
    group.sample_size(10);
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
    for case in &cases {
        let flops = case.config.training_flops_per_image();
        let id = case.label.replace(' ', "_");
        let (model, size) = case.label.split_once(' ').expect("a label of model and size");
        for (what, bench) in [("training", "train"), ("dp-sgd", "dp_sgd")] {
            if let Some(ns) = mean_ns(&dir, "cnn", &format!("{id}_{bench}")) {
                let images_per_s = case.images as f64 / (ns / 1e9);
                let gflops = flops * case.images as f64 / ns;
                println!(
                    "{model} {what} {size}: {images_per_s:.0} images/s, {gflops:.2} GFLOP/s ({:.1} MFLOP/image); \
                     candle matmul {MATMUL}: {matmul_gflops:.2} GFLOP/s; ratio {:.3}",
                    flops / 1e6,
                    gflops / matmul_gflops
                );
            }
        }
    }
}
