//! `PrivateLearner`: the budget guard around a hospital's private learner.
//! It releases the record count once per dataset (noised, charged, kept in
//! the ledger), and before every release it checks that the release fits the
//! remaining budget (else it declines with "privacy budget exhausted" and
//! releases nothing) and writes the cost to the ledger before the release
//! leaves. It hands out only `Noised` values: there is no exact update,
//! statistic or metric to be had from it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::logistic::LocalDp;
use super::{DpLearner, GlobalModel, LocalUpdate, PrivacySpent, Release, RoundCost, RunPrivacy, TrainPlan};
use crate::data::MomentSums;
use crate::error::{ModelError, Result};
use crate::metrics::Metrics;
use crate::params::{Layout, Params};
use crate::privacy::ledger::{Charge, Ledger, LedgerEntry, Limit, ReleasedCount};
use crate::privacy::mechanisms::{count_released_before, release_count, NoiseSource, Noised};
use crate::privacy::rdp::{check_delta, compose, default_orders, noise_for_epsilon};
use crate::privacy::PrivacyError;

/// A hospital's privacy budget for one dataset, over all runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub epsilon: f64,
    pub delta: f64,
}

impl Budget {
    /// Refuses a delta that is not below 1/n for a dataset of `n` records.
    pub fn check(&self, records: usize) -> Result<()> {
        check_delta(self.delta).map_err(|e| ModelError::Invalid(e.to_string()))?;
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(ModelError::Invalid(format!(
                "epsilon must be positive, got {}",
                self.epsilon
            )));
        }
        if self.delta >= 1.0 / records as f64 {
            return Err(ModelError::Invalid(format!(
                "delta {} must be below 1/n = {:.3e} for a hospital of {records} records",
                self.delta,
                1.0 / records as f64
            )));
        }
        Ok(())
    }

    /// A warning when delta is not far below 1/n: a mechanism may then
    /// release one whole record with probability delta per record.
    pub fn advice(&self, records: usize) -> Option<String> {
        let limit = 1.0 / (10.0 * records as f64);
        (self.delta > limit).then(|| {
            format!(
                "delta {} is above 1/(10 n) = {limit:.3e} for {records} records; choose delta far \
                 below 1/n (e.g. {:.0e})",
                self.delta,
                1.0 / (100.0 * records as f64)
            )
        })
    }

    fn limit(&self) -> Limit {
        Limit {
            epsilon: self.epsilon,
            delta: self.delta,
        }
    }
}

/// How a private hospital releases its record count (DP-SGD only; under
/// update-level DP the count is withheld and every update weighs 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CountRelease {
    pub noise_multiplier: f64,
}

impl CountRelease {
    /// The Rényi-DP cost of releasing the count once.
    pub fn cost(&self) -> Vec<f64> {
        compose(1.0, self.noise_multiplier, 1, &default_orders())
    }
}

/// A hospital's own rule for distributed DP, which no coordinator can
/// override: it adds only a noise share (sigma / sqrt(k)) when its update
/// is summed securely with at least `min_summed` hospitals' (as far as it
/// can see), and never releases below `min_noise_multiplier`.
///
/// Why a share is enough (against the coordinator): a secure sum is only
/// ever unmasked with at least k inputs, each carrying independent noise of
/// standard deviation sigma * C / sqrt(k), so the sum carries at least
/// sigma * C — what one hospital's full noise would be. One record changes
/// its hospital's clipped gradient sum by at most C and nothing else in the
/// sum, so each round is the sampled Gaussian mechanism (q, sigma) on that
/// record: central DP-SGD over the union of the hospitals' records, with
/// the same accountant. Against a coordinator colluding with the other
/// hospitals (who can subtract their own noise) only its own share is
/// left: the sampled Gaussian mechanism (q, sigma / sqrt(k)), which the
/// ledger accounts too (`epsilon_collusion`). The reduction holds for one
/// DP-SGD step per round (or update-level DP): with several local steps
/// each later step depends on the hospital's own earlier noisy steps, which
/// the sum does not cover, so those rounds are released with full noise.
/// The noise is added in floating point before quantisation into the ring;
/// the sum's rounding error is bounded (one quantisation step per input and
/// coordinate) but not itself private (the floating-point caveat of
/// Kairouz, Liu & Steinke 2021, whose discrete Gaussian removes it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharePolicy {
    pub min_summed: usize,
    pub min_noise_multiplier: f64,
}

impl Default for SharePolicy {
    fn default() -> Self {
        Self {
            min_summed: 3,
            min_noise_multiplier: 0.0,
        }
    }
}

/// How one round's release is noised: in full, or as a share of a secure sum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoiseShare {
    /// The hospital's own full noise (local DP).
    Full,
    /// A share of the noise of a secure sum of at least `summed` hospitals.
    Share { summed: usize, noise_multiplier: f64 },
}

