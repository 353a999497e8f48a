//! Logistic regression: the model (`weight [d]`, `bias [1]`), closed-form
//! per-example gradients, and the local mini-batch SGD solver.

use std::sync::Arc;

use ndarray::{Array2, ArrayView1};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::tabular::StandardizedData;
use super::{DpLearner, Evaluator, GlobalModel, Learner, LocalUpdate, Release, RoundCost, TrainPlan};
use crate::data::{Dataset, MomentSums};
use crate::error::{ModelError, Result};
use crate::metrics::{binary_metrics, Metrics};
use crate::params::{Layout, Params, TensorSpec};
use crate::privacy::bounds::FeatureBounds;
use crate::privacy::fingerprint::DataFingerprint;
pub use crate::privacy::mechanisms::DpSgdSettings;
use crate::privacy::mechanisms::{dp_sgd, release_update, DpSgdModel, NoiseSource, Noised};
use crate::privacy::rdp::{compose, default_orders};

pub fn layout(n_features: usize) -> Arc<Layout> {
    Arc::new(
        Layout::new(vec![
            TensorSpec::new("weight", &[n_features]),
            TensorSpec::new("bias", &[1]),
        ])
        .expect("two distinct names"),
    )
}

/// Weights and bias in f64 for training.
#[derive(Debug, Clone, PartialEq)]
pub struct Coefficients {
    pub weight: Vec<f64>,
    pub bias: f64,
}

impl Coefficients {
    pub fn from_params(params: &Params) -> Result<Self> {
        let weight = params
            .tensor("weight")
            .ok_or_else(|| ModelError::Params("logistic model needs a 'weight' tensor".into()))?;
        let bias = params
            .tensor("bias")
            .and_then(|b| b.first().copied())
            .ok_or_else(|| ModelError::Params("logistic model needs a 'bias' tensor".into()))?;
        Ok(Self {
            weight: weight.iter().map(|&v| f64::from(v)).collect(),
            bias: f64::from(bias),
        })
    }

    pub fn to_params(&self) -> Params {
        let mut values: Vec<f32> = self.weight.iter().map(|&v| v as f32).collect();
        values.push(self.bias as f32);
        Params::new(layout(self.weight.len()), values).expect("layout matches by construction")
    }

    /// One step's FedProx pull towards `anchor` (the global model):
    /// `lr * mu * (theta - anchor)` for every parameter, computed before the
    /// step moves them.
    fn proximal_pull(&self, anchor: &Coefficients, lr_mu: f64) -> Coefficients {
        Coefficients {
            weight: self
                .weight
                .iter()
                .zip(&anchor.weight)
                .map(|(w, a)| lr_mu * (w - a))
                .collect(),
            bias: lr_mu * (self.bias - anchor.bias),
        }
    }

    fn subtract(&mut self, pull: &Coefficients) {
        self.weight
            .iter_mut()
            .zip(&pull.weight)
            .for_each(|(w, p)| *w -= p);
        self.bias -= pull.bias;
    }

    pub fn logit(&self, x: ArrayView1<f64>) -> f64 {
        let dot = match x.as_slice() {
            Some(xs) => dot(xs, &self.weight),
            None => dot(&x.to_vec(), &self.weight),
        };
        dot + self.bias
    }

    pub fn probabilities(&self, x: &Array2<f64>) -> Result<Vec<f64>> {
        if x.ncols() != self.weight.len() {
            return Err(ModelError::Params(format!(
                "model has {} weights, data has {} features",
                self.weight.len(),
                x.ncols()
            )));
        }
        Ok(x.rows().into_iter().map(|row| sigmoid(self.logit(row))).collect())
    }

