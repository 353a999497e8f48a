//! `UpdateCheck`: what a local update must satisfy before it is aggregated.

use serde::{Deserialize, Serialize};

use crate::data::MomentSums;
use crate::params::Params;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RejectReason {
    #[error("tensor names or shapes differ from the global model")]
    WrongShape,
    #[error("value at flat index {index} is not finite")]
    NonFinite { index: usize },
    #[error("update norm {norm:.4} exceeds the bound {bound}")]
    NormTooLarge { norm: f64, bound: f64 },
    #[error("update claims zero training examples")]
    NoExamples,
    #[error("update claims {claimed} training examples, above this task's bound of {max}")]
    TooManyExamples { claimed: usize, max: usize },
    #[error("feature statistics are not plausible: {0}")]
    BadStatistics(String),
}

impl RejectReason {
    /// Short label for metrics and counters.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::WrongShape => "wrong_shape",
            RejectReason::NonFinite { .. } => "non_finite",
            RejectReason::NormTooLarge { .. } => "norm_too_large",
            RejectReason::NoExamples => "no_examples",
            RejectReason::TooManyExamples { .. } => "too_many_examples",
            RejectReason::BadStatistics(_) => "bad_statistics",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateCheck {
    /// Largest accepted L2 norm of a delta; `None` accepts any finite norm.
    pub max_norm: Option<f64>,
    /// Most training examples one hospital may claim (its weight in
    /// FedAvg and its share of the feature statistics); `None`: no bound.
    #[serde(default)]
    pub max_examples: Option<usize>,
}

/// Noise on a DP-released count: a released count may exceed the bound by
/// this fraction (plus `COUNT_SLACK_ROWS`) before it is implausible.
const COUNT_SLACK: f64 = 0.1;
const COUNT_SLACK_ROWS: f64 = 10.0;
/// The largest magnitude a feature sum or sum of squares may have.
const MAX_STATISTIC: f64 = 1e200;

/// The most a count may be: the bound, plus the DP slack when noised.
fn count_limit(max: usize, noised: bool) -> f64 {
    if noised {
        max as f64 * (1.0 + COUNT_SLACK) + COUNT_SLACK_ROWS
    } else {
        max as f64
    }
}

impl UpdateCheck {
    pub fn check(&self, global: &Params, delta: &Params, num_examples: usize) -> Result<(), RejectReason> {
        if !delta.same_layout(global) {
            return Err(RejectReason::WrongShape);
        }
        if let Some(index) = delta.as_slice().iter().position(|v| !v.is_finite()) {
            return Err(RejectReason::NonFinite { index });
        }
        if num_examples == 0 {
            return Err(RejectReason::NoExamples);
        }
        if let Some(bound) = self.max_norm {
            let norm = delta.l2_norm();
            if norm > bound {
                return Err(RejectReason::NormTooLarge { norm, bound });
            }
        }
        Ok(())
    }

    /// A claimed number of examples (an update's, a hello's) within the
    /// bound; a `noised` count (released under DP) may exceed it by the DP
    /// slack.
    pub fn check_examples(&self, claimed: usize, noised: bool) -> Result<(), RejectReason> {
        match self.max_examples {
            Some(max) if claimed as f64 > count_limit(max, noised) => {
                Err(RejectReason::TooManyExamples { claimed, max })
            }
            _ => Ok(()),
        }
    }

