//! Builds one hospital's learner from the configuration: logistic regression
//! (tabular) or the CNN (imaging), and — with differential privacy on — the
//! same learner training with DP-SGD or update-level DP behind the budget
//! guard and its ledger.

use anyhow::{Context, Result};
use tracing::{info, warn};

use medfed_models::learner::cnn::CnnLearner;
use medfed_models::learner::logistic::{LocalDp, LogisticLearner, StatsPolicy};
use medfed_models::learner::private::{Budget, PrivateLearner};
use medfed_models::learner::Learner;
use medfed_models::privacy::ledger::Ledger;
use medfed_models::privacy::mechanisms::NoiseSource;
use medfed_models::privacy::rdp::{compose, default_orders, noise_for_epsilon};
use medfed_models::privacy::PrivacyError;
use medfed_models::seed;

use crate::config::{DpScaling, Loaded, NoiseKind, PrivacyMode};
use crate::tasks::Shard;

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
    shard: Shard<'_>,
    rounds: u32,
    run: &str,
) -> Result<BuiltLearner> {
    let privacy = &loaded.config.privacy;
    if privacy.mode == PrivacyMode::Off {
        let learner: Box<dyn Learner> = match shard {
            Shard::Tabular { data, .. } => Box::new(LogisticLearner::new(name, data)?),
            Shard::Imaging { images, cnn } => Box::new(CnnLearner::new(name, images, cnn)?),
        };
        return Ok(BuiltLearner {
            learner,
            noise_multiplier: None,
        });
    }
    let p = privacy.for_hospital(name);
    let ledger = match &privacy.ledger_dir {
        Some(dir) => Ledger::open(&loaded.resolve(dir), name, dataset)?,
        None => Ledger::in_memory(name, dataset),
    };
    let orders = default_orders();
    let mut prior = ledger.spent_rdp().to_vec();
    let tabular = matches!(shard, Shard::Tabular { .. });
    if tabular && privacy.scaling == DpScaling::DpStats {
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
    let private: Box<dyn Learner> = match shard {
        Shard::Tabular { data, bounds } => {
            let stats = match privacy.scaling {
                DpScaling::PublicBounds => StatsPolicy::Withheld,
                DpScaling::DpStats => StatsPolicy::Noised {
                    bounds: bounds
                        .context("differential privacy needs public feature bounds")?
                        .clone(),
                    noise_multiplier: privacy.stats_noise_multiplier,
                },
            };
            Box::new(LogisticLearner::new(name, data)?.with_privacy(dp, stats, noise)?)
        }
        Shard::Imaging { images, cnn } => {
            Box::new(CnnLearner::new(name, images, cnn)?.with_privacy(dp, noise)?)
        }
    };
    let budget = Budget {
        epsilon: p.epsilon,
        delta: p.delta,
    };
    let guarded =
        PrivateLearner::new(private, ledger, budget, run).with_context(|| format!("hospital {name}"))?;
    Ok(BuiltLearner {
        learner: Box::new(guarded),
        noise_multiplier: Some(sigma),
    })
}
