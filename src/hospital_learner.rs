//! Builds one hospital's learner from the configuration: logistic regression
//! (tabular) or the CNN (imaging), and — with differential privacy on — the
//! same learner training with DP-SGD or update-level DP behind the budget
//! guard and its ledger, keyed by the content of the hospital's records.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

use medfed_actors::HospitalLearner;
use medfed_models::learner::logistic::LocalDp;
use medfed_models::learner::private::{Budget, CountRelease, PrivateLearner, SharePolicy};
use medfed_models::privacy::ledger::{Ledger, LedgerKey};
use medfed_models::privacy::mechanisms::NoiseSource;
use medfed_models::privacy::rdp::{compose, default_orders, noise_for_epsilon};
use medfed_models::privacy::PrivacyError;
use medfed_models::seed;

use crate::config::{Loaded, NoiseKind, PrivacyMode};
use crate::tasks::SiteData;

/// A hospital's learner and, under DP, the noise multiplier it trains with.
pub struct BuiltLearner {
    pub learner: HospitalLearner,
    pub noise_multiplier: Option<f64>,
}

/// Where a hospital runs: `Cluster` hospitals face a remote coordinator,
/// so reproducible (`seeded`) noise is refused for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    InProcess,
    Cluster,
}

impl Site {
    /// As the ledger records it beside each charge.
    pub fn name(self) -> &'static str {
        match self {
            Site::InProcess => "in-process",
            Site::Cluster => "cluster",
        }
    }
}

/// Where hospitals keep their privacy ledgers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ledgers {
    /// `medfed run` without `privacy.ledger_dir`: in memory, so every
    /// simulation starts from a full budget (its output says so).
    Simulation,
    /// A directory that outlives the process.
    Kept(PathBuf),
}

impl Ledgers {
    /// `medfed run`: `privacy.ledger_dir` if set, else in memory.
    pub fn for_simulation(loaded: &Loaded) -> Self {
        match &loaded.config.privacy.ledger_dir {
            Some(dir) => Ledgers::Kept(loaded.resolve(dir)),
            None => Ledgers::Simulation,
        }
    }

    /// `serve`, `coordinator`, `hospital`: `privacy.ledger_dir`, else
    /// `<data_dir>/ledgers`. With differential privacy off no ledger is
    /// kept and no directory is created.
    pub fn long_lived(loaded: &Loaded) -> Result<Self> {
        let privacy = &loaded.config.privacy;
        Ok(match &privacy.ledger_dir {
            Some(dir) => Ledgers::Kept(loaded.resolve(dir)),
            None if privacy.mode == PrivacyMode::Off => Ledgers::Simulation,
            None => Ledgers::Kept(loaded.data_dir()?.join("ledgers")),
        })
    }

    /// For the run's output.
    pub fn describe(&self) -> String {
        match self {
            Ledgers::Simulation => "in memory (simulation: every `medfed run` starts from a full budget; \
                 set privacy.ledger_dir to keep them)"
                .into(),
            Ledgers::Kept(dir) => dir.display().to_string(),
        }
    }
}

