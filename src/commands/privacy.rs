//! `medfed privacy ...`: the RDP accountant as a calculator, and the ledgers.

use anyhow::{bail, Context, Result};
use serde_json::json;

use medfed_models::privacy::ledger::Ledger;
use medfed_models::privacy::rdp::{check_delta, epsilon, epsilon_of, noise_for_epsilon};

use crate::cli::{EpsilonArgs, LedgerResetArgs, LedgerShowArgs, NoiseArgs, PrivacyCommand};

pub fn execute(command: &PrivacyCommand) -> Result<()> {
    match command {
        PrivacyCommand::Epsilon(a) => epsilon_command(a),
        PrivacyCommand::Noise(a) => noise_command(a),
        PrivacyCommand::LedgerShow(a) => ledger_show(a),
        PrivacyCommand::LedgerReset(a) => ledger_reset(a),
    }
}

fn epsilon_command(a: &EpsilonArgs) -> Result<()> {
    let (eps, order) = epsilon_of(a.sampling_rate, a.noise_multiplier, a.steps, a.delta)?;
    if a.json {
        println!("{}", json!({"epsilon": eps, "order": order}));
    } else {
        println!(
            "epsilon {eps:.6} at delta {} (optimal RDP order {order}); q {}, sigma {}, {} steps",
            a.delta, a.sampling_rate, a.noise_multiplier, a.steps
        );
    }
    Ok(())
}

fn noise_command(a: &NoiseArgs) -> Result<()> {
    let sigma = noise_for_epsilon(a.target_epsilon, a.sampling_rate, a.steps, a.delta, None)?;
    if a.json {
        println!("{}", json!({"noise_multiplier": sigma}));
    } else {
        println!(
            "noise multiplier {sigma:.6} keeps {} steps at q {} within epsilon {} (delta {})",
            a.steps, a.sampling_rate, a.target_epsilon, a.delta
        );
    }
    Ok(())
}

fn ledger_show(a: &LedgerShowArgs) -> Result<()> {
    check_delta(a.delta)?;
    let entries = std::fs::read_dir(&a.ledger_dir)
        .with_context(|| format!("cannot read ledger directory {}", a.ledger_dir.display()))?;
    let mut rows = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not a ledger", path.display()))?;
        let (Some(hospital), Some(dataset)) = (v["hospital"].as_str(), v["dataset"].as_str()) else {
            bail!("{} is not a ledger (no hospital/dataset)", path.display());
        };
        let ledger = Ledger::open(&a.ledger_dir, hospital, dataset)?;
        let (eps, _) = epsilon(ledger.orders(), ledger.spent_rdp(), a.delta);
        rows.push(json!({
            "hospital": hospital,
            "dataset": dataset,
            "epsilon": eps,
            "releases": ledger.entries().len(),
            "file": path.display().to_string(),
        }));
    }
    if a.json {
        println!("{}", json!({"delta": a.delta, "ledgers": rows}));
    } else if rows.is_empty() {
        println!("no ledgers in {}", a.ledger_dir.display());
    } else {
        for r in rows {
            println!(
                "{} / {}: epsilon {:.4} at delta {} over {} releases",
                r["hospital"].as_str().unwrap_or("?"),
                r["dataset"].as_str().unwrap_or("?"),
                r["epsilon"].as_f64().unwrap_or(f64::NAN),
                a.delta,
                r["releases"]
            );
        }
    }
    Ok(())
}

fn ledger_reset(a: &LedgerResetArgs) -> Result<()> {
    if !a.yes {
        bail!(
            "this forgets all privacy spent by hospital '{}' on dataset '{}'; its patients lose the \
             protection already used. Repeat with --yes to confirm.",
            a.hospital,
            a.dataset
        );
    }
    match Ledger::reset(&a.ledger_dir, &a.hospital, &a.dataset)? {
        Some(path) => println!(
            "deleted {}: hospital '{}' starts dataset '{}' from a full budget",
            path.display(),
            a.hospital,
            a.dataset
        ),
        None => println!(
            "no ledger for hospital '{}' / dataset '{}' in {}",
            a.hospital,
            a.dataset,
            a.ledger_dir.display()
        ),
    }
    Ok(())
}
