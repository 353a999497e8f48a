//! Logistic regression: the model (`weight [d]`, `bias [1]`), closed-form
//! per-example gradients, and the local mini-batch SGD solver.

use std::sync::Arc;

use ndarray::{Array2, ArrayView1};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::tabular::StandardizedData;
use super::{Evaluator, GlobalModel, Learner, LocalUpdate, TrainPlan};
use crate::data::{Dataset, MomentSums};
use crate::error::{ModelError, Result};
use crate::metrics::{binary_metrics, Metrics};
use crate::params::{Layout, Params, TensorSpec};
use crate::seed;

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

    pub fn logit(&self, x: ArrayView1<f64>) -> f64 {
        x.iter().zip(&self.weight).map(|(a, b)| a * b).sum::<f64>() + self.bias
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

    /// Gradient of one example's log-loss with respect to `[weight.., bias]`,
    /// written into `out` (length d + 1): `(sigmoid(w.x + b) - y) * [x, 1]`.
    pub fn example_gradient(&self, x: ArrayView1<f64>, y: bool, out: &mut [f64]) {
        let residual = sigmoid(self.logit(x)) - if y { 1.0 } else { 0.0 };
        let d = self.weight.len();
        for (o, xi) in out[..d].iter_mut().zip(x.iter()) {
            *o = residual * xi;
        }
        out[d] = residual;
    }
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

/// Plain mini-batch SGD on the mean log-loss plus `l2/2 * |w|^2`.
/// Returns the mean loss over the last epoch.
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
    let mut g_i = vec![0.0; d + 1];
    let mut last_loss = 0.0;
    for _ in 0..plan.local_epochs {
        order.shuffle(rng);
        let mut loss = 0.0;
        for chunk in order.chunks(batch) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            for &i in chunk {
                let row = x.row(i);
                loss += example_loss(coef.logit(row), y[i]);
                coef.example_gradient(row, y[i], &mut g_i);
                grad.iter_mut().zip(&g_i).for_each(|(g, gi)| *g += gi);
            }
            let scale = plan.learning_rate / chunk.len() as f64;
            for (w, g) in coef.weight.iter_mut().zip(&grad[..d]) {
                *w -= scale * g + plan.learning_rate * plan.l2 * *w;
            }
            coef.bias -= scale * grad[d];
        }
        last_loss = loss / y.len().max(1) as f64;
    }
    last_loss
}

/// A hospital's logistic-regression learner over its own rows.
pub struct LogisticLearner {
    name: String,
    data: StandardizedData,
}

impl LogisticLearner {
    /// `name` seeds this hospital's own random stream.
    pub fn new(name: impl Into<String>, data: Dataset) -> Result<Self> {
        if data.is_empty() {
            return Err(ModelError::Data("a hospital needs at least one record".into()));
        }
        Ok(Self {
            name: name.into(),
            data: StandardizedData::new(data),
        })
    }
}

impl Learner for LogisticLearner {
    fn layout(&self) -> Arc<Layout> {
        layout(self.data.raw().n_features())
    }

    fn num_examples(&self) -> usize {
        self.data.raw().len()
    }

    fn feature_stats(&self) -> Option<MomentSums> {
        Some(self.data.moment_sums())
    }

    fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<LocalUpdate> {
        if plan.local_epochs == 0
            || plan.batch_size == 0
            || plan.learning_rate.is_nan()
            || plan.learning_rate <= 0.0
        {
            return Err(ModelError::Training(format!(
                "local epochs, batch size and learning rate must be positive (got {}, {}, {})",
                plan.local_epochs, plan.batch_size, plan.learning_rate
            )));
        }
        let mut coef = Coefficients::from_params(&global.params)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed::derive(plan.seed, &self.name, u64::from(plan.round)));
        let labels = self.data.raw().labels.clone();
        let x = self.data.features(global.standardizer.as_ref())?;
        if x.ncols() != coef.weight.len() {
            return Err(ModelError::Params(format!(
                "global model has {} weights, this hospital has {} features",
                coef.weight.len(),
                x.ncols()
            )));
        }
        // A single-class shard is fine: the gradient simply pushes one way.
        let train_loss = sgd(&mut coef, x, &labels, plan, &mut rng);
        let delta = coef.to_params().sub(&global.params)?;
        Ok(LocalUpdate {
            delta,
            num_examples: labels.len(),
            train_loss,
        })
    }

    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics> {
        evaluate_on(&mut self.data, global)
    }
}

fn evaluate_on(data: &mut StandardizedData, global: &GlobalModel) -> Result<Metrics> {
    let coef = Coefficients::from_params(&global.params)?;
    let labels = data.raw().labels.clone();
    let probs = coef.probabilities(data.features(global.standardizer.as_ref())?)?;
    Ok(binary_metrics(&probs, &labels))
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
            local_epochs: 5,
            batch_size: 16,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 9,
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
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 1,
        };
        let u = learner.train(&global, &plan).unwrap();
        assert!(u.delta.tensor("bias").unwrap()[0] > 0.0);
    }
}