    /// Add one example's log-loss gradient to `grad` (length d + 1) and
    /// return its loss: the inner loop of every logistic learner, in memory
    /// or streamed.
    pub fn add_example_gradient(&self, x: ArrayView1<f64>, y: bool, grad: &mut [f64]) -> f64 {
        let logit = self.logit(x);
        // One exp serves the sigmoid and the loss (`sigmoid`, `example_loss`
        // compute the same exp(-|z|) each).
        let e = (-logit.abs()).exp();
        let probability = if logit >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        };
        let label = if y { 1.0 } else { 0.0 };
        let residual = probability - label;
        let d = self.weight.len();
        match x.as_slice() {
            Some(xs) => grad[..d]
                .iter_mut()
                .zip(xs)
                .for_each(|(g, xi)| *g += residual * xi),
            None => grad[..d]
                .iter_mut()
                .zip(x.iter())
                .for_each(|(g, xi)| *g += residual * xi),
        }
        grad[d] += residual;
        logit.max(0.0) - logit * label + e.ln_1p()
    }

    /// One optimiser step: `weight -= grad_scale * grad + lr * l2 * weight`,
    /// `bias -= grad_scale * grad[d]`, then FedProx's pull towards `anchor`
    /// (computed before the step) when the plan sets mu. `grad_scale` is
    /// `lr / batch` for a summed gradient, `lr` for a mean one.
    pub fn step(&mut self, anchor: &Coefficients, grad: &[f64], grad_scale: f64, plan: &TrainPlan) {
        let lr_mu = plan.learning_rate * plan.proximal_mu;
        let pull = (lr_mu > 0.0).then(|| self.proximal_pull(anchor, lr_mu));
        let d = self.weight.len();
        for (w, g) in self.weight.iter_mut().zip(&grad[..d]) {
            *w -= grad_scale * g + plan.learning_rate * plan.l2 * *w;
        }
        self.bias -= grad_scale * grad[d];
        if let Some(pull) = pull {
            self.subtract(&pull);
        }
    }

    /// Gradient of one example's log-loss with respect to `[weight.., bias]`,
    /// written into `out` (length d + 1): `(sigmoid(w.x + b) - y) * [x, 1]`.
    pub fn example_gradient(&self, x: ArrayView1<f64>, y: bool, out: &mut [f64]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        self.add_example_gradient(x, y, out);
    }
}

/// The dot product in four independent partial sums: a single running sum
/// is one long chain of dependent additions, which costs more than the
/// rest of a row's gradient; four chains let the CPU overlap them.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let mut chunks_a = a.chunks_exact(4);
    let mut chunks_b = b.chunks_exact(4);
    for (x, y) in (&mut chunks_a).zip(&mut chunks_b) {
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
    }
    let tail: f64 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Numerically stable logistic function.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Log-loss of one example computed from its logit without overflow.
pub fn example_loss(logit: f64, y: bool) -> f64 {
    // -[y ln s(z) + (1-y) ln(1-s(z))] = max(z,0) - z*y + ln(1+exp(-|z|))
    let y = if y { 1.0 } else { 0.0 };
    logit.max(0.0) - logit * y + (-logit.abs()).exp().ln_1p()
}

/// Plain mini-batch SGD on the mean log-loss plus `l2/2 * |w|^2` (plus
/// FedProx's `mu/2 * |theta - theta_global|^2` when the plan sets mu; `coef`
/// starts at the global model). Returns the mean loss over the last epoch.
pub fn sgd(
    coef: &mut Coefficients,
    x: &Array2<f64>,
    y: &[bool],
    plan: &TrainPlan,
    rng: &mut ChaCha8Rng,
) -> f64 {
    let d = coef.weight.len();
    let batch = plan.batch_size.max(1);
    let mut order: Vec<usize> = (0..y.len()).collect();
    let mut grad = vec![0.0; d + 1];
    let mut last_loss = 0.0;
    let anchor = coef.clone();
    for _ in 0..plan.local_epochs {
        order.shuffle(rng);
        let mut loss = 0.0;
        for chunk in order.chunks(batch) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            for &i in chunk {
                loss += coef.add_example_gradient(x.row(i), y[i], &mut grad);
            }
            coef.step(&anchor, &grad, plan.learning_rate / chunk.len() as f64, plan);
        }
        last_loss = loss / y.len().max(1) as f64;
    }
    last_loss
}

