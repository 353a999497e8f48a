//! Task kinds. A kind of hospital data (`tabular`, `imaging`, `columnar`)
//! is one module implementing three traits:
//!
//! - `TaskKind`: prepares a task of that kind from the config — loaded, the
//!   held-out set put aside for the coordinator, the rest partitioned into
//!   hospitals — and reads a cluster hospital's own files;
//! - `TaskData`: the prepared task, as the coordinator and the simulation
//!   see it (sizes, shards, evaluators, scaling, the centralized baseline);
//! - `SiteData`: one hospital's share, which builds its learner.
//!
//! `kind_of` is the one place a configured kind meets its implementation.

pub mod columnar;
pub mod imaging;
pub mod tabular;

use std::path::Path;

use anyhow::{bail, Context, Result};

use medfed_actors::coordinator::Scaling;
use medfed_models::data::partition::Shards;
use medfed_models::data::Partition;
use medfed_models::learner::logistic::LocalDp;
use medfed_models::learner::{DpLearner, Evaluator, Learner};
use medfed_models::metrics::Metrics;
use medfed_models::privacy::fingerprint::DataFingerprint;
use medfed_models::privacy::mechanisms::NoiseSource;

use crate::config::{HospitalKind, Loaded, PartitionScheme, PrivacyConfig, TaskConfig};

/// A kind of hospital data.
pub trait TaskKind: Sync {
    /// The kind's name in the config (`kind = "..."`).
    fn name(&self) -> &'static str;

    /// Load the task's data, split off the held-out set and partition the
    /// rest into `config.hospitals` shards.
    fn prepare(&self, loaded: &Loaded, name: &str, config: &TaskConfig) -> Result<Box<dyn TaskData>>;

    /// A cluster hospital's own data file (`medfed hospital --data PATH`):
    /// its training share and its local test split.
    fn own_data(&self, _loaded: &Loaded, task: &str, _path: &Path) -> Result<OwnData> {
        bail!(
            "--data takes a CSV, for tabular tasks; '{task}' is {} (use --shard I/K)",
            self.name()
        )
    }
}

/// A hospital's own data: what it trains on and what it tests on.
pub struct OwnData {
    pub site: Box<dyn SiteData>,
    pub local_test: Box<dyn Evaluator>,
    /// The counters of a streamed table's reads (columnar), for progress
    /// logs and the hospital's /metrics.
    pub progress: Option<std::sync::Arc<medfed_models::data::columnar::StreamProgress>>,
    /// Its model's input columns, in order (tables).
    pub features: Option<Vec<String>>,
    /// The kind of learner it trains with, when not the task's (a CSV
    /// hospital in a columnar task is "tabular", and the other way round).
    pub kind: Option<&'static str>,
}

/// The implementation of a configured kind.
pub fn kind_of(kind: HospitalKind) -> Result<&'static dyn TaskKind> {
    match kind {
        HospitalKind::Tabular => Ok(&tabular::Tabular),
        HospitalKind::Imaging => Ok(&imaging::Imaging),
        HospitalKind::Columnar => Ok(&columnar::Columnar),
    }
}

/// A task's data, prepared: held-out set and shards.
pub trait TaskData: Send + Sync {
    fn hospital_count(&self) -> usize;
    /// The model's input columns, in order (tables); `None` for images.
    fn feature_names(&self) -> Option<Vec<String>> {
        None
    }
    /// Examples in the training pool and in the held-out set.
    fn sizes(&self) -> (usize, usize);
    /// What one example is, for tables ("rows", "images").
    fn unit(&self) -> &'static str;
    /// How `centralized_baseline` trains, for tables.
    fn baseline_method(&self) -> &'static str;
    /// Hospital `index`'s share.
    fn site(&self, index: usize) -> Option<Box<dyn SiteData>>;
    /// Hospital `index`'s local test split: its share of the held-out set,
    /// partitioned once like the training data (`None` when the share is
    /// empty: more hospitals than held-out examples). `seed` as `evaluator`'s.
    fn local_test(&self, index: usize, seed: u64) -> Result<Option<Box<dyn Evaluator>>>;
    /// Identifies the held-out set (see `PreparedTask::held_out_fingerprint`).
    fn held_out_fingerprint(&self) -> String;
    /// The coordinator's evaluation on the held-out set; `seed` fixes the
    /// initial global model.
    fn evaluator(&self, seed: u64) -> Result<Box<dyn Evaluator>>;
    /// How features are scaled for this task under `privacy`.
    fn scaling(&self, privacy: &PrivacyConfig) -> Result<Scaling>;
    /// The same model trained centrally on the pooled training set, on the
    /// same held-out set. For comparison only: it pools data.
    fn centralized_baseline(&self, loaded: &Loaded, config: &TaskConfig) -> Result<Metrics>;
}

