//! The streamed learner against the in-memory one on the same rows.

use std::sync::Arc;

use ndarray::{Array1, Axis};

use super::columnar::*;
use super::logistic::{Coefficients, LocalDp, StatsPolicy};
use super::{DpLearner, GlobalModel, Learner, TrainPlan};
use crate::data::columnar::write::write_dataset;
use crate::data::columnar::{ByteSource, LocalFile, NullPolicy, Table, TableSpec};
use crate::data::synthetic::gaussian_blobs;
use crate::data::{Dataset, MomentSums, Standardizer};
use crate::privacy::bounds::FeatureBounds;
use crate::privacy::fingerprint::DataFingerprint;
use crate::privacy::mechanisms::NoiseSource;

fn table_of(dir: &std::path::Path, data: &Dataset, group_rows: usize) -> Table {
    let path = dir.join("t.parquet");
    write_dataset(&path, data, "label", group_rows, vec![]).unwrap();
    let source: Arc<dyn ByteSource> = Arc::new(LocalFile::open(&path).unwrap());
    let spec = TableSpec {
        label_column: "label".into(),
        positive_class: "1".into(),
        features: None,
        nulls: NullPolicy::Error,
    };
    Table::open(vec![source], &spec, None).unwrap()
}

fn plan(epochs: u32, batch: usize) -> TrainPlan {
    TrainPlan {
        round: 1,
        attempt: 0,
        local_epochs: epochs,
        batch_size: batch,
        learning_rate: 0.1,
        l2: 1e-3,
        seed: 11,
        proximal_mu: 0.0,
        privacy: None,
    }
}

#[test]
fn the_streamed_gradient_equals_the_in_memory_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let data = gaussian_blobs(3_000, 5, 0.4, 1.5, 3);
    let streamed =
        ColumnarData::scan("h", table_of(dir.path(), &data, 256), 2, StreamMode::FullBatch).unwrap();
    assert_eq!(streamed.records(), 3_000);
    // Federated standardisation from streamed sums equals the in-memory sums.
    let sums = MomentSums::of(&data.features);
    let got = streamed.moment_sums();
    assert_eq!(got.count, sums.count);
    for (a, b) in got
        .sum
        .iter()
        .chain(&got.sum_sq)
        .zip(sums.sum.iter().chain(&sums.sum_sq))
    {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
    }
    let standardizer = Arc::new(Standardizer::from_sums(&sums).unwrap());
    let coef = Coefficients {
        weight: vec![0.3, -0.2, 0.5, 0.1, -0.4],
        bias: 0.05,
    };
    let scaler = Scaler::new(&data.feature_names, Some(&standardizer)).unwrap();
    let (grad, loss) = streamed.gradient(&coef, &scaler).unwrap();
    // In memory, with matrix operations: X^T (sigmoid(Xw + b) - y).
    let x = standardizer.apply(&data.features).unwrap();
    let w = Array1::from(coef.weight.clone());
    let logits = x.dot(&w) + coef.bias;
    let residual: Array1<f64> = logits
        .iter()
        .zip(&data.labels)
        .map(|(&z, &y)| 1.0 / (1.0 + (-z).exp()) - f64::from(u8::from(y)))
        .collect();
    let mut expected = x.t().dot(&residual).to_vec();
    expected.push(residual.sum());
    for (g, e) in grad.iter().zip(&expected) {
        assert!((g - e).abs() <= 1e-6 * e.abs().max(1e-3), "{g} vs {e}");
    }
    let expected_loss: f64 = logits
        .iter()
        .zip(&data.labels)
        .map(|(&z, &y)| super::logistic::example_loss(z, y))
        .sum();
    assert!((loss - expected_loss).abs() <= 1e-9 * expected_loss);
    // The same in-memory sum through the tabular learner's inner loop.
    let mut tabular = vec![0.0; 6];
    for (row, &y) in x.axis_iter(Axis(0)).zip(&data.labels) {
        coef.add_example_gradient(row, y, &mut tabular);
    }
    for (g, t) in grad.iter().zip(&tabular) {
        assert!((g - t).abs() <= 1e-9 * t.abs().max(1e-3));
    }
}

fn global(d: usize, standardizer: Option<Arc<Standardizer>>) -> GlobalModel {
    GlobalModel {
        params: Arc::new(crate::params::Params::zeros(super::logistic::layout(d))),
        standardizer,
    }
}