/// How a hospital's training is made differentially private.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LocalDp {
    /// DP-SGD (Abadi et al. 2016): Poisson sampling at `sampling_rate`,
    /// per-example gradients clipped to `max_grad_norm`, Gaussian noise of
    /// `noise_multiplier * max_grad_norm` on their sum; a record-level
    /// guarantee (add/remove one record).
    DpSgd {
        sampling_rate: f64,
        max_grad_norm: f64,
        noise_multiplier: f64,
        local_steps: u64,
    },
    /// Update-level DP: the round's model delta is clipped to `max_update_norm`
    /// and noised once at sensitivity `2 * max_update_norm`; a hospital-level
    /// guarantee (the whole local dataset replaced by any other).
    Update {
        max_update_norm: f64,
        noise_multiplier: f64,
    },
}

impl LocalDp {
    /// DP-SGD's settings, or None for update-level DP.
    pub fn dp_sgd_settings(&self) -> Option<DpSgdSettings> {
        match *self {
            LocalDp::DpSgd {
                sampling_rate,
                max_grad_norm,
                noise_multiplier,
                local_steps,
            } => Some(DpSgdSettings {
                sampling_rate,
                max_grad_norm,
                noise_multiplier,
                local_steps,
            }),
            LocalDp::Update { .. } => None,
        }
    }

