//! Columnar tasks: Parquet tables too large for memory, streamed by row
//! group. The held-out set is the test side of a row-hash split (decided
//! per row while streaming); in-process hospitals get row-group ranges
//! ("iid") or ranges of a sorted column ("sorted"); a cluster hospital
//! streams its own files (`medfed hospital --data PATH|s3://...`).

pub mod storage;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use medfed_actors::coordinator::Scaling;
use medfed_models::data::columnar::{
    default_threads, HashSplit, NullPolicy, RowFilter, Side, StreamProgress, Table, TableSpec,
};
use medfed_models::learner::columnar::{ColumnarData, ColumnarEvaluator, ColumnarLearner, StreamMode};
use medfed_models::learner::logistic::LocalDp;
use medfed_models::learner::{DpLearner, Evaluator, Learner, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::privacy::bounds::FeatureBounds;
use medfed_models::privacy::fingerprint::DataFingerprint;
use medfed_models::privacy::mechanisms::NoiseSource;

use super::{OwnData, SiteData, TaskData, TaskKind};
use crate::config::{DpScaling, Loaded, PartitionScheme, PrivacyConfig, TaskConfig};

pub struct Columnar;

/// How this task's tables are read and trained on.
#[derive(Clone)]
struct Reading {
    spec: TableSpec,
    threads: usize,
    mode: StreamMode,
    /// Public feature bounds (DP), loaded for the table's features.
    bounds_file: Option<std::path::PathBuf>,
}

/// A columnar task, prepared: each hospital's scanned share of the
/// training side, and the held-out side.
pub struct ColumnarTask {
    features: Vec<String>,
    hospitals: Vec<ColumnarData>,
    /// Each hospital's share of the held-out side (scanned when asked).
    local_tests: Vec<Table>,
    /// The pooled training side (the centralized baseline's rows).
    train: Table,
    held_out: ColumnarData,
    held_out_print: String,
    reading: Reading,
    bounds: Option<Arc<FeatureBounds>>,
}

/// One hospital's share.
pub struct ColumnarSite {
    data: ColumnarData,
    bounds: Option<Arc<FeatureBounds>>,
}

/// The task's `data.path` as a location string: an `s3://` URL as given,
/// a local path resolved against the config's directory.
fn location(loaded: &Loaded, name: &str, config: &TaskConfig) -> Result<String> {
    let path = config
        .data
        .path
        .as_deref()
        .with_context(|| format!("tasks.{name}.data needs path, label_column and positive_class"))?;
    let shown = path
        .to_str()
        .with_context(|| format!("{}: not valid UTF-8", path.display()))?;
    Ok(if storage::is_remote(shown) {
        shown.to_string()
    } else {
        loaded.resolve(path).display().to_string()
    })
}

fn reading(loaded: &Loaded, name: &str, config: &TaskConfig) -> Result<Reading> {
    let d = &config.data;
    let (Some(label_column), Some(positive_class)) = (&d.label_column, &d.positive_class) else {
        bail!("tasks.{name}.data needs label_column and positive_class");
    };
    Ok(Reading {
        spec: TableSpec {
            label_column: label_column.clone(),
            positive_class: positive_class.clone(),
            features: d.features.clone(),
            nulls: d.nulls.unwrap_or(NullPolicy::Error),
        },
        threads: config.training.threads.unwrap_or_else(default_threads),
        mode: config.training.gradient.unwrap_or_default(),
        bounds_file: d.feature_bounds.as_ref().map(|p| loaded.resolve(p)),
    })
}

/// Open the table at `location` and the public bounds of its features.
fn open_table(location: &str, reading: &Reading) -> Result<(Table, Option<Arc<FeatureBounds>>)> {
    let sources = storage::open(location)?;
    let table = Table::open(sources, &reading.spec, None)?;
    let bounds = reading
        .bounds_file
        .as_ref()
        .map(|path| FeatureBounds::load(path, table.features()).map(Arc::new))
        .transpose()?;
    Ok((table, bounds))
}

impl TaskKind for Columnar {
    fn name(&self) -> &'static str {
        "columnar"
    }

    fn prepare(&self, loaded: &Loaded, name: &str, config: &TaskConfig) -> Result<Box<dyn TaskData>> {
        let seed = loaded.config.run.seed;
        let mut reading = reading(loaded, name, config)?;
        if config.training.threads.is_none() {
            // In one process the hospitals share the cores (and each open
            // reader holds a page of every read column).
            reading.threads = (default_threads() / config.hospitals.max(1)).max(1);
        }
        let location = location(loaded, name, config)?;
        let (table, bounds) = open_table(&location, &reading).context("loading its data")?;
        let split = HashSplit::new(seed, config.data.test_fraction, Side::Train)?;
        let train = table.clone().with_filter(RowFilter::Split(split));
        let held_out = table.with_filter(RowFilter::Split(split.other()));
        let k = config.hospitals;
        // Each hospital's training share and local test share, as views.
        let shares: Vec<(Table, Table)> = match config.partition.scheme {
            PartitionScheme::Iid => {
                let groups = train.groups().len();
                if groups < k {
                    bail!(
                        "the table has {groups} row groups, fewer than the {k} hospitals it is split \
                         into by row-group ranges: write it with smaller row groups (`medfed data \
                         convert --row-group-rows`) or use partition.scheme = \"sorted\""
                    );
                }
                (0..k)
                    .map(|i| -> Result<(Table, Table)> {
                        let range = i * groups / k..(i + 1) * groups / k;
                        Ok((
                            train.clone().with_group_range(range.clone())?,
                            held_out.clone().with_group_range(range)?,
                        ))
                    })
                    .collect::<Result<_>>()?
            }
            PartitionScheme::Sorted => {
                let column =
                    config.partition.feature.as_deref().with_context(|| {
                        format!("tasks.{name}.partition.feature names the column to sort by")
                    })?;
                let j = train
                    .features()
                    .iter()
                    .position(|f| f == column)
                    .with_context(|| {
                        format!(
                            "partition.feature '{column}' is not one of the features ({})",
                            train.features().join(", ")
                        )
                    })?;
                let mut values = train.feature_values(j, reading.threads)?;
                let cuts = medfed_models::data::columnar::split::quantile_cuts(&mut values, k);
                cuts.windows(2)
                    .map(|w| {
                        let range = RowFilter::Range {
                            feature: j,
                            lo: w[0],
                            hi: w[1],
                        };
                        Ok((
                            train.clone().with_filter(range),
                            held_out.clone().with_filter(range),
                        ))
                    })
                    .collect::<Result<_>>()?
            }
            PartitionScheme::Dirichlet => bail!(
                "columnar tasks are partitioned by row-group ranges (\"iid\") or a sorted column (\"sorted\")"
            ),
        };
        let mut hospitals = Vec::with_capacity(k);
        let mut local_tests = Vec::with_capacity(k);
        for (i, (share, test)) in shares.into_iter().enumerate() {
            let hospital = format!("{name}-{}", i + 1);
            // Each in-process hospital counts its own progress.
            let share = share.with_progress(Arc::new(StreamProgress::default()));
            let data = ColumnarData::scan(&hospital, share, reading.threads, reading.mode)?;
            if data.records() == 0 {
                bail!(
                    "hospital {hospital} gets no training rows from the {} partition",
                    config.partition.scheme_name()
                );
            }
            hospitals.push(data);
            local_tests.push(test);
        }
        let held_out = ColumnarData::scan("held-out", held_out, reading.threads, reading.mode)?;
        let held_out_print = held_out_fingerprint(&held_out)?;
        Ok(Box::new(ColumnarTask {
            features: held_out.table().features().to_vec(),
            hospitals,
            local_tests,
            train,
            held_out,
            held_out_print,
            reading,
            bounds,
        }))
    }

    /// The hospital's own table (`--data PATH|s3://...`): it trains on the
    /// training side of the task's row-hash split and tests on the other.
    /// A .csv file is read whole by a tabular learner, split the same way.
    fn own_data(&self, loaded: &Loaded, task: &str, path: &Path) -> Result<OwnData> {
        if is_csv(path) {
            own_csv(loaded, task, path)
        } else {
            own_parquet(loaded, task, path)
        }
    }
}