#[test]
fn streamed_training_learns_is_seeded_and_does_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let data = gaussian_blobs(4_000, 4, 0.5, 2.0, 5);
    let standardizer = Some(Arc::new(
        Standardizer::from_sums(&MomentSums::of(&data.features)).unwrap(),
    ));
    let g = global(4, standardizer);
    let train = |threads: usize, mode: StreamMode, p: &TrainPlan| {
        let table = table_of(
            &dir.path().join(format!("{threads}-{mode:?}-{}", p.local_epochs)),
            &data,
            300,
        );
        let mut learner =
            ColumnarLearner::new(ColumnarData::scan("h-1", table, threads, mode).unwrap()).unwrap();
        let update = learner.train(&g, p).unwrap();
        let mut params = (*g.params).clone();
        params.add_assign(&update.delta).unwrap();
        let trained = GlobalModel {
            params: Arc::new(params),
            standardizer: g.standardizer.clone(),
        };
        (update, learner.evaluate(&trained).unwrap())
    };
    for threads in [1, 3] {
        for mode in [StreamMode::MiniBatch, StreamMode::FullBatch] {
            std::fs::create_dir_all(dir.path().join(format!("{threads}-{mode:?}-2"))).unwrap();
        }
    }
    let (a, metrics) = train(1, StreamMode::MiniBatch, &plan(2, 32));
    let (b, _) = train(3, StreamMode::MiniBatch, &plan(2, 32));
    assert_eq!(a.delta, b.delta, "the thread count changed training");
    assert_eq!(a.num_examples, 4_000);
    assert!(metrics.accuracy > 0.9, "{metrics:?}");
    let (full, full_metrics) = train(1, StreamMode::FullBatch, &plan(2, 32));
    let (full3, _) = train(3, StreamMode::FullBatch, &plan(2, 32));
    assert_eq!(full.delta, full3.delta);
    assert_ne!(full.delta, a.delta);
    assert!(full_metrics.accuracy > 0.8, "{full_metrics:?}");
}

#[test]
fn the_private_learner_keys_its_ledger_like_the_tabular_kind_and_releases_noised_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = gaussian_blobs(2_000, 3, 0.5, 2.0, 9);
    let table = table_of(dir.path(), &data, 128);
    let learner =
        ColumnarLearner::new(ColumnarData::scan("h-1", table, 2, StreamMode::MiniBatch).unwrap()).unwrap();
    let bounds = FeatureBounds {
        lo: vec![-10.0; 3],
        hi: vec![10.0; 3],
    };
    let dp = LocalDp::DpSgd {
        sampling_rate: 0.05,
        max_grad_norm: 1.0,
        noise_multiplier: 1.0,
        local_steps: 30,
    };
    let mut private = learner
        .with_privacy(
            dp,
            StatsPolicy::Noised {
                bounds: bounds.clone(),
                noise_multiplier: 2.0,
            },
            NoiseSource::seeded(4),
        )
        .unwrap();
    assert_eq!(private.fingerprint(), DataFingerprint::of_dataset(&data));
    assert_eq!(private.local_records(), 2_000);
    // The streamed clipped sums release exactly what the in-memory ones do
    // with the same noise.
    let streamed = private.private_stats().unwrap().unwrap();
    let in_memory = bounds
        .private_sums(&data.features, 2.0, &mut NoiseSource::seeded(4))
        .unwrap();
    for (a, b) in streamed.value().sum.iter().zip(&in_memory.value().sum) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    let g = global(
        3,
        Some(Arc::new(
            Standardizer::from_sums(&MomentSums::of(&data.features)).unwrap(),
        )),
    );
    let released = private.train_private(&g, &plan(1, 32), Some(2_010)).unwrap();
    assert_eq!(released.mechanism(), "dp-sgd");
    let moved: f64 = released
        .value()
        .as_slice()
        .iter()
        .map(|v| f64::from(*v).abs())
        .sum();
    assert!(moved > 0.0);
    assert!(private.train_private(&g, &plan(1, 32), None).is_err());
}

#[test]
fn dp_sgd_gathers_exactly_the_sampled_rows_repeats_included() {
    let dir = tempfile::tempdir().unwrap();
    let data = gaussian_blobs(1_000, 3, 0.5, 2.0, 2);
    let streamed =
        ColumnarData::scan("h", table_of(dir.path(), &data, 77), 2, StreamMode::MiniBatch).unwrap();
    let scaler = Scaler::new(&data.feature_names, None).unwrap();
    let wanted = [(0, 1), (5, 0), (5, 2), (76, 4), (77, 5), (999, 3)];
    let mut rows = vec![0.0; 6 * 3];
    let mut labels = vec![false; 6];
    streamed.gather(&wanted, &scaler, &mut rows, &mut labels).unwrap();
    for &(i, slot) in &wanted {
        assert_eq!(
            &rows[slot * 3..slot * 3 + 3],
            data.features.row(i).as_slice().unwrap(),
            "row {i}"
        );
        assert_eq!(labels[slot], data.labels[i]);
    }
}
