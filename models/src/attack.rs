//! Adversary simulation, for evaluating robust aggregation on one's own task:
//! what an attacking hospital does to its update before it sends it. This is
//! an evaluation tool; an attacking hospital announces itself (its hello
//! says so and the run's results record it).
//!
//! Kinds: `scale` (delta x FACTOR), `sign_flip` (delta x -FACTOR),
//! `gaussian` (the delta replaced by N(0, FACTOR^2) noise), `nan` (every
//! value NaN: refused at intake) and `zero` (an all-zero delta).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::params::Params;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    Scale,
    SignFlip,
    Gaussian,
    Nan,
    Zero,
}

impl AttackKind {
    pub const ALL: [AttackKind; 5] = [
        AttackKind::Scale,
        AttackKind::SignFlip,
        AttackKind::Gaussian,
        AttackKind::Nan,
        AttackKind::Zero,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Scale => "scale",
            AttackKind::SignFlip => "sign_flip",
            AttackKind::Gaussian => "gaussian",
            AttackKind::Nan => "nan",
            AttackKind::Zero => "zero",
        }
    }

    /// The factor when none is given (`None`: the kind takes none).
    fn default_factor(self) -> Option<f64> {
        match self {
            AttackKind::Scale => Some(10.0),
            AttackKind::SignFlip | AttackKind::Gaussian => Some(1.0),
            AttackKind::Nan | AttackKind::Zero => None,
        }
    }
}

/// One attacking hospital's behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attack {
    pub kind: AttackKind,
    /// Scale, sign flip: the multiplier; gaussian: the noise's std.
    pub factor: Option<f64>,
}

impl Attack {
    /// `KIND[:FACTOR]`, e.g. `scale:100`, `sign_flip:10`, `nan`.
    pub fn parse(spec: &str) -> Result<Attack> {
        let names = || {
            AttackKind::ALL
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (kind_text, factor_text) = match spec.split_once(':') {
            Some((k, f)) => (k.trim(), Some(f.trim())),
            None => (spec.trim(), None),
        };
        let kind = AttackKind::ALL
            .into_iter()
            .find(|k| k.name() == kind_text)
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "attack '{spec}': unknown kind '{kind_text}' (kinds: {})",
                    names()
                ))
            })?;
        let factor = match (factor_text, kind.default_factor()) {
            (None, default) => default,
            (Some(_), None) => {
                return Err(ModelError::Invalid(format!(
                    "attack '{spec}': {} takes no factor",
                    kind.name()
                )))
            }
            (Some(text), Some(_)) => {
                let f: f64 = text.parse().map_err(|_| {
                    ModelError::Invalid(format!("attack '{spec}': the factor '{text}' is not a number"))
                })?;
                if !(f.is_finite() && f > 0.0) {
                    return Err(ModelError::Invalid(format!(
                        "attack '{spec}': the factor must be a positive number, got {f}"
                    )));
                }
                Some(f)
            }
        };
        Ok(Attack { kind, factor })
    }

    /// As `parse` reads it: `scale:100`, `nan`.
    pub fn describe(&self) -> String {
        match self.factor {
            Some(f) => format!("{}:{f}", self.kind.name()),
            None => self.kind.name().to_string(),
        }
    }

    /// Turn an honest delta into this attack's; `seed` fixes the gaussian noise.
    pub fn apply(&self, delta: &mut Params, seed: u64) {
        let values = delta.as_mut_slice();
        let factor = self.factor.unwrap_or(1.0);
        match self.kind {
            AttackKind::Scale => values
                .iter_mut()
                .for_each(|v| *v = (f64::from(*v) * factor) as f32),
            AttackKind::SignFlip => values
                .iter_mut()
                .for_each(|v| *v = (f64::from(*v) * -factor) as f32),
            AttackKind::Gaussian => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                // A positive, finite std (checked by `parse`) always makes a distribution.
                if let Ok(normal) = Normal::new(0.0, factor) {
                    values
                        .iter_mut()
                        .for_each(|v| *v = normal.sample(&mut rng) as f32);
                }
            }
            AttackKind::Nan => values.iter_mut().for_each(|v| *v = f32::NAN),
            AttackKind::Zero => values.iter_mut().for_each(|v| *v = 0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta() -> Params {
        Params::single("w", vec![1.0, -2.0, 0.5]).unwrap()
    }

    #[test]
    fn each_kind_by_hand() {
        let run = |spec: &str| {
            let mut d = delta();
            Attack::parse(spec).unwrap().apply(&mut d, 7);
            d.into_values()
        };
        assert_eq!(run("scale:100"), vec![100.0, -200.0, 50.0]);
        assert_eq!(run("scale"), vec![10.0, -20.0, 5.0]);
        assert_eq!(run("sign_flip:10"), vec![-10.0, 20.0, -5.0]);
        assert_eq!(run("zero"), vec![0.0; 3]);
        assert!(run("nan").iter().all(|v| v.is_nan()));
        let noise = run("gaussian:10");
        assert_eq!(noise, run("gaussian:10"), "seeded");
        assert_ne!(noise, delta().into_values());
        assert!(noise.iter().all(|v| v.is_finite() && v.abs() < 100.0));
    }

    #[test]
    fn the_std_of_gaussian_noise_is_the_factor() {
        let mut d = Params::single("w", vec![0.0; 20_000]).unwrap();
        Attack::parse("gaussian:3").unwrap().apply(&mut d, 1);
        let v = d.as_slice();
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((var.sqrt() - 3.0).abs() < 0.1, "std {}", var.sqrt());
    }

    #[test]
    fn bad_specs_are_named() {
        let e = |spec: &str| Attack::parse(spec).unwrap_err().to_string();
        assert!(e("flip").contains("unknown kind 'flip' (kinds: scale, sign_flip, gaussian, nan, zero)"));
        assert!(e("nan:2").contains("nan takes no factor"));
        assert!(e("scale:big").contains("'big' is not a number"));
        assert!(e("scale:-1").contains("positive"));
        assert_eq!(Attack::parse("sign_flip:10").unwrap().describe(), "sign_flip:10");
        assert_eq!(Attack::parse("zero").unwrap().describe(), "zero");
    }
}
