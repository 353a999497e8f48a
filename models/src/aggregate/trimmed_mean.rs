//! FedTrimmedAvg (Yin et al. 2018): per coordinate, the `floor(beta * n)`
//! largest and smallest values are dropped and the rest averaged,
//! unweighted, as Flower's `FedTrimmedAvg` (beta 0.2 by default).

use super::kernels::{apply_step, delta_slices, trimmed_mean};
use super::{Strategy, WeightedDelta};
use crate::error::Result;
use crate::params::Params;

#[derive(Debug, Clone, Copy)]
pub struct TrimmedMean {
    /// Share cut from each end; below 0.5, so that any number of updates
    /// leaves something (2 floor(beta n) < n).
    pub beta: f64,
}

impl Strategy for TrimmedMean {
    fn boxed_clone(&self) -> Box<dyn Strategy> {
        Box::new(*self)
    }

    fn name(&self) -> &'static str {
        "trimmed_mean"
    }

    fn aggregate_train(
        &mut self,
        _round: u32,
        global: &Params,
        updates: &[WeightedDelta<'_>],
    ) -> Result<Params> {
        apply_step(global, &trimmed_mean(&delta_slices(global, updates)?, self.beta)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{aggregate, attacked_five};
    use super::*;

    #[test]
    fn five_hospitals_one_attacker() {
        // beta .2 of five cuts one from each end: mean(2, 3, 4) = 3, mean(-1, 0, 1) = 0.
        let next = aggregate(&mut TrimmedMean { beta: 0.2 }, &[10.0, 10.0], &attacked_five());
        assert_eq!(next, vec![13.0, 10.0]);
    }
}
