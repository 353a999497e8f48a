//! Group normalisation (Wu & He 2018) over a batch in CNHW layout: each
//! image's channels are split into groups, normalised by the group's own
//! mean and variance, then scaled and shifted per channel. Unlike batch
//! normalisation it has no running statistics and no coupling between the
//! images of a batch, so it federates (nothing but parameters to average)
//! and each image's gradient is its own (DP-SGD's per-example clipping).
//! Optionally fused with the ReLU that follows it.

use rayon::prelude::*;

use super::lanes;

/// PyTorch's default.
const EPS: f64 = 1e-5;

/// `channels` split into `groups` of `channels / groups` consecutive ones.
#[derive(Debug, Clone, Copy)]
pub(super) struct GroupNorm {
    pub channels: usize,
    pub groups: usize,
}

/// The gradients the backward pass adds to.
pub(super) struct NormGrads<'a> {
    pub dgamma: &'a mut [f32],
    pub dbeta: &'a mut [f32],
    /// Each image's squared norm of its own (dgamma, dbeta), added per image.
    pub example_sq: Option<&'a mut [f64]>,
}

impl GroupNorm {
    fn per_group(&self) -> usize {
        self.channels / self.groups
    }

    /// `out = gamma * (x - mean) / sqrt(var + eps) + beta` (then ReLU with
    /// `relu`) over `batch` images of `hw` pixels per channel; each (group,
    /// image)'s mean and 1/std go to `stats[group * batch + image]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &[f32],
        batch: usize,
        hw: usize,
        affine: (&[f32], &[f32]),
        relu: bool,
        out: &mut [f32],
        stats: &mut [[f32; 2]],
    ) {
        let (gamma, beta) = affine;
        let cpg = self.per_group();
        let block = cpg * batch * hw;
        x[..self.channels * batch * hw]
            .par_chunks(block)
            .zip(out[..self.channels * batch * hw].par_chunks_mut(block))
            .zip(stats[..self.groups * batch].par_chunks_mut(batch))
            .enumerate()
            .for_each(|(g, ((x, out), stats))| {
                for (b, stat) in stats.iter_mut().enumerate() {
                    // Sums in f32 lanes within a plane, f64 across.
                    let planes = || (0..cpg).map(|c| &x[(c * batch + b) * hw..][..hw]);
                    let count = (cpg * hw) as f64;
                    let mean = planes().map(|p| f64::from(lanes::sum(p))).sum::<f64>() / count;
                    let m = mean as f32;
                    let var = planes().map(|p| f64::from(lanes::sum_sq_dev(p, m))).sum::<f64>() / count;
                    let rstd = 1.0 / (var + EPS).sqrt();
                    *stat = [mean as f32, rstd as f32];
                    let (mean, rstd) = (mean as f32, rstd as f32);
                    for c in 0..cpg {
                        let channel = g * cpg + c;
                        let (scale, shift) = (
                            gamma[channel] * rstd,
                            beta[channel] - gamma[channel] * rstd * mean,
                        );
                        let src = &x[(c * batch + b) * hw..][..hw];
                        let dst = &mut out[(c * batch + b) * hw..][..hw];
                        for (o, &v) in dst.iter_mut().zip(src) {
                            let y = v * scale + shift;
                            *o = if relu { y.max(0.0) } else { y };
                        }
                    }
                }
            });
    }

    /// The input gradient `dx` (overwritten) from the output gradient
    /// `dout`, masked by `relu_out > 0` when the forward pass applied ReLU;
    /// adds the parameter gradients to `grads`. `x` and `stats` are the
    /// forward pass's.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        x: &[f32],
        batch: usize,
        hw: usize,
        gamma: &[f32],
        stats: &[[f32; 2]],
        dout: &[f32],
        relu_out: Option<&[f32]>,
        dx: &mut [f32],
        grads: NormGrads,
    ) {
        let cpg = self.per_group();
        let block = cpg * batch * hw;
        let n = self.channels * batch * hw;
        let NormGrads {
            dgamma,
            dbeta,
            example_sq,
        } = grads;
        let per_group_sq: Vec<Vec<f64>> = dx[..n]
            .par_chunks_mut(block)
            .zip(dgamma[..self.channels].par_chunks_mut(cpg))
            .zip(dbeta[..self.channels].par_chunks_mut(cpg))
            .enumerate()
            .map(|(g, ((dx, dgamma), dbeta))| {
                let base = g * block;
                let (x, dout) = (&x[base..][..block], &dout[base..][..block]);
                // dx first holds the output gradient through the ReLU, if any.
                match relu_out {
                    Some(out) => {
                        for ((d, &o), &v) in dx.iter_mut().zip(dout).zip(&out[base..][..block]) {
                            *d = if v > 0.0 { o } else { 0.0 };
                        }
                    }
                    None => dx.copy_from_slice(dout),
                }
                let mut sq = vec![0.0; batch];
                for (b, sq) in sq.iter_mut().enumerate() {
                    let [mean, rstd] = stats[g * batch + b];
                    let plane = |c: usize| (c * batch + b) * hw..(c * batch + b + 1) * hw;
                    // Sums over the group of dxhat and dxhat * xhat.
                    let (mut sum_d, mut sum_dx) = (0.0f64, 0.0f64);
                    for c in 0..cpg {
                        let (dg, db) = lanes::dot_dev_and_sum(&dx[plane(c)], &x[plane(c)], mean);
                        let (dg, db) = (f64::from(dg * rstd), f64::from(db));
                        let gm = f64::from(gamma[g * cpg + c]);
                        sum_d += db * gm;
                        sum_dx += dg * gm;
                        dgamma[c] += dg as f32;
                        dbeta[c] += db as f32;
                        *sq += dg * dg + db * db;
                    }
                    let count = (cpg * hw) as f64;
                    let (mean_d, mean_dx) = ((sum_d / count) as f32, (sum_dx / count) as f32);
                    for c in 0..cpg {
                        let gm = gamma[g * cpg + c];
                        // dx = rstd (d gm - mean_d - xhat mean_dx), as a*d + b*x + c.
                        let (a, bx) = (rstd * gm, -rstd * rstd * mean_dx);
                        let c0 = -rstd * mean_d + rstd * rstd * mean * mean_dx;
                        for (d, &xv) in dx[plane(c)].iter_mut().zip(&x[plane(c)]) {
                            *d = a * *d + bx * xv + c0;
                        }
                    }
                }
                sq
            })
            .collect();
        if let Some(example_sq) = example_sq {
            for sq in per_group_sq {
                example_sq.iter_mut().zip(sq).for_each(|(a, b)| *a += b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    const NORM: GroupNorm = GroupNorm {
        channels: 6,
        groups: 3,
    };
    const BATCH: usize = 2;
    const HW: usize = 5;

    fn run(x: &[f32], gamma: &[f32], beta: &[f32], relu: bool) -> (Vec<f32>, Vec<[f32; 2]>) {
        let mut out = vec![f32::NAN; x.len()];
        let mut stats = vec![[0.0; 2]; NORM.groups * BATCH];
        NORM.forward(x, BATCH, HW, (gamma, beta), relu, &mut out, &mut stats);
        (out, stats)
    }

    /// Each (image, group) comes out with mean beta and standard deviation
    /// gamma (unit affine: 0 and ~1), whatever the other image holds.
    #[test]
    fn each_image_and_group_is_normalised_on_its_own() {
        let x = values(NORM.channels * BATCH * HW, 1);
        let (out, _) = run(&x, &[1.0; 6], &[0.0; 6], false);
        for b in 0..BATCH {
            for g in 0..NORM.groups {
                let v: Vec<f64> = (0..2)
                    .flat_map(|c| &out[((2 * g + c) * BATCH + b) * HW..][..HW])
                    .map(|&v| f64::from(v))
                    .collect();
                let mean = v.iter().sum::<f64>() / 10.0;
                let var = v.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / 10.0;
                assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{mean} {var}");
            }
        }
        // Image 1 changed: image 0's outputs stay.
        let mut y = x.clone();
        for c in 0..NORM.channels {
            y[(c * BATCH + 1) * HW] += 7.0;
        }
        let (out_y, _) = run(&y, &[1.0; 6], &[0.0; 6], false);
        for c in 0..NORM.channels {
            assert_eq!(out[c * BATCH * HW..][..HW], out_y[c * BATCH * HW..][..HW]);
        }
    }

    /// The backward pass against central differences of
    /// sum(w * forward(x)), with ReLU, for x, gamma and beta; and each
    /// image's (dgamma, dbeta) squared norm against its own batch of one.
    #[test]
    fn gradients_match_finite_differences() {
        let n = NORM.channels * BATCH * HW;
        let x = values(n, 3);
        let w = values(n, 4);
        let gamma: Vec<f32> = values(6, 5).iter().map(|v| v + 2.5).collect();
        let beta = values(6, 6);
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            let (out, _) = run(x, gamma, beta, true);
            out.iter().zip(&w).map(|(o, w)| f64::from(o * w)).sum()
        };
        let (out, stats) = run(&x, &gamma, &beta, true);
        let mut dx = vec![f32::NAN; n];
        let (mut dgamma, mut dbeta, mut sq) = (vec![0.0; 6], vec![0.0; 6], vec![0.0; BATCH]);
        NORM.backward(
            &x,
            BATCH,
            HW,
            &gamma,
            &stats,
            &w,
            Some(&out),
            &mut dx,
            NormGrads {
                dgamma: &mut dgamma,
                dbeta: &mut dbeta,
                example_sq: Some(&mut sq),
            },
        );
        let h = 1e-2;
        let fd = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * f64::from(h));
        for i in [0, 7, 23, 41, 59] {
            let want = fd(&|e| {
                let mut x2 = x.clone();
                x2[i] += e;
                loss(&x2, &gamma, &beta)
            });
            assert!(
                (f64::from(dx[i]) - want).abs() < 2e-2 * want.abs().max(0.1),
                "dx[{i}] {} vs {want}",
                dx[i]
            );
        }
        for c in 0..6 {
            let want_g = fd(&|e| {
                let mut g2 = gamma.clone();
                g2[c] += e;
                loss(&x, &g2, &beta)
            });
            let want_b = fd(&|e| {
                let mut b2 = beta.clone();
                b2[c] += e;
                loss(&x, &gamma, &b2)
            });
            assert!(
                (f64::from(dgamma[c]) - want_g).abs() < 2e-2 * want_g.abs().max(0.1),
                "dgamma[{c}]"
            );
            assert!(
                (f64::from(dbeta[c]) - want_b).abs() < 2e-2 * want_b.abs().max(0.1),
                "dbeta[{c}]"
            );
        }
        // The batch's parameter gradient is the two images' sum, and each
        // image's squared norm is of its own share.
        let (mut g0, mut b0) = (vec![0.0f64; 6], vec![0.0f64; 6]);
        for c in 0..6 {
            for j in 0..HW {
                let i = (c * BATCH) * HW + j;
                if out[i] > 0.0 {
                    let xhat = (x[i] - stats[(c / 2) * BATCH][0]) * stats[(c / 2) * BATCH][1];
                    g0[c] += f64::from(w[i] * xhat);
                    b0[c] += f64::from(w[i]);
                }
            }
        }
        let own: f64 = g0.iter().chain(&b0).map(|v| v * v).sum();
        assert!((sq[0] - own).abs() < 1e-4 * own, "{} vs {own}", sq[0]);
    }
}
