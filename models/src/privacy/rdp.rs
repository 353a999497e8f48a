//! Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism
//! (Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled
//! Gaussian Mechanism"), composed by adding RDP over steps, and converted to
//! (epsilon, delta) with the conversion of Balle et al. 2020 / Canonne, Kamath
//! & Steinke 2020 (as in Google's dp-accounting and Opacus).

use serde::{Deserialize, Serialize};

use super::special::{log_add, log_erfc};
use super::PrivacyError;

/// The default orders of Google's dp-accounting `RdpAccountant`.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// Past this many series terms a fractional order is excluded (infinite),
/// as dp-accounting does.
const MAX_FRAC_TERMS: usize = 1000;

/// RDP of one step of the Poisson-subsampled Gaussian mechanism at `alpha`.
pub fn subsampled_gaussian(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if alpha.is_infinite() || sigma == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_int(q, sigma, alpha as u64)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    log_a / (alpha - 1.0)
}

/// `ln |C(n, k)|` for real `n` through log-gamma.
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma_r(n + 1.0).0 - libm::lgamma_r(k + 1.0).0 - libm::lgamma_r(n - k + 1.0).0
}

fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let log1mq = (-q).ln_1p();
    let lq = q.ln();
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let fi = i as f64;
        let term = log_comb(alpha as f64, fi)
            + fi * lq
            + (alpha - i) as f64 * log1mq
            + (fi * fi - fi) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, term);
    }
    log_a
}

fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let log1mq = (-q).ln_1p();
    let lq = q.ln();
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let sqrt2 = std::f64::consts::SQRT_2;
    for i in 0..MAX_FRAC_TERMS {
        let fi = i as f64;
        let log_coef = log_comb(alpha, fi);
        let j = alpha - fi;
        let log_t0 = log_coef + fi * lq + j * log1mq;
        let log_t1 = log_coef + j * lq + fi * log1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((fi - z0) / (sqrt2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (sqrt2 * sigma));
        let log_s0 = log_t0 + (fi * fi - fi) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        // Terms are added in absolute value: an upper bound on A_alpha.
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

/// RDP at each order of `steps` compositions of the subsampled Gaussian.
pub fn compose(q: f64, sigma: f64, steps: u64, orders: &[f64]) -> Vec<f64> {
    orders
        .iter()
        .map(|&a| subsampled_gaussian(q, sigma, a) * steps as f64)
        .collect()
}

/// Tightest epsilon over the orders, and the order achieving it.
pub fn epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
    let mut best = (f64::INFINITY, orders.first().copied().unwrap_or(0.0));
    // No guarantee holds at a delta outside (0, 1): nothing is free there.
    if !(delta > 0.0 && delta < 1.0) {
        return best;
    }
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if r.is_nan() || a < 1.0 {
            f64::INFINITY
        } else if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            // KL bound: delta <= sqrt(1 - exp(-KL)) already holds.
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    (best.0.max(0.0), best.1)
}

/// Validated inputs of one accounting question.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgmParams {
    pub sampling_rate: f64,
    pub noise_multiplier: f64,
    pub steps: u64,
}

pub fn check_sampling_rate(q: f64) -> Result<(), PrivacyError> {
    if q.is_finite() && q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(PrivacyError::Invalid(format!(
            "sampling rate must be in (0, 1], got {q}"
        )))
    }
}

pub fn check_delta(delta: f64) -> Result<(), PrivacyError> {
    if delta.is_finite() && delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(PrivacyError::Invalid(format!(
            "delta must be in (0, 1), got {delta}"
        )))
    }
}

pub fn check_noise(sigma: f64) -> Result<(), PrivacyError> {
    if sigma.is_finite() && sigma > 0.0 {
        Ok(())
    } else {
        Err(PrivacyError::Invalid(format!(
            "noise multiplier must be positive, got {sigma}"
        )))
    }
}

pub fn check_steps(steps: u64) -> Result<(), PrivacyError> {
    if steps > 0 {
        Ok(())
    } else {
        Err(PrivacyError::Invalid("steps must be at least 1".into()))
    }
}

/// Epsilon (and optimal order) of `steps` steps at rate `q` and noise `sigma`.
pub fn epsilon_of(q: f64, sigma: f64, steps: u64, delta: f64) -> Result<(f64, f64), PrivacyError> {
    check_sampling_rate(q)?;
    check_noise(sigma)?;
    check_steps(steps)?;
    check_delta(delta)?;
    let orders = default_orders();
    Ok(epsilon(&orders, &compose(q, sigma, steps, &orders), delta))
}

