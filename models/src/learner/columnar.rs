//! Logistic regression over a table streamed from Parquet (`columnar`
//! hospitals): the same model, per-example gradients, optimiser step and
//! DP-SGD step as the in-memory tabular learner (`logistic`), fed by row
//! groups decoded in parallel instead of a matrix. The table is never held
//! in memory: a pass keeps a few decoded row groups at a time.

use std::sync::Arc;

use ndarray::ArrayView1;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::logistic::{layout, Coefficients, LocalDp, StatsPolicy};
use super::tabular::check_standardizer;
use super::{DpLearner, Evaluator, GlobalModel, Learner, LocalUpdate, Release, RoundCost, TrainPlan};
use crate::data::columnar::Table;
use crate::data::{MomentSums, Standardizer};
use crate::error::{ModelError, Result};
use crate::metrics::{binary_metrics, Metrics};
use crate::params::{Layout, Params};
use crate::privacy::fingerprint::{table_record_digest, DataFingerprint};
use crate::privacy::mechanisms::{
    dp_sgd_steps, poisson_sample, DpSgdModel, DpSgdSettings, NoiseSource, Noised,
};

/// How a columnar hospital trains in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    /// `local_epochs` passes of mini-batch SGD: row groups in a seeded
    /// random order, rows shuffled within each decoded batch.
    #[default]
    MiniBatch,
    /// `local_epochs` full-batch gradient steps, each one parallel pass.
    FullBatch,
}

/// Memory DP-SGD may use to hold the rows sampled for its coming steps
/// (rows are gathered in one pass per this much; see `train_dp_sgd`).
const GATHER_BUDGET_BYTES: usize = 256 << 20;

/// A hospital's table and what one pass over it established: the record
/// count per row group (after nulls and the split), and the exact moment
/// sums for federated standardisation.
#[derive(Clone)]
pub struct ColumnarData {
    name: String,
    table: Table,
    threads: usize,
    mode: StreamMode,
    group_records: Vec<u64>,
    records: usize,
    sums: MomentSums,
    fingerprint: std::sync::OnceLock<DataFingerprint>,
}

