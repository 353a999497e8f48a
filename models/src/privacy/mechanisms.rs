//! The mechanisms: the only code that turns exact values into releases.
//!
//! A [`Noised`] value can be made here and nowhere else (its fields are
//! private and it has no `Deserialize`), so a learner that must release
//! privately can only hand out what one of these functions returned:
//! clipped-and-noised updates, DP-SGD's result, a noised record count or
//! noised sums. Noise comes from ChaCha20, seeded from the operating system
//! (`secure`) or, for simulations on data that is not real, from a seed the
//! hospital chooses (`seeded`).
//!
//! The Gaussian samples are floating-point (rand_distr's Ziggurat), not the
//! discrete Gaussian of Canonne, Kamath & Steinke 2020: the formal guarantee
//! is stated for exact Gaussian noise and does not strictly hold for this
//! sampler (see the README, "Sampling").

use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

use crate::error::{ModelError, Result};
use crate::params::Params;

/// Vectors whose norm was not finite, zeroed by [`clip_l2`] (process-wide).
static NON_FINITE_ZEROED: AtomicU64 = AtomicU64::new(0);

/// How many non-finite vectors [`clip_l2`] has replaced by zero in this process.
pub fn non_finite_zeroed() -> u64 {
    NON_FINITE_ZEROED.load(Ordering::Relaxed)
}

/// Scale `v` down to L2 norm at most `bound`; returns the norm before clipping.
///
/// A vector with a NaN or infinite entry has no meaningful direction and
/// would pass a NaN through the noise: it becomes the zero vector (counted
/// in [`non_finite_zeroed`]), so its contribution stays within the bound.
pub fn clip_l2(v: &mut [f64], bound: f64) -> f64 {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if !norm.is_finite() {
        v.iter_mut().for_each(|x| *x = 0.0);
        NON_FINITE_ZEROED.fetch_add(1, Ordering::Relaxed);
        return norm;
    }
    if norm > bound {
        let scale = bound / norm;
        v.iter_mut().for_each(|x| *x *= scale);
    }
    norm
}

/// The randomness of every private release: noise and Poisson sampling.
pub struct NoiseSource {
    rng: ChaCha20Rng,
}

impl NoiseSource {
    /// Seeded from the operating system's entropy: for real hospitals.
    pub fn secure() -> Self {
        Self {
            rng: ChaCha20Rng::from_os_rng(),
        }
    }

    /// Reproducible: for simulations on data that is not real. The seed must
    /// come from the hospital's own configuration, never from the coordinator.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    fn gaussian(&mut self, std: f64) -> f64 {
        let z: f64 = self.rng.sample(StandardNormal);
        z * std
    }

    /// Bernoulli(q): Poisson sampling of one record.
    pub fn include(&mut self, q: f64) -> bool {
        self.rng.random::<f64>() < q
    }

    fn add_gaussian(&mut self, v: &mut [f64], std: f64) {
        for x in v {
            *x += self.gaussian(std);
        }
    }
}

/// A value released through a differentially private mechanism. Only this
/// module constructs one; everyone may read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Noised<T> {
    value: T,
    mechanism: &'static str,
    noise_multiplier: f64,
}

impl<T> Noised<T> {
    pub fn value(&self) -> &T {
        &self.value
    }

    pub fn into_value(self) -> T {
        self.value
    }

    /// "dp-sgd", "update", "feature-stats" or "record-count".
    pub fn mechanism(&self) -> &'static str {
        self.mechanism
    }

    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// Post-processing: a function of a private release is as private as the
    /// release, provided `f` uses nothing but the released value and public
    /// constants (which is what a reviewer checks at each call; crate-private
    /// so that every call is in this crate).
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Noised<U> {
        Noised {
            value: f(self.value),
            mechanism: self.mechanism,
            noise_multiplier: self.noise_multiplier,
        }
    }

    /// `map` for a post-processing that can fail (on public inputs only).
    pub(crate) fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Noised<U>, E> {
        Ok(Noised {
            value: f(self.value)?,
            mechanism: self.mechanism,
            noise_multiplier: self.noise_multiplier,
        })
    }
}

fn check_noise(noise_multiplier: f64, what: &str) -> Result<()> {
    if noise_multiplier.is_finite() && noise_multiplier > 0.0 {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "{what}: the noise multiplier must be positive, got {noise_multiplier}"
        )))
    }
}

