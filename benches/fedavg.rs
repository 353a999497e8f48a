//! FedAvg over many updates of a large parameter vector, reported as a ratio
//! against memcpy bandwidth measured in the same run.
//!
//! Both are expressed as memory traffic per second: memcpy reads and writes
//! each byte once (2 x size); FedAvg reads K deltas plus the global model and
//! writes the result (K + 2 x size). A ratio of 1.0 means aggregation streams
//! at the machine's copy bandwidth.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};

use medfed_models::aggregate::{FedAvg, Strategy, WeightedDelta};
use medfed_models::{Layout, Params, TensorSpec};

const PARAMS: usize = 4 * 1024 * 1024; // 16 MiB of f32: far larger than any cache here
const UPDATES: usize = 8;

fn params(layout: &Arc<Layout>, seed: u32) -> Params {
    let values = (0..PARAMS)
        .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 * 1e-9)
        .collect();
    Params::new(layout.clone(), values).expect("layout fits")
}

mod support;
use support::{mean_ns, output_dir};

fn main() {
    let dir = output_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    let bytes = (PARAMS * 4) as u64;
    let layout = Arc::new(Layout::new(vec![TensorSpec::new("w", &[PARAMS])]).expect("one tensor"));
    let global = params(&layout, 0);
    let deltas: Vec<Params> = (1..=UPDATES as u32).map(|s| params(&layout, s)).collect();

    let mut group = c.benchmark_group("aggregation");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(2 * bytes));
    let src = global.as_slice().to_vec();
    let mut dst = vec![0.0f32; PARAMS];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    group.throughput(Throughput::Bytes((UPDATES as u64 + 2) * bytes));
    group.bench_function("fedavg", |b| {
        let updates: Vec<WeightedDelta<'_>> = deltas
            .iter()
            .enumerate()
            .map(|(i, d)| WeightedDelta {
                delta: d,
                num_examples: 100 + i,
            })
            .collect();
        b.iter(|| {
            black_box(
                FedAvg
                    .aggregate_train(1, black_box(&global), &updates)
                    .expect("same layout"),
            )
        })
    });
    group.finish();
    c.final_summary();

    if let (Some(copy), Some(avg)) = (
        mean_ns(&dir, "aggregation", "memcpy"),
        mean_ns(&dir, "aggregation", "fedavg"),
    ) {
        let copy_bw = 2.0 * bytes as f64 / copy; // bytes per ns = GB/s
        let avg_bw = (UPDATES as f64 + 2.0) * bytes as f64 / avg;
        println!(
            "fedavg of {UPDATES} x {} MiB updates: {:.2} ms, {avg_bw:.2} GB/s of traffic; memcpy {copy_bw:.2} GB/s; ratio {:.3}",
            bytes >> 20,
            avg / 1e6,
            avg_bw / copy_bw
        );
    }
}
