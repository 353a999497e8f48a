//! Imaging tasks: chest X-rays from the Kaggle folder layout, a MedMNIST
//! `.npz`, or SYNTHETIC images generated on first use into the cache
//! directory. The layout's `train` split is partitioned into hospitals and
//! its `test` split is the coordinator's held-out set (`val` is not used).
//! A CNN at every hospital.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tracing::{info, warn};

use medfed_actors::coordinator::Scaling;
use medfed_models::data::images::synth::{generate, split, write_npz, SynthSpec};
use medfed_models::data::images::{folder, npz, ImageSet, LoadReport};
use medfed_models::data::Partition;
use medfed_models::learner::cnn::{CnnConfig, CnnEvaluator, CnnLearner};
use medfed_models::learner::logistic::LocalDp;
use medfed_models::learner::{DpLearner, Evaluator, GlobalModel, Learner, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::params::Params;
use medfed_models::privacy::fingerprint::DataFingerprint;
use medfed_models::privacy::mechanisms::NoiseSource;

use super::{held_out_fingerprint, partition_sets, SiteData, TaskData, TaskKind};
use crate::config::{DataFormat, Loaded, PrivacyConfig, TaskConfig};

pub struct Imaging;

/// An imaging task, prepared.
pub struct ImagingData {
    train: ImageSet,
    held_out: ImageSet,
    shards: Vec<ImageSet>,
    /// Each hospital's share of the held-out set (its local test split).
    held_out_shares: Vec<Vec<usize>>,
    cnn: CnnConfig,
    /// The initial global model from `model.init`; default: seeded.
    initial: Option<Arc<Params>>,
}

/// One hospital's images.
pub struct ImagingSite {
    images: ImageSet,
    cnn: CnnConfig,
}

pub fn cnn_config(config: &TaskConfig) -> CnnConfig {
    let default = CnnConfig::default();
    CnnConfig {
        arch: config.model.arch,
        size: config.data.image_size,
        channels: config.model.channels.unwrap_or(default.channels),
        optimizer: config.model.optimizer,
    }
}

/// The initial global model from `[tasks.T.model] init`, if set: read and
/// checked against the network's names and shapes when the task is
/// prepared, so a wrong file stops the run before any hospital joins.
fn initial_model(
    loaded: &Loaded,
    name: &str,
    config: &TaskConfig,
    cnn: &CnnConfig,
) -> Result<Option<Arc<Params>>> {
    let Some(path) = &config.model.init else {
        return Ok(None);
    };
    let path = loaded.resolve(path);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("tasks.{name}.model.init: reading {}", path.display()))?;
    let params = cnn
        .load_init(&bytes)
        .with_context(|| format!("tasks.{name}.model.init: {}", path.display()))?;
    info!(task = name, file = %path.display(), arch = cnn.arch.name(), "initial model loaded");
    Ok(Some(Arc::new(params)))
}

impl TaskKind for Imaging {
    fn name(&self) -> &'static str {
        "imaging"
    }

    fn prepare(&self, loaded: &Loaded, name: &str, config: &TaskConfig) -> Result<Box<dyn TaskData>> {
        prepare(loaded, name, config).map(|data| Box::new(data) as Box<dyn TaskData>)
    }
}

fn prepare(loaded: &Loaded, name: &str, config: &TaskConfig) -> Result<ImagingData> {
    let d = &config.data;
    let size = d.image_size;
    let (train, held_out) = match d.format {
        DataFormat::Synthetic => {
            let path = synthetic_file(loaded, config)?;
            (
                load_split(&path, DataFormat::Npz, "train", size)?,
                load_split(&path, DataFormat::Npz, "test", size)?,
            )
        }
        format @ (DataFormat::Folder | DataFormat::Npz) => {
            let path = loaded.resolve(d.path.as_deref().context("data.path is required")?);
            (
                load_split(&path, format, "train", size)?,
                load_split(&path, format, "test", size)?,
            )
        }
        DataFormat::Csv | DataFormat::Parquet => {
            anyhow::bail!("imaging tasks read image folders, .npz files or synthetic images, not tables")
        }
    };
    for (split, set) in [("train", &train), ("test (held out)", &held_out)] {
        let b = set.balance();
        info!(
            task = name,
            split,
            images = set.len(),
            normal = b.normal,
            pneumonia = b.pneumonia,
            "class balance"
        );
    }
    let (rows, held_out_shares) = partition_sets(
        config,
        loaded.config.run.seed,
        (train.len(), &|p: &Partition, k, s, e| {
            p.split_labels_with(&train.labels, k, s, e)
        }),
        (held_out.len(), &|p: &Partition, k, s, e| {
            p.split_labels_with(&held_out.labels, k, s, e)
        }),
    )?;
    let shards = rows.iter().map(|rows| train.select(rows)).collect();
    let cnn = cnn_config(config);
    Ok(ImagingData {
        initial: initial_model(loaded, name, config, &cnn)?,
        train,
        held_out,
        shards,
        held_out_shares,
        cnn,
    })
}

pub fn load_split(path: &Path, format: DataFormat, split: &str, size: usize) -> Result<ImageSet> {
    let (set, report): (ImageSet, LoadReport) = match format {
        DataFormat::Folder => folder::load(path, split, size)?,
        _ => npz::load(path, split, size)?,
    };
    for (file, reason) in &report.skipped {
        warn!(file = %file, reason = %reason, "unreadable image skipped");
    }
    if !report.skipped.is_empty() {
        warn!(
            split,
            skipped = report.skipped.len(),
            loaded = report.loaded,
            "some images were skipped"
        );
    }
    Ok(set)
}