/// Update-level release: clip the delta to `max_norm`, then add Gaussian
/// noise of standard deviation `2 * noise_multiplier * max_norm`.
///
/// The guarantee is hospital-level (the whole local dataset replaced by any
/// other): two clipped deltas then differ by up to `2 * max_norm` in L2, so
/// that is the sensitivity, and `noise_multiplier` is noise std over it —
/// the accountant charges one Gaussian at that multiplier.
pub fn release_update(
    delta: &Params,
    max_norm: f64,
    noise_multiplier: f64,
    noise: &mut NoiseSource,
) -> Result<Noised<Params>> {
    check_noise(noise_multiplier, "update-level DP")?;
    let mut flat: Vec<f64> = delta.as_slice().iter().map(|&v| f64::from(v)).collect();
    clip_l2(&mut flat, max_norm);
    let sensitivity = 2.0 * max_norm;
    noise.add_gaussian(&mut flat, noise_multiplier * sensitivity);
    let value = Params::new(
        delta.layout().clone(),
        flat.into_iter().map(|v| v as f32).collect(),
    )?;
    Ok(Noised {
        value,
        mechanism: "update",
        noise_multiplier,
    })
}

/// The Gaussian mechanism on a vector of sums whose L2 sensitivity (under
/// adding or removing one record) the caller has bounded by clipping each
/// record's contribution to `l2_sensitivity`.
pub fn release_sums(
    mut sums: Vec<f64>,
    l2_sensitivity: f64,
    noise_multiplier: f64,
    noise: &mut NoiseSource,
) -> Result<Noised<Vec<f64>>> {
    check_noise(noise_multiplier, "feature statistics")?;
    noise.add_gaussian(&mut sums, noise_multiplier * l2_sensitivity);
    Ok(Noised {
        value: sums,
        mechanism: "feature-stats",
        noise_multiplier,
    })
}

/// The record count through the Gaussian mechanism (sensitivity 1 under
/// adding or removing a record), rounded and kept at least 1 (post-processing).
pub fn release_count(count: usize, noise_multiplier: f64, noise: &mut NoiseSource) -> Result<Noised<u64>> {
    check_noise(noise_multiplier, "the record count")?;
    let noisy = count as f64 + noise.gaussian(noise_multiplier);
    Ok(Noised {
        value: noisy.round().max(1.0) as u64,
        mechanism: "record-count",
        noise_multiplier,
    })
}

/// A count that was released before (kept in the hospital's ledger). Using it
/// again is post-processing of that earlier release and costs nothing. Only
/// `PrivateLearner` calls it, with what the ledger holds.
pub(crate) fn count_released_before(value: u64, noise_multiplier: f64) -> Noised<u64> {
    Noised {
        value,
        mechanism: "record-count",
        noise_multiplier,
    }
}

/// The settings of one hospital's DP-SGD, shared by every learner that runs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgdSettings {
    pub sampling_rate: f64,
    pub max_grad_norm: f64,
    pub noise_multiplier: f64,
    pub local_steps: u64,
}

/// What DP-SGD needs from a learner: its per-example gradients and an
/// optimiser step. The model being trained lives in the implementor.
pub(crate) trait DpSgdModel {
    /// Number of gradient coordinates.
    fn dim(&self) -> usize;
    /// Gradient of example `i`'s loss at the current model, into `out`.
    fn example_gradient(&mut self, i: usize, out: &mut [f64]) -> Result<()>;
    /// The gradients of the examples `batch`, example `batch[j]`'s into
    /// `out[j * dim..(j + 1) * dim]`. A model that computes them in one
    /// batched pass overrides this; by default, one at a time.
    fn example_gradients(&mut self, batch: &[usize], out: &mut [f64]) -> Result<()> {
        let dim = self.dim();
        for (&i, row) in batch.iter().zip(out.chunks_exact_mut(dim.max(1))) {
            self.example_gradient(i, row)?;
        }
        Ok(())
    }
    /// One optimiser step on the noisy mean gradient.
    fn step(&mut self, noisy_mean_gradient: &[f64]) -> Result<()>;
    /// Some(examples per pass) if the model computes clipped sums without
    /// per-example gradient vectors ("ghost clipping": each example's
    /// gradient norm from one backward pass, then the sum of the gradients
    /// weighted by their clipping factors from a second one over the same
    /// activations), through the two methods below.
    fn ghost_pass(&self) -> Option<usize> {
        None
    }
    /// Each example's squared gradient norm into `sq` (at most
    /// `ghost_pass` examples); the model keeps what `add_weighted_gradients`
    /// needs.
    fn example_sq_norms(&mut self, _batch: &[usize], _sq: &mut [f64]) -> Result<()> {
        Err(ModelError::Invalid("this model has no ghost clipping".into()))
    }
    /// `out = sum_j weights[j] x (gradient of the last `example_sq_norms`'s
    /// example j)` (overwritten).
    fn weighted_gradient_sum(&mut self, _weights: &[f64], _out: &mut [f64]) -> Result<()> {
        Err(ModelError::Invalid("this model has no ghost clipping".into()))
    }
}

