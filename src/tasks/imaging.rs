//! Imaging tasks: chest X-rays from the Kaggle folder layout, a MedMNIST
//! `.npz`, or SYNTHETIC images generated on first use into the cache
//! directory. The layout's `train` split is partitioned into hospitals and
//! its `test` split is the coordinator's held-out set (`val` is not used).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tracing::{info, warn};

use medfed_models::data::images::synth::{generate, split, write_npz, SynthSpec};
use medfed_models::data::images::{folder, npz, ImageSet, LoadReport};
use medfed_models::learner::cnn::{CnnConfig, CnnEvaluator, CnnLearner};
use medfed_models::learner::{Evaluator, GlobalModel, Learner, TrainPlan};
use medfed_models::metrics::Metrics;

use super::{partition_of, TaskData};
use crate::config::{DataFormat, Loaded, TaskConfig};

pub fn cnn_config(config: &TaskConfig) -> CnnConfig {
    CnnConfig {
        size: config.data.image_size,
        channels: config.model.channels,
        optimizer: config.model.optimizer,
    }
}

pub fn prepare(loaded: &Loaded, name: &str, config: &TaskConfig) -> Result<TaskData> {
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
        DataFormat::Csv => anyhow::bail!("imaging tasks do not read CSV files"),
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
    let shards = partition_of(config)
        .split_labels(&train.labels, config.hospitals, loaded.config.run.seed)
        .with_context(|| {
            format!(
                "partitioning {} images into {} hospitals",
                train.len(),
                config.hospitals
            )
        })?
        .iter()
        .map(|rows| train.select(rows))
        .collect();
    Ok(TaskData::Imaging {
        train,
        held_out,
        shards,
        cnn: cnn_config(config),
    })
}

fn load_split(path: &Path, format: DataFormat, split: &str, size: usize) -> Result<ImageSet> {
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

/// The cache directory: `run.cache_dir`, else `$XDG_CACHE_HOME/medfed`,
/// else `~/.cache/medfed`.
pub fn cache_dir(loaded: &Loaded) -> Result<PathBuf> {
    if let Some(dir) = &loaded.config.run.cache_dir {
        return Ok(loaded.resolve(dir));
    }
    let env_dir = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    env_dir("XDG_CACHE_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("medfed"))
        .context("no cache directory: set run.cache_dir (or HOME)")
}

/// The synthetic set's `.npz` in the cache, generated on first use. The
/// file name holds every parameter, so a changed config never reads a stale set.
fn synthetic_file(loaded: &Loaded, config: &TaskConfig) -> Result<PathBuf> {
    let d = &config.data;
    let dir = cache_dir(loaded)?;
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

/// The CNN trained on the pooled training images for as many epochs as a
/// hospital trains over the whole run (rounds x local epochs).
pub fn centralized_baseline(
    loaded: &Loaded,
    config: &TaskConfig,
    train: &ImageSet,
    held_out: &ImageSet,
    cnn: CnnConfig,
) -> Result<Metrics> {
    let seed = loaded.config.run.seed;
    let epochs = config.effective_rounds(&loaded.config.run) * config.training.local_epochs;
    let mut learner = CnnLearner::new("centralized", train.clone(), cnn)?;
    let mut evaluator = CnnEvaluator::new(held_out.clone(), cnn, seed)?;
    let init = Arc::new(evaluator.init_params());
    let update = learner.train(
        &GlobalModel {
            params: init.clone(),
            standardizer: None,
        },
        &TrainPlan {
            round: 1,
            local_epochs: epochs,
            batch_size: config.training.batch_size,
            learning_rate: config.training.learning_rate,
            l2: config.training.l2,
            seed,
        },
    )?;
    let mut trained = (*init).clone();
    trained.add_assign(&update.delta)?;
    Ok(evaluator.evaluate(&GlobalModel {
        params: Arc::new(trained),
        standardizer: None,
    })?)
}