    pub fn mechanism(&self) -> &'static str {
        match self {
            LocalDp::DpSgd { .. } => "dp-sgd",
            LocalDp::Update { .. } => "update",
        }
    }

    pub fn noise_multiplier(&self) -> f64 {
        match *self {
            LocalDp::DpSgd { noise_multiplier, .. } | LocalDp::Update { noise_multiplier, .. } => {
                noise_multiplier
            }
        }
    }

    /// The same mechanism at noise multiplier `sigma`.
    pub fn with_noise_multiplier(self, sigma: f64) -> Self {
        match self {
            LocalDp::DpSgd {
                sampling_rate,
                max_grad_norm,
                local_steps,
                ..
            } => LocalDp::DpSgd {
                sampling_rate,
                max_grad_norm,
                noise_multiplier: sigma,
                local_steps,
            },
            LocalDp::Update { max_update_norm, .. } => LocalDp::Update {
                max_update_norm,
                noise_multiplier: sigma,
            },
        }
    }

    /// Refuse parameters no mechanism can use.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LocalDp::DpSgd {
                sampling_rate,
                max_grad_norm,
                noise_multiplier,
                local_steps,
            } => {
                crate::privacy::rdp::check_sampling_rate(sampling_rate)
                    .map_err(|e| ModelError::Invalid(e.to_string()))?;
                if !(max_grad_norm > 0.0 && noise_multiplier > 0.0 && local_steps > 0) {
                    return Err(ModelError::Invalid(
                        "DP-SGD needs a positive clipping norm, noise multiplier and step count".into(),
                    ));
                }
            }
            LocalDp::Update {
                max_update_norm,
                noise_multiplier,
            } => {
                if !(max_update_norm > 0.0 && noise_multiplier > 0.0) {
                    return Err(ModelError::Invalid(
                        "update-level DP needs a positive clipping norm and noise multiplier".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Update-level release of a model delta (see `mechanisms::release_update`).
    pub fn release_update(&self, delta: &Params, noise: &mut NoiseSource) -> Result<Noised<Params>> {
        let LocalDp::Update {
            max_update_norm,
            noise_multiplier,
        } = *self
        else {
            return Err(ModelError::Invalid(
                "only update-level DP noises whole updates".into(),
            ));
        };
        release_update(delta, max_update_norm, noise_multiplier, noise)
    }

    /// The Rényi-DP cost of one round: DP-SGD's subsampled Gaussian steps,
    /// or one Gaussian at the update's noise multiplier (its noise is already
    /// scaled to the sensitivity 2C, see `release_update`).
    pub fn round_cost(&self) -> RoundCost {
        let (q, sigma, steps) = match *self {
            LocalDp::DpSgd {
                sampling_rate,
                noise_multiplier,
                local_steps,
                ..
            } => (sampling_rate, noise_multiplier, local_steps),
            LocalDp::Update { noise_multiplier, .. } => (1.0, noise_multiplier, 1),
        };
        RoundCost {
            rdp: compose(q, sigma, steps, &default_orders()),
            mechanism: self.mechanism().to_string(),
            sampling_rate: q,
            noise_multiplier: sigma,
            steps,
        }
    }
}

/// Logistic regression as DP-SGD sees it: per-example gradients of the mean
/// log-loss, and a step that adds the data-independent L2 penalty and
/// FedProx term (post-processing of the noised gradient: no privacy cost).
struct LogisticDpSgd<'a> {
    coef: Coefficients,
    /// The global model, for the FedProx term.
    anchor: Coefficients,
    x: &'a Array2<f64>,
    y: &'a [bool],
    plan: &'a TrainPlan,
}

impl DpSgdModel for LogisticDpSgd<'_> {
    fn dim(&self) -> usize {
        self.coef.weight.len() + 1
    }

    fn example_gradient(&mut self, i: usize, out: &mut [f64]) -> Result<()> {
        self.coef.example_gradient(self.x.row(i), self.y[i], out);
        Ok(())
    }

    fn step(&mut self, g: &[f64]) -> Result<()> {
        self.coef
            .step(&self.anchor, g, self.plan.learning_rate, self.plan);
        Ok(())
    }
}

/// What a private hospital releases about its features for scaling.
pub enum StatsPolicy {
    /// Nothing: a public, data-independent scaler is used instead.
    Withheld,
    /// Clipped to public bounds and released through the Gaussian mechanism.
    Noised {
        bounds: FeatureBounds,
        noise_multiplier: f64,
    },
}

impl StatsPolicy {
    /// The privacy cost of releasing the statistics once (`None`: nothing
    /// is released).
    pub fn cost(&self) -> Option<RoundCost> {
        match self {
            StatsPolicy::Noised { noise_multiplier, .. } => Some(RoundCost {
                rdp: compose(1.0, *noise_multiplier, 1, &default_orders()),
                mechanism: "feature-stats".into(),
                sampling_rate: 1.0,
                noise_multiplier: *noise_multiplier,
                steps: 1,
            }),
            StatsPolicy::Withheld => None,
        }
    }
}

/// A hospital's logistic-regression learner over its own rows (DP off).
pub struct LogisticLearner {
    name: String,
    data: StandardizedData,
}

impl LogisticLearner {
    /// `name` seeds this hospital's own shuffling stream.
    pub fn new(name: impl Into<String>, data: Dataset) -> Result<Self> {
        if data.is_empty() {
            return Err(ModelError::Data("a hospital needs at least one record".into()));
        }
        Ok(Self {
            name: name.into(),
            data: StandardizedData::new(data),
        })
    }

    /// The same learner training privately: every update is noised by `dp`
    /// with randomness from `noise`; feature statistics follow `stats`.
    pub fn with_privacy(
        self,
        dp: LocalDp,
        stats: StatsPolicy,
        noise: NoiseSource,
    ) -> Result<DpLogisticLearner> {
        dp.validate()?;
        if matches!(dp, LocalDp::Update { .. }) && matches!(stats, StatsPolicy::Noised { .. }) {
            return Err(ModelError::Invalid(
                "noised feature statistics protect single records, not the whole dataset that \
                 update-level DP protects: use the public feature bounds with update-level DP"
                    .into(),
            ));
        }
        Ok(DpLogisticLearner {
            name: self.name,
            data: self.data,
            dp,
            noise,
            stats,
        })
    }

    /// The global model's features and coefficients, checked against this data.
    fn prepare<'a>(
        data: &'a mut StandardizedData,
        global: &GlobalModel,
        plan: &TrainPlan,
    ) -> Result<(Coefficients, &'a Array2<f64>)> {
        plan.validate()?;
        let coef = Coefficients::from_params(&global.params)?;
        let x = data.features(global.standardizer.as_ref())?;
        if x.ncols() != coef.weight.len() {
            return Err(ModelError::Params(format!(
                "global model has {} weights, this hospital has {} features",
                coef.weight.len(),
                x.ncols()
            )));
        }
        Ok((coef, x))
    }
}

impl Learner for LogisticLearner {
    fn layout(&self) -> Arc<Layout> {
        layout(self.data.raw().n_features())
    }

