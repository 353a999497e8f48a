//! Tabular tasks: a CSV with a label column, a stratified held-out split,
//! and a partition of the remaining rows into hospitals; logistic
//! regression at every hospital.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use medfed_actors::coordinator::Scaling;
use medfed_models::data::csv::{load_csv, CsvSpec};
use medfed_models::data::{stratified_split, Dataset, MomentSums, Partition, Standardizer};
use medfed_models::learner::baseline::fit_centralized;
use medfed_models::learner::logistic::{LocalDp, LogisticEvaluator, LogisticLearner};
use medfed_models::learner::{DpLearner, Evaluator, GlobalModel, Learner};
use medfed_models::metrics::Metrics;
use medfed_models::privacy::bounds::FeatureBounds;
use medfed_models::privacy::fingerprint::DataFingerprint;
use medfed_models::privacy::mechanisms::NoiseSource;

use super::{held_out_fingerprint, partition_sets, OwnData, SiteData, TaskData, TaskKind};
use crate::config::{DpScaling, Loaded, PrivacyConfig, TaskConfig};

pub struct Tabular;

/// A tabular task, prepared.
pub struct TabularData {
    train: Dataset,
    held_out: Dataset,
    /// One dataset per hospital, partitioned from `train`.
    shards: Vec<Dataset>,
    /// Public per-feature bounds, when the config names them.
    bounds: Option<Arc<FeatureBounds>>,
    /// Each hospital's share of the held-out set (its local test split).
    held_out_shares: Vec<Vec<usize>>,
}

/// One hospital's rows.
pub struct TabularSite {
    data: Dataset,
    bounds: Option<Arc<FeatureBounds>>,
}

impl TabularSite {
    pub fn new(data: Dataset, bounds: Option<Arc<FeatureBounds>>) -> Self {
        Self { data, bounds }
    }
}

impl TaskKind for Tabular {
    fn name(&self) -> &'static str {
        "tabular"
    }

    fn prepare(&self, loaded: &Loaded, name: &str, config: &TaskConfig) -> Result<Box<dyn TaskData>> {
        let seed = loaded.config.run.seed;
        let data = load_csv(&loaded.resolve(csv_path(name, config)?), &csv_spec(name, config)?)
            .context("loading its data")?;
        let (train, held_out) =
            stratified_split(&data, config.data.test_fraction, seed).context("held-out split")?;
        let (rows, held_out_shares) = partition_sets(
            config,
            seed,
            (train.len(), &|p: &Partition, k, s, e| {
                p.split_with(&train, k, s, e)
            }),
            (held_out.len(), &|p: &Partition, k, s, e| {
                p.split_with(&held_out, k, s, e)
            }),
        )?;
        let shards = rows.iter().map(|rows| train.select(rows)).collect();
        Ok(Box::new(TabularData {
            bounds: bounds(loaded, config, &data)?,
            train,
            held_out,
            shards,
            held_out_shares,
        }))
    }

    /// The hospital's own CSV: its local test split is held out of it
    /// (stratified, the task's test_fraction and the run's seed). Parquet
    /// data (anything but a .csv file) is streamed by a columnar learner.
    fn own_data(&self, loaded: &Loaded, task: &str, path: &Path) -> Result<OwnData> {
        if !super::columnar::is_csv(path) {
            return super::columnar::own_parquet(loaded, task, path);
        }
        let config = &loaded.config.tasks[task];
        let all =
            load_csv(path, &csv_spec(task, config)?).with_context(|| format!("--data {}", path.display()))?;
        let (train, test) = stratified_split(&all, config.data.test_fraction, loaded.config.run.seed)
            .context("local test split")?;
        let features = Some(train.feature_names.clone());
        Ok(OwnData {
            site: Box::new(TabularSite {
                bounds: bounds(loaded, config, &all)?,
                data: train,
            }),
            features,
            local_test: Box::new(LogisticEvaluator::new(test)?),
            progress: None,
            kind: None,
        })
    }
}

fn csv_path<'a>(name: &str, config: &'a TaskConfig) -> Result<&'a Path> {
    config
        .data
        .path
        .as_deref()
        .with_context(|| format!("tasks.{name}.data needs path, label_column and positive_class"))
}