/// The clipping factor of an example whose gradient norm was measured
/// apart from the sum it enters (ghost clipping): min(1, C / norm) against
/// a bound lowered by this fraction, since the norm and the weighted sum
/// are computed in f32 by differently ordered sums (measured: they differ
/// by < 1e-6 relative, `ghost_clipping_matches_clipped_rows` in the CNN's
/// tests).
const GHOST_MARGIN: f64 = 1e-3;

/// Poisson sampling: each of `n` records independently with probability
/// `q`, drawn from the noise source (the coordinator must not predict it).
pub(crate) fn poisson_sample(n: usize, q: f64, noise: &mut NoiseSource) -> Vec<usize> {
    (0..n).filter(|_| noise.include(q)).collect()
}

/// DP-SGD's step on a sampled batch, shared by every learner whatever holds
/// its records (memory or a stream): clip each example's gradient, sum,
/// add the Gaussian noise, divide by the expected batch size, step.
pub(crate) struct DpSgdSteps {
    settings: DpSgdSettings,
    expected_batch: f64,
    sum: Vec<f64>,
    /// Per-example gradients of up to `chunk` examples at a time.
    examples: Vec<f64>,
    chunk: usize,
}

/// Per-example gradient values held at once (64 MiB of f64): a batch is
/// asked for in chunks of at most this many values.
const EXAMPLE_VALUES: usize = 8 << 20;

impl DpSgdSteps {
    /// Made by `dp_sgd_steps`, which checks the settings and the count.
    fn new(dim: usize, public_count: f64, dp: &DpSgdSettings) -> Self {
        Self {
            settings: *dp,
            expected_batch: dp.sampling_rate * public_count,
            sum: vec![0.0; dim],
            examples: Vec::new(),
            chunk: (EXAMPLE_VALUES / dim.max(1)).max(1),
        }
    }

    /// One step on the examples `batch` (indices as `model` knows them).
    pub(crate) fn step<M: DpSgdModel>(
        &mut self,
        model: &mut M,
        batch: &[usize],
        noise: &mut NoiseSource,
    ) -> Result<()> {
        self.sum.iter_mut().for_each(|s| *s = 0.0);
        if let Some(pass) = model.ghost_pass() {
            self.ghost_step(model, batch, pass.max(1))?;
        } else {
            self.add_clipped_rows(model, batch)?;
        }
        noise.add_gaussian(
            &mut self.sum,
            self.settings.noise_multiplier * self.settings.max_grad_norm,
        );
        let expected = self.expected_batch;
        self.sum.iter_mut().for_each(|s| *s /= expected);
        model.step(&self.sum)
    }

    /// Adds the clipped per-example gradients of `batch` to the sum, each
    /// example's gradient vector clipped on its own.
    fn add_clipped_rows<M: DpSgdModel>(&mut self, model: &mut M, batch: &[usize]) -> Result<()> {
        let dim = self.sum.len();
        for part in batch.chunks(self.chunk) {
            self.examples.resize(part.len() * dim, 0.0);
            model.example_gradients(part, &mut self.examples)?;
            for example in self.examples.chunks_exact_mut(dim.max(1)) {
                clip_l2(example, self.settings.max_grad_norm);
                self.sum.iter_mut().zip(example.iter()).for_each(|(s, g)| *s += g);
            }
        }
        Ok(())
    }

    /// Adds the clipped per-example gradients of `batch` to the sum by ghost
    /// clipping, `pass` examples at a time. A part whose norms or sum are
    /// not finite is redone example by example, so that only the examples
    /// at fault are zeroed (and counted).
    fn ghost_step<M: DpSgdModel>(&mut self, model: &mut M, batch: &[usize], pass: usize) -> Result<()> {
        let bound = self.settings.max_grad_norm * (1.0 - GHOST_MARGIN);
        let mut sq = vec![0.0; pass];
        for part in batch.chunks(pass) {
            let sq = &mut sq[..part.len()];
            model.example_sq_norms(part, sq)?;
            let weights: Vec<f64> = sq
                .iter()
                .map(|&s| {
                    if s.is_finite() {
                        (bound / s.sqrt()).min(1.0)
                    } else {
                        f64::NAN
                    }
                })
                .collect();
            self.examples.resize(self.sum.len(), 0.0);
            model.weighted_gradient_sum(&weights, &mut self.examples)?;
            let finite = weights.iter().all(|w| w.is_finite()) && self.examples.iter().all(|v| v.is_finite());
            if finite {
                self.sum.iter_mut().zip(&self.examples).for_each(|(s, g)| *s += g);
            } else {
                self.add_clipped_rows(model, part)?;
            }
        }
        Ok(())
    }
}