/// The smallest noise multiplier whose `steps` steps, added to the RDP
/// already spent (`prior`, over `default_orders()`), stay within `target`.
pub fn noise_for_epsilon(
    target: f64,
    q: f64,
    steps: u64,
    delta: f64,
    prior: Option<&[f64]>,
) -> Result<f64, PrivacyError> {
    check_sampling_rate(q)?;
    check_steps(steps)?;
    check_delta(delta)?;
    if !(target.is_finite() && target > 0.0) {
        return Err(PrivacyError::Invalid(format!(
            "target epsilon must be positive, got {target}"
        )));
    }
    let orders = default_orders();
    let total_eps = |sigma: f64| {
        let mut rdp = compose(q, sigma, steps, &orders);
        if let Some(p) = prior {
            rdp.iter_mut().zip(p).for_each(|(r, p)| *r += p);
        }
        epsilon(&orders, &rdp, delta).0
    };
    if let Some(p) = prior {
        // Within rounding of the budget counts as spent: any release would exceed it.
        if epsilon(&orders, p, delta).0 >= target * (1.0 - 1e-6) {
            return Err(PrivacyError::BudgetExhausted(format!(
                "the budget of epsilon {target} is already spent"
            )));
        }
    }
    let (mut lo, mut hi) = (1e-3, 1.0);
    while total_eps(hi) > target {
        lo = hi;
        hi *= 2.0;
        if hi > 1e7 {
            return Err(PrivacyError::Invalid(format!(
                "no noise multiplier below 1e7 reaches epsilon {target} at delta {delta}"
            )));
        }
    }
    while (hi - lo) / hi > 1e-9 {
        let mid = 0.5 * (lo + hi);
        if total_eps(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (q, sigma, steps, delta, epsilon, optimal order), computed with Google's
    /// dp-accounting 0.6.0 RdpAccountant (scripts/reference/rdp_reference_values.py).
    /// The first row is the MNIST setting of Abadi et al. 2016 (batch 256 of
    /// 60,000, sigma 1.1, 60 epochs).
    const EPSILON_REFERENCE: [(f64, f64, u64, f64, f64, f64); 12] = [
        (0.004266666666666667, 1.1, 14063, 1e-05, 2.596655529521983, 8.1),
        (0.01, 1.0, 1000, 1e-05, 2.101366525420273, 7.8),
        (0.01, 4.0, 10000, 1e-05, 1.0354900660362436, 17.0),
        (0.1, 1.0, 100, 1e-05, 7.903850223578231, 3.2),
        (1.0, 1.0, 1, 1e-05, 4.728507067217623, 5.4),
        (1.0, 10.0, 50, 1e-05, 3.1889915626335883, 7.2),
        (0.2, 2.0, 200, 1e-05, 8.028469633692783, 3.7),
        (0.05, 0.8, 500, 1e-05, 13.406213146089476, 2.5),
        (0.001, 1.5, 100000, 1e-05, 0.9591431635305361, 18.0),
        (0.5, 5.0, 30, 1e-05, 2.5082344028914916, 8.3),
        (0.2, 1.2, 100, 1e-06, 13.049606598040539, 3.0),
        (0.02, 0.6, 200, 1e-05, 8.616248027275425, 2.6),
    ];

    /// (target epsilon, q, steps, delta, noise multiplier), same source.
    const NOISE_REFERENCE: [(f64, f64, u64, f64, f64); 5] = [
        (1.0, 0.2, 100, 1e-05, 8.277952454984188),
        (3.0, 0.2, 100, 1e-05, 3.204943126067519),
        (8.0, 0.2, 100, 1e-05, 1.5374727137386799),
        (1.0, 0.01, 10000, 1e-05, 4.1258029863238335),
        (0.5, 1.0, 10, 1e-05, 24.246345922350883),
    ];

    #[test]
    fn epsilon_matches_dp_accounting() {
        for (q, sigma, steps, delta, want, order) in EPSILON_REFERENCE {
            let (eps, got_order) = epsilon_of(q, sigma, steps, delta).unwrap();
            assert!(
                (eps - want).abs() / want < 0.01,
                "q {q} sigma {sigma} steps {steps}: {eps} vs {want}"
            );
            // Same optimum in practice (to 1e-6 relative: same order wins).
            assert!(
                (eps - want).abs() / want < 1e-6,
                "q {q} sigma {sigma}: {eps} vs {want}"
            );
            assert_eq!(got_order, order, "q {q} sigma {sigma}");
        }
    }

    #[test]
    fn noise_inverse_matches_dp_accounting() {
        for (target, q, steps, delta, want) in NOISE_REFERENCE {
            let sigma = noise_for_epsilon(target, q, steps, delta, None).unwrap();
            assert!(
                (sigma - want).abs() / want < 0.01,
                "target {target}: {sigma} vs {want}"
            );
            let (eps, _) = epsilon_of(q, sigma, steps, delta).unwrap();
            assert!(eps <= target * (1.0 + 1e-9), "{eps} > {target}");
        }
    }

    /// DP-SGD composed with the record count's one-off Gaussian release
    /// (add/remove one record): (q, sigma, steps, count sigma, delta,
    /// epsilon, order), dp-accounting 0.6.0's ComposedDpEvent, same script.
    const WITH_COUNT_REFERENCE: [(f64, f64, u64, f64, f64, f64, f64); 4] = [
        (1.0, 30.0, 400, 10.0, 1e-05, 3.0223000452456805, 7.5),
        (0.2, 1.2, 100, 10.0, 1e-05, 11.831179007831741, 2.8),
        (0.01, 1.0, 1000, 20.0, 1e-05, 2.1111165254202735, 7.8),
        (1.0, 5.0, 50, 5.0, 1e-06, 7.856237903487095, 4.5),
    ];

    /// Update-level DP (noise std sigma * 2C, the whole dataset replaced):
    /// one Gaussian of multiplier sigma per round. (sigma, rounds, delta,
    /// epsilon, order), same script.
    const UPDATE_LEVEL_REFERENCE: [(f64, u64, f64, f64, f64); 4] = [
        (4.0, 5, 1e-05, 2.451506386226333, 8.7),
        (2.0, 5, 1e-05, 5.377728336819822, 5.0),
        (10.0, 40, 1e-05, 2.8136532471298397, 7.9),
        (1.5, 10, 1e-06, 12.453805163929907, 3.4),
    ];

    #[test]
    fn dp_sgd_with_the_count_release_matches_dp_accounting() {
        let orders = default_orders();
        for (q, sigma, steps, count, delta, want, order) in WITH_COUNT_REFERENCE {
            let mut rdp = compose(q, sigma, steps, &orders);
            rdp.iter_mut()
                .zip(compose(1.0, count, 1, &orders))
                .for_each(|(a, b)| *a += b);
            let (eps, got_order) = epsilon(&orders, &rdp, delta);
            assert!(
                (eps - want).abs() / want < 1e-6,
                "q {q} sigma {sigma}: {eps} vs {want}"
            );
            assert_eq!(got_order, order, "q {q} sigma {sigma}");
        }
    }

    #[test]
    fn update_level_dp_matches_dp_accounting() {
        for (sigma, rounds, delta, want, order) in UPDATE_LEVEL_REFERENCE {
            let (eps, got_order) = epsilon_of(1.0, sigma, rounds, delta).unwrap();
            assert!((eps - want).abs() / want < 1e-6, "sigma {sigma}: {eps} vs {want}");
            assert_eq!(got_order, order, "sigma {sigma}");
        }
    }

    #[test]
    fn plain_gaussian_rdp_is_alpha_over_two_sigma_squared() {
        assert_eq!(subsampled_gaussian(1.0, 2.0, 8.0), 1.0);
        assert_eq!(subsampled_gaussian(0.0, 2.0, 8.0), 0.0);
        // Subsampling amplifies: strictly less than the unsampled value.
        assert!(subsampled_gaussian(0.1, 2.0, 8.0) < 1.0);
    }

    #[test]
    fn composition_is_additive_and_prior_spend_needs_more_noise() {
        let orders = default_orders();
        let one = compose(0.1, 1.5, 10, &orders);
        let two = compose(0.1, 1.5, 20, &orders);
        for (a, b) in one.iter().zip(&two) {
            assert!((2.0 * a - b).abs() <= 1e-12 * b.abs().max(1.0));
        }
        let fresh = noise_for_epsilon(3.0, 0.2, 100, 1e-5, None).unwrap();
        let after = noise_for_epsilon(3.0, 0.2, 100, 1e-5, Some(&compose(0.2, 3.0, 50, &orders))).unwrap();
        assert!(after > fresh);
        let spent = compose(0.2, 0.5, 1000, &orders);
        assert!(matches!(
            noise_for_epsilon(3.0, 0.2, 100, 1e-5, Some(&spent)),
            Err(PrivacyError::BudgetExhausted(_))
        ));
    }

    #[test]
    fn out_of_range_inputs_are_refused() {
        for (q, s, t, d) in [
            (0.0, 1.0, 1, 1e-5),
            (1.5, 1.0, 1, 1e-5),
            (0.1, 0.0, 1, 1e-5),
            (0.1, -1.0, 1, 1e-5),
            (0.1, 1.0, 0, 1e-5),
            (0.1, 1.0, 1, 0.0),
            (0.1, 1.0, 1, 1.0),
        ] {
            assert!(epsilon_of(q, s, t, d).is_err(), "{q} {s} {t} {d}");
        }
    }
}
