//! Krum and Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018), as
//! Flower's `Krum`: each update is scored by the sum of squared distances to
//! its `max(1, n - f - 2)` nearest others; Krum takes the update with the
//! lowest score (unweighted, ties to the first), Multi-Krum the
//! sample-weighted mean of the `m` lowest. The guarantee needs n >= 2f + 3.

use super::kernels::{
    apply_step, delta_slices, krum_scores, lowest, pairwise_sq_distances, weighted_mean_step,
};
use super::{Strategy, WeightedDelta};
use crate::error::Result;
use crate::params::Params;

#[derive(Debug, Clone, Copy)]
pub struct Krum {
    /// Byzantine updates tolerated.
    pub f: usize,
    /// Multi-Krum: how many of the best-scored updates are averaged
    /// (`None`: Krum, the single best one).
    pub m: Option<usize>,
}

impl Krum {
    /// The fewest updates Krum's guarantee holds for (saturating: an absurd
    /// f asks for more updates than can exist, never for few).
    pub fn needs(f: usize) -> usize {
        f.saturating_mul(2).saturating_add(3)
    }

    /// Indices of the `m` best-scored updates, best first.
    pub fn select(&self, inputs: &[&[f32]], m: usize) -> Result<Vec<usize>> {
        let distances = pairwise_sq_distances(inputs)?;
        let all: Vec<usize> = (0..inputs.len()).collect();
        Ok(lowest(&krum_scores(&distances, &all, self.f), m))
    }
}

impl Strategy for Krum {
    fn boxed_clone(&self) -> Box<dyn Strategy> {
        Box::new(*self)
    }

    fn name(&self) -> &'static str {
        if self.m.is_some() {
            "multi_krum"
        } else {
            "krum"
        }
    }

    fn aggregate_train(
        &mut self,
        _round: u32,
        global: &Params,
        updates: &[WeightedDelta<'_>],
    ) -> Result<Params> {
        let inputs = delta_slices(global, updates)?;
        match self.m {
            None => {
                let best = self.select(&inputs, 1)?[0];
                apply_step(global, inputs[best])
            }
            Some(m) => {
                // Of k updates, at most k - f can be trusted to average.
                let keep = m.min(inputs.len().saturating_sub(self.f)).max(1);
                let chosen: Vec<WeightedDelta<'_>> = self
                    .select(&inputs, keep)?
                    .into_iter()
                    .map(|i| updates[i])
                    .collect();
                let values = weighted_mean_step("Multi-Krum", global.as_slice(), global, &chosen)?;
                Params::new(global.layout().clone(), values)
            }
        }
    }

    /// n >= 2f + 3 (Multi-Krum keeps min(m, n - f) of what arrived).
    fn min_updates(&self) -> usize {
        Self::needs(self.f)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{aggregate, attacked_five};
    use super::*;

    #[test]
    fn multi_krum_of_three_by_hand() {
        // Below the n >= 2f+3 check, as in Flower's test: .2, .5, 1 with f = 1,
        // m = 2 keep .2 and .5 (scores .09, .09, .25), equally weighted: .35.
        let next = aggregate(
            &mut Krum { f: 1, m: Some(2) },
            &[0.0],
            &[(&[0.2], 5), (&[0.5], 5), (&[1.0], 5)],
        );
        assert!((next[0] - 0.35).abs() < 1e-6, "{next:?}");
    }

    #[test]
    fn five_hospitals_one_attacker() {
        // Deltas (1,-1), (2,0), (3,1), (4,2), (1000,-500); f = 1: 2 neighbours each.
        // Scores: (1,-1): 2+8 = 10; (2,0): 2+2 = 4; (3,1): 2+2 = 4; (4,2): 2+8 = 10.
        // Krum takes (2,0), the first of the tie.
        let next = aggregate(&mut Krum { f: 1, m: None }, &[10.0, 10.0], &attacked_five());
        assert_eq!(next, vec![12.0, 10.0]);
        // Multi-Krum m = 3: (2,0), (3,1) and then (1,-1) (score 10, before
        // (4,2)), equally weighted: mean (2, 0).
        let next = aggregate(&mut Krum { f: 1, m: Some(3) }, &[10.0, 10.0], &attacked_five());
        assert_eq!(next, vec![12.0, 10.0]);
        assert_eq!(Krum { f: 1, m: None }.min_updates(), 5);
        assert_eq!(Krum { f: 1, m: Some(7) }.min_updates(), 5);
        assert_eq!(Krum::needs(usize::MAX), usize::MAX);
        // m larger than the updates that came, less f: the n - f best (4 of 5).
        let next = aggregate(&mut Krum { f: 1, m: Some(50) }, &[10.0, 10.0], &attacked_five());
        assert_eq!(next, vec![12.5, 10.5], "the honest four, never the attacker");
    }
}
