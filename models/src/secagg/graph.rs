//! Who holds whose shares and masks with whom. Small federations use the
//! complete graph (Bonawitz et al.); larger ones a random Harary graph
//! (Bell et al.): the participants in a random order (public randomness
//! from the round's graph seed) on a ring, each joined to its k/2 nearest
//! on either side, so each hospital has k = num_shares - 1 neighbours
//! (rounded up to even) and per-hospital cost grows with k, not with K.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    neighbours: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    /// The graph over `participants` (any order; duplicates ignored) for
    /// `num_shares` share holders per hospital, itself included.
    pub fn build<'a>(
        participants: impl IntoIterator<Item = &'a String>,
        num_shares: usize,
        seed: u64,
    ) -> Self {
        let sorted: BTreeSet<String> = participants.into_iter().cloned().collect();
        let n = sorted.len();
        let mut neighbours: BTreeMap<String, BTreeSet<String>> =
            sorted.iter().map(|p| (p.clone(), BTreeSet::new())).collect();
        if num_shares >= n {
            for p in &sorted {
                let others = sorted.iter().filter(|q| *q != p).cloned().collect();
                neighbours.insert(p.clone(), others);
            }
            return Self { neighbours };
        }
        let mut ring: Vec<String> = sorted.into_iter().collect();
        ring.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
        let half = num_shares.saturating_sub(1).div_ceil(2).max(1);
        for (i, p) in ring.iter().enumerate() {
            for step in 1..=half {
                let q = &ring[(i + step) % n];
                if q != p {
                    neighbours.entry(p.clone()).or_default().insert(q.clone());
                    neighbours.entry(q.clone()).or_default().insert(p.clone());
                }
            }
        }
        Self { neighbours }
    }

    /// `hospital`'s neighbours (itself excluded); empty if it is not in the graph.
    pub fn neighbours(&self, hospital: &str) -> impl Iterator<Item = &String> {
        self.neighbours.get(hospital).into_iter().flatten()
    }

    pub fn are_neighbours(&self, a: &str, b: &str) -> bool {
        self.neighbours.get(a).is_some_and(|n| n.contains(b))
    }

    /// Hospitals in the graph.
    pub fn len(&self) -> usize {
        self.neighbours.len()
    }

    pub fn is_empty(&self) -> bool {
        self.neighbours.is_empty()
    }

    pub fn contains(&self, hospital: &str) -> bool {
        self.neighbours.contains_key(hospital)
    }

    /// The share holders of `hospital`'s secrets: itself and its neighbours, sorted.
    pub fn holders(&self, hospital: &str) -> Vec<String> {
        let mut all: BTreeSet<String> = self.neighbours(hospital).cloned().collect();
        all.insert(hospital.to_string());
        all.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("h{i:03}")).collect()
    }

    #[test]
    fn small_federations_use_the_complete_graph() {
        let p = names(5);
        let g = Graph::build(&p, 5, 1);
        assert_eq!(g.neighbours("h000").count(), 4);
        assert_eq!(g.holders("h002"), p);
    }

    #[test]
    fn large_federations_get_a_symmetric_regular_graph_that_depends_on_the_seed() {
        let p = names(100);
        let g = Graph::build(&p, 15, 7);
        for h in &p {
            assert_eq!(g.neighbours(h).count(), 14, "{h}");
            for n in g.neighbours(h) {
                assert!(g.are_neighbours(n, h));
            }
        }
        assert_ne!(g, Graph::build(&p, 15, 8));
        assert_eq!(g, Graph::build(p.iter().rev(), 15, 7));
    }
}
