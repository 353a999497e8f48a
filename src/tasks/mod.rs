//! A task's data made ready to federate: loaded, the held-out set put aside
//! for the coordinator, the rest partitioned into hospitals. One module per
//! kind of hospital.

pub mod imaging;
pub mod tabular;

use std::sync::Arc;

use anyhow::{Context, Result};

use medfed_actors::coordinator::Scaling;
use medfed_models::data::images::ImageSet;
use medfed_models::data::{Dataset, Partition};
use medfed_models::learner::cnn::{CnnConfig, CnnEvaluator};
use medfed_models::learner::logistic::LogisticEvaluator;
use medfed_models::learner::Evaluator;
use medfed_models::metrics::Metrics;
use medfed_models::privacy::bounds::FeatureBounds;

use crate::config::{DpScaling, HospitalKind, Loaded, PartitionScheme, PrivacyMode, TaskConfig};

/// One task's data, split and partitioned, ready to be federated.
pub struct PreparedTask {
    pub name: String,
    pub config: TaskConfig,
    pub data: TaskData,
}

pub enum TaskData {
    Tabular {
        train: Dataset,
        held_out: Dataset,
        /// One dataset per hospital, partitioned from `train`.
        shards: Vec<Dataset>,
        /// Public per-feature bounds, when the config names them.
        bounds: Option<FeatureBounds>,
    },
    Imaging {
        train: ImageSet,
        held_out: ImageSet,
        shards: Vec<ImageSet>,
        cnn: CnnConfig,
    },
}

/// One hospital's share of a task's data.
pub enum Shard<'a> {
    Tabular {
        data: Dataset,
        bounds: Option<&'a FeatureBounds>,
    },
    Imaging {
        images: ImageSet,
        cnn: CnnConfig,
    },
}

pub fn prepare_task(loaded: &Loaded, name: &str) -> Result<PreparedTask> {
    let config = loaded
        .config
        .tasks
        .get(name)
        .with_context(|| format!("no task '{name}' in {}", loaded.source))?
        .clone();
    let data = match config.kind {
        HospitalKind::Tabular => tabular::prepare(loaded, name, &config),
        HospitalKind::Imaging => imaging::prepare(loaded, name, &config),
        HospitalKind::Columnar => anyhow::bail!("task '{name}': columnar hospitals are not available yet"),
    }
    .with_context(|| format!("task '{name}'"))?;
    Ok(PreparedTask {
        name: name.to_string(),
        config,
        data,
    })
}

pub fn partition_of(config: &TaskConfig) -> Partition {
    match config.partition.scheme {
        PartitionScheme::Iid => Partition::Iid,
        PartitionScheme::Sorted => Partition::Sorted {
            feature: config.partition.feature.clone().unwrap_or_default(),
        },
        PartitionScheme::Dirichlet => Partition::Dirichlet {
            alpha: config.partition.alpha,
        },
    }
}

impl PreparedTask {
    pub fn hospital_name(&self, index: usize) -> String {
        format!("{}-{}", self.name, index + 1)
    }

    pub fn hospital_count(&self) -> usize {
        match &self.data {
            TaskData::Tabular { shards, .. } => shards.len(),
            TaskData::Imaging { shards, .. } => shards.len(),
        }
    }

    /// Examples in the training pool and in the held-out set.
    pub fn sizes(&self) -> (usize, usize) {
        match &self.data {
            TaskData::Tabular { train, held_out, .. } => (train.len(), held_out.len()),
            TaskData::Imaging { train, held_out, .. } => (train.len(), held_out.len()),
        }
    }

