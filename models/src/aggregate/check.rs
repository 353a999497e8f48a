//! `UpdateCheck`: what a local update must satisfy before it is aggregated.

use serde::{Deserialize, Serialize};

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
}

impl RejectReason {
    /// Short label for metrics and counters.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::WrongShape => "wrong_shape",
            RejectReason::NonFinite { .. } => "non_finite",
            RejectReason::NormTooLarge { .. } => "norm_too_large",
            RejectReason::NoExamples => "no_examples",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UpdateCheck {
    /// Largest accepted L2 norm of a delta; `None` accepts any finite norm.
    pub max_norm: Option<f64>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(values: Vec<f32>) -> Params {
        Params::single("w", values).unwrap()
    }

    #[test]
    fn rejections_carry_their_reason() {
        let check = UpdateCheck { max_norm: Some(10.0) };
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