fn csv_spec(name: &str, config: &TaskConfig) -> Result<CsvSpec> {
    let d = &config.data;
    let (Some(label_column), Some(positive_class)) = (&d.label_column, &d.positive_class) else {
        anyhow::bail!("tasks.{name}.data needs label_column and positive_class");
    };
    Ok(CsvSpec {
        label_column: label_column.clone(),
        positive_class: positive_class.clone(),
    })
}

fn bounds(loaded: &Loaded, config: &TaskConfig, data: &Dataset) -> Result<Option<Arc<FeatureBounds>>> {
    config
        .data
        .feature_bounds
        .as_ref()
        .map(|path| FeatureBounds::load(&loaded.resolve(path), &data.feature_names).map(Arc::new))
        .transpose()
        .map_err(Into::into)
}

impl TaskData for TabularData {
    fn hospital_count(&self) -> usize {
        self.shards.len()
    }

    fn feature_names(&self) -> Option<Vec<String>> {
        Some(self.held_out.feature_names.clone())
    }

    fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.held_out.len())
    }

    fn unit(&self) -> &'static str {
        "rows"
    }

    fn baseline_method(&self) -> &'static str {
        "linfa L-BFGS"
    }

    fn site(&self, index: usize) -> Option<Box<dyn SiteData>> {
        self.shards.get(index).map(|data| -> Box<dyn SiteData> {
            Box::new(TabularSite {
                data: data.clone(),
                bounds: self.bounds.clone(),
            })
        })
    }

    fn local_test(&self, index: usize, _seed: u64) -> Result<Option<Box<dyn Evaluator>>> {
        let Some(rows) = self.held_out_shares.get(index).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        Ok(Some(Box::new(LogisticEvaluator::new(
            self.held_out.select(rows),
        )?)))
    }

    fn held_out_fingerprint(&self) -> String {
        held_out_fingerprint(
            self.held_out.features.iter().map(|v| v.to_le_bytes()),
            &self.held_out.labels,
        )
    }

    fn evaluator(&self, _seed: u64) -> Result<Box<dyn Evaluator>> {
        Ok(Box::new(LogisticEvaluator::new(self.held_out.clone())?))
    }

    /// Exact federated standardisation without DP; under DP either the
    /// public bounds (no budget) or noised statistics (charged at each hospital).
    fn scaling(&self, privacy: &PrivacyConfig) -> Result<Scaling> {
        crate::tasks::table_scaling(self.bounds.as_deref(), privacy)
    }

    /// Logistic regression fitted by linfa (L-BFGS) on the pooled, standardised rows.
    fn centralized_baseline(&self, _loaded: &Loaded, config: &TaskConfig) -> Result<Metrics> {
        let scaler = Arc::new(Standardizer::from_sums(&MomentSums::of(&self.train.features))?);
        let z = scaler.apply(&self.train.features)?;
        let params = fit_centralized(&z, &self.train.labels, config.training.baseline_alpha, 500)?;
        let mut evaluator = LogisticEvaluator::new(self.held_out.clone())?;
        Ok(evaluator.evaluate(&GlobalModel {
            params: Arc::new(params),
            standardizer: Some(scaler),
        })?)
    }
}

impl SiteData for TabularSite {
    fn records(&self) -> usize {
        self.data.len()
    }

    fn fingerprint(&self) -> Result<DataFingerprint> {
        Ok(DataFingerprint::of_dataset(&self.data))
    }

    fn releases_stats(&self, privacy: &PrivacyConfig) -> bool {
        privacy.scaling == DpScaling::DpStats
    }

    fn learner(self: Box<Self>, name: &str) -> Result<Box<dyn Learner>> {
        Ok(Box::new(LogisticLearner::new(name, self.data)?))
    }

    fn private_learner(
        self: Box<Self>,
        name: &str,
        dp: LocalDp,
        privacy: &PrivacyConfig,
        noise: NoiseSource,
    ) -> Result<Box<dyn DpLearner>> {
        let stats = crate::tasks::stats_policy(self.bounds.as_deref(), privacy)?;
        Ok(Box::new(
            LogisticLearner::new(name, self.data)?.with_privacy(dp, stats, noise)?,
        ))
    }
}