/// Whether a hospital's `--data` is a CSV file (else Parquet data: a file,
/// a directory, a glob or an s3:// location).
pub fn is_csv(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// A hospital's own Parquet data under task `task` (of either kind).
pub fn own_parquet(loaded: &Loaded, task: &str, path: &Path) -> Result<OwnData> {
    let config = &loaded.config.tasks[task];
    let reading = reading(loaded, task, config)?;
    let shown = path
        .to_str()
        .with_context(|| format!("{}: not valid UTF-8", path.display()))?;
    let (table, bounds) = open_table(shown, &reading).with_context(|| format!("--data {shown}"))?;
    let features = table.features().to_vec();
    let split = HashSplit::new(loaded.config.run.seed, config.data.test_fraction, Side::Train)?;
    let train = table.clone().with_filter(RowFilter::Split(split));
    let test = table.with_filter(RowFilter::Split(split.other()));
    let progress = train.progress().clone();
    let data = ColumnarData::scan(task, train, reading.threads, reading.mode)?;
    if data.records() == 0 {
        bail!("--data {shown}: no training rows (every row was dropped or held out)");
    }
    let test = ColumnarData::scan(task, test, reading.threads, reading.mode)?;
    Ok(OwnData {
        site: Box::new(ColumnarSite { data, bounds }),
        local_test: Box::new(ColumnarEvaluator::new(test).context("its local test split")?),
        progress: Some(progress),
        features: Some(features),
        kind: Some("columnar"),
    })
}

/// A hospital's own CSV file in a columnar task: loaded whole and trained
/// by the tabular learner, split by the task's row-hash split so that its
/// rows fall on the same side as they would streamed from Parquet.
fn own_csv(loaded: &Loaded, task: &str, path: &Path) -> Result<OwnData> {
    use medfed_models::data::csv::{load_csv, CsvSpec};
    use medfed_models::learner::logistic::LogisticEvaluator;
    let config = &loaded.config.tasks[task];
    let reading = reading(loaded, task, config)?;
    let spec = CsvSpec {
        label_column: reading.spec.label_column.clone(),
        positive_class: reading.spec.positive_class.clone(),
    };
    let mut all = load_csv(path, &spec).with_context(|| format!("--data {}", path.display()))?;
    if let Some(features) = &reading.spec.features {
        all = all
            .with_columns(features)
            .with_context(|| format!("--data {}", path.display()))?;
    }
    let split = HashSplit::new(loaded.config.run.seed, config.data.test_fraction, Side::Train)?;
    let (test_rows, train_rows): (Vec<usize>, Vec<usize>) = (0..all.len()).partition(|&i| {
        let row: Vec<f64> = all.features.row(i).to_vec();
        split.is_test(&row, all.labels[i])
    });
    let (train, test) = (all.select(&train_rows), all.select(&test_rows));
    if train.is_empty() || test.is_empty() {
        bail!(
            "--data {}: {} training and {} local test rows; both sides need rows",
            path.display(),
            train.len(),
            test.len()
        );
    }
    let bounds = reading
        .bounds_file
        .as_ref()
        .map(|p| FeatureBounds::load(p, &all.feature_names).map(Arc::new))
        .transpose()?;
    Ok(OwnData {
        features: Some(all.feature_names.clone()),
        site: Box::new(super::tabular::TabularSite::new(train, bounds)),
        local_test: Box::new(LogisticEvaluator::new(test)?),
        progress: None,
        kind: Some("tabular"),
    })
}

/// The held-out side's identity: its size and a CRC-32 of its values and
/// labels in stream order (per row group, combined in order).
fn held_out_fingerprint(held_out: &ColumnarData) -> Result<String> {
    let table = held_out.table();
    let order: Vec<usize> = (0..table.groups().len()).collect();
    let parts = table.fold_groups(
        &order,
        1,
        |_| (crc32fast::Hasher::new(), crc32fast::Hasher::new()),
        |(values, labels), block| {
            for (row, y) in block.rows() {
                row.iter().for_each(|v| values.update(&v.to_le_bytes()));
                labels.update(&[u8::from(y)]);
            }
            Ok(())
        },
    )?;
    let mut values = crc32fast::Hasher::new();
    let mut labels = crc32fast::Hasher::new();
    for ((v, l), _) in &parts {
        values.combine(v);
        labels.combine(l);
    }
    values.combine(&labels);
    Ok(format!(
        "{} examples, crc32 {:08x}",
        held_out.records(),
        values.finalize()
    ))
}

impl TaskData for ColumnarTask {
    fn hospital_count(&self) -> usize {
        self.hospitals.len()
    }

    fn feature_names(&self) -> Option<Vec<String>> {
        Some(self.features.clone())
    }

    fn sizes(&self) -> (usize, usize) {
        let train = self.hospitals.iter().map(ColumnarData::records).sum();
        (train, self.held_out.records())
    }

    fn unit(&self) -> &'static str {
        "rows"
    }

    fn baseline_method(&self) -> &'static str {
        "streamed SGD on the pooled rows"
    }

    fn site(&self, index: usize) -> Option<Box<dyn SiteData>> {
        self.hospitals.get(index).map(|data| -> Box<dyn SiteData> {
            Box::new(ColumnarSite {
                data: data.clone(),
                bounds: self.bounds.clone(),
            })
        })
    }

    fn local_test(&self, index: usize, _seed: u64) -> Result<Option<Box<dyn Evaluator>>> {
        let Some(view) = self.local_tests.get(index) else {
            return Ok(None);
        };
        let data = ColumnarData::scan(
            "local-test",
            view.clone(),
            self.reading.threads,
            self.reading.mode,
        )?;
        if data.records() == 0 {
            return Ok(None);
        }
        Ok(Some(Box::new(ColumnarEvaluator::new(data)?)))
    }

    fn held_out_fingerprint(&self) -> String {
        self.held_out_print.clone()
    }

    fn evaluator(&self, _seed: u64) -> Result<Box<dyn Evaluator>> {
        Ok(Box::new(ColumnarEvaluator::new(self.held_out.clone())?))
    }

    /// As the tabular kind: exact federated standardisation without DP;
    /// under DP the public bounds or noised statistics.
    fn scaling(&self, privacy: &PrivacyConfig) -> Result<Scaling> {
        crate::tasks::table_scaling(self.bounds.as_deref(), privacy)
    }

    /// The same model trained on the pooled training rows with the same
    /// streamed SGD, for as many epochs as the federation trains in all.
    fn centralized_baseline(&self, loaded: &Loaded, config: &TaskConfig) -> Result<Metrics> {
        use medfed_models::data::{MomentSums, Standardizer};
        use medfed_models::learner::GlobalModel;
        let sums: Vec<&MomentSums> = self.hospitals.iter().map(|h| h.moment_sums()).collect();
        let scaler = Arc::new(Standardizer::from_sums(&MomentSums::combine(sums)?)?);
        let pooled = self.train.clone();
        let data = ColumnarData::scan("baseline", pooled, self.reading.threads, self.reading.mode)?;
        let mut learner = ColumnarLearner::new(data)?;
        let rounds = config.effective_rounds(&loaded.config.run);
        let t = &config.training;
        let plan = TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: rounds.saturating_mul(t.local_epochs).max(1),
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            l2: t.l2,
            seed: loaded.config.run.seed,
            proximal_mu: 0.0,
            privacy: None,
        };
        let mut evaluator = ColumnarEvaluator::new(self.held_out.clone())?;
        let start = GlobalModel {
            params: Arc::new(evaluator.init_params()),
            standardizer: Some(scaler.clone()),
        };
        let update = learner.train(&start, &plan)?;
        let mut params = (*start.params).clone();
        params.add_assign(&update.delta)?;
        Ok(evaluator.evaluate(&GlobalModel {
            params: Arc::new(params),
            standardizer: Some(scaler),
        })?)
    }
}

impl SiteData for ColumnarSite {
    fn records(&self) -> usize {
        self.data.records()
    }

    fn fingerprint(&self) -> Result<DataFingerprint> {
        Ok(self.data.fingerprint()?)
    }

    fn releases_stats(&self, privacy: &PrivacyConfig) -> bool {
        privacy.scaling == DpScaling::DpStats
    }

    fn learner(self: Box<Self>, name: &str) -> Result<Box<dyn Learner>> {
        Ok(Box::new(ColumnarLearner::new(self.data.renamed(name))?))
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
            ColumnarLearner::new(self.data.renamed(name))?.with_privacy(dp, stats, noise)?,
        ))
    }
}
