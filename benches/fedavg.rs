//! Aggregation of many updates of a real-size model, reported as a ratio
//! against memcpy bandwidth measured in the same run.
//!
//! Both are expressed as memory traffic per second: memcpy reads and writes
//! each byte once (2 x size); an aggregation reads K deltas plus the global
//! model and writes the result (K + 2 x size). A ratio of 1.0 means the
//! kernel streams at the machine's copy bandwidth. The reference copy is
//! from memory (`memcpy`: each copy takes the next of several source and
//! destination buffers, 256 MiB in all, so none is in the last-level
//! cache, as no update of a many-update aggregation is); a copy of one
//! buffer again and again (`memcpy_hot`) is printed too: at 16 MiB it runs
//! partly from a 32 MiB L3. FedAvg runs over 8 and
//! 100 updates of 16 and 64 MiB (`MEDFED_BENCH_SIZES=8x16,100x64` picks
//! others); the robust kernels (coordinate-wise median, trimmed mean, Krum's
//! pairwise distances) over 8 x 16 MiB. Each round's output is dropped
//! before the next, as the coordinator drops the global model before last,
//! so recycled buffers (`medfed_models::buffers`) are part of what is timed.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};

use medfed_models::aggregate::{FedAvg, Krum, Median, Strategy, TrimmedMean, WeightedDelta};
use medfed_models::{Layout, Params, TensorSpec};

mod support;
use support::{mean_ns, output_dir};

const MIB: usize = 1 << 20;

fn params(layout: &Arc<Layout>, seed: u32) -> Params {
    let values = (0..layout.len())
        .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 * 1e-9)
        .collect();
    Params::new(layout.clone(), values).expect("layout fits")
}

/// (updates, MiB) pairs from `MEDFED_BENCH_SIZES`, or the default matrix.
fn sizes() -> Vec<(usize, usize)> {
    let spec = std::env::var("MEDFED_BENCH_SIZES").unwrap_or_else(|_| "8x16,100x16,8x64,100x64".into());
    spec.split(',')
        .map(|pair| {
            let (k, mib) = pair
                .split_once('x')
                .unwrap_or_else(|| panic!("MEDFED_BENCH_SIZES: '{pair}' is not UPDATESxMIB"));
            (
                k.trim().parse().expect("a count of updates"),
                mib.trim().parse().expect("a size in MiB"),
            )
        })
        .collect()
}

fn main() {
    let dir = output_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    let mut lines = Vec::new();
    let mut robust_done = false;
    for (k, mib) in sizes() {
        let bytes = mib * MIB;
        let len = bytes / 4;
        let layout = Arc::new(Layout::new(vec![TensorSpec::new("w", &[len])]).expect("one tensor"));
        let global = params(&layout, 0);
        let deltas: Vec<Params> = (1..=k as u32).map(|s| params(&layout, s)).collect();
        let updates: Vec<WeightedDelta<'_>> = deltas
            .iter()
            .enumerate()
            .map(|(i, d)| WeightedDelta {
                delta: d,
                num_examples: 100 + i,
            })
            .collect();
        let group_name = format!("aggregation-{k}x{mib}MiB");
        let mut group = c.benchmark_group(&group_name);
        group.sample_size(10);
        group.throughput(Throughput::Bytes(2 * bytes as u64));
        let pairs = (256 * MIB).div_ceil(2 * bytes).max(1);
        let sources: Vec<Vec<f32>> = (0..pairs).map(|_| global.as_slice().to_vec()).collect();
        let mut targets: Vec<Vec<f32>> = (0..pairs).map(|_| vec![1.0f32; len]).collect();
        let mut next = 0;
        group.bench_function("memcpy", |b| {
            b.iter(|| {
                next = (next + 1) % pairs;
                targets[next].copy_from_slice(black_box(&sources[next]));
                black_box(&targets[next]);
            })
        });
        group.bench_function("memcpy_hot", |b| {
            b.iter(|| {
                targets[0].copy_from_slice(black_box(&sources[0]));
                black_box(&targets[0]);
            })
        });
        drop((sources, targets));
        let traffic = (k as u64 + 2) * bytes as u64;
        group.throughput(Throughput::Bytes(traffic));
        let mut kernels: Vec<(&str, Box<dyn Strategy>)> = vec![("fedavg", Box::new(FedAvg))];
        if !robust_done && k >= 8 {
            // Krum with f = 1 needs n >= 2f + 3 = 5 updates.
            kernels.push(("median", Box::new(Median)));
            kernels.push(("trimmed_mean", Box::new(TrimmedMean { beta: 0.1 })));
            kernels.push(("krum", Box::new(Krum { f: 1, m: None })));
            robust_done = true;
        }
        for (name, strategy) in &mut kernels {
            group.bench_function(*name, |b| {
                b.iter(|| {
                    let next = strategy
                        .aggregate_train(1, black_box(&global), &updates)
                        .expect("same layout");
                    black_box(&next);
                })
            });
        }
        group.finish();
        let Some(copy) = mean_ns(&dir, &group_name, "memcpy") else {
            continue;
        };
        let copy_bw = 2.0 * bytes as f64 / copy; // bytes per ns = GB/s
        let hot_bw = mean_ns(&dir, &group_name, "memcpy_hot").map_or(f64::NAN, |t| 2.0 * bytes as f64 / t);
        for (name, _) in &kernels {
            if let Some(t) = mean_ns(&dir, &group_name, name) {
                let bw = traffic as f64 / t;
                lines.push(format!(
                    "{name} of {k} x {mib} MiB updates: {:.2} ms, {bw:.2} GB/s of traffic; memcpy {copy_bw:.2} GB/s; ratio {:.3} \
                     (memcpy of one cached buffer {hot_bw:.2} GB/s: {:.3})",
                    t / 1e6,
                    bw / copy_bw,
                    bw / hot_bw
                ));
            }
        }
    }
    c.final_summary();
    for line in lines {
        println!("{line}");
    }
}