    fn num_examples(&self) -> usize {
        self.data.raw().len()
    }

    fn feature_stats(&mut self) -> Result<Option<MomentSums>> {
        Ok(Some(self.data.moment_sums()))
    }

    fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<LocalUpdate> {
        let mut rng = ChaCha8Rng::seed_from_u64(plan.stream_seed(&self.name));
        let labels = self.data.raw().labels.clone();
        let (mut coef, x) = Self::prepare(&mut self.data, global, plan)?;
        // A single-class shard is fine: the gradient simply pushes one way.
        let train_loss = sgd(&mut coef, x, &labels, plan, &mut rng);
        Ok(LocalUpdate {
            delta: coef.to_params().sub(&global.params)?,
            num_examples: labels.len(),
            train_loss: Some(train_loss),
            release: Release::NonPrivate,
            privacy: None,
        })
    }

    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics> {
        evaluate_on(&mut self.data, global)
    }
}

/// A hospital's logistic-regression learner training under DP.
pub struct DpLogisticLearner {
    name: String,
    data: StandardizedData,
    dp: LocalDp,
    noise: NoiseSource,
    stats: StatsPolicy,
}

impl DpLearner for DpLogisticLearner {
    fn layout(&self) -> Arc<Layout> {
        layout(self.data.raw().n_features())
    }

    fn local_records(&self) -> usize {
        self.data.raw().len()
    }

    fn fingerprint(&self) -> DataFingerprint {
        DataFingerprint::of_dataset(self.data.raw())
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
        let labels = self.data.raw().labels.clone();
        let (mut coef, x) = LogisticLearner::prepare(&mut self.data, global, plan)?;
        match self.dp.dp_sgd_settings() {
            Some(settings) => {
                let count = public_count
                    .ok_or_else(|| ModelError::Invalid("DP-SGD needs the released record count".into()))?;
                let model = LogisticDpSgd {
                    anchor: coef.clone(),
                    coef,
                    x,
                    y: &labels,
                    plan,
                };
                let global_params = &global.params;
                dp_sgd(
                    model,
                    labels.len(),
                    count as f64,
                    &settings,
                    &mut self.noise,
                    |m| m.coef.to_params().sub(global_params),
                )
            }
            None => {
                // Shuffling is not private and need not be: the whole delta is noised.
                let mut rng = ChaCha8Rng::seed_from_u64(plan.stream_seed(&self.name));
                sgd(&mut coef, x, &labels, plan, &mut rng);
                self.dp
                    .release_update(&coef.to_params().sub(&global.params)?, &mut self.noise)
            }
        }
    }

    fn stats_cost(&self) -> Option<RoundCost> {
        self.stats.cost()
    }

    fn private_stats(&mut self) -> Result<Option<Noised<MomentSums>>> {
        match &self.stats {
            StatsPolicy::Withheld => Ok(None),
            StatsPolicy::Noised {
                bounds,
                noise_multiplier,
            } => Ok(Some(bounds.private_sums(
                &self.data.raw().features,
                *noise_multiplier,
                &mut self.noise,
            )?)),
        }
    }
}

fn evaluate_on(data: &mut StandardizedData, global: &GlobalModel) -> Result<Metrics> {
    let coef = Coefficients::from_params(&global.params)?;
    let labels = data.raw().labels.clone();
    let probs = coef.probabilities(data.features(global.standardizer.as_ref())?)?;
    Ok(binary_metrics(&probs, &labels))
}

/// The model's probability of the positive class for every row of `data`,
/// scaled with the model's own scaler exactly as the held-out evaluation
/// scales (so predictions reproduce the reported metrics).
pub fn predict(global: &GlobalModel, data: Dataset) -> Result<Vec<f64>> {
    let coef = Coefficients::from_params(&global.params)?;
    let mut data = StandardizedData::new(data);
    coef.probabilities(data.features(global.standardizer.as_ref())?)
}

/// The coordinator's held-out evaluation of a logistic model.
pub struct LogisticEvaluator {
    data: StandardizedData,
}