/// Refuse a released count DP-SGD cannot normalise by.
fn check_public_count(public_count: f64) -> Result<()> {
    if !(public_count.is_finite() && public_count >= 1.0) {
        return Err(ModelError::Invalid(format!(
            "DP-SGD needs a released record count of at least 1, got {public_count}"
        )));
    }
    Ok(())
}

/// DP-SGD (Abadi et al. 2016) over `n` records: in every step each record is
/// included with probability `sampling_rate`, its gradient clipped to
/// `max_grad_norm`, Gaussian noise of `noise_multiplier * max_grad_norm` added
/// to the sum, and the sum divided by `sampling_rate * public_count` — the
/// expected batch size computed from a released (noised) count, so the exact
/// number of records never shapes the update. `finish` reads the trained
/// model out (post-processing); crate-private, since `finish` sees the model
/// and is trusted to return only what training made of the noised steps.
pub(crate) fn dp_sgd<M: DpSgdModel, U>(
    mut model: M,
    n: usize,
    public_count: f64,
    dp: &DpSgdSettings,
    noise: &mut NoiseSource,
    finish: impl FnOnce(M) -> Result<U>,
) -> Result<Noised<U>> {
    dp_sgd_steps(model.dim(), public_count, dp, noise, |steps, noise| {
        for _ in 0..dp.local_steps {
            let batch = poisson_sample(n, dp.sampling_rate, noise);
            steps.step(&mut model, &batch, noise)?;
        }
        finish(model)
    })
}