impl ColumnarData {
    /// Scan `table` once (on `threads` threads) for its counts and sums.
    /// `name` seeds the hospital's shuffling stream.
    pub fn scan(name: impl Into<String>, table: Table, threads: usize, mode: StreamMode) -> Result<Self> {
        let d = table.features().len();
        let order: Vec<usize> = (0..table.groups().len()).collect();
        table.progress().pass_started();
        let parts = table.fold_groups(
            &order,
            threads,
            |_| MomentSums {
                count: 0.0,
                sum: vec![0.0; d],
                sum_sq: vec![0.0; d],
            },
            |acc, block| {
                acc.count += block.len() as f64;
                for (row, _) in block.rows() {
                    for ((s, q), &v) in acc.sum.iter_mut().zip(acc.sum_sq.iter_mut()).zip(row) {
                        *s += v;
                        *q += v * v;
                    }
                }
                Ok(())
            },
        )?;
        let group_records: Vec<u64> = parts.iter().map(|(_, read)| read.rows).collect();
        let records = group_records.iter().sum::<u64>() as usize;
        let sums = MomentSums::combine(parts.iter().map(|(s, _)| s))?;
        Ok(Self {
            name: name.into(),
            table,
            threads,
            mode,
            group_records,
            records,
            sums,
            fingerprint: std::sync::OnceLock::new(),
        })
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same data under another hospital name (its shuffling stream).
    pub fn renamed(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn records(&self) -> usize {
        self.records
    }

    pub fn n_features(&self) -> usize {
        self.table.features().len()
    }

    pub fn moment_sums(&self) -> &MomentSums {
        &self.sums
    }

    /// The content fingerprint of the records (the privacy ledger's key):
    /// the same as the tabular kind's for the same rows. One pass; keeps
    /// 32 bytes per record while it sorts them.
    pub fn fingerprint(&self) -> Result<DataFingerprint> {
        if let Some(print) = self.fingerprint.get() {
            return Ok(print.clone());
        }
        let print = self.compute_fingerprint()?;
        Ok(self.fingerprint.get_or_init(|| print).clone())
    }

    fn compute_fingerprint(&self) -> Result<DataFingerprint> {
        let order: Vec<usize> = (0..self.table.groups().len()).collect();
        self.table.progress().pass_started();
        let parts = self.table.fold_groups(
            &order,
            self.threads,
            |_| Vec::new(),
            |acc, block| {
                acc.extend(
                    block
                        .rows()
                        .map(|(row, label)| table_record_digest(row.iter().copied(), label)),
                );
                Ok(())
            },
        )?;
        let mut digests = Vec::with_capacity(self.records);
        for (part, _) in parts {
            digests.extend(part);
        }
        Ok(DataFingerprint::of_digests(digests))
    }

    /// The model's coefficients and scaler for this table, checked.
    fn prepare(&self, global: &GlobalModel) -> Result<(Coefficients, Scaler)> {
        let coef = Coefficients::from_params(&global.params)?;
        if coef.weight.len() != self.n_features() {
            return Err(ModelError::Params(format!(
                "global model has {} weights, this hospital has {} features",
                coef.weight.len(),
                self.n_features()
            )));
        }
        Ok((
            coef,
            Scaler::new(self.table.features(), global.standardizer.as_ref())?,
        ))
    }

    fn all_groups(&self) -> Vec<usize> {
        (0..self.table.groups().len()).collect()
    }

    /// The summed log-loss gradient over every record, and the summed loss:
    /// one parallel pass, combined in row-group order (the same result
    /// whatever the thread count).
    pub fn gradient(&self, coef: &Coefficients, scaler: &Scaler) -> Result<(Vec<f64>, f64)> {
        let d = self.n_features();
        self.table.progress().pass_started();
        let parts = self.table.fold_groups(
            &self.all_groups(),
            self.threads,
            |_| (vec![0.0; d + 1], 0.0, vec![0.0; d]),
            |(grad, loss, z), block| {
                for (row, y) in block.rows() {
                    scaler.apply(row, z);
                    *loss += coef.add_example_gradient(ArrayView1::from(&z[..]), y, grad);
                }
                Ok(())
            },
        )?;
        let mut total = vec![0.0; d + 1];
        let mut loss = 0.0;
        for ((grad, part_loss, _), _) in &parts {
            total.iter_mut().zip(grad).for_each(|(t, g)| *t += g);
            loss += part_loss;
        }
        Ok((total, loss))
    }

    /// A round's local training from `coef` (the global model); returns the
    /// mean loss of the last epoch.
    fn train(&self, coef: &mut Coefficients, scaler: &Scaler, plan: &TrainPlan) -> Result<f64> {
        if self.records == 0 {
            return Err(ModelError::Data(format!(
                "{}: no records to train on (every row was dropped or held out)",
                self.name
            )));
        }
        match self.mode {
            StreamMode::MiniBatch => {
                let mut rng = ChaCha8Rng::seed_from_u64(plan.stream_seed(&self.name));
                self.sgd(coef, scaler, plan, &mut rng)
            }
            StreamMode::FullBatch => self.full_batch(coef, scaler, plan),
        }
    }

    /// Mini-batch SGD over the stream: each epoch visits the row groups in
    /// a seeded random order and the rows of each decoded batch in a seeded
    /// random order; a mini-batch may span batches.
    fn sgd(
        &self,
        coef: &mut Coefficients,
        scaler: &Scaler,
        plan: &TrainPlan,
        rng: &mut ChaCha8Rng,
    ) -> Result<f64> {
        let d = self.n_features();
        let batch = plan.batch_size.max(1);
        let anchor = coef.clone();
        let mut grad = vec![0.0; d + 1];
        let mut z = vec![0.0; d];
        let mut order_in_block: Vec<usize> = Vec::new();
        let mut last_loss = 0.0;
        for _ in 0..plan.local_epochs {
            let mut groups = self.all_groups();
            groups.shuffle(rng);
            let mut loss = 0.0;
            let mut pending = 0usize;
            self.table.progress().pass_started();
            self.table.stream_groups(&groups, self.threads, |block| {
                order_in_block.clear();
                order_in_block.extend(0..block.len());
                order_in_block.shuffle(rng);
                for &i in &order_in_block {
                    scaler.apply(block.row(i), &mut z);
                    loss += coef.add_example_gradient(ArrayView1::from(&z[..]), block.labels[i], &mut grad);
                    pending += 1;
                    if pending == batch {
                        coef.step(&anchor, &grad, plan.learning_rate / batch as f64, plan);
                        grad.iter_mut().for_each(|g| *g = 0.0);
                        pending = 0;
                    }
                }
                Ok(())
            })?;
            if pending > 0 {
                coef.step(&anchor, &grad, plan.learning_rate / pending as f64, plan);
                grad.iter_mut().for_each(|g| *g = 0.0);
            }
            last_loss = loss / self.records as f64;
        }
        Ok(last_loss)
    }

    /// `local_epochs` steps on the full gradient.
    fn full_batch(&self, coef: &mut Coefficients, scaler: &Scaler, plan: &TrainPlan) -> Result<f64> {
        let anchor = coef.clone();
        let mut last_loss = 0.0;
        for _ in 0..plan.local_epochs {
            let (grad, loss) = self.gradient(coef, scaler)?;
            coef.step(&anchor, &grad, plan.learning_rate / self.records as f64, plan);
            last_loss = loss / self.records as f64;
        }
        Ok(last_loss)
    }

    /// The model's probabilities and the labels of every record (8 + 1
    /// bytes per record: the metrics need them all for the AUC).
    fn predictions(&self, global: &GlobalModel) -> Result<(Vec<f64>, Vec<bool>)> {
        let (coef, scaler) = self.prepare(global)?;
        let d = self.n_features();
        self.table.progress().pass_started();
        let parts = self.table.fold_groups(
            &self.all_groups(),
            self.threads,
            |_| (Vec::new(), Vec::new(), vec![0.0; d]),
            |(probs, labels, z), block| {
                for (row, y) in block.rows() {
                    scaler.apply(row, z);
                    probs.push(super::logistic::sigmoid(coef.logit(ArrayView1::from(&z[..]))));
                    labels.push(y);
                }
                Ok(())
            },
        )?;
        let mut probs = Vec::with_capacity(self.records);
        let mut labels = Vec::with_capacity(self.records);
        for ((p, l, _), _) in parts {
            probs.extend(p);
            labels.extend(l);
        }
        Ok((probs, labels))
    }

    fn evaluate(&self, global: &GlobalModel) -> Result<Metrics> {
        let (probs, labels) = self.predictions(global)?;
        if labels.is_empty() {
            return Err(ModelError::Data(format!(
                "{}: no records to evaluate on",
                self.name
            )));
        }
        Ok(binary_metrics(&probs, &labels))
    }

    /// The records at `wanted` — (position in the stream's natural order,
    /// slot), sorted by position — standardised, into row `slot` of `out`
    /// (row-major) and `labels`. One parallel pass.
    pub(crate) fn gather(
        &self,
        wanted: &[(usize, usize)],
        scaler: &Scaler,
        out: &mut [f64],
        labels: &mut [bool],
    ) -> Result<()> {
        let d = self.n_features();
        let mut offsets = Vec::with_capacity(self.group_records.len());
        let mut at = 0usize;
        for &n in &self.group_records {
            offsets.push(at);
            at += n as usize;
        }
        self.table.progress().pass_started();
        let parts = self.table.fold_groups(
            &self.all_groups(),
            self.threads,
            |g| Gathering {
                next: offsets[g],
                cursor: wanted.partition_point(|&(w, _)| w < offsets[g]),
                rows: Vec::new(),
                slots: Vec::new(),
                labels: Vec::new(),
                z: vec![0.0; d],
            },
            |acc, block| {
                for (row, y) in block.rows() {
                    while let Some(&(_, slot)) = wanted.get(acc.cursor).filter(|(w, _)| *w == acc.next) {
                        scaler.apply(row, &mut acc.z);
                        acc.rows.extend_from_slice(&acc.z);
                        acc.slots.push(slot);
                        acc.labels.push(y);
                        acc.cursor += 1;
                    }
                    acc.next += 1;
                }
                Ok(())
            },
        )?;
        for (g, (part, _)) in parts.into_iter().enumerate() {
            if part.next != offsets[g] + self.group_records[g] as usize {
                return Err(ModelError::Data(format!(
                    "{}: the data changed while training (a row group now holds {} usable rows, it held {})",
                    self.name,
                    part.next - offsets[g],
                    self.group_records[g]
                )));
            }
            for ((row, &slot), &y) in part
                .rows
                .chunks_exact(d.max(1))
                .zip(&part.slots)
                .zip(&part.labels)
            {
                out[slot * d..(slot + 1) * d].copy_from_slice(row);
                labels[slot] = y;
            }
        }
        Ok(())
    }

    /// DP-SGD over the stream: each step's Poisson sample is drawn over the
    /// record count, the sampled rows of as many coming steps as fit
    /// `GATHER_BUDGET_BYTES` are gathered in one pass, and the steps run on
    /// them with the shared DP-SGD step (clip, sum, noise, normalise).
    fn train_dp_sgd(
        &self,
        coef: Coefficients,
        scaler: &Scaler,
        plan: &TrainPlan,
        settings: &DpSgdSettings,
        public_count: f64,
        noise: &mut NoiseSource,
    ) -> Result<Noised<Coefficients>> {
        let d = self.n_features();
        let per_row = 2 * 8 * d.max(1) + 2 * std::mem::size_of::<usize>();
        let budget_rows = (GATHER_BUDGET_BYTES / per_row).max(1);
        let mut model = Gathered {
            anchor: coef.clone(),
            coef,
            plan,
            rows: Vec::new(),
            labels: Vec::new(),
            d,
        };
        dp_sgd_steps(d + 1, public_count, settings, noise, |steps, noise| {
            let mut done = 0u64;
            while done < settings.local_steps {
                let mut batches: Vec<Vec<usize>> = Vec::new();
                let mut total = 0usize;
                while done + (batches.len() as u64) < settings.local_steps
                    && (batches.is_empty() || total < budget_rows)
                {
                    let batch = poisson_sample(self.records, settings.sampling_rate, noise);
                    total += batch.len();
                    batches.push(batch);
                }
                let mut wanted: Vec<(usize, usize)> = Vec::with_capacity(total);
                for batch in &batches {
                    for &i in batch {
                        wanted.push((i, wanted.len()));
                    }
                }
                wanted.sort_unstable();
                model.rows.clear();
                model.rows.resize(total * d, 0.0);
                model.labels.clear();
                model.labels.resize(total, false);
                self.gather(&wanted, scaler, &mut model.rows, &mut model.labels)?;
                let mut start = 0;
                for batch in &batches {
                    let slots: Vec<usize> = (start..start + batch.len()).collect();
                    steps.step(&mut model, &slots, noise)?;
                    start += batch.len();
                }
                done += batches.len() as u64;
            }
            Ok(model.coef)
        })
    }
}

/// One row group's share of a gather.
struct Gathering {
    /// Stream position of the next row.
    next: usize,
    /// Next entry of `wanted` to look for.
    cursor: usize,
    rows: Vec<f64>,
    slots: Vec<usize>,
    labels: Vec<bool>,
    z: Vec<f64>,
}

/// DP-SGD's view of gathered rows: per-example gradients and the shared
/// optimiser step (L2 and FedProx are post-processing of the noised mean).
struct Gathered<'a> {
    coef: Coefficients,
    anchor: Coefficients,
    plan: &'a TrainPlan,
    rows: Vec<f64>,
    labels: Vec<bool>,
    d: usize,
}

impl DpSgdModel for Gathered<'_> {
    fn dim(&self) -> usize {
        self.d + 1
    }