impl LogisticEvaluator {
    pub fn new(held_out: Dataset) -> Result<Self> {
        if held_out.is_empty() {
            return Err(ModelError::Data("the held-out test set is empty".into()));
        }
        Ok(Self {
            data: StandardizedData::new(held_out),
        })
    }
}

impl Evaluator for LogisticEvaluator {
    fn init_params(&self) -> Params {
        Params::zeros(layout(self.data.raw().n_features()))
    }

    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics> {
        evaluate_on(&mut self.data, global)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::gaussian_blobs;
    use ndarray::array;

    #[test]
    fn sigmoid_and_loss_known_values() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((sigmoid(2.0) - 0.880_797_077_977_882_3).abs() < 1e-15);
        assert!((sigmoid(-800.0)).abs() < 1e-300);
        assert!((example_loss(0.0, true) - std::f64::consts::LN_2).abs() < 1e-15);
        assert!((example_loss(-1000.0, true) - 1000.0).abs() < 1e-9);
        assert!(example_loss(1000.0, true) < 1e-300);
    }

    #[test]
    fn per_example_gradient_matches_finite_differences() {
        let coef = Coefficients {
            weight: vec![0.3, -1.2, 0.7],
            bias: 0.1,
        };
        let x = array![0.5, 2.0, -1.5];
        for y in [true, false] {
            let mut g = vec![0.0; 4];
            coef.example_gradient(x.view(), y, &mut g);
            let h = 1e-6;
            for (j, &analytic) in g.iter().enumerate() {
                let mut plus = coef.clone();
                let mut minus = coef.clone();
                if j < 3 {
                    plus.weight[j] += h;
                    minus.weight[j] -= h;
                } else {
                    plus.bias += h;
                    minus.bias -= h;
                }
                let fd = (example_loss(plus.logit(x.view()), y) - example_loss(minus.logit(x.view()), y))
                    / (2.0 * h);
                assert!((fd - analytic).abs() < 1e-8, "coordinate {j}: {fd} vs {analytic}");
            }
        }
    }

    #[test]
    fn local_training_learns_separable_data_and_is_seeded() {
        let data = gaussian_blobs(400, 5, 0.5, 2.0, 3);
        let mut learner = LogisticLearner::new("h1", data.clone()).unwrap();
        let global = GlobalModel {
            params: Arc::new(Params::zeros(learner.layout())),
            standardizer: None,
        };
        let plan = TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: 5,
            batch_size: 16,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 9,
            proximal_mu: 0.0,
            privacy: None,
        };
        let u1 = learner.train(&global, &plan).unwrap();
        let u2 = learner.train(&global, &plan).unwrap();
        assert_eq!(u1.delta, u2.delta);
        assert_eq!(u1.num_examples, 400);
        let mut trained = (*global.params).clone();
        trained.add_assign(&u1.delta).unwrap();
        let m = learner
            .evaluate(&GlobalModel {
                params: Arc::new(trained),
                standardizer: None,
            })
            .unwrap();
        assert!(m.accuracy > 0.95, "accuracy {}", m.accuracy);
    }

    #[test]
    fn the_fedprox_term_by_hand() {
        // One example x = 1, y = 1, from w = b = 0 with lr 1, mu 0.5, two steps.
        // Step 1: sigmoid(0) - 1 = -.5, so w = b = .5 (no pull yet).
        // Step 2: r = sigmoid(1) - 1 = -0.26894142; pull = 1 * .5 * (.5 - 0) = .25;
        // w = b = .5 + 0.26894142 - .25 = 0.51894142.
        let data = Dataset::new(vec!["x".into()], ndarray::array![[1.0]], vec![true]).unwrap();
        let mut learner = LogisticLearner::new("h", data).unwrap();
        let global = GlobalModel {
            params: Arc::new(Params::zeros(learner.layout())),
            standardizer: None,
        };
        let plan = TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: 2,
            batch_size: 1,
            learning_rate: 1.0,
            l2: 0.0,
            seed: 1,
            proximal_mu: 0.5,
            privacy: None,
        };
        let delta = learner.train(&global, &plan).unwrap().delta;
        let want = 0.5 + (1.0 - 1.0 / (1.0 + (-1.0f64).exp())) - 0.25;
        for v in delta.as_slice() {
            assert!((f64::from(*v) - want).abs() < 1e-6, "{v} vs {want}");
        }
    }

    #[test]
    fn a_larger_mu_keeps_the_local_model_closer_and_zero_changes_nothing() {
        let data = gaussian_blobs(300, 4, 0.5, 2.0, 7);
        let mut learner = LogisticLearner::new("h", data).unwrap();
        let global = GlobalModel {
            params: Arc::new(Params::zeros(learner.layout())),
            standardizer: None,
        };
        let plan = |mu: f64| TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: 5,
            batch_size: 16,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 3,
            proximal_mu: mu,
            privacy: None,
        };
        let norms: Vec<f64> = [0.0, 0.1, 1.0, 10.0]
            .iter()
            .map(|&mu| learner.train(&global, &plan(mu)).unwrap().delta.l2_norm())
            .collect();
        assert!(norms.windows(2).all(|w| w[1] < w[0]), "{norms:?}");
        // The same plan without the term trains exactly as before it existed.
        let again = learner.train(&global, &plan(0.0)).unwrap().delta.l2_norm();
        assert_eq!(again.to_bits(), norms[0].to_bits());
    }

    #[test]
    fn single_class_shard_still_trains() {
        let mut data = gaussian_blobs(50, 3, 0.5, 2.0, 3);
        data.labels.iter_mut().for_each(|l| *l = true);
        let mut learner = LogisticLearner::new("solo", data).unwrap();
        let global = GlobalModel {
            params: Arc::new(Params::zeros(learner.layout())),
            standardizer: None,
        };
        let plan = TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 1,
            proximal_mu: 0.0,
            privacy: None,
        };
        let u = learner.train(&global, &plan).unwrap();
        assert!(u.delta.tensor("bias").unwrap()[0] > 0.0);
    }
}

