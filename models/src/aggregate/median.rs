//! FedMedian (Yin et al. 2018): the coordinate-wise median of the updates,
//! unweighted, as Flower's `FedMedian`. Robust to fewer than half of the
//! updates being arbitrary.

use super::kernels::{apply_step, delta_slices, median};
use super::{Strategy, WeightedDelta};
use crate::error::Result;
use crate::params::Params;

#[derive(Debug, Default, Clone, Copy)]
pub struct Median;

impl Strategy for Median {
    fn boxed_clone(&self) -> Box<dyn Strategy> {
        Box::new(*self)
    }

    fn name(&self) -> &'static str {
        "median"
    }

    fn aggregate_train(
        &mut self,
        _round: u32,
        global: &Params,
        updates: &[WeightedDelta<'_>],
    ) -> Result<Params> {
        apply_step(global, &median(&delta_slices(global, updates)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{aggregate, attacked_five};
    use super::*;

    #[test]
    fn five_hospitals_one_attacker() {
        // Per coordinate the median of {1, 2, 3, 4, 1000} and {-1, 0, 1, 2, -500}: 3 and 0.
        let next = aggregate(&mut Median, &[10.0, 10.0], &attacked_five());
        assert_eq!(next, vec![13.0, 10.0]);
    }
}