/// One round's private release, as it leaves the hospital.
#[derive(Debug)]
pub struct PrivateUpdate {
    pub delta: Noised<Params>,
    /// The FedAvg weight: the released count (DP-SGD) or 1 (update-level).
    pub weight: usize,
    pub privacy: PrivacySpent,
}

impl PrivateUpdate {
    /// The update as the coordinator receives it, labelled with the
    /// mechanism that produced it.
    pub fn into_message(self) -> LocalUpdate {
        let release = Release::Noised {
            mechanism: self.delta.mechanism().to_string(),
            noise_multiplier: self.delta.noise_multiplier(),
        };
        LocalUpdate {
            delta: self.delta.into_value(),
            num_examples: self.weight,
            train_loss: None,
            release,
            privacy: Some(self.privacy),
        }
    }
}

pub struct PrivateLearner {
    inner: Box<dyn DpLearner>,
    /// The hospital's own mechanism; a run may only raise its noise.
    policy: LocalDp,
    ledger: Ledger,
    budget: Budget,
    hospital: String,
    run: String,
    /// The released record count; `None` when withheld (update-level DP) or
    /// when the budget could not pay for it.
    count: Option<Noised<u64>>,
    share_policy: SharePolicy,
    /// The latest round's noise share, if it released one.
    last_share: Option<f64>,
}