/// DP-SGD whose `local_steps` steps the caller drives through `steps`
/// (a learner that must fetch each step's sampled records first, such as a
/// streamed table): the settings and count are checked and the result is
/// labelled as DP-SGD's. Crate-private for the same reason as `dp_sgd`.
pub(crate) fn dp_sgd_steps<U>(
    dim: usize,
    public_count: f64,
    dp: &DpSgdSettings,
    noise: &mut NoiseSource,
    run: impl FnOnce(&mut DpSgdSteps, &mut NoiseSource) -> Result<U>,
) -> Result<Noised<U>> {
    check_noise(dp.noise_multiplier, "DP-SGD")?;
    check_public_count(public_count)?;
    let mut steps = DpSgdSteps::new(dim, public_count, dp);
    Ok(Noised {
        value: run(&mut steps, noise)?,
        mechanism: "dp-sgd",
        noise_multiplier: dp.noise_multiplier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Layout, TensorSpec};
    use std::sync::Arc;

    fn std_of(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        (mean, std)
    }

    #[test]
    fn clipping_bounds_the_norm_and_keeps_direction() {
        let mut v = vec![3.0, 4.0];
        assert_eq!(clip_l2(&mut v, 1.0), 5.0);
        assert!((v[0] - 0.6).abs() < 1e-15 && (v[1] - 0.8).abs() < 1e-15);
        let mut small = vec![0.1, 0.2];
        clip_l2(&mut small, 1.0);
        assert_eq!(small, vec![0.1, 0.2]);
    }

    #[test]
    fn non_finite_vectors_are_zeroed_and_counted() {
        for bad in [
            vec![f64::NAN, 1.0],
            vec![f64::INFINITY, 0.0],
            vec![f64::NEG_INFINITY, 2.0],
            vec![1e200, 1e200], // the norm overflows
        ] {
            let before = non_finite_zeroed();
            let mut v = bad.clone();
            clip_l2(&mut v, 1.0);
            assert_eq!(v, vec![0.0, 0.0], "{bad:?}");
            assert!(non_finite_zeroed() > before, "{bad:?} not counted");
        }
    }

    /// Sample moments with a fixed seed: the noise has the calibrated scale.
    /// With n = 200,000 the standard error of the sample std is std/sqrt(2n)
    /// (0.16% of it), so 1% bounds are > 6 standard errors.
    #[test]
    fn summed_noise_has_the_calibrated_standard_deviation() {
        let r = release_sums(vec![0.0; 200_000], 2.0, 1.5, &mut NoiseSource::seeded(1)).unwrap();
        let (mean, std) = std_of(r.value());
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((std - 3.0).abs() / 3.0 < 0.01, "std {std}");
        let kurt = r.value().iter().map(|x| ((x - mean) / std).powi(4)).sum::<f64>() / 200_000.0;
        assert!((kurt - 3.0).abs() < 0.1, "kurtosis {kurt}");
        assert_eq!((r.mechanism(), r.noise_multiplier()), ("feature-stats", 1.5));
    }

    /// Update-level noise is calibrated to sensitivity 2C (replace the whole
    /// dataset): std = 2 * sigma * C, here 2 * 1.5 * 0.5 = 1.5.
    #[test]
    fn update_noise_is_twice_sigma_times_the_clipping_norm() {
        let layout = Arc::new(Layout::new(vec![TensorSpec::new("w", &[200_000])]).unwrap());
        let delta = Params::zeros(layout);
        let r = release_update(&delta, 0.5, 1.5, &mut NoiseSource::seeded(3)).unwrap();
        let v: Vec<f64> = r.value().as_slice().iter().map(|&x| f64::from(x)).collect();
        let (_, std) = std_of(&v);
        assert!((std - 1.5).abs() / 1.5 < 0.01, "std {std}");
        assert_eq!(r.mechanism(), "update");
    }

    #[test]
    fn the_count_is_noised_rounded_and_at_least_one() {
        let mut noise = NoiseSource::seeded(4);
        let values: Vec<f64> = (0..20_000)
            .map(|_| *release_count(1000, 20.0, &mut noise).unwrap().value() as f64)
            .collect();
        let (mean, std) = std_of(&values);
        assert!((mean - 1000.0).abs() < 1.0, "mean {mean}");
        // Rounding adds variance 1/12: sqrt(400 + 1/12) = 20.002.
        assert!((std - 20.0).abs() / 20.0 < 0.02, "std {std}");
        assert!((0..1000).all(|_| *release_count(1, 50.0, &mut noise).unwrap().value() >= 1));
        assert!(release_count(10, 0.0, &mut noise).is_err());
    }

    struct Constant {
        grad: Vec<f64>,
        steps: Vec<Vec<f64>>,
    }

    impl DpSgdModel for Constant {
        fn dim(&self) -> usize {
            self.grad.len()
        }
        fn example_gradient(&mut self, _i: usize, out: &mut [f64]) -> Result<()> {
            out.copy_from_slice(&self.grad);
            Ok(())
        }
        fn step(&mut self, g: &[f64]) -> Result<()> {
            self.steps.push(g.to_vec());
            Ok(())
        }
    }

    /// With q = 1 and negligible noise each step sees the mean of the clipped
    /// gradients over the public count.
    #[test]
    fn dp_sgd_divides_the_clipped_sum_by_the_public_count() {
        let model = Constant {
            grad: vec![3.0, 4.0],
            steps: Vec::new(),
        };
        let dp = DpSgdSettings {
            sampling_rate: 1.0,
            max_grad_norm: 1.0,
            noise_multiplier: 1e-12,
            local_steps: 2,
        };
        let out = dp_sgd(model, 10, 20.0, &dp, &mut NoiseSource::seeded(1), |m| Ok(m.steps)).unwrap();
        assert_eq!(out.value().len(), 2);
        for g in out.value() {
            // 10 clipped gradients (0.6, 0.8) summed, over 20.
            assert!((g[0] - 0.3).abs() < 1e-9 && (g[1] - 0.4).abs() < 1e-9, "{g:?}");
        }
        assert_eq!(out.mechanism(), "dp-sgd");
        let bad = Constant {
            grad: vec![1.0],
            steps: Vec::new(),
        };
        assert!(dp_sgd(bad, 1, 0.0, &dp, &mut NoiseSource::seeded(1), |_| Ok(())).is_err());
    }

    #[test]
    fn secure_sources_differ_and_seeded_ones_repeat() {
        let (mut a, mut b) = (NoiseSource::secure(), NoiseSource::secure());
        assert_ne!(a.gaussian(1.0), b.gaussian(1.0));
        let (mut c, mut d) = (NoiseSource::seeded(5), NoiseSource::seeded(5));
        assert_eq!(c.gaussian(1.0), d.gaussian(1.0));
    }
}