    /// What one example is, for tables.
    pub fn unit(&self) -> &'static str {
        match self.data {
            TaskData::Tabular { .. } => "rows",
            TaskData::Imaging { .. } => "images",
        }
    }

    /// How `centralized_baseline` trains, for tables.
    pub fn baseline_method(&self) -> &'static str {
        match self.data {
            TaskData::Tabular { .. } => "linfa L-BFGS",
            TaskData::Imaging { .. } => "the same CNN for rounds x local epochs",
        }
    }

    pub fn shard(&self, index: usize) -> Option<Shard<'_>> {
        match &self.data {
            TaskData::Tabular { shards, bounds, .. } => shards.get(index).map(|d| Shard::Tabular {
                data: d.clone(),
                bounds: bounds.as_ref(),
            }),
            TaskData::Imaging { shards, cnn, .. } => shards.get(index).map(|s| Shard::Imaging {
                images: s.clone(),
                cnn: *cnn,
            }),
        }
    }

    /// Hospital `index`'s local test split for federated evaluation: its
    /// share of the held-out set, partitioned like the training data. With
    /// IID partitioning the shares together are exactly the held-out set.
    /// `None` when its share is empty.
    pub fn local_test(&self, index: usize, seed: u64) -> Result<Option<Box<dyn Evaluator>>> {
        let count = self.hospital_count();
        let partition = partition_of(&self.config);
        let evaluator: Box<dyn Evaluator> = match &self.data {
            TaskData::Tabular { held_out, .. } => {
                let rows = partition.split(held_out, count, seed)?;
                let Some(rows) = rows.get(index).filter(|r| !r.is_empty()) else {
                    return Ok(None);
                };
                Box::new(LogisticEvaluator::new(held_out.select(rows))?)
            }
            TaskData::Imaging { held_out, cnn, .. } => {
                let rows = partition.split_labels(&held_out.labels, count, seed)?;
                let Some(rows) = rows.get(index).filter(|r| !r.is_empty()) else {
                    return Ok(None);
                };
                Box::new(CnnEvaluator::new(held_out.select(rows), *cnn, seed)?)
            }
        };
        Ok(Some(evaluator))
    }

    /// Identifies the held-out set: its size and a CRC-32 of its examples.
    /// Equal on every node that split the same data with the same seed and
    /// test fraction.
    pub fn held_out_fingerprint(&self) -> String {
        let mut crc = crc32fast::Hasher::new();
        let (n, labels) = match &self.data {
            TaskData::Tabular { held_out, .. } => {
                held_out
                    .features
                    .iter()
                    .for_each(|v| crc.update(&v.to_le_bytes()));
                (held_out.len(), &held_out.labels)
            }
            TaskData::Imaging { held_out, .. } => {
                held_out.pixels.iter().for_each(|v| crc.update(&v.to_le_bytes()));
                (held_out.len(), &held_out.labels)
            }
        };
        crc.update(&labels.iter().map(|&l| u8::from(l)).collect::<Vec<_>>());
        format!("{n} examples, crc32 {:08x}", crc.finalize())
    }

    /// The coordinator's evaluation on the held-out set; `seed` fixes the
    /// initial global model.
    pub fn evaluator(&self, seed: u64) -> Result<Box<dyn Evaluator>> {
        Ok(match &self.data {
            TaskData::Tabular { held_out, .. } => Box::new(LogisticEvaluator::new(held_out.clone())?),
            TaskData::Imaging { held_out, cnn, .. } => {
                Box::new(CnnEvaluator::new(held_out.clone(), *cnn, seed)?)
            }
        })
    }

    /// Exact federated standardisation of tabular features without DP; under
    /// DP either the public bounds (no budget) or noised statistics (charged
    /// at each hospital). Pixels are already on a fixed [0, 1] scale.
    pub fn scaling(&self, loaded: &Loaded) -> Result<Scaling> {
        let TaskData::Tabular { bounds, .. } = &self.data else {
            return Ok(Scaling::None);
        };
        let privacy = &loaded.config.privacy;
        if privacy.mode == PrivacyMode::Off || privacy.scaling == DpScaling::DpStats {
            return Ok(Scaling::Federated);
        }
        let bounds = bounds
            .as_ref()
            .with_context(|| format!("task '{}': differential privacy needs feature bounds", self.name))?;
        Ok(Scaling::Fixed(Arc::new(bounds.standardizer())))
    }

    /// The same model trained centrally on the pooled training set and
    /// evaluated on the same held-out set. For comparison only: it pools data.
    pub fn centralized_baseline(&self, loaded: &Loaded) -> Result<Metrics> {
        match &self.data {
            TaskData::Tabular { train, held_out, .. } => {
                tabular::centralized_baseline(&self.config, train, held_out)
            }
            TaskData::Imaging {
                train, held_out, cnn, ..
            } => imaging::centralized_baseline(loaded, &self.config, train, held_out, *cnn),
        }
        .with_context(|| format!("task '{}': centralized baseline", self.name))
    }
}