/// One hospital's share of a task's data.
pub trait SiteData: Send {
    fn records(&self) -> usize;
    /// What the privacy ledger is keyed by (with the task's name); may
    /// need a pass over the data (columnar).
    fn fingerprint(&self) -> Result<DataFingerprint>;
    /// Whether, under `privacy`, it releases noised feature statistics once.
    fn releases_stats(&self, privacy: &PrivacyConfig) -> bool;
    /// The exact learner (differential privacy off).
    fn learner(self: Box<Self>, name: &str) -> Result<Box<dyn Learner>>;
    /// The learner whose every release is noised under `dp`.
    fn private_learner(
        self: Box<Self>,
        name: &str,
        dp: LocalDp,
        privacy: &PrivacyConfig,
        noise: NoiseSource,
    ) -> Result<Box<dyn DpLearner>>;
}

/// How a table task's features are scaled under `privacy`: exact federated
/// standardisation without DP; under DP the public bounds (no budget) or
/// noised statistics (charged at each hospital).
pub fn table_scaling(
    bounds: Option<&medfed_models::privacy::bounds::FeatureBounds>,
    privacy: &PrivacyConfig,
) -> Result<Scaling> {
    use crate::config::{DpScaling, PrivacyMode};
    if privacy.mode == PrivacyMode::Off || privacy.scaling == DpScaling::DpStats {
        return Ok(Scaling::Federated);
    }
    let bounds = bounds.context("differential privacy needs feature bounds")?;
    Ok(Scaling::Fixed(std::sync::Arc::new(bounds.standardizer())))
}

/// What a private table hospital releases about its features under
/// `privacy`: nothing (the public bounds scale them) or noised statistics
/// clipped to the bounds.
pub fn stats_policy(
    bounds: Option<&medfed_models::privacy::bounds::FeatureBounds>,
    privacy: &PrivacyConfig,
) -> Result<medfed_models::learner::logistic::StatsPolicy> {
    use crate::config::DpScaling;
    use medfed_models::learner::logistic::StatsPolicy;
    Ok(match privacy.scaling {
        DpScaling::PublicBounds => StatsPolicy::Withheld,
        DpScaling::DpStats => StatsPolicy::Noised {
            bounds: bounds
                .context("differential privacy needs public feature bounds")?
                .clone(),
            noise_multiplier: privacy.stats_noise_multiplier,
        },
    })
}

/// One task's data, split and partitioned, ready to be federated.
pub struct PreparedTask {
    pub name: String,
    pub config: TaskConfig,
    pub data: Box<dyn TaskData>,
}

pub fn prepare_task(loaded: &Loaded, name: &str) -> Result<PreparedTask> {
    let config = loaded
        .config
        .tasks
        .get(name)
        .with_context(|| format!("no task '{name}' in {}", loaded.source))?
        .clone();
    let data = kind_of(config.kind)
        .and_then(|kind| kind.prepare(loaded, name, &config))
        .with_context(|| format!("task '{name}'"))?;
    Ok(PreparedTask {
        name: name.to_string(),
        config,
        data,
    })
}

/// Row indices of each shard.
pub type Shares = Vec<Vec<usize>>;