/// `dataset` names what the hospital's data is (its task); together with
/// the records' fingerprint it keys the ledger. `rounds` is the planned
/// number of rounds the noise is calibrated for.
pub fn build(
    loaded: &Loaded,
    name: &str,
    dataset: &str,
    site: Box<dyn SiteData>,
    rounds: u32,
    runs_at: Site,
    ledgers: &Ledgers,
) -> Result<BuiltLearner> {
    let privacy = &loaded.config.privacy;
    if privacy.mode == PrivacyMode::Off {
        return Ok(BuiltLearner {
            learner: HospitalLearner::Open(site.learner(name)?),
            noise_multiplier: None,
        });
    }
    if privacy.noise == NoiseKind::Seeded && runs_at == Site::Cluster {
        bail!(
            "privacy.noise = \"seeded\" is refused for a cluster hospital: seeded noise is \
             reproducible, so anyone who knows the seed can subtract it. It exists for simulations \
             in one process (`medfed run`) on data that is not real; use \"secure\""
        );
    }
    let ledger_dir = match ledgers {
        Ledgers::Kept(dir) => Some(dir),
        Ledgers::Simulation if runs_at == Site::Cluster => bail!(
            "a cluster hospital with differential privacy on needs a persistent ledger: without one \
             every restart would start from a full budget and release a freshly noised record count, \
             and averaging those reveals the count"
        ),
        Ledgers::Simulation => None,
    };
    if privacy.noise == NoiseKind::Seeded && ledger_dir.is_some() {
        bail!(
            "privacy.noise = \"seeded\" is for `medfed run` simulations on data that is not real: \
             a long-lived hospital keeps a persistent ledger, and seeded noise is reproducible \
             (anyone who knows the seed can subtract it); use \"secure\""
        );
    }
    let p = privacy.for_hospital(name);
    // The noise streams never derive from anything the coordinator sends.
    let noise_stream = |purpose: u64| match privacy.noise {
        NoiseKind::Secure => NoiseSource::secure(),
        NoiseKind::Seeded => NoiseSource::seeded(seed::derive(privacy.noise_seed, name, purpose)),
    };
    let records = site.records();
    let key = LedgerKey {
        dataset: dataset.to_string(),
        fingerprint: site
            .fingerprint()
            .with_context(|| format!("hospital {name}: fingerprinting its records"))?,
    };
    let budget = Budget {
        epsilon: p.epsilon,
        delta: p.delta,
    };
    // Checked again by PrivateLearner::new; here so that a bad delta creates no ledger.
    budget
        .check(records)
        .with_context(|| format!("hospital {name}"))?;
    if let Some(advice) = budget.advice(records) {
        warn!(hospital = %name, "{advice}");
    }
    let ledger = match ledger_dir {
        Some(dir) => Ledger::open(dir, &key)
            .with_context(|| format!("hospital {name}: a private hospital needs a writable ledger"))?,
        None => Ledger::in_memory(&key),
    };
    let count = CountRelease {
        noise_multiplier: privacy.count_noise_multiplier,
    };
    let orders = default_orders();
    let mut prior = ledger.spent_rdp().to_vec();
    let mut add = |cost: Vec<f64>| prior.iter_mut().zip(&cost).for_each(|(a, b)| *a += b);
    if site.releases_stats(privacy) {
        add(compose(1.0, privacy.stats_noise_multiplier, 1, &orders));
    }
    if privacy.mode == PrivacyMode::DpSgd && ledger.released_count().is_none() {
        add(count.cost());
    }
    let (q, steps_per_round) = match privacy.mode {
        PrivacyMode::DpSgd => (p.sampling_rate, p.local_steps),
        _ => (1.0, 1),
    };
    // A cluster hospital outlives a coordinator crash, after which it may
    // train a round twice. (In-process hospitals restart with their
    // coordinator and recalibrate from their ledger.)
    let replays = if runs_at == Site::Cluster {
        privacy.replay_allowance
    } else {
        0
    };
    let total_steps = steps_per_round * u64::from(rounds.saturating_add(replays));
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
    info!(hospital = %name, mode = privacy.mode.name(), sigma, q, steps = total_steps, replays, ledger = %key.file_name(), "privacy calibrated");
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
    let inner = site.private_learner(name, dp, privacy, noise_stream(0x0D9))?;
    let guarded = PrivateLearner::new(
        inner,
        ledger,
        budget,
        name,
        runs_at.name(),
        count,
        &mut noise_stream(0xC0),
    )
    .and_then(|l| {
        l.with_share_policy(SharePolicy {
            min_summed: privacy.min_summed_hospitals,
            min_noise_multiplier: privacy.min_noise_multiplier,
        })
    })
    .with_context(|| format!("hospital {name}"))?;
    Ok(BuiltLearner {
        learner: HospitalLearner::Private(Box::new(guarded)),
        noise_multiplier: Some(sigma),
    })
}