    fn example_gradient(&mut self, i: usize, out: &mut [f64]) -> Result<()> {
        let row = &self.rows[i * self.d..(i + 1) * self.d];
        self.coef
            .example_gradient(ArrayView1::from(row), self.labels[i], out);
        Ok(())
    }

    fn step(&mut self, g: &[f64]) -> Result<()> {
        self.coef
            .step(&self.anchor, g, self.plan.learning_rate, self.plan);
        Ok(())
    }
}

/// A columnar hospital's learner with differential privacy off.
pub struct ColumnarLearner {
    data: ColumnarData,
}

impl ColumnarLearner {
    pub fn new(data: ColumnarData) -> Result<Self> {
        if data.records() == 0 {
            return Err(ModelError::Data("a hospital needs at least one record".into()));
        }
        Ok(Self { data })
    }

    /// The same learner training privately (see `LogisticLearner::with_privacy`).
    pub fn with_privacy(
        self,
        dp: LocalDp,
        stats: StatsPolicy,
        noise: NoiseSource,
    ) -> Result<DpColumnarLearner> {
        dp.validate()?;
        if matches!(dp, LocalDp::Update { .. }) && matches!(stats, StatsPolicy::Noised { .. }) {
            return Err(ModelError::Invalid(
                "noised feature statistics protect single records, not the whole dataset that \
                 update-level DP protects: use the public feature bounds with update-level DP"
                    .into(),
            ));
        }
        let fingerprint = self.data.fingerprint()?;
        Ok(DpColumnarLearner {
            data: self.data,
            dp,
            noise,
            stats,
            fingerprint,
        })
    }
}