/// Partitions one set (training or held-out) into `k` shards.
type Splitter<'a> = dyn Fn(&Partition, usize, u64, Shards) -> medfed_models::Result<Shares> + 'a;

/// The training set's shards and the held-out set's shares, each computed
/// once with the task's partition; errors name the set and its size.
pub fn partition_sets(
    config: &TaskConfig,
    seed: u64,
    train: (usize, &Splitter<'_>),
    held_out: (usize, &Splitter<'_>),
) -> Result<(Shares, Shares)> {
    let partition = partition_of(config);
    let k = config.hospitals;
    let (train_rows, split_train) = train;
    let shards = split_train(&partition, k, seed, Shards::NonEmpty).with_context(|| {
        format!("partitioning the training set ({train_rows} examples) into {k} hospitals")
    })?;
    let (held_out_rows, split_held_out) = held_out;
    let shares = split_held_out(&partition, k, seed, Shards::MayBeEmpty).with_context(|| {
        format!("partitioning the held-out set ({held_out_rows} examples) into {k} local test splits")
    })?;
    Ok((shards, shares))
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

/// The held-out set's identity: its size and a CRC-32 of its values (each
/// as little-endian bytes) and labels. Equal on every node that split the
/// same data with the same seed and test fraction.
pub fn held_out_fingerprint<const N: usize>(
    values: impl Iterator<Item = [u8; N]>,
    labels: &[bool],
) -> String {
    let mut crc = crc32fast::Hasher::new();
    values.for_each(|v| crc.update(&v));
    crc.update(&labels.iter().map(|&l| u8::from(l)).collect::<Vec<_>>());
    format!("{} examples, crc32 {:08x}", labels.len(), crc.finalize())
}

impl PreparedTask {
    pub fn hospital_name(&self, index: usize) -> String {
        format!("{}-{}", self.name, index + 1)
    }

    pub fn hospital_count(&self) -> usize {
        self.data.hospital_count()
    }

    pub fn sizes(&self) -> (usize, usize) {
        self.data.sizes()
    }

    pub fn unit(&self) -> &'static str {
        self.data.unit()
    }

    pub fn baseline_method(&self) -> &'static str {
        self.data.baseline_method()
    }

    pub fn site(&self, index: usize) -> Option<Box<dyn SiteData>> {
        self.data.site(index)
    }

    /// Hospital `index`'s local test split for federated evaluation: its
    /// share of the held-out set, partitioned like the training data. With
    /// IID partitioning the shares together are exactly the held-out set.
    pub fn local_test(&self, index: usize, seed: u64) -> Result<Option<Box<dyn Evaluator>>> {
        self.data.local_test(index, seed)
    }

    /// Identifies the held-out set; a cluster hospital whose shard was split
    /// from another one could be training on held-out rows.
    pub fn held_out_fingerprint(&self) -> String {
        self.data.held_out_fingerprint()
    }

    pub fn evaluator(&self, seed: u64) -> Result<Box<dyn Evaluator>> {
        self.data.evaluator(seed)
    }

    pub fn scaling(&self, loaded: &Loaded) -> Result<Scaling> {
        self.data
            .scaling(&loaded.config.privacy)
            .with_context(|| format!("task '{}'", self.name))
    }

    /// The baseline pools every hospital's rows, which differential privacy
    /// exists to prevent: refused with DP on.
    pub fn check_baseline_allowed(loaded: &Loaded) -> Result<()> {
        let mode = loaded.config.privacy.mode;
        if mode != crate::config::PrivacyMode::Off {
            anyhow::bail!(
                "--baseline trains a non-private model on the pooled data of every hospital, which \
                 differential privacy exists to prevent; it is refused with privacy.mode = \"{}\". \
                 Run the baseline without DP (a simulation-only comparison)",
                mode.name()
            );
        }
        Ok(())
    }

    pub fn centralized_baseline(&self, loaded: &Loaded) -> Result<Metrics> {
        self.data
            .centralized_baseline(loaded, &self.config)
            .with_context(|| format!("task '{}': centralized baseline", self.name))
    }
}