/// A ledger failure as the coordinator may hear it: the reason without the
/// file's path (its name carries the data's fingerprint) or directory.
fn ledger_error(e: PrivacyError) -> ModelError {
    match e {
        PrivacyError::Ledger { message, .. } => ModelError::Invalid(format!(
            "cannot use the privacy ledger ({message}); nothing released"
        )),
        PrivacyError::BudgetExhausted(m) => ModelError::BudgetExhausted(m),
        PrivacyError::Invalid(m) => ModelError::Invalid(m),
    }
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl PrivateLearner {
    /// Guard `inner` with `ledger` and `budget`. Under DP-SGD the record
    /// count is released here, once per dataset: a count the ledger already
    /// holds is reused at no cost; otherwise it is noised with
    /// `count_noise` and charged.
    pub fn new(
        inner: Box<dyn DpLearner>,
        ledger: Ledger,
        budget: Budget,
        hospital: impl Into<String>,
        run: impl Into<String>,
        count: CountRelease,
        count_noise: &mut NoiseSource,
    ) -> Result<Self> {
        budget.check(inner.local_records())?;
        let mut ledger = ledger;
        ledger.bind_limit(budget.limit()).map_err(ledger_error)?;
        if inner.round_cost().mechanism == "update" {
            if let Some(e) = ledger.entries().iter().find(|e| e.mechanism != "update") {
                return Err(ModelError::Invalid(format!(
                    "this data already made record-level releases ({}), so update-level DP cannot give \
                     its hospital-level guarantee for it; keep privacy.mode = \"dp-sgd\" for this data",
                    e.mechanism
                )));
            }
        }
        let mut guarded = Self {
            policy: inner.local_dp(),
            inner,
            ledger,
            budget,
            hospital: hospital.into(),
            run: run.into(),
            count: None,
            share_policy: SharePolicy::default(),
            last_share: None,
        };
        if guarded.inner.needs_count() {
            guarded.count = guarded.release_count(count, count_noise)?;
        }
        Ok(guarded)
    }

    fn release_count(
        &mut self,
        policy: CountRelease,
        noise: &mut NoiseSource,
    ) -> Result<Option<Noised<u64>>> {
        if let Some(c) = self.ledger.released_count() {
            return Ok(Some(count_released_before(c.value, c.noise_multiplier)));
        }
        let released = release_count(self.inner.local_records(), policy.noise_multiplier, noise)?;
        let cost = policy.cost();
        let charge = Charge {
            cost: &cost,
            entry: self.entry("record-count", 0, 1.0, policy.noise_multiplier, 1),
            count: Some(ReleasedCount {
                value: *released.value(),
                noise_multiplier: policy.noise_multiplier,
            }),
            collusion: None,
        };
        match self.ledger.charge(charge, self.budget.limit()) {
            Ok(()) => Ok(Some(released)),
            // Nothing more can be released: the hospital will decline every round.
            Err(PrivacyError::BudgetExhausted(_)) => Ok(None),
            // Another process released it meanwhile: reuse that one.
            Err(e @ PrivacyError::Invalid(_)) => match self.ledger.released_count() {
                Some(c) => Ok(Some(count_released_before(c.value, c.noise_multiplier))),
                None => Err(ModelError::Invalid(e.to_string())),
            },
            Err(e) => Err(ledger_error(e)),
        }
    }

    /// This hospital's rule for noise shares (default: at least 3 summed,
    /// no floor on the noise).
    pub fn with_share_policy(mut self, policy: SharePolicy) -> Result<Self> {
        if policy.min_summed < 2
            || !(policy.min_noise_multiplier.is_finite() && policy.min_noise_multiplier >= 0.0)
        {
            return Err(ModelError::Invalid(format!(
                "a noise-share policy needs at least 2 summed hospitals and a non-negative noise floor \
                 (got {} and {})",
                policy.min_summed, policy.min_noise_multiplier
            )));
        }
        self.share_policy = policy;
        Ok(self)
    }

    /// How a round summed securely with at least `summed` hospitals (`None`:
    /// not summed securely) is noised under this hospital's policy.
    pub fn noise_share(&self, summed: Option<usize>, dp: &LocalDp) -> NoiseShare {
        let Some(k) = summed.filter(|k| *k >= self.share_policy.min_summed.max(2)) else {
            return NoiseShare::Full;
        };
        if dp.dp_sgd_settings().is_some_and(|s| s.local_steps != 1) {
            return NoiseShare::Full;
        }
        let sigma = dp.noise_multiplier();
        let share = (sigma / (k as f64).sqrt()).max(self.share_policy.min_noise_multiplier);
        if share >= sigma {
            return NoiseShare::Full;
        }
        NoiseShare::Share {
            summed: k,
            noise_multiplier: share,
        }
    }

    pub fn layout(&self) -> Arc<Layout> {
        self.inner.layout()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn epsilon_spent(&self) -> f64 {
        self.ledger.epsilon(self.budget.delta)
    }

    /// The record count this hospital announces: the released count, or 0
    /// when it is withheld.
    pub fn announced_samples(&self) -> usize {
        self.count.as_ref().map_or(0, |c| *c.value() as usize)
    }

    fn entry(&self, mechanism: &str, round: u32, q: f64, sigma: f64, steps: u64) -> LedgerEntry {
        LedgerEntry {
            unix_time: unix_time(),
            run: self.run.clone(),
            hospital: self.hospital.clone(),
            round,
            mechanism: mechanism.into(),
            sampling_rate: q,
            noise_multiplier: sigma,
            steps,
            summed_with: None,
        }
    }

    /// Refuse `cost` early if it does not fit what this process last saw
    /// (the authoritative check runs again under the ledger's lock).
    fn admit(&self, cost: &RoundCost, budget: Budget) -> Result<()> {
        let after = self.ledger.epsilon_after(&cost.rdp, budget.delta);
        // A NaN refuses too.
        if after.is_nan() || after > budget.epsilon * (1.0 + 1e-9) {
            return Err(ModelError::BudgetExhausted(format!(
                "epsilon spent {:.4} of {}; this {} release would bring it to {:.4}",
                self.ledger.epsilon(budget.delta),
                budget.epsilon,
                cost.mechanism,
                after
            )));
        }
        Ok(())
    }

    /// The budget and mechanism of one round: the policy's, made more
    /// private where the run asks for it, never less. A lower epsilon or
    /// delta caps the lifetime budget, and the noise is calibrated to spread
    /// what is left under that cap over the run's remaining rounds.
    /// A malformed request (one a coordinator's checks would have refused)
    /// releases nothing: it is declined, never read as "no limit".
    fn for_run(&self, request: Option<RunPrivacy>, round: u32) -> Result<(Budget, LocalDp)> {
        let Some(RunPrivacy {
            epsilon,
            delta,
            noise_multiplier,
            rounds,
        }) = request
        else {
            return Ok((self.budget, self.policy));
        };
        let malformed = epsilon.is_some_and(|e| !(e.is_finite() && e > 0.0))
            || delta.is_some_and(|d| !(d > 0.0 && d < 1.0))
            || noise_multiplier.is_some_and(|s| !(s.is_finite() && s > 0.0));
        if malformed {
            return Err(ModelError::Invalid(format!(
                "the run's privacy request is malformed (epsilon {epsilon:?}, delta {delta:?}, noise \
                 multiplier {noise_multiplier:?}); nothing released"
            )));
        }
        let budget = Budget {
            epsilon: epsilon.map_or(self.budget.epsilon, |e| self.budget.epsilon.min(e)),
            delta: delta.map_or(self.budget.delta, |d| self.budget.delta.min(d)),
        };
        let mut sigma = self.policy.noise_multiplier();
        if let Some(s) = noise_multiplier {
            sigma = sigma.max(s);
        }
        if budget != self.budget {
            let cost = self.policy.round_cost();
            let remaining = u64::from(rounds.saturating_sub(round).saturating_add(1));
            let steps = cost.steps.saturating_mul(remaining.max(1));
            // Nothing left under the cap: the policy's noise stands and the
            // budget check declines the round.
            if let Ok(s) = noise_for_epsilon(
                budget.epsilon,
                cost.sampling_rate,
                steps,
                budget.delta,
                Some(self.ledger.spent_rdp()),
            ) {
                sigma = sigma.max(s);
            }
        }
        Ok((budget, self.policy.with_noise_multiplier(sigma)))
    }

    fn charge(&mut self, cost: &RoundCost, round: u32, budget: Budget) -> Result<()> {
        self.charge_share(cost, None, round, budget)
    }

    /// Charge `cost` (against the coordinator) and, for a noise share,
    /// `share`'s cost against a coordinator colluding with the other hospitals.
    fn charge_share(
        &mut self,
        cost: &RoundCost,
        share: Option<(usize, &RoundCost)>,
        round: u32,
        budget: Budget,
    ) -> Result<()> {
        let mut entry = self.entry(
            &cost.mechanism,
            round,
            cost.sampling_rate,
            cost.noise_multiplier,
            cost.steps,
        );
        entry.summed_with = share.map(|(k, _)| u32::try_from(k).unwrap_or(u32::MAX));
        let charge = Charge {
            cost: &cost.rdp,
            entry,
            count: None,
            collusion: share.map(|(_, c)| c.rdp.as_slice()),
        };
        self.ledger.charge(charge, budget.limit()).map_err(|e| match e {
            PrivacyError::BudgetExhausted(m) => ModelError::BudgetExhausted(m),
            e => ledger_error(e),
        })
    }

    /// Noised feature statistics, charged (within the run's cap, when it
    /// sets one); `None` when a public scaler is used.
    pub fn feature_stats(&mut self, request: Option<RunPrivacy>) -> Result<Option<Noised<MomentSums>>> {
        let Some(cost) = self.inner.stats_cost() else {
            return Ok(None);
        };
        let (budget, _) = self.for_run(request, 0)?;
        self.check_count()?;
        self.admit(&cost, budget)?;
        let Some(stats) = self.inner.private_stats()? else {
            return Ok(None);
        };
        self.charge(&cost, 0, budget)?;
        Ok(Some(stats))
    }

    /// Nothing is released (or charged) once the count a DP-SGD learner
    /// needs could not be paid for: no round could follow.
    fn check_count(&self) -> Result<()> {
        if self.inner.needs_count() && self.count.is_none() {
            return Err(ModelError::BudgetExhausted(
                "the budget could not pay for releasing the record count, so nothing can be released".into(),
            ));
        }
        Ok(())
    }

    /// One round of private training, charged before it is returned.
    pub fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<PrivateUpdate> {
        self.train_summed(global, plan, None)
    }

    /// One round of private training whose release is summed securely with
    /// at least `summed` hospitals' (`None`: not summed securely): under the
    /// hospital's `SharePolicy` it then carries only a noise share, and is
    /// charged at the sum's noise (against the coordinator) and at its own
    /// share (against collusion).
    pub fn train_summed(
        &mut self,
        global: &GlobalModel,
        plan: &TrainPlan,
        summed: Option<usize>,
    ) -> Result<PrivateUpdate> {
        let (budget, dp) = self.for_run(plan.privacy, plan.round)?;
        let share = self.noise_share(summed, &dp);
        let released = match share {
            NoiseShare::Full => dp,
            NoiseShare::Share { noise_multiplier, .. } => dp.with_noise_multiplier(noise_multiplier),
        };
        // The cost against the coordinator: the sum's noise is the policy's.
        let cost = dp.round_cost();
        let share_cost = released.round_cost();
        self.inner.set_noise_multiplier(released.noise_multiplier());
        self.admit(&cost, budget)?;
        self.check_count()?;
        let (public_count, weight) = match &self.count {
            Some(c) if self.inner.needs_count() => (Some(*c.value()), *c.value() as usize),
            _ => (None, 1),
        };
        let delta = self.inner.train_private(global, plan, public_count)?;
        let charged = match share {
            NoiseShare::Full => None,
            NoiseShare::Share { summed, .. } => Some((summed, &share_cost)),
        };
        self.charge_share(&cost, charged, plan.round, budget)?;
        self.last_share = match share {
            NoiseShare::Full => None,
            NoiseShare::Share { noise_multiplier, .. } => Some(noise_multiplier),
        };
        // The update reports the sum's noise; its own share apart.
        self.inner.set_noise_multiplier(dp.noise_multiplier());
        Ok(PrivateUpdate {
            delta,
            weight,
            privacy: self.spent(),
        })
    }

    /// What the ledger says this dataset has spent, all runs included, with
    /// the mechanism and noise this learner releases under.
    pub fn spent(&self) -> PrivacySpent {
        let cost = self.inner.round_cost();
        PrivacySpent {
            mechanism: cost.mechanism,
            noise_multiplier: cost.noise_multiplier,
            epsilon: self.epsilon_spent(),
            epsilon_collusion: Some(self.ledger.epsilon_collusion(self.budget.delta))
                .filter(|e| (e - self.epsilon_spent()).abs() > 1e-12),
            budget: self.budget.epsilon,
            delta: self.budget.delta,
            sampling_rate: Some(cost.sampling_rate),
            steps_per_round: Some(cost.steps),
            noise_share: self.last_share,
        }
    }

    /// Local metrics describe patients and no mechanism noises them: under
    /// differential privacy they are never released.
    pub fn evaluate(&mut self, _global: &GlobalModel) -> Result<Metrics> {
        Err(ModelError::Invalid(
            "local evaluation metrics are not private: withheld under differential privacy".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::gaussian_blobs;
    use crate::learner::logistic::{LocalDp, LogisticLearner, StatsPolicy};
    use crate::privacy::fingerprint::DataFingerprint;
    use crate::privacy::ledger::LedgerKey;
    use crate::privacy::rdp::epsilon;

    const COUNT: CountRelease = CountRelease {
        noise_multiplier: 10.0,
    };

    fn dp_learner(dp: LocalDp) -> Box<dyn DpLearner> {
        let data = gaussian_blobs(200, 4, 0.5, 2.0, 3);
        Box::new(
            LogisticLearner::new("h1", data)
                .unwrap()
                .with_privacy(dp, StatsPolicy::Withheld, NoiseSource::seeded(1))
                .unwrap(),
        )
    }

    fn dp_sgd(sigma: f64) -> LocalDp {
        LocalDp::DpSgd {
            sampling_rate: 0.2,
            max_grad_norm: 1.0,
            noise_multiplier: sigma,
            local_steps: 10,
        }
    }

    fn key(l: &dyn DpLearner) -> LedgerKey {
        LedgerKey {
            dataset: "d".into(),
            fingerprint: l.fingerprint(),
        }
    }

    fn guard(inner: Box<dyn DpLearner>, ledger: Ledger, epsilon: f64) -> Result<PrivateLearner> {
        PrivateLearner::new(
            inner,
            ledger,
            Budget { epsilon, delta: 1e-5 },
            "h1",
            "t",
            COUNT,
            &mut NoiseSource::seeded(9),
        )
    }

    fn in_memory(inner: Box<dyn DpLearner>, epsilon: f64) -> PrivateLearner {
        let ledger = Ledger::in_memory(&key(inner.as_ref()));
        guard(inner, ledger, epsilon).unwrap()
    }

    fn global(layout: Arc<Layout>) -> GlobalModel {
        GlobalModel {
            params: Arc::new(Params::zeros(layout)),
            standardizer: None,
        }
    }

    fn plan(round: u32) -> TrainPlan {
        TrainPlan {
            round,
            attempt: 0,
            local_epochs: 1,
            batch_size: 16,
            learning_rate: 0.5,
            l2: 0.0,
            seed: 1,
            proximal_mu: 0.0,
            privacy: None,
        }
    }

    #[test]
    fn declines_once_the_budget_is_spent_and_releases_nothing() {
        let mut p = in_memory(dp_learner(dp_sgd(3.0)), 3.0);
        let g = global(p.layout());
        let mut trained = 0;
        let err = loop {
            match p.train(&g, &plan(trained + 1)) {
                Ok(u) => {
                    trained += 1;
                    assert!(u.privacy.epsilon <= 3.0 + 1e-9);
                    assert_eq!(u.delta.mechanism(), "dp-sgd");
                    let m = u.into_message();
                    assert!(m.train_loss.is_none(), "the loss is data-dependent and withheld");
                    assert!(m.release.is_noised());
                }
                Err(e) => break e,
            }
            assert!(trained < 1000, "never declined");
        };
        assert!(trained >= 1);
        assert!(matches!(err, ModelError::BudgetExhausted(_)), "{err}");
        assert!(err.to_string().contains("privacy budget exhausted"));
        // The count release plus one charge per round; nothing for the declined one.
        assert_eq!(p.ledger().entries().len(), trained as usize + 1);
        assert!(p.epsilon_spent() <= 3.0);
    }

    fn run_plan(round: u32, request: RunPrivacy) -> TrainPlan {
        TrainPlan {
            privacy: Some(request),
            ..plan(round)
        }
    }

    /// A run's lower epsilon caps the budget and is spread over the run's
    /// rounds with more noise; every round of it trains, and the total stays
    /// under the run's cap.
    #[test]
    fn a_lower_run_epsilon_raises_the_noise_and_caps_the_spending() {
        let mut p = in_memory(dp_learner(dp_sgd(1.0)), 8.0);
        let g = global(p.layout());
        let request = RunPrivacy {
            epsilon: Some(2.0),
            delta: None,
            noise_multiplier: None,
            rounds: 5,
        };
        for round in 1..=5 {
            let u = p.train(&g, &run_plan(round, request)).unwrap();
            assert!(
                u.privacy.noise_multiplier > 1.0,
                "round {round}: {}",
                u.privacy.noise_multiplier
            );
        }
        let spent = p.epsilon_spent();
        assert!(spent <= 2.0 + 1e-9 && spent > 1.5, "spent {spent}");
        // Over the cap, the next round of that run is declined.
        let err = p.train(&g, &run_plan(6, request)).unwrap_err();
        assert!(matches!(err, ModelError::BudgetExhausted(_)), "{err}");
        // A later run without the cap goes back to the policy's noise and budget.
        let u = p.train(&g, &plan(7)).unwrap();
        assert_eq!(u.privacy.noise_multiplier, 1.0);
    }

    /// A malformed request is declined with nothing released, never read
    /// as a looser limit (a negative delta once made every order free).
    #[test]
    fn a_malformed_run_request_releases_nothing() {
        let mut p = in_memory(dp_learner(dp_sgd(3.0)), 3.0);
        let g = global(p.layout());
        let fine = RunPrivacy {
            epsilon: None,
            delta: None,
            noise_multiplier: None,
            rounds: 3,
        };
        for bad in [
            RunPrivacy {
                delta: Some(-1.0),
                ..fine
            },
            RunPrivacy {
                delta: Some(1.0),
                ..fine
            },
            RunPrivacy {
                delta: Some(f64::NAN),
                ..fine
            },
            RunPrivacy {
                epsilon: Some(f64::INFINITY),
                ..fine
            },
            RunPrivacy {
                epsilon: Some(-2.0),
                ..fine
            },
            RunPrivacy {
                noise_multiplier: Some(0.0),
                ..fine
            },
        ] {
            let before = p.ledger().entries().len();
            let err = p.train(&g, &run_plan(1, bad)).unwrap_err();
            assert!(err.to_string().contains("malformed"), "{bad:?}: {err}");
            assert_eq!(p.ledger().entries().len(), before, "{bad:?} was charged");
        }
        // The accountant and the ledger refuse such a delta on their own too.
        let orders = crate::privacy::rdp::default_orders();
        assert_eq!(epsilon(&orders, &vec![0.1; orders.len()], -1.0).0, f64::INFINITY);
        assert!(p.train(&g, &run_plan(1, fine)).is_ok());
    }

    /// Nothing in a run's request loosens the policy: a larger epsilon or
    /// delta and a smaller noise multiplier are ignored.
    #[test]
    fn a_run_cannot_make_a_hospital_less_private() {
        let mut p = in_memory(dp_learner(dp_sgd(3.0)), 3.0);
        let g = global(p.layout());
        let looser = RunPrivacy {
            epsilon: Some(100.0),
            delta: Some(0.5),
            noise_multiplier: Some(0.1),
            rounds: 1,
        };
        let u = p.train(&g, &run_plan(1, looser)).unwrap();
        assert_eq!(u.privacy.noise_multiplier, 3.0);
        let mut trained = 1;
        while p.train(&g, &run_plan(trained + 1, looser)).is_ok() {
            trained += 1;
            assert!(trained < 1000, "never declined");
        }
        assert!(p.epsilon_spent() <= 3.0 + 1e-9, "{}", p.epsilon_spent());
        // A higher noise multiplier is taken.
        let mut q = in_memory(dp_learner(dp_sgd(3.0)), 30.0);
        let higher = RunPrivacy {
            noise_multiplier: Some(5.0),
            ..looser
        };
        assert_eq!(
            q.train(&g, &run_plan(1, higher))
                .unwrap()
                .privacy
                .noise_multiplier,
            5.0
        );
    }

    /// DP-SGD releases a noised record count once, charges it, weighs
    /// FedAvg by it, and the total charged equals the accountant's figure
    /// for the count's Gaussian composed with the rounds.
    #[test]
    fn the_count_is_noised_charged_once_and_weighs_the_update() {
        let mut p = in_memory(dp_learner(dp_sgd(3.0)), 50.0);
        let announced = p.announced_samples();
        assert!(announced >= 1 && announced != 0);
        let first = &p.ledger().entries()[0];
        assert_eq!(
            (first.mechanism.as_str(), first.noise_multiplier),
            ("record-count", 10.0)
        );
        let g = global(p.layout());
        let u = p.train(&g, &plan(1)).unwrap();
        assert_eq!(u.weight, announced);
        assert_eq!(u.into_message().num_examples, announced);
        let orders = default_orders();
        let mut want = compose(1.0, 10.0, 1, &orders);
        want.iter_mut()
            .zip(compose(0.2, 3.0, 10, &orders))
            .for_each(|(a, b)| *a += b);
        assert!((p.epsilon_spent() - epsilon(&orders, &want, 1e-5).0).abs() < 1e-12);
    }

    #[test]
    fn update_level_dp_withholds_the_count_and_weighs_one() {
        let mut p = in_memory(
            dp_learner(LocalDp::Update {
                max_update_norm: 1.0,
                noise_multiplier: 2.0,
            }),
            50.0,
        );
        assert_eq!(p.announced_samples(), 0);
        assert!(
            p.ledger().entries().is_empty(),
            "no count released, nothing charged"
        );
        let g = global(p.layout());
        let u = p.train(&g, &plan(1)).unwrap();
        assert_eq!(u.weight, 1);
        assert_eq!(u.delta.mechanism(), "update");
    }

    #[test]
    fn the_ledger_and_its_count_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let inner = dp_learner(dp_sgd(3.0));
            let ledger = Ledger::open(dir.path(), &key(inner.as_ref())).unwrap();
            guard(inner, ledger, 2.0).unwrap()
        };
        let mut first = open();
        let count = first.announced_samples();
        let g = global(first.layout());
        let mut rounds = 0;
        while first.train(&g, &plan(1)).is_ok() {
            rounds += 1;
        }
        assert!(rounds >= 1);
        let spent = first.epsilon_spent();
        assert!(spent > 0.0);
        drop(first);
        // The restarted hospital remembers, reuses its count and declines at once.
        let mut second = open();
        assert_eq!(second.epsilon_spent(), spent);
        assert_eq!(second.announced_samples(), count);
        assert!(matches!(
            second.train(&g, &plan(1)),
            Err(ModelError::BudgetExhausted(_))
        ));
    }

    /// The same records under another hospital name, in another order, find
    /// the same ledger and the budget already spent.
    #[test]
    fn renaming_or_reordering_the_data_finds_the_same_budget() {
        let dir = tempfile::tempdir().unwrap();
        let data = gaussian_blobs(200, 4, 0.5, 2.0, 3);
        let build = |name: &str, rows: &[usize]| -> Box<dyn DpLearner> {
            Box::new(
                LogisticLearner::new(name, data.select(rows))
                    .unwrap()
                    .with_privacy(dp_sgd(3.0), StatsPolicy::Withheld, NoiseSource::seeded(2))
                    .unwrap(),
            )
        };
        let forward: Vec<usize> = (0..200).collect();
        let backward: Vec<usize> = (0..200).rev().collect();
        let a = build("st-marys", &forward);
        let ledger = Ledger::open(dir.path(), &key(a.as_ref())).unwrap();
        let mut p = guard(a, ledger, 20.0).unwrap();
        let g = global(p.layout());
        p.train(&g, &plan(1)).unwrap();
        let spent = p.epsilon_spent();
        let b = build("renamed-hospital", &backward);
        assert_eq!(b.fingerprint(), DataFingerprint::of_dataset(&data));
        let ledger = Ledger::open(dir.path(), &key(b.as_ref())).unwrap();
        let q = guard(b, ledger, 20.0).unwrap();
        assert_eq!(q.epsilon_spent(), spent);
    }

    /// Two hospitals processes open the same data's ledger before either
    /// released the count: the second finds the first one's count under the
    /// lock and reuses it instead of releasing (and charging) another.
    #[test]
    fn a_count_released_meanwhile_by_another_process_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dp_learner(dp_sgd(3.0));
        let b = dp_learner(dp_sgd(3.0));
        let ledger_a = Ledger::open(dir.path(), &key(a.as_ref())).unwrap();
        let ledger_b = Ledger::open(dir.path(), &key(b.as_ref())).unwrap();
        let first = guard(a, ledger_a, 20.0).unwrap();
        let second = PrivateLearner::new(
            b,
            ledger_b,
            Budget {
                epsilon: 20.0,
                delta: 1e-5,
            },
            "h2",
            "t",
            COUNT,
            &mut NoiseSource::seeded(77),
        )
        .unwrap();
        assert_eq!(second.announced_samples(), first.announced_samples());
        let counts = second
            .ledger()
            .entries()
            .iter()
            .filter(|e| e.mechanism == "record-count")
            .count();
        assert_eq!(counts, 1);
    }

    #[test]
    fn when_the_count_cannot_be_paid_for_nothing_is_released() {
        let data = gaussian_blobs(200, 4, 0.5, 2.0, 3);
        let bounds = crate::privacy::bounds::FeatureBounds {
            lo: vec![-10.0; 4],
            hi: vec![10.0; 4],
        };
        let inner = LogisticLearner::new("h1", data)
            .unwrap()
            .with_privacy(
                dp_sgd(3.0),
                StatsPolicy::Noised {
                    bounds,
                    noise_multiplier: 100.0,
                },
                NoiseSource::seeded(1),
            )
            .unwrap();
        // The count alone (sigma 10) costs far more than epsilon 0.01.
        let mut p = in_memory(Box::new(inner), 0.01);
        assert_eq!(p.announced_samples(), 0);
        assert!(matches!(
            p.feature_stats(None),
            Err(ModelError::BudgetExhausted(_))
        ));
        let g = global(p.layout());
        assert!(matches!(
            p.train(&g, &plan(1)),
            Err(ModelError::BudgetExhausted(_))
        ));
        assert!(p.ledger().entries().is_empty(), "nothing was charged");
    }

    #[test]
    fn evaluation_is_refused_under_dp() {
        let mut p = in_memory(dp_learner(dp_sgd(3.0)), 3.0);
        let g = global(p.layout());
        let e = p.evaluate(&g).unwrap_err();
        assert!(e.to_string().contains("not private"), "{e}");
    }

    #[test]
    fn delta_must_be_below_one_over_n_and_far_below_is_advised() {
        let inner = dp_learner(dp_sgd(3.0));
        let ledger = Ledger::in_memory(&key(inner.as_ref()));
        let e = PrivateLearner::new(
            inner,
            ledger,
            Budget {
                epsilon: 1.0,
                delta: 0.01,
            },
            "h",
            "t",
            COUNT,
            &mut NoiseSource::seeded(1),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("must be below 1/n"), "{e}");
        let b = Budget {
            epsilon: 1.0,
            delta: 1e-3,
        };
        assert!(b.advice(200).unwrap().contains("1/(10 n)"));
        assert!(b.advice(50).is_none(), "1e-3 is below 1/500");
        assert_eq!(
            Budget {
                epsilon: 1.0,
                delta: 1e-5
            }
            .advice(200),
            None
        );
    }

    fn one_step(sigma: f64) -> LocalDp {
        LocalDp::DpSgd {
            sampling_rate: 1.0,
            max_grad_norm: 1.0,
            noise_multiplier: sigma,
            local_steps: 1,
        }
    }

    #[test]
    fn a_noise_share_only_under_the_hospitals_own_policy() {
        let p = in_memory(dp_learner(one_step(4.0)), 1e6);
        let dp = one_step(4.0);
        // Not summed securely, or summed with fewer than its minimum: full noise.
        assert_eq!(p.noise_share(None, &dp), NoiseShare::Full);
        assert_eq!(p.noise_share(Some(2), &dp), NoiseShare::Full);
        // Summed with 4: sigma / 2.
        assert_eq!(
            p.noise_share(Some(4), &dp),
            NoiseShare::Share {
                summed: 4,
                noise_multiplier: 2.0
            }
        );
        // Several local steps: no reduction (later steps depend on its own noisy ones).
        assert_eq!(p.noise_share(Some(4), &dp_sgd(4.0)), NoiseShare::Full);
        // A floor on the noise raises the share; a floor at sigma removes it.
        let floored = in_memory(dp_learner(one_step(4.0)), 1e6)
            .with_share_policy(SharePolicy {
                min_summed: 3,
                min_noise_multiplier: 3.0,
            })
            .unwrap();
        assert_eq!(
            floored.noise_share(Some(16), &dp),
            NoiseShare::Share {
                summed: 16,
                noise_multiplier: 3.0
            }
        );
        let strict = in_memory(dp_learner(one_step(4.0)), 1e6)
            .with_share_policy(SharePolicy {
                min_summed: 5,
                min_noise_multiplier: 0.0,
            })
            .unwrap();
        assert_eq!(strict.noise_share(Some(4), &dp), NoiseShare::Full);
        assert!(in_memory(dp_learner(one_step(4.0)), 1e6)
            .with_share_policy(SharePolicy {
                min_summed: 1,
                min_noise_multiplier: 0.0,
            })
            .is_err());
    }

    #[test]
    fn a_share_is_charged_at_the_sums_noise_and_at_its_own_against_collusion() {
        let mut p = in_memory(dp_learner(one_step(4.0)), 1e6);
        let layout = p.layout();
        let g = global(layout);
        let update = p.train_summed(&g, &plan(1), Some(4)).unwrap();
        let orders = default_orders();
        let count = COUNT.cost();
        let central: Vec<f64> = compose(1.0, 4.0, 1, &orders)
            .iter()
            .zip(&count)
            .map(|(a, b)| a + b)
            .collect();
        let own: Vec<f64> = compose(1.0, 2.0, 1, &orders)
            .iter()
            .zip(&count)
            .map(|(a, b)| a + b)
            .collect();
        assert!((p.epsilon_spent() - epsilon(&orders, &central, 1e-5).0).abs() < 1e-12);
        let collusion = update.privacy.epsilon_collusion.expect("a share was released");
        assert!((collusion - epsilon(&orders, &own, 1e-5).0).abs() < 1e-12);
        assert!(collusion > p.epsilon_spent());
        // The release itself carried the share, the ledger says so.
        assert_eq!(update.delta.noise_multiplier(), 2.0);
        let entry = p.ledger().entries().last().unwrap();
        assert_eq!((entry.noise_multiplier, entry.summed_with), (4.0, Some(4)));
        // A full-noise round after it adds the same to both.
        let before = (p.epsilon_spent(), collusion);
        let full = p.train_summed(&g, &plan(2), None).unwrap();
        assert_eq!(full.delta.noise_multiplier(), 4.0);
        assert!(p.epsilon_spent() > before.0 && full.privacy.epsilon_collusion.unwrap() > before.1);
    }
}