impl Learner for ColumnarLearner {
    fn layout(&self) -> Arc<Layout> {
        layout(self.data.n_features())
    }

    fn num_examples(&self) -> usize {
        self.data.records()
    }

    fn feature_stats(&mut self) -> Result<Option<MomentSums>> {
        Ok(Some(self.data.moment_sums().clone()))
    }

    fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<LocalUpdate> {
        plan.validate()?;
        let (mut coef, scaler) = self.data.prepare(global)?;
        let train_loss = self.data.train(&mut coef, &scaler, plan)?;
        Ok(LocalUpdate {
            delta: coef.to_params().sub(&global.params)?,
            num_examples: self.data.records(),
            train_loss: Some(train_loss),
            release: Release::NonPrivate,
            privacy: None,
        })
    }

    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics> {
        self.data.evaluate(global)
    }
}

/// A columnar hospital's learner training under DP.
pub struct DpColumnarLearner {
    data: ColumnarData,
    dp: LocalDp,
    noise: NoiseSource,
    stats: StatsPolicy,
    fingerprint: DataFingerprint,
}

impl DpLearner for DpColumnarLearner {
    fn layout(&self) -> Arc<Layout> {
        layout(self.data.n_features())
    }

    fn local_records(&self) -> usize {
        self.data.records()
    }

