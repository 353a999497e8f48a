//! Builds one hospital's learner from the configuration: plain logistic
//! regression, or — with differential privacy on — the same learner training
//! with DP-SGD or update-level DP behind the budget guard and its ledger.

use anyhow::{Context, Result};
use tracing::{info, warn};

use medfed_models::data::Dataset;
use medfed_models::learner::logistic::{LocalDp, LogisticLearner, StatsPolicy};
use medfed_models::learner::private::{Budget, PrivateLearner};
use medfed_models::learner::Learner;
use medfed_models::privacy::bounds::FeatureBounds;
use medfed_models::privacy::ledger::Ledger;
use medfed_models::privacy::mechanisms::NoiseSource;
use medfed_models::privacy::rdp::{compose, default_orders, noise_for_epsilon};
use medfed_models::privacy::PrivacyError;
use medfed_models::seed;

use crate::config::{DpScaling, Loaded, NoiseKind, PrivacyMode};

/// A hospital's learner and, under DP, the noise multiplier it trains with.
pub struct BuiltLearner {
    pub learner: Box<dyn Learner>,
    pub noise_multiplier: Option<f64>,
}

/// `dataset` names the hospital's data in its ledger; `rounds` is the
/// planned number of rounds the noise is calibrated for.
pub fn build(
    loaded: &Loaded,
    name: &str,
    dataset: &str,
    data: Dataset,
    bounds: Option<&FeatureBounds>,
    rounds: u32,
    run: &str,
) -> Result<BuiltLearner> {
    let learner = LogisticLearner::new(name, data)?;
    let privacy = &loaded.config.privacy;
    if privacy.mode == PrivacyMode::Off {
        return Ok(BuiltLearner {
            learner: Box::new(learner),
            noise_multiplier: None,
        });
    }
    let p = privacy.for_hospital(name);
    let bounds = bounds.context("differential privacy needs public feature bounds")?;
    let ledger = match &privacy.ledger_dir {
        Some(dir) => Ledger::open(&loaded.resolve(dir), name, dataset)?,
        None => Ledger::in_memory(name, dataset),
    };
    let stats = match privacy.scaling {
        DpScaling::PublicBounds => StatsPolicy::Withheld,
        DpScaling::DpStats => StatsPolicy::Noised {
            bounds: bounds.clone(),
            noise_multiplier: privacy.stats_noise_multiplier,
        },
    };
    let orders = default_orders();
    let mut prior = ledger.spent_rdp().to_vec();
    if privacy.scaling == DpScaling::DpStats {
        let stats_cost = compose(1.0, privacy.stats_noise_multiplier, 1, &orders);
        prior.iter_mut().zip(&stats_cost).for_each(|(a, b)| *a += b);
    }
    let (q, steps_per_round) = match privacy.mode {
        PrivacyMode::DpSgd => (p.sampling_rate, p.local_steps),
        _ => (1.0, 1),
    };
    let total_steps = steps_per_round * u64::from(rounds);
    let sigma = match p.noise_multiplier {
        Some(s) => s,
        None => match noise_for_epsilon(p.epsilon, q, total_steps, p.delta, Some(&prior)) {
            Ok(s) => s,
            Err(PrivacyError::BudgetExhausted(_)) | Err(PrivacyError::Invalid(_))
                if ledger.epsilon(p.delta) > 0.0 =>
            {
                // It will decline every release; calibrate as if fresh so it can start.
                warn!(hospital = %name, "privacy budget (nearly) spent: this hospital will decline to train");
                noise_for_epsilon(p.epsilon, q, total_steps, p.delta, None)?
            }
            Err(e) => return Err(e).with_context(|| format!("hospital {name}: calibrating the noise")),
        },
    };
    info!(hospital = %name, mode = privacy.mode.name(), sigma, q, steps = total_steps, "privacy calibrated");
    let dp = match privacy.mode {
        PrivacyMode::DpSgd => LocalDp::DpSgd {
            sampling_rate: p.sampling_rate,
            max_grad_norm: p.max_grad_norm,
            noise_multiplier: sigma,
            local_steps: p.local_steps,
        },
        _ => LocalDp::Update {
            max_update_norm: p.max_grad_norm,
            noise_multiplier: sigma,
        },
    };
    let noise = match privacy.noise {
        NoiseKind::Secure => NoiseSource::secure(),
        NoiseKind::Seeded => NoiseSource::seeded(seed::derive(loaded.config.run.seed, name, 0x0D9)),
    };
    let private = learner.with_privacy(dp, stats, noise)?;
    let budget = Budget {
        epsilon: p.epsilon,
        delta: p.delta,
    };
    let guarded = PrivateLearner::new(Box::new(private), ledger, budget, run)
        .with_context(|| format!("hospital {name}"))?;
    Ok(BuiltLearner {
        learner: Box::new(guarded),
        noise_multiplier: Some(sigma),
    })
}