#[cfg(test)]
mod dp_tests {
    use super::*;
    use crate::data::synthetic::gaussian_blobs;

    fn plan() -> TrainPlan {
        TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: 1,
            batch_size: 16,
            learning_rate: 1.0,
            l2: 0.0,
            seed: 1,
            proximal_mu: 0.0,
            privacy: None,
        }
    }

    fn learner(sigma: f64, seed: u64) -> DpLogisticLearner {
        LogisticLearner::new("h", gaussian_blobs(100, 3, 0.5, 2.0, 4))
            .unwrap()
            .with_privacy(
                LocalDp::DpSgd {
                    sampling_rate: 0.5,
                    max_grad_norm: 1.0,
                    noise_multiplier: sigma,
                    local_steps: 1,
                },
                StatsPolicy::Withheld,
                NoiseSource::seeded(seed),
            )
            .unwrap()
    }

    fn zeros(l: &impl DpLearner) -> GlobalModel {
        GlobalModel {
            params: Arc::new(Params::zeros(l.layout())),
            standardizer: None,
        }
    }

    /// One DP-SGD step from zero: delta = -lr/(q n~) * (sum of clipped
    /// gradients + N(0, (sigma C)^2)), n~ the released count. With sigma =
    /// 1000 the noise dominates, so over many seeds the delta's spread is
    /// lr * sigma * C / (q n~) = 1000 / (0.5 * 100) = 20.
    #[test]
    fn dp_sgd_noise_has_the_calibrated_scale() {
        let mut values = Vec::new();
        for seed in 0..400 {
            let mut l = learner(1000.0, seed);
            let g = zeros(&l);
            let u = l.train_private(&g, &plan(), Some(100)).unwrap();
            values.extend(u.value().as_slice().iter().map(|&v| f64::from(v)));
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        // 1600 samples: the sample std is within 5% of the truth with > 99.9% probability.
        assert!((std - 20.0).abs() / 20.0 < 0.05, "std {std}");
    }

    #[test]
    fn dp_sgd_needs_the_released_count() {
        let mut l = learner(1.0, 1);
        let g = zeros(&l);
        assert!(l.needs_count());
        let e = l.train_private(&g, &plan(), None).unwrap_err();
        assert!(e.to_string().contains("released record count"), "{e}");
    }

    #[test]
    fn every_private_update_differs_from_the_noiseless_one() {
        let mut noisy = learner(1.0, 7);
        let mut almost_exact = learner(1e-12, 7);
        let g = zeros(&noisy);
        let a = noisy.train_private(&g, &plan(), Some(100)).unwrap();
        let b = almost_exact.train_private(&g, &plan(), Some(100)).unwrap();
        let diff: f64 = a.value().sub(b.value()).unwrap().l2_norm();
        assert!(diff > 1e-3, "noise was not added: {diff}");
    }

    #[test]
    fn update_level_dp_clips_then_noises_the_delta_at_sensitivity_2c() {
        let mut l = LogisticLearner::new("h", gaussian_blobs(100, 3, 0.5, 2.0, 4))
            .unwrap()
            .with_privacy(
                LocalDp::Update {
                    max_update_norm: 0.5,
                    noise_multiplier: 1e-9,
                },
                StatsPolicy::Withheld,
                NoiseSource::seeded(1),
            )
            .unwrap();
        let g = zeros(&l);
        let u = l
            .train_private(
                &g,
                &TrainPlan {
                    local_epochs: 5,
                    ..plan()
                },
                None,
            )
            .unwrap();
        assert!(
            (u.value().l2_norm() - 0.5).abs() < 1e-4,
            "norm {}",
            u.value().l2_norm()
        );
        assert!(!l.needs_count(), "update-level DP releases no count");
        // One Gaussian release at the multiplier, as `medfed privacy epsilon
        // --sampling-rate 1 --steps 1` charges it: alpha / (2 sigma^2).
        let cost = l.round_cost();
        assert_eq!((cost.sampling_rate, cost.steps), (1.0, 1));
        for (alpha, rdp) in default_orders().iter().zip(&cost.rdp) {
            let want = alpha / (2.0 * 1e-9f64.powi(2));
            assert!(
                (rdp - want).abs() <= 1e-9 * want,
                "order {alpha}: {rdp} vs {want}"
            );
        }
    }

    /// The noise std of an update release is 2 sigma C: measured over many
    /// coordinates of a zero delta (the learner adds 2 * 2 * 0.25 = 1.0).
    #[test]
    fn update_level_noise_is_calibrated_to_twice_the_clipping_norm() {
        let mut values = Vec::new();
        for seed in 0..500 {
            let mut l = LogisticLearner::new("h", gaussian_blobs(30, 40, 0.5, 2.0, 4))
                .unwrap()
                .with_privacy(
                    LocalDp::Update {
                        max_update_norm: 0.25,
                        noise_multiplier: 2.0,
                    },
                    StatsPolicy::Withheld,
                    NoiseSource::seeded(seed),
                )
                .unwrap();
            let g = zeros(&l);
            let tiny = TrainPlan {
                learning_rate: 1e-12,
                ..plan()
            };
            let u = l.train_private(&g, &tiny, None).unwrap();
            values.extend(u.value().as_slice().iter().map(|&v| f64::from(v)));
        }
        let n = values.len() as f64;
        let std = (values.iter().map(|v| v * v).sum::<f64>() / n).sqrt();
        // 20,500 samples: 3% is > 6 standard errors.
        assert!((std - 1.0).abs() < 0.03, "std {std}");
    }

    #[test]
    fn noised_statistics_are_refused_with_update_level_dp() {
        let bounds = FeatureBounds {
            lo: vec![-5.0; 2],
            hi: vec![5.0; 2],
        };
        let e = LogisticLearner::new("h", gaussian_blobs(10, 2, 0.5, 1.0, 1))
            .unwrap()
            .with_privacy(
                LocalDp::Update {
                    max_update_norm: 1.0,
                    noise_multiplier: 1.0,
                },
                StatsPolicy::Noised {
                    bounds,
                    noise_multiplier: 5.0,
                },
                NoiseSource::seeded(1),
            )
            .err()
            .unwrap();
        assert!(e.to_string().contains("public feature bounds"), "{e}");
    }
}
