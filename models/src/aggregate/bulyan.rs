//! Bulyan (El Mhamdi et al. 2018), as Flower's `Bulyan` over Krum: Krum
//! picks theta = n - 2f updates one at a time (each pick leaves the pool);
//! then, per coordinate, the beta = theta - 2f values closest to the
//! picked updates' median are averaged, unweighted. Needs n >= 4f + 3.

use super::kernels::{
    apply_step, delta_slices, krum_scores, lowest, mean_of_closest, median, pairwise_sq_distances,
};
use super::{Strategy, WeightedDelta};
use crate::error::{ModelError, Result};
use crate::params::Params;

#[derive(Debug, Clone, Copy)]
pub struct Bulyan {
    /// Byzantine updates tolerated.
    pub f: usize,
}

impl Bulyan {
    /// The fewest updates Bulyan's guarantee holds for (saturating).
    pub fn needs(f: usize) -> usize {
        f.saturating_mul(4).saturating_add(3)
    }
}

/// Bulyan's step over `inputs`.
pub fn bulyan(inputs: &[&[f32]], f: usize) -> Result<Vec<f32>> {
    let n = inputs.len();
    if n < Bulyan::needs(f) {
        return Err(ModelError::Invalid(format!(
            "Bulyan with f = {f} needs at least {} updates, got {n}",
            Bulyan::needs(f)
        )));
    }
    let (theta, beta) = (n - 2 * f, n - 4 * f); // n >= 4f + 3: no underflow
    let distances = pairwise_sq_distances(inputs)?;
    let mut pool: Vec<usize> = (0..n).collect();
    let mut picked = Vec::with_capacity(theta);
    while picked.len() < theta {
        let best = lowest(&krum_scores(&distances, &pool, f), 1)[0];
        picked.push(inputs[pool.remove(best)]);
    }
    mean_of_closest(&picked, &median(&picked)?, beta)
}

impl Strategy for Bulyan {
    fn boxed_clone(&self) -> Box<dyn Strategy> {
        Box::new(*self)
    }

    fn name(&self) -> &'static str {
        "bulyan"
    }

    fn aggregate_train(
        &mut self,
        _round: u32,
        global: &Params,
        updates: &[WeightedDelta<'_>],
    ) -> Result<Params> {
        apply_step(global, &bulyan(&delta_slices(global, updates)?, self.f)?)
    }

    fn min_updates(&self) -> usize {
        Self::needs(self.f)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{aggregate, attacked_five};
    use super::*;

    #[test]
    fn f_zero_is_the_plain_mean() {
        // Flower's test: f = 0 keeps all six and averages them.
        let values = [0.2f32, 0.5, 0.7, 12.0, 0.1, 0.1];
        let inputs: Vec<&[f32]> = values.iter().map(std::slice::from_ref).collect();
        let got = bulyan(&inputs, 0).unwrap();
        assert!((got[0] - 13.6 / 6.0).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn five_hospitals_allow_only_f_zero_which_tolerates_nobody() {
        // 4f + 3 <= 5 only for f = 0: theta = beta = 5, the plain mean, so the
        // attacker's (1000, -500) moves it; f = 1 is refused with the reason.
        let next = aggregate(&mut Bulyan { f: 0 }, &[10.0, 10.0], &attacked_five());
        assert_eq!(next, vec![10.0 + 1010.0 / 5.0, 10.0 - 498.0 / 5.0]);
        let global = Params::single("w", vec![10.0, 10.0]).unwrap();
        let deltas: Vec<Params> = attacked_five()
            .iter()
            .map(|(d, _)| Params::single("w", d.to_vec()).unwrap())
            .collect();
        let updates: Vec<WeightedDelta<'_>> = deltas
            .iter()
            .map(|delta| WeightedDelta {
                delta,
                num_examples: 10,
            })
            .collect();
        let e = Bulyan { f: 1 }
            .aggregate_train(1, &global, &updates)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 7 updates, got 5"), "{e}");
    }

    #[test]
    fn seven_hospitals_one_attacker() {
        // n = 7 = 4f + 3 with f = 1: theta = 5, beta = 3. The honest deltas
        // 1..6 score lowest and Krum picks five of them, never 1000; of the
        // five picked the three closest to their median are averaged.
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 1000.0];
        let rows: Vec<[f32; 1]> = values.iter().map(|&v| [v]).collect();
        let updates: Vec<(&[f32], usize)> = rows.iter().map(|r| (r.as_slice(), 10)).collect();
        let next = aggregate(&mut Bulyan { f: 1 }, &[0.0], &updates);
        // Picks (neighbours max(1, n - 3) as the pool shrinks): of 7, 3 and 4
        // score 10 (4 neighbours), 3 first; of 6, 4 (9); of 5, 2 and 5 tie at
        // 10, 2 first; of 4, 5 (1); of 3, 1 and 6 tie at 25, 1 first. Picked
        // {1, 2, 3, 4, 5}: median 3, the three closest 2, 3, 4, mean 3.
        assert_eq!(next, vec![3.0]);
        let e = bulyan(&[&[1.0], &[2.0]], 1).unwrap_err().to_string();
        assert!(e.contains("at least 7 updates, got 2"), "{e}");
    }
}
