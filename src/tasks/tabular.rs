//! Tabular tasks: a CSV with a label column, a stratified held-out split,
//! and a partition of the remaining rows into hospitals.

use std::sync::Arc;

use anyhow::{Context, Result};

use medfed_models::data::csv::{load_csv, CsvSpec};
use medfed_models::data::{stratified_split, Dataset, MomentSums, Standardizer};
use medfed_models::learner::baseline::fit_centralized;
use medfed_models::learner::logistic::LogisticEvaluator;
use medfed_models::learner::{Evaluator, GlobalModel};
use medfed_models::metrics::Metrics;
use medfed_models::privacy::bounds::FeatureBounds;

use super::{partition_of, TaskData};
use crate::config::{Loaded, TaskConfig};

pub fn prepare(loaded: &Loaded, name: &str, config: &TaskConfig) -> Result<TaskData> {
    let seed = loaded.config.run.seed;
    let d = &config.data;
    let (Some(path), Some(label_column), Some(positive_class)) =
        (&d.path, &d.label_column, &d.positive_class)
    else {
        anyhow::bail!("tasks.{name}.data needs path, label_column and positive_class");
    };
    let spec = CsvSpec {
        label_column: label_column.clone(),
        positive_class: positive_class.clone(),
    };
    let data = load_csv(&loaded.resolve(path), &spec).context("loading its data")?;
    let (train, held_out) = stratified_split(&data, d.test_fraction, seed).context("held-out split")?;
    let shards = partition_of(config)
        .split(&train, config.hospitals, seed)
        .with_context(|| format!("partitioning into {} hospitals", config.hospitals))?
        .iter()
        .map(|rows| train.select(rows))
        .collect();
    let bounds = match &d.feature_bounds {
        Some(path) => Some(FeatureBounds::load(&loaded.resolve(path), &data.feature_names)?),
        None => None,
    };
    Ok(TaskData::Tabular {
        train,
        held_out,
        shards,
        bounds,
    })
}

/// Logistic regression fitted by linfa (L-BFGS) on the pooled, standardised rows.
pub fn centralized_baseline(config: &TaskConfig, train: &Dataset, held_out: &Dataset) -> Result<Metrics> {
    let scaler = Arc::new(Standardizer::from_sums(&MomentSums::of(&train.features))?);
    let z = scaler.apply(&train.features)?;
    let params = fit_centralized(&z, &train.labels, config.training.baseline_alpha, 500)?;
    let mut evaluator = LogisticEvaluator::new(held_out.clone())?;
    Ok(evaluator.evaluate(&GlobalModel {
        params: Arc::new(params),
        standardizer: Some(scaler),
    })?)
}