    fn fingerprint(&self) -> DataFingerprint {
        self.fingerprint.clone()
    }

    fn local_dp(&self) -> LocalDp {
        self.dp
    }

    fn set_noise_multiplier(&mut self, sigma: f64) {
        self.dp = self.dp.with_noise_multiplier(sigma);
    }

    fn train_private(
        &mut self,
        global: &GlobalModel,
        plan: &TrainPlan,
        public_count: Option<u64>,
    ) -> Result<Noised<Params>> {
        plan.validate()?;
        let (mut coef, scaler) = self.data.prepare(global)?;
        match self.dp.dp_sgd_settings() {
            Some(settings) => {
                let count = public_count
                    .ok_or_else(|| ModelError::Invalid("DP-SGD needs the released record count".into()))?;
                let trained =
                    self.data
                        .train_dp_sgd(coef, &scaler, plan, &settings, count as f64, &mut self.noise)?;
                trained.try_map(|coef| coef.to_params().sub(&global.params))
            }
            None => {
                // Shuffling is not private and need not be: the whole delta is noised.
                self.data.train(&mut coef, &scaler, plan)?;
                self.dp
                    .release_update(&coef.to_params().sub(&global.params)?, &mut self.noise)
            }
        }
    }

    fn stats_cost(&self) -> Option<RoundCost> {
        self.stats.cost()
    }

    fn private_stats(&mut self) -> Result<Option<Noised<MomentSums>>> {
        let StatsPolicy::Noised {
            bounds,
            noise_multiplier,
        } = &self.stats
        else {
            return Ok(None);
        };
        let table = self.data.table();
        let order: Vec<usize> = (0..table.groups().len()).collect();
        table.progress().pass_started();
        let parts = table.fold_groups(
            &order,
            self.data.threads,
            |_| bounds.clipped_sums(),
            |exact, block| {
                for (row, _) in block.rows() {
                    bounds.add_clipped(row.iter().copied(), exact);
                }
                Ok(())
            },
        )?;
        let mut exact = bounds.clipped_sums();
        for (part, _) in &parts {
            exact.iter_mut().zip(part).for_each(|(e, p)| *e += p);
        }
        Ok(Some(bounds.release_clipped(
            exact,
            *noise_multiplier,
            &mut self.noise,
        )?))
    }
}

/// The coordinator's evaluation on a held-out table (a columnar task's
/// test side, streamed the same way).
pub struct ColumnarEvaluator {
    data: ColumnarData,
}

impl ColumnarEvaluator {
    pub fn new(data: ColumnarData) -> Result<Self> {
        if data.records() == 0 {
            return Err(ModelError::Data("the held-out test set is empty".into()));
        }
        Ok(Self { data })
    }
}

impl Evaluator for ColumnarEvaluator {
    fn init_params(&self) -> Params {
        Params::zeros(layout(self.data.n_features()))
    }

    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics> {
        self.data.evaluate(global)
    }
}

/// Per-row standardisation with the coordinator's scaler (checked), or the
/// identity without one: `z = (x - mean) * (1 / std)`, the reciprocal
/// computed once (a division per value would cost more than the rest of
/// the gradient; the result differs from `Standardizer::apply`'s division
/// by at most an ulp).
pub struct Scaler(Option<(Vec<f64>, Vec<f64>)>);

impl Scaler {
    pub fn new(features: &[String], standardizer: Option<&Arc<Standardizer>>) -> Result<Self> {
        if let Some(s) = standardizer {
            check_standardizer(features, s)?;
        }
        Ok(Self(standardizer.map(|s| {
            (s.mean.clone(), s.std.iter().map(|sd| 1.0 / sd).collect())
        })))
    }

    pub fn apply(&self, row: &[f64], z: &mut [f64]) {
        match &self.0 {
            Some((mean, inverse)) => {
                for (((z, &x), &m), &r) in z.iter_mut().zip(row).zip(mean).zip(inverse) {
                    *z = (x - m) * r;
                }
            }
            None => z.copy_from_slice(row),
        }
    }
}
