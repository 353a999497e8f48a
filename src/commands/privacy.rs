//! `medfed privacy ...`: the RDP accountant as a calculator, and the ledgers.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde_json::json;

use medfed_models::privacy::ledger::Ledger;
use medfed_models::privacy::rdp::{
    check_delta, check_noise, compose, default_orders, epsilon, epsilon_of, noise_for_epsilon,
};
use medfed_models::privacy::{DATASET_RELATION, RECORD_RELATION};

use crate::cli::{CalculatorMode, EpsilonArgs, LedgerResetArgs, LedgerShowArgs, NoiseArgs, PrivacyCommand};

pub fn execute(command: &PrivacyCommand) -> Result<()> {
    match command {
        PrivacyCommand::Epsilon(a) => epsilon_command(a),
        PrivacyCommand::Noise(a) => noise_command(a),
        PrivacyCommand::LedgerShow(a) => ledger_show(a),
        PrivacyCommand::LedgerReset(a) => ledger_reset(a),
    }
}

/// The calculators' settings after checking the mode's rules.
struct Release {
    relation: &'static str,
    sampling_rate: f64,
    /// The count release composed in, if any (dp-sgd only).
    count_cost: Option<Vec<f64>>,
}

fn release(mode: CalculatorMode, sampling_rate: Option<f64>, count_noise: Option<f64>) -> Result<Release> {
    match mode {
        CalculatorMode::DpSgd => {
            let q = sampling_rate.context("--sampling-rate is required with --mode dp-sgd")?;
            let count_cost = match count_noise {
                Some(s) => {
                    check_noise(s).context("--count-noise-multiplier")?;
                    Some(compose(1.0, s, 1, &default_orders()))
                }
                None => None,
            };
            Ok(Release {
                relation: RECORD_RELATION,
                sampling_rate: q,
                count_cost,
            })
        }
        CalculatorMode::Update => {
            if sampling_rate.is_some_and(|q| q != 1.0) {
                bail!("update-level DP noises the whole round's update: --sampling-rate must be 1 (or left out)");
            }
            if count_noise.is_some() {
                bail!("update-level DP releases no record count: leave out --count-noise-multiplier");
            }
            Ok(Release {
                relation: DATASET_RELATION,
                sampling_rate: 1.0,
                count_cost: None,
            })
        }
    }
}

fn mode_name(mode: CalculatorMode) -> &'static str {
    match mode {
        CalculatorMode::DpSgd => "dp-sgd",
        CalculatorMode::Update => "update",
    }
}

fn sensitivity(mode: CalculatorMode) -> &'static str {
    match mode {
        CalculatorMode::DpSgd => "max_grad_norm (C)",
        CalculatorMode::Update => "2 x max_update_norm (2C)",
    }
}

fn epsilon_command(a: &EpsilonArgs) -> Result<()> {
    let r = release(a.mode, a.sampling_rate, a.count_noise_multiplier)?;
    let (mut eps, mut order) = epsilon_of(r.sampling_rate, a.noise_multiplier, a.steps, a.delta)?;
    if let Some(count) = &r.count_cost {
        let orders = default_orders();
        let mut total = compose(r.sampling_rate, a.noise_multiplier, a.steps, &orders);
        total.iter_mut().zip(count).for_each(|(t, c)| *t += c);
        (eps, order) = epsilon(&orders, &total, a.delta);
    }
    if a.json {
        println!(
            "{}",
            json!({
                "epsilon": eps,
                "order": order,
                "mode": mode_name(a.mode),
                "relation": r.relation,
                "sensitivity": sensitivity(a.mode),
                "count_noise_multiplier": a.count_noise_multiplier,
            })
        );
    } else {
        println!(
            "epsilon {eps:.6} at delta {} (optimal RDP order {order}); {} : q {}, sigma {}, {} steps{}",
            a.delta,
            mode_name(a.mode),
            r.sampling_rate,
            a.noise_multiplier,
            a.steps,
            a.count_noise_multiplier
                .map(|s| format!(", plus the record count at sigma {s}"))
                .unwrap_or_default()
        );
        println!(
            "neighbouring relation: {}; sigma is the noise std over the sensitivity {}",
            r.relation,
            sensitivity(a.mode)
        );
    }
    Ok(())
}

fn noise_command(a: &NoiseArgs) -> Result<()> {
    let r = release(a.mode, a.sampling_rate, a.count_noise_multiplier)?;
    let sigma = noise_for_epsilon(
        a.target_epsilon,
        r.sampling_rate,
        a.steps,
        a.delta,
        r.count_cost.as_deref(),
    )?;
    if a.json {
        println!(
            "{}",
            json!({
                "noise_multiplier": sigma,
                "mode": mode_name(a.mode),
                "relation": r.relation,
                "sensitivity": sensitivity(a.mode),
                "count_noise_multiplier": a.count_noise_multiplier,
            })
        );
    } else {
        println!(
            "noise multiplier {sigma:.6} keeps {} steps at q {} within epsilon {} (delta {}){}",
            a.steps,
            r.sampling_rate,
            a.target_epsilon,
            a.delta,
            a.count_noise_multiplier
                .map(|s| format!(", with the record count released at sigma {s}"))
                .unwrap_or_default()
        );
        println!(
            "neighbouring relation: {}; noise std = sigma x {}",
            r.relation,
            sensitivity(a.mode)
        );
    }
    Ok(())
}

fn ledger_show(a: &LedgerShowArgs) -> Result<()> {
    check_delta(a.delta)?;
    let mut rows = Vec::new();
    for summary in Ledger::list(&a.ledger_dir)? {
        let ledger = &summary.ledger;
        let (eps, _) = epsilon(ledger.orders(), ledger.spent_rdp(), a.delta);
        let hospitals: BTreeSet<&str> = ledger.entries().iter().map(|e| e.hospital.as_str()).collect();
        let file = summary
            .file
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        rows.push(json!({
            "ledger": file,
            "dataset": summary.dataset,
            "fingerprint": summary.fingerprint,
            "epsilon": eps,
            "releases": ledger.entries().len(),
            "released_count": ledger.released_count().map(|c| c.value),
            "hospitals": hospitals,
            "file": summary.file.display().to_string(),
        }));
    }
    if a.json {
        println!("{}", json!({"delta": a.delta, "ledgers": rows}));
    } else if rows.is_empty() {
        println!("no ledgers in {}", a.ledger_dir.display());
    } else {
        for r in rows {
            println!(
                "{} (dataset {}, fingerprint {}): epsilon {:.4} at delta {} over {} releases, by {}",
                r["ledger"].as_str().unwrap_or("?"),
                r["dataset"].as_str().unwrap_or("?"),
                r["fingerprint"].as_str().unwrap_or("?"),
                r["epsilon"].as_f64().unwrap_or(f64::NAN),
                a.delta,
                r["releases"],
                r["hospitals"]
            );
        }
    }
    Ok(())
}

fn ledger_reset(a: &LedgerResetArgs) -> Result<()> {
    if !a.yes {
        bail!(
            "this forgets all privacy spent on the data of ledger '{}'; its patients lose the \
             protection already used. Repeat with --yes to confirm.",
            a.ledger
        );
    }
    match Ledger::reset(&a.ledger_dir, &a.ledger)? {
        Some(path) => println!("deleted {}: its data starts from a full budget", path.display()),
        None => println!("no ledger '{}' in {}", a.ledger, a.ledger_dir.display()),
    }
    Ok(())
}