    /// Feature statistics must be finite and of a magnitude real data has
    /// (so that sums of checked parts stay finite when combined), cover a
    /// plausible number of rows (within the bound, allowing for DP noise on
    /// the count) and, without noise, describe real data (no negative
    /// variance).
    pub fn check_stats(&self, stats: &MomentSums, noised: bool) -> Result<(), RejectReason> {
        let bad = |m: String| Err(RejectReason::BadStatistics(m));
        let finite = stats.count.is_finite() && stats.sum.iter().chain(&stats.sum_sq).all(|v| v.is_finite());
        if !finite {
            return bad("a value is not finite".into());
        }
        if stats.sum.len() != stats.sum_sq.len() {
            return bad(format!(
                "{} sums but {} sums of squares",
                stats.sum.len(),
                stats.sum_sq.len()
            ));
        }
        // No value near f64's range: the sums of up to 1e100 hospitals stay finite.
        if let Some(v) = stats
            .sum
            .iter()
            .chain(&stats.sum_sq)
            .find(|v| v.abs() > MAX_STATISTIC)
        {
            return bad(format!("a sum of {v:e}, beyond any real data"));
        }
        if let Some(max) = self.max_examples {
            let limit = count_limit(max, noised);
            if stats.count > limit {
                return bad(format!(
                    "a count of {:.0} rows, above this task's bound of {max}",
                    stats.count
                ));
            }
        }
        if !noised {
            if stats.count < 1.0 || stats.count.fract() != 0.0 {
                return bad(format!("a count of {} rows", stats.count));
            }
            // Cauchy-Schwarz: n * sum(x^2) >= (sum x)^2 for real rows.
            let impossible = stats
                .sum
                .iter()
                .zip(&stats.sum_sq)
                .position(|(s, q)| *q < 0.0 || stats.count * q < s * s * (1.0 - 1e-9));
            if let Some(i) = impossible {
                return bad(format!("feature {i} has a negative variance"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(values: Vec<f32>) -> Params {
        Params::single("w", values).unwrap()
    }

    #[test]
    fn rejections_carry_their_reason() {
        let check = UpdateCheck {
            max_norm: Some(10.0),
            max_examples: Some(1000),
        };
        assert_eq!(
            check.check_examples(4242, false),
            Err(RejectReason::TooManyExamples {
                claimed: 4242,
                max: 1000
            })
        );
        // A DP-released count may be a little above (noise), not far.
        assert_eq!(check.check_examples(1050, true), Ok(()));
        assert!(check.check_examples(1050, false).is_err());
        assert!(check.check_examples(1200, true).is_err());
        let global = params(vec![0.0; 2]);
        assert_eq!(check.check(&global, &params(vec![3.0, 4.0]), 5), Ok(()));
        assert_eq!(
            check.check(&global, &params(vec![0.0; 3]), 5),
            Err(RejectReason::WrongShape)
        );
        assert_eq!(
            check.check(&global, &params(vec![1.0, f32::NAN]), 5),
            Err(RejectReason::NonFinite { index: 1 })
        );
        assert_eq!(
            check.check(&global, &params(vec![f32::INFINITY, 0.0]), 5),
            Err(RejectReason::NonFinite { index: 0 })
        );
        // Exactly at the bound is accepted.
        assert_eq!(check.check(&global, &params(vec![6.0, 8.0]), 5), Ok(()));
        let Err(RejectReason::NormTooLarge { norm, .. }) = check.check(&global, &params(vec![30.0, 40.0]), 5)
        else {
            panic!("expected a norm rejection");
        };
        assert_eq!(norm, 50.0);
        assert_eq!(
            check.check(&global, &params(vec![0.0, 0.0]), 0),
            Err(RejectReason::NoExamples)
        );
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    fn sums(count: f64, sum: f64, sum_sq: f64) -> MomentSums {
        MomentSums {
            count,
            sum: vec![sum],
            sum_sq: vec![sum_sq],
        }
    }

    #[test]
    fn forged_feature_statistics_are_refused() {
        let check = UpdateCheck {
            max_norm: None,
            max_examples: Some(500),
        };
        // Rows 1, 2, 3: count 3, sum 6, sum of squares 14.
        assert_eq!(check.check_stats(&sums(3.0, 6.0, 14.0), false), Ok(()));
        let label = |r: Result<(), RejectReason>| r.unwrap_err().label();
        assert_eq!(
            label(check.check_stats(&sums(100_000.0, 6.0, 14.0), false)),
            "bad_statistics"
        );
        assert_eq!(
            label(check.check_stats(&sums(3.0, 6.0, 1.0), false)),
            "bad_statistics"
        );
        assert_eq!(
            label(check.check_stats(&sums(3.0, f64::NAN, 14.0), false)),
            "bad_statistics"
        );
        assert_eq!(
            label(check.check_stats(&sums(2.5, 6.0, 14.0), false)),
            "bad_statistics"
        );
        // Sums near f64's range would overflow when combined.
        assert_eq!(
            label(check.check_stats(&sums(3.0, 1e300, 1e300), true)),
            "bad_statistics"
        );
        // Under DP the count and sums are noisy: only bounds and finiteness.
        assert_eq!(check.check_stats(&sums(512.3, 6.0, 1.0), true), Ok(()));
        assert_eq!(
            label(check.check_stats(&sums(1e6, 6.0, 14.0), true)),
            "bad_statistics"
        );
    }
}
