//! Passes of a columnar hospital over a Parquet table, for
//! `scripts/columnar_bench.py` (which measures pyarrow, numpy and PySpark
//! on the same file in the same run and prints the ratios).
//!
//! `MEDFED_BENCH_TABLE=FILE.parquet cargo bench -p medfed-models --bench
//! columnar_pass` prints one JSON line: rows/s of a decode-only pass, of a
//! full-batch gradient pass, of a mini-batch SGD epoch, and row-iterations/s
//! of 10 full-batch steps (what `LogisticRegression(maxIter=10)` does).

use std::sync::Arc;
use std::time::Instant;

use medfed_models::data::columnar::{default_threads, ByteSource, LocalFile, NullPolicy, Table, TableSpec};
use medfed_models::learner::columnar::{ColumnarData, ColumnarLearner, Scaler, StreamMode};
use medfed_models::learner::logistic::{layout, Coefficients};
use medfed_models::learner::{GlobalModel, Learner, TrainPlan};
use medfed_models::params::Params;

fn main() {
    let Some(path) = std::env::var_os("MEDFED_BENCH_TABLE") else {
        eprintln!("set MEDFED_BENCH_TABLE to a Parquet file (scripts/columnar_bench.py does)");
        return;
    };
    let threads: usize = std::env::var("MEDFED_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(default_threads);
    let source: Arc<dyn ByteSource> =
        Arc::new(LocalFile::open(std::path::Path::new(&path)).expect("the table opens"));
    let spec = TableSpec {
        label_column: "label".into(),
        positive_class: "1".into(),
        features: None,
        nulls: NullPolicy::Error,
    };
    let table = Table::open(vec![source], &spec, None).expect("a labelled table");
    let order: Vec<usize> = (0..table.groups().len()).collect();

    // Decode only: every row group into row-major blocks, nothing computed.
    // Once untimed (the allocator and page cache warm up, as the script's
    // pyarrow reading does), then timed.
    let decode_pass = || {
        table
            .fold_groups(
                &order,
                threads,
                |_| 0u64,
                |n, block| {
                    *n += block.len() as u64;
                    Ok(())
                },
            )
            .expect("decoding")
            .iter()
            .map(|(n, _)| n)
            .sum::<u64>()
    };
    decode_pass();
    let started = Instant::now();
    let rows = decode_pass();
    let decode = started.elapsed().as_secs_f64();

    // The scan a hospital makes once: counts and moment sums.
    let started = Instant::now();
    let data = ColumnarData::scan("bench", table, threads, StreamMode::FullBatch).expect("scan");
    let scan = started.elapsed().as_secs_f64();
    let d = data.n_features();
    let standardizer =
        Arc::new(medfed_models::data::Standardizer::from_sums(data.moment_sums()).expect("a scaler"));
    let scaler = Scaler::new(data.table().features(), Some(&standardizer)).expect("scaler");
    let coef = Coefficients {
        weight: vec![0.01; d],
        bias: 0.0,
    };
    let started = Instant::now();
    let (grad, _) = data.gradient(&coef, &scaler).expect("a gradient pass");
    let gradient = started.elapsed().as_secs_f64();
    assert!(grad.iter().all(|g| g.is_finite()));

    let global = GlobalModel {
        params: Arc::new(Params::zeros(layout(d))),
        standardizer: Some(standardizer),
    };
    let plan = |epochs| TrainPlan {
        round: 1,
        attempt: 0,
        local_epochs: epochs,
        batch_size: 256,
        learning_rate: 0.1,
        l2: 0.0,
        seed: 1,
        proximal_mu: 0.0,
        privacy: None,
    };
    let mut full = ColumnarLearner::new(data.clone()).expect("a learner");
    let started = Instant::now();
    full.train(&global, &plan(10)).expect("10 full-batch steps");
    let ten_steps = started.elapsed().as_secs_f64();

    let mini =
        ColumnarData::scan("bench", data.table().clone(), threads, StreamMode::MiniBatch).expect("scan");
    let mut mini = ColumnarLearner::new(mini).expect("a learner");
    let started = Instant::now();
    mini.train(&global, &plan(1)).expect("an SGD epoch");
    let epoch = started.elapsed().as_secs_f64();

    let r = rows as f64;
    println!(
        "{}",
        serde_json::json!({
            "rows": rows,
            "features": d,
            "threads": threads,
            "decode_rows_per_s": r / decode,
            "scan_rows_per_s": r / scan,
            "gradient_rows_per_s": r / gradient,
            "ten_steps_row_iterations_per_s": 10.0 * r / ten_steps,
            "sgd_epoch_rows_per_s": r / epoch,
        })
    );
}