/// The synthetic set's `.npz` in the cache, generated on first use. The
/// file name holds every parameter, so a changed config never reads a stale set.
fn synthetic_file(loaded: &Loaded, config: &TaskConfig) -> Result<PathBuf> {
    let d = &config.data;
    let dir = loaded.cache_dir()?;
    let path = dir.join(format!(
        "synthetic-xray-{}x{}px-seed{}.npz",
        d.synthetic_count, d.image_size, d.synthetic_seed
    ));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the cache directory {}", dir.display()))?;
    let set = generate(&SynthSpec {
        count: d.synthetic_count,
        size: d.image_size,
        seed: d.synthetic_seed,
        pneumonia_share: 0.5,
    })?;
    let parts = split(&set);
    // Written under a unique name and renamed: concurrent runs never read half a file.
    let partial = dir.join(format!(
        ".{}.{}.partial",
        std::process::id(),
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    write_npz(&partial, &parts)?;
    std::fs::rename(&partial, &path)
        .with_context(|| format!("moving the synthetic set to {}", path.display()))?;
    eprintln!(
        "generated {} SYNTHETIC chest-X-ray-like images (not patient data) at {}",
        set.len(),
        path.display()
    );
    Ok(path)
}

impl TaskData for ImagingData {
    fn hospital_count(&self) -> usize {
        self.shards.len()
    }

    fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.held_out.len())
    }

    fn unit(&self) -> &'static str {
        "images"
    }

    fn baseline_method(&self) -> &'static str {
        "the same CNN for rounds x local epochs"
    }

    fn site(&self, index: usize) -> Option<Box<dyn SiteData>> {
        self.shards.get(index).map(|images| -> Box<dyn SiteData> {
            Box::new(ImagingSite {
                images: images.clone(),
                cnn: self.cnn,
            })
        })
    }

    fn local_test(&self, index: usize, seed: u64) -> Result<Option<Box<dyn Evaluator>>> {
        let Some(rows) = self.held_out_shares.get(index).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        Ok(Some(Box::new(
            self.evaluator_on(self.held_out.select(rows), seed)?,
        )))
    }

    fn held_out_fingerprint(&self) -> String {
        held_out_fingerprint(
            self.held_out.pixels.iter().map(|v| v.to_le_bytes()),
            &self.held_out.labels,
        )
    }

    fn evaluator(&self, seed: u64) -> Result<Box<dyn Evaluator>> {
        Ok(Box::new(self.evaluator_on(self.held_out.clone(), seed)?))
    }

    /// Pixels are already on a fixed [0, 1] scale.
    fn scaling(&self, _privacy: &PrivacyConfig) -> Result<Scaling> {
        Ok(Scaling::None)
    }

    fn centralized_baseline(&self, loaded: &Loaded, config: &TaskConfig) -> Result<Metrics> {
        centralized_baseline(
            loaded,
            config,
            &self.train,
            self.evaluator_on(self.held_out.clone(), loaded.config.run.seed)?,
            self.cnn,
        )
    }
}

impl ImagingData {
    /// An evaluator on `images` whose initial model is the task's.
    fn evaluator_on(&self, images: ImageSet, seed: u64) -> Result<CnnEvaluator> {
        let evaluator = CnnEvaluator::new(images, self.cnn, seed)?;
        Ok(match &self.initial {
            Some(initial) => evaluator.with_initial(initial.clone())?,
            None => evaluator,
        })
    }
}

impl SiteData for ImagingSite {
    fn records(&self) -> usize {
        self.images.len()
    }

    fn fingerprint(&self) -> Result<DataFingerprint> {
        Ok(DataFingerprint::of_images(&self.images))
    }

    /// Images need no scaler, so no statistics are ever released.
    fn releases_stats(&self, _privacy: &PrivacyConfig) -> bool {
        false
    }

    fn learner(self: Box<Self>, name: &str) -> Result<Box<dyn Learner>> {
        Ok(Box::new(CnnLearner::new(name, self.images, self.cnn)?))
    }

    fn private_learner(
        self: Box<Self>,
        name: &str,
        dp: LocalDp,
        _privacy: &PrivacyConfig,
        noise: NoiseSource,
    ) -> Result<Box<dyn DpLearner>> {
        Ok(Box::new(
            CnnLearner::new(name, self.images, self.cnn)?.with_privacy(dp, noise)?,
        ))
    }
}

/// The CNN trained on the pooled training images for as many epochs as a
/// hospital trains over the whole run (rounds x local epochs).
fn centralized_baseline(
    loaded: &Loaded,
    config: &TaskConfig,
    train: &ImageSet,
    mut evaluator: CnnEvaluator,
    cnn: CnnConfig,
) -> Result<Metrics> {
    let seed = loaded.config.run.seed;
    let epochs = config.effective_rounds(&loaded.config.run) * config.training.local_epochs;
    let mut learner = CnnLearner::new("centralized", train.clone(), cnn)?;
    let init = Arc::new(evaluator.init_params());
    let update = learner.train(
        &GlobalModel {
            params: init.clone(),
            standardizer: None,
        },
        &TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: epochs,
            batch_size: config.training.batch_size,
            learning_rate: config.training.learning_rate,
            l2: config.training.l2,
            seed,
            proximal_mu: 0.0,
            privacy: None,
        },
    )?;
    let mut trained = (*init).clone();
    trained.add_assign(&update.delta)?;
    Ok(evaluator.evaluate(&GlobalModel {
        params: Arc::new(trained),
        standardizer: None,
    })?)
}
