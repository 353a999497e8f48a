//! Clipping and noise. Noise comes from ChaCha20, a cryptographically secure
//! generator, seeded from the operating system in production (`secure`) or
//! from a seed for reproducible experiments (`seeded`, never for real data).
//!
//! Known limitation: floating-point Gaussian and Laplace samples are not the
//! discrete mechanisms of Canonne, Kamath & Steinke 2020; see the README.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

/// Scale `v` down to L2 norm at most `bound`; returns the norm before clipping.
pub fn clip_l2(v: &mut [f64], bound: f64) -> f64 {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
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

    /// Reproducible: for experiments and tests on data that is not real.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    pub fn gaussian(&mut self, std: f64) -> f64 {
        let z: f64 = self.rng.sample(StandardNormal);
        z * std
    }

    /// Laplace(0, scale) by inverting its CDF.
    pub fn laplace(&mut self, scale: f64) -> f64 {
        // u uniform in (-1/2, 1/2); 1 - 2|u| stays in (0, 1].
        let u: f64 = self.rng.random::<f64>() - 0.5;
        -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
    }

    /// Bernoulli(q): Poisson sampling of one record.
    pub fn include(&mut self, q: f64) -> bool {
        self.rng.random::<f64>() < q
    }

    pub fn add_gaussian(&mut self, v: &mut [f64], std: f64) {
        for x in v {
            *x += self.gaussian(std);
        }
    }
}

/// The Gaussian mechanism: noise of standard deviation `noise_multiplier * sensitivity`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianMechanism {
    pub sensitivity: f64,
    pub noise_multiplier: f64,
}

impl GaussianMechanism {
    pub fn std(&self) -> f64 {
        self.noise_multiplier * self.sensitivity
    }

    pub fn release(&self, v: &mut [f64], noise: &mut NoiseSource) {
        noise.add_gaussian(v, self.std());
    }
}

/// The Laplace mechanism: (epsilon, 0)-DP for L1 sensitivity `sensitivity`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaplaceMechanism {
    pub sensitivity: f64,
    pub epsilon: f64,
}

impl LaplaceMechanism {
    pub fn scale(&self) -> f64 {
        self.sensitivity / self.epsilon
    }

    pub fn release(&self, v: &mut [f64], noise: &mut NoiseSource) {
        let b = self.scale();
        for x in v {
            *x += noise.laplace(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_bounds_the_norm_and_keeps_direction() {
        let mut v = vec![3.0, 4.0];
        assert_eq!(clip_l2(&mut v, 1.0), 5.0);
        assert!((v[0] - 0.6).abs() < 1e-15 && (v[1] - 0.8).abs() < 1e-15);
        let mut small = vec![0.1, 0.2];
        clip_l2(&mut small, 1.0);
        assert_eq!(small, vec![0.1, 0.2]);
    }

    /// Sample moments with a fixed seed: the noise has the calibrated scale.
    /// With n = 200,000 the standard error of the sample std is std/sqrt(2n)
    /// (0.16% of it), so 1% bounds are > 6 standard errors.
    #[test]
    fn gaussian_noise_has_the_calibrated_standard_deviation() {
        let mech = GaussianMechanism {
            sensitivity: 2.0,
            noise_multiplier: 1.5,
        };
        let mut v = vec![0.0; 200_000];
        mech.release(&mut v, &mut NoiseSource::seeded(1));
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((std - 3.0).abs() / 3.0 < 0.01, "std {std}");
        // Kurtosis of a Gaussian is 3.
        let kurt = v.iter().map(|x| ((x - mean) / std).powi(4)).sum::<f64>() / n;
        assert!((kurt - 3.0).abs() < 0.1, "kurtosis {kurt}");
    }

    #[test]
    fn laplace_noise_has_the_calibrated_scale() {
        let mech = LaplaceMechanism {
            sensitivity: 1.0,
            epsilon: 0.5,
        };
        let mut v = vec![0.0; 200_000];
        mech.release(&mut v, &mut NoiseSource::seeded(2));
        let n = v.len() as f64;
        // E|X| = b = 2 and Var = 2 b^2 = 8 for Laplace(0, 2).
        let mean_abs = v.iter().map(|x| x.abs()).sum::<f64>() / n;
        let var = v.iter().map(|x| x * x).sum::<f64>() / n;
        assert!((mean_abs - 2.0).abs() / 2.0 < 0.01, "E|X| {mean_abs}");
        assert!((var - 8.0).abs() / 8.0 < 0.03, "var {var}");
    }

    #[test]
    fn secure_sources_differ_and_seeded_ones_repeat() {
        let (mut a, mut b) = (NoiseSource::secure(), NoiseSource::secure());
        assert_ne!(a.gaussian(1.0), b.gaussian(1.0));
        let (mut c, mut d) = (NoiseSource::seeded(5), NoiseSource::seeded(5));
        assert_eq!(c.gaussian(1.0), d.gaussian(1.0));
    }
}
