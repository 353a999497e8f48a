//! The report of one registered model version: its data, configuration,
//! strategy, privacy guarantee in words, per-round and final metrics,
//! federated evaluation, lineage, and the attacks and rejections seen.
//! Every number comes from the store — the run's own JSON as it ended and
//! the round commits — so the report and the run agree. Rendered as
//! Markdown, as a self-contained HTML page (inline SVG, no network), or
//! as JSON.

mod html;
mod markdown;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::cli::ReportFormat;
use crate::store::{Lineage, ModelVersion, Store};

#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub title: String,
    pub model: ModelVersion,
    /// Records each hospital announced with its accepted updates (the
    /// noised count under DP-SGD), the largest over the rounds.
    pub records_per_hospital: BTreeMap<String, i64>,
    pub held_out: HeldOut,
    /// The task's configuration in the run: data, partition, training, strategy.
    pub task_config: Value,
    pub strategy: Value,
    pub privacy: Option<PrivacyFacts>,
    pub rounds: Vec<RoundFacts>,
    /// Held-out metrics of this version (with the confusion matrix).
    pub final_metrics: Value,
    /// The same model on the hospitals' local test splits.
    pub federated: Value,
    pub lineage: Lineage,
    pub attacks: Value,
    pub rejected: Value,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeldOut {
    pub size: i64,
    pub positives: i64,
    pub negatives: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrivacyFacts {
    pub mode: String,
    pub relation: String,
    pub delta: f64,
    /// The guarantee, in words, per hospital.
    pub statement: Vec<String>,
    pub epsilon_spent: BTreeMap<String, f64>,
    pub epsilon_budget: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundFacts {
    pub round: u64,
    pub participants: u64,
    pub accuracy: f64,
    pub loss: f64,
    pub f1: Option<f64>,
    pub auc: Option<f64>,
    /// Pooled accuracy over the hospitals' local test splits, when they evaluated.
    pub federated_accuracy: Option<f64>,
}

/// Everything the report shows, read from the store.
pub fn build(store: &Store, model: &ModelVersion) -> Result<ModelReport> {
    let lineage = store.lineage(model)?;
    let run = store
        .run(&model.run_id)?
        .with_context(|| format!("run {} is not in the store", model.run_id))?;
    let task = run.report.get(&model.task).cloned().unwrap_or(Value::Null);
    // The registered metrics: the held-out evaluation of the version, with
    // its confusion matrix (the run's JSON "final" without it).
    let final_metrics = model.metrics.clone();
    let confusion = &final_metrics["confusion"];
    let count = |k: &str| confusion[k].as_i64().unwrap_or(0);
    let held_out = HeldOut {
        size: count("tp") + count("fp") + count("tn") + count("fn"),
        positives: count("tp") + count("fn"),
        negatives: count("tn") + count("fp"),
    };
    let mut records_per_hospital: BTreeMap<String, i64> = BTreeMap::new();
    for c in lineage.rounds.values().flatten() {
        if let Some(n) = c.samples {
            let e = records_per_hospital.entry(c.hospital.clone()).or_default();
            *e = (*e).max(n);
        }
    }
    let rounds = task["rounds"]
        .as_array()
        .map(|rounds| {
            rounds
                .iter()
                .filter(|r| r["round"].as_u64().is_some_and(|n| n <= u64::from(model.round)))
                .map(|r| RoundFacts {
                    round: r["round"].as_u64().unwrap_or(0),
                    participants: r["participants"].as_u64().unwrap_or(0),
                    accuracy: r["accuracy"].as_f64().unwrap_or(f64::NAN),
                    loss: r["loss"].as_f64().unwrap_or(f64::NAN),
                    f1: r["f1"].as_f64(),
                    auc: r["auc"].as_f64(),
                    federated_accuracy: r["federated"]["pooled"]["accuracy"].as_f64(),
                })
                .collect()
        })
        .unwrap_or_default();
    let privacy = task
        .get("privacy")
        .filter(|p| !p.is_null())
        .map(|p| privacy_facts(p, &lineage));
    Ok(ModelReport {
        title: format!("{} version {}", model.task, model.version),
        model: model.clone(),
        records_per_hospital,
        held_out,
        strategy: lineage.task_config["strategy"].clone(),
        task_config: lineage.task_config.clone(),
        privacy,
        rounds,
        final_metrics,
        federated: task["final_federated"].clone(),
        attacks: task["attacks"].clone(),
        rejected: task["rejected"].clone(),
        lineage,
    })
}

fn privacy_facts(p: &Value, lineage: &Lineage) -> PrivacyFacts {
    let relation = p["relation"].as_str().unwrap_or("").to_string();
    let delta = p["delta"].as_f64().unwrap_or(f64::NAN);
    let map = |k: &str| -> BTreeMap<String, f64> {
        p[k].as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(h, v)| Some((h.clone(), v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (spent, budget) = (map("epsilon_spent"), map("epsilon_budget"));
    let statement = spent
        .iter()
        .map(|(h, eps)| {
            let releases = lineage.privacy.get(h).map_or(0, |c| c.releases);
            format!(
                "{h}: ({eps:.4}, {delta:e})-differential privacy for its patients, with respect to {relation}, \
                 covering everything released from its data so far ({releases} update releases for this \
                 model); budget {}",
                budget.get(h).map_or("unknown".to_string(), |b| b.to_string())
            )
        })
        .collect();
    PrivacyFacts {
        mode: p["mode"].as_str().unwrap_or("").to_string(),
        relation,
        delta,
        statement,
        epsilon_spent: spent,
        epsilon_budget: budget,
    }
}

pub fn render(store: &Store, model: &ModelVersion, format: ReportFormat) -> Result<String> {
    let report = build(store, model)?;
    Ok(match format {
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        ReportFormat::Md => markdown::render(&report),
        ReportFormat::Html => html::render(&report),
    })
}

/// A metric for tables: 4 decimals, or "-".
fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.4}"),
        _ => "-".into(),
    }
}

/// "Accuracy ..., precision ..., ..." of the final held-out metrics.
fn final_sentence(r: &ModelReport) -> String {
    let fm = &r.final_metrics;
    format!(
        "Accuracy {}, precision {}, recall {}, F1 {}, AUC {}, loss {}.",
        num(fm["accuracy"].as_f64()),
        num(fm["precision"].as_f64()),
        num(fm["recall"].as_f64()),
        num(fm["f1"].as_f64()),
        num(fm["auc"].as_f64()),
        num(fm["loss"].as_f64())
    )
}

fn federated_sentence(r: &ModelReport) -> String {
    format!(
        "Pooled over the hospitals' local test splits: accuracy {} ({} of {} hospitals evaluated).",
        num(r.federated["pooled"]["accuracy"].as_f64()),
        r.federated["evaluated"],
        r.federated["requested"]
    )
}

/// The attacks and rejections seen, as lines.
fn incidents(r: &ModelReport) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(attacks) = r.attacks.as_object() {
        for (h, a) in attacks {
            lines.push(format!(
                "{h} declared a simulated attack: {}",
                a.as_str().unwrap_or("")
            ));
        }
    }
    if let Some(rejected) = r.rejected.as_object() {
        for (reason, n) in rejected {
            lines.push(format!("{n} update(s) rejected at intake: {reason}"));
        }
    }
    for (round, contributions) in &r.lineage.rounds {
        for c in contributions.iter().filter(|c| c.outcome != "accepted") {
            lines.push(format!(
                "round {round}: {} {}{}",
                c.hospital,
                c.outcome,
                c.reason.as_ref().map_or(String::new(), |r| format!(" ({r})"))
            ));
        }
    }
    lines
}
