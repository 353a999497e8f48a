//! The local optimisers, one fused pass over the flat parameter vector per
//! step: the training step holds its gradient as one flat vector (so does
//! DP-SGD's noisy mean), and candle-nn's optimisers step `Var`s of a
//! candle graph this step no longer builds (small_net.rs says why).

use rayon::prelude::*;

use super::Optimizer;
use crate::learner::TrainPlan;

/// The optimiser's state over one round (moments start at zero).
pub(super) struct LocalOptimizer {
    kind: Optimizer,
    learning_rate: f64,
    weight_decay: f64,
    proximal_mu: f32,
    m: Vec<f32>,
    s: Vec<f32>,
    step: i32,
    /// The global model the round started from, for FedProx's term; empty
    /// when mu is 0.
    anchor: Vec<f32>,
}

impl LocalOptimizer {
    /// Over `params` as the round starts (at the global model).
    pub fn new(kind: Optimizer, params: &[f32], plan: &TrainPlan) -> Self {
        Self {
            kind,
            learning_rate: plan.learning_rate,
            weight_decay: plan.l2,
            proximal_mu: plan.proximal_mu as f32,
            m: vec![0.0; params.len()],
            s: vec![0.0; params.len()],
            step: 0,
            anchor: if plan.proximal_mu > 0.0 {
                params.to_vec()
            } else {
                Vec::new()
            },
        }
    }

    /// One step with gradient `grad`: element-wise, so in parallel over
    /// blocks of the vector (ResNet-18's 11M values; the result is the same
    /// as one pass's).
    pub fn step(&mut self, params: &mut [f32], grad: &[f32]) {
        self.step += 1;
        let (lr, wd) = (self.learning_rate, self.weight_decay);
        let mu = self.proximal_mu;
        let kind = match self.kind {
            Optimizer::Sgd { momentum } => Step::Sgd {
                momentum: momentum as f32,
                lr: lr as f32,
                wd: wd as f32,
            },
            Optimizer::Adamw { beta1, beta2 } => Step::Adamw {
                m_scale: (1.0 / (1.0 - beta1.powi(self.step))) as f32,
                s_scale: (1.0 / (1.0 - beta2.powi(self.step))) as f32,
                decay: (1.0 - lr * wd) as f32,
                b1: beta1 as f32,
                b2: beta2 as f32,
                one_b1: (1.0 - beta1) as f32,
                one_b2: (1.0 - beta2) as f32,
                lr: lr as f32,
            },
        };
        let anchor = &self.anchor;
        params
            .par_chunks_mut(BLOCK)
            .zip(grad.par_chunks(BLOCK))
            .zip(self.m.par_chunks_mut(BLOCK))
            .zip(self.s.par_chunks_mut(BLOCK))
            .enumerate()
            .for_each(|(block, (((w, g), m), s))| {
                // FedProx: the gradient of mu/2 |w - w_global|^2 joins the
                // loss's (data-independent, so also after DP-SGD's noise).
                // Two monomorphic loops, so that the common one (no
                // anchor) has no per-value branch and vectorises.
                let at = block * BLOCK;
                match anchor.get(at..at + w.len()) {
                    Some(a) => kind.apply(w, g, m, s, a, |w, a| (w - a) * mu),
                    // `g` only fills the unused anchor slot.
                    None => kind.apply(w, g, m, s, g, |_, _| 0.0),
                }
            });
    }
}

/// Values per parallel block of a step.
const BLOCK: usize = 1 << 16;

/// One step's constants.
#[derive(Clone, Copy)]
enum Step {
    Sgd {
        momentum: f32,
        lr: f32,
        wd: f32,
    },
    Adamw {
        m_scale: f32,
        s_scale: f32,
        decay: f32,
        b1: f32,
        b2: f32,
        one_b1: f32,
        one_b2: f32,
        lr: f32,
    },
}

impl Step {
    /// The step on one block; `prox(w, a)` is FedProx's gradient at a
    /// value `w` whose anchor value is `a`.
    fn apply(
        self,
        params: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        s: &mut [f32],
        anchor: &[f32],
        prox: impl Fn(f32, f32) -> f32,
    ) {
        match self {
            Step::Sgd { momentum, lr, wd } => {
                for (((w, &g), m), &a) in params.iter_mut().zip(grad).zip(m).zip(anchor) {
                    let g = g + prox(*w, a) + *w * wd;
                    *m = *m * momentum + g;
                    *w -= *m * lr;
                }
            }
            Step::Adamw {
                m_scale,
                s_scale,
                decay,
                b1,
                b2,
                one_b1,
                one_b2,
                lr,
            } => {
                let values = params.iter_mut().zip(grad).zip(m.iter_mut().zip(s));
                for (((w, &g), (m, s)), &a) in values.zip(anchor) {
                    let g = g + prox(*w, a);
                    *m = *m * b1 + g * one_b1;
                    *s = *s * b2 + g * g * one_b2;
                    let update = (*m * m_scale) / ((*s * s_scale).sqrt() + 1e-8);
                    *w = *w * decay - update * lr;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(lr: f64, l2: f64) -> TrainPlan {
        TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: 1,
            batch_size: 1,
            learning_rate: lr,
            l2,
            seed: 1,
            proximal_mu: 0.0,
            privacy: None,
        }
    }

    #[test]
    fn adamw_first_steps_have_known_values() {
        // Step 1: m_hat = g, s_hat = g^2, so the update is lr * sign(g)
        // (up to eps), after the decay w * (1 - lr * wd).
        let kind = Optimizer::Adamw {
            beta1: 0.9,
            beta2: 0.999,
        };
        let mut w = vec![1.0f32, -2.0];
        let mut opt = LocalOptimizer::new(kind, &w, &plan(0.1, 0.5));
        opt.step(&mut w, &[3.0, -0.5]);
        assert!((w[0] - (1.0 * 0.95 - 0.1)).abs() < 1e-6, "{w:?}");
        assert!((w[1] - (-2.0 * 0.95 + 0.1)).abs() < 1e-6, "{w:?}");
        // Step 2 with the same gradient: still sign(g) (the moments agree).
        opt.step(&mut w, &[3.0, -0.5]);
        assert!((w[0] - ((0.95 - 0.1) * 0.95 - 0.1)).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn sgd_with_momentum_and_the_proximal_term() {
        let kind = Optimizer::Sgd { momentum: 0.5 };
        let mut w = vec![1.0f32];
        let mut p = plan(0.1, 0.0);
        p.proximal_mu = 2.0;
        let mut opt = LocalOptimizer::new(kind, &w, &p);
        opt.step(&mut w, &[1.0]); // at the anchor: g = 1, m = 1
        assert!((w[0] - 0.9).abs() < 1e-6);
        opt.step(&mut w, &[1.0]); // g = 1 + 2 (0.9 - 1) = 0.8, m = 0.5 + 0.8
        assert!((w[0] - (0.9 - 0.13)).abs() < 1e-6, "{w:?}");
    }
}
