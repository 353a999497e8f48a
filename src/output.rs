//! What `medfed run` prints: a per-round table per task, or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use medfed_actors::coordinator::fsm::Phase;
use medfed_actors::report::FederatedEval;
use medfed_actors::{RunReport, TaskReport};
use medfed_models::metrics::{Confusion, Metrics};

use crate::config::{DpScaling, Loaded, PrivacyMode};
use crate::tasks::PreparedTask;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsJson {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub auc: Option<f64>,
    pub loss: f64,
    /// At threshold 0.5, over the examples the metrics are of.
    pub confusion: Confusion,
}

impl From<&Metrics> for MetricsJson {
    fn from(m: &Metrics) -> Self {
        Self {
            accuracy: m.accuracy,
            precision: m.precision,
            recall: m.recall,
            f1: m.f1,
            auc: m.auc,
            loss: m.loss,
            confusion: m.confusion,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoundJson {
    pub round: u32,
    pub participants: usize,
    #[serde(flatten)]
    pub metrics: MetricsJson,
    pub seconds: f64,
    /// The whole round, the hospitals' evaluation of its model included.
    pub seconds_with_evaluation: Option<f64>,
    /// The same model on the hospitals' own test splits.
    pub federated: FederatedJson,
}

/// Federated evaluation of one round's model (reported apart from the
/// coordinator's held-out metrics): pooled over the hospitals that answered.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FederatedJson {
    pub requested: usize,
    pub evaluated: usize,
    pub examples: u64,
    pub pooled: Option<MetricsJson>,
    pub accuracy_by_hospital: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub declined: BTreeMap<String, String>,
}

impl From<&FederatedEval> for FederatedJson {
    fn from(f: &FederatedEval) -> Self {
        Self {
            requested: f.requested,
            evaluated: f.hospitals.len(),
            examples: f.pooled.as_ref().map_or(0, |m| m.count),
            pooled: f.pooled.as_ref().map(Into::into),
            accuracy_by_hospital: f.hospitals.iter().map(|(h, m)| (h.clone(), m.accuracy)).collect(),
            declined: f.declined.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskJson {
    pub hospitals: usize,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
    pub rounds: Vec<RoundJson>,
    #[serde(rename = "final")]
    pub final_metrics: Option<MetricsJson>,
    /// The final model on the hospitals' local test splits.
    pub final_federated: Option<FederatedJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub centralized: Option<MetricsJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyJson>,
    /// Hospitals that left during the run.
    pub departures: u64,
    /// Hospitals that simulated an attack (robustness evaluation) and how.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attacks: BTreeMap<String, String>,
    /// Updates refused at intake, by reason (non-finite, wrong shape, too large...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, u64>,
}

/// What differential privacy cost each hospital (present only with DP on).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PrivacyJson {
    pub mode: String,
    /// Neighbouring datasets of the guarantee: "add/remove one record"
    /// (dp-sgd) or "replace the whole local dataset" (update).
    pub relation: &'static str,
    /// What leaves each hospital, every item through a mechanism.
    pub released: Vec<&'static str>,
    pub accountant: &'static str,
    pub delta: f64,
    pub noise_multiplier: BTreeMap<String, f64>,
    pub epsilon_spent: BTreeMap<String, f64>,
    pub epsilon_budget: BTreeMap<String, f64>,
    /// Where the hospitals' ledgers are kept ("in memory (simulation ...)").
    pub ledgers: String,
    /// Distributed DP (noise shares in a secure sum): its two guarantees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedJson>,
}

/// The two guarantees of distributed DP, stated apart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DistributedJson {
    /// What `epsilon_spent` means under distributed DP.
    pub against_coordinator: &'static str,
    /// What `epsilon_collusion` means.
    pub against_collusion: &'static str,
    /// Each hospital's own noise multiplier in its latest release.
    pub noise_share: BTreeMap<String, f64>,
    pub epsilon_collusion: BTreeMap<String, f64>,
}

pub const AGAINST_COORDINATOR: &str = "epsilon_spent: central DP of the noisy secure sum (each hospital's noise share \
     adds up to noise_multiplier in every sum, which is only unmasked with at least the quorum of inputs); valid \
     while secure aggregation holds: an honest-but-curious coordinator, and fewer than the threshold of a \
     hospital's share holders colluding with it";
pub const AGAINST_COLLUSION: &str =
    "epsilon_collusion: what each hospital's own noise share alone gives, if the \
     coordinator colludes with every other hospital (they can subtract their own noise from the sum)";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunJson {
    pub wall_seconds: f64,
    pub tasks: BTreeMap<String, TaskJson>,
}

/// Extra, per-task facts the table shows beside the coordinator's report.
#[derive(Debug, Clone, Default)]
pub struct TaskContext {
    pub hospitals: usize,
    pub partition: String,
    pub train_rows: usize,
    pub test_rows: usize,
    /// What one example is ("rows", "images") and how the baseline was trained.
    pub unit: &'static str,
    pub baseline_method: &'static str,
    pub centralized: Option<Metrics>,
    /// DP mode and delta, when DP is on.
    pub privacy: Option<PrivacyContext>,
}

impl TaskContext {
    /// `ledgers` says where the hospitals' privacy ledgers are kept.
    pub fn of(task: &PreparedTask, loaded: &Loaded, centralized: Option<Metrics>, ledgers: &str) -> Self {
        let (train_rows, test_rows) = task.sizes();
        let privacy = &loaded.config.privacy;
        TaskContext {
            hospitals: task.hospital_count(),
            partition: task.config.partition.scheme_name().to_string(),
            train_rows,
            test_rows,
            unit: task.unit(),
            baseline_method: task.baseline_method(),
            centralized,
            privacy: privacy.mode.relation().map(|relation| PrivacyContext {
                mode: privacy.mode.name().to_string(),
                relation,
                delta: privacy.delta,
                released: released_items(privacy.mode, privacy.scaling, task.unit()),
                ledgers: ledgers.to_string(),
            }),
        }
    }
}

/// The privacy facts a task's output states.
#[derive(Debug, Clone)]
pub struct PrivacyContext {
    pub mode: String,
    pub relation: &'static str,
    pub delta: f64,
    pub released: Vec<&'static str>,
    pub ledgers: String,
}

/// What leaves a hospital under `mode`, as the README lists it.
fn released_items(mode: PrivacyMode, scaling: DpScaling, unit: &str) -> Vec<&'static str> {
    let mut items = match mode {
        PrivacyMode::DpSgd => vec![
            "record count (Gaussian, once per dataset)",
            "model updates (DP-SGD)",
        ],
        PrivacyMode::Update => vec!["model updates (clipped, Gaussian at sensitivity 2C)"],
        PrivacyMode::Off => Vec::new(),
    };
    if unit == "rows" && scaling == DpScaling::DpStats {
        items.push("feature counts, sums and sums of squares (Gaussian)");
    }
    items.push("epsilon spent");
    items
}

pub fn task_json(report: &TaskReport, context: &TaskContext) -> TaskJson {
    let (status, abort_reason) = match &report.phase {
        Phase::Finished { .. } => ("finished", None),
        Phase::Aborted { reason } => ("aborted", Some(reason.clone())),
        other => (other.name(), None),
    };
    TaskJson {
        hospitals: context.hospitals,
        status,
        abort_reason,
        rounds: report
            .rounds
            .iter()
            .map(|r| RoundJson {
                round: r.round,
                participants: r.participants,
                metrics: (&r.metrics).into(),
                seconds: r.seconds,
                seconds_with_evaluation: r.seconds_with_evaluation,
                federated: (&r.federated).into(),
            })
            .collect(),
        final_metrics: report.rounds.last().map(|r| (&r.metrics).into()),
        final_federated: report.rounds.last().map(|r| (&r.federated).into()),
        departures: report.departures,
        attacks: report.attacks.clone(),
        rejected: report.rejected.clone(),
        centralized: context.centralized.as_ref().map(Into::into),
        privacy: context.privacy.as_ref().map(|p| PrivacyJson {
            mode: p.mode.clone(),
            relation: p.relation,
            released: p.released.clone(),
            accountant: "rdp",
            delta: p.delta,
            noise_multiplier: report
                .privacy
                .iter()
                .map(|(h, p)| (h.clone(), p.noise_multiplier))
                .collect(),
            epsilon_spent: report
                .privacy
                .iter()
                .map(|(h, p)| (h.clone(), p.epsilon))
                .collect(),
            epsilon_budget: report
                .privacy
                .iter()
                .map(|(h, p)| (h.clone(), p.budget))
                .collect(),
            ledgers: p.ledgers.clone(),
            distributed: report
                .privacy
                .values()
                .any(|p| p.epsilon_collusion.is_some())
                .then(|| DistributedJson {
                    against_coordinator: AGAINST_COORDINATOR,
                    against_collusion: AGAINST_COLLUSION,
                    noise_share: report
                        .privacy
                        .iter()
                        .filter_map(|(h, p)| p.noise_share.map(|s| (h.clone(), s)))
                        .collect(),
                    epsilon_collusion: report
                        .privacy
                        .iter()
                        .map(|(h, p)| (h.clone(), p.epsilon_collusion.unwrap_or(p.epsilon)))
                        .collect(),
                }),
        }),
    }
}

pub fn run_json(report: &RunReport, contexts: &BTreeMap<String, TaskContext>, wall_seconds: f64) -> RunJson {
    RunJson {
        wall_seconds,
        tasks: contexts
            .iter()
            .filter_map(|(name, ctx)| report.tasks.get(name).map(|r| (name.clone(), task_json(r, ctx))))
            .collect(),
    }
}

/// Print a run's result on stdout: one JSON object, or a table per task
/// and the wall time (`wall_note` says what it counts, when not obvious).
pub fn print_run(
    report: &RunReport,
    contexts: &BTreeMap<String, TaskContext>,
    wall_seconds: f64,
    json: bool,
    wall_note: &str,
) -> serde_json::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(&run_json(report, contexts, wall_seconds))?
        );
    } else {
        for (name, ctx) in contexts {
            if let Some(r) = report.tasks.get(name) {
                print!("{}", task_table(name, r, ctx));
            }
        }
        println!("\nwall time {wall_seconds:.2} s{wall_note}");
    }
    Ok(())
}

fn auc_text(auc: Option<f64>) -> String {
    auc.map_or_else(|| "n/a".to_string(), |a| format!("{a:.4}"))
}

/// The human-readable result of one task.
pub fn task_table(name: &str, report: &TaskReport, context: &TaskContext) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{name}: {} hospitals ({} partition), {} training {unit}, held-out test set of {} {unit}",
        context.hospitals,
        context.partition,
        context.train_rows,
        context.test_rows,
        unit = context.unit
    );
    let _ = writeln!(
        out,
        "{:>5} {:>5} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8}",
        "round", "hosp", "accuracy", "precision", "recall", "auc", "loss", "seconds"
    );
    for r in &report.rounds {
        let m = &r.metrics;
        let _ = writeln!(
            out,
            "{:>5} {:>5} {:>9.4} {:>9.4} {:>7.4} {:>7} {:>7.4} {:>8.3}",
            r.round,
            r.participants,
            m.accuracy,
            m.precision,
            m.recall,
            auc_text(m.auc),
            m.loss,
            r.seconds
        );
    }
    match &report.phase {
        Phase::Finished { rounds } => {
            let _ = write!(out, "finished after {rounds} rounds");
        }
        Phase::Aborted { reason } => {
            let _ = write!(out, "ABORTED: {reason}");
        }
        Phase::Stopped { rounds } => {
            let _ = write!(out, "STOPPED by the operator after {rounds} rounds");
        }
        other => {
            let _ = write!(out, "ended in phase {}", other.name());
        }
    }
    if let Some(last) = report.rounds.last() {
        let m = &last.metrics;
        let _ = write!(
            out,
            "; final held-out accuracy {:.4}, F1 {:.4}, AUC {}",
            m.accuracy,
            m.f1,
            auc_text(m.auc)
        );
    }
    out.push('\n');
    if let Some(f) = report.rounds.last().map(|r| &r.federated) {
        match &f.pooled {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "federated evaluation (the final model on {} of {} hospitals' local test splits, {} {}): accuracy {:.4}, F1 {:.4}",
                    f.hospitals.len(),
                    f.requested,
                    m.count,
                    context.unit,
                    m.accuracy,
                    m.f1
                );
            }
            None if !f.declined.is_empty() => {
                let reasons: std::collections::BTreeSet<&String> = f.declined.values().collect();
                let reasons: Vec<&str> = reasons.into_iter().map(String::as_str).collect();
                let _ = writeln!(out, "federated evaluation: declined ({})", reasons.join("; "));
            }
            None => {}
        }
    }
    if !report.attacks.is_empty() {
        let who: Vec<String> = report.attacks.iter().map(|(h, a)| format!("{h} ({a})")).collect();
        let _ = writeln!(
            out,
            "SIMULATED ATTACKS (robustness evaluation): {}",
            who.join(", ")
        );
    }
    if !report.rejected.is_empty() {
        let why: Vec<String> = report.rejected.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(out, "updates rejected at intake: {}", why.join(", "));
    }
    if let Some(c) = &context.centralized {
        let _ = writeln!(
            out,
            "centralized baseline ({} on all training {}): accuracy {:.4}, F1 {:.4}, AUC {}",
            context.baseline_method,
            context.unit,
            c.accuracy,
            c.f1,
            auc_text(c.auc)
        );
    }
    if let Some(PrivacyContext {
        mode,
        relation,
        delta,
        ledgers,
        ..
    }) = &context.privacy
    {
        let spent: Vec<String> = report
            .privacy
            .iter()
            .map(|(h, p)| {
                format!(
                    "{h} {:.3}/{} (sigma {:.3})",
                    p.epsilon, p.budget, p.noise_multiplier
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "differential privacy ({mode}, {relation}, delta {delta:e}, RDP accountant): epsilon spent {}",
            if spent.is_empty() {
                "nothing reported".to_string()
            } else {
                spent.join(", ")
            }
        );
        let _ = writeln!(out, "privacy ledgers: {ledgers}");
    }
    let rejected: u64 = report.rejected.values().sum();
    let d = &report.drops;
    if rejected + report.declined + d.late + d.duplicate + d.unknown_sender > 0 {
        let _ = writeln!(
            out,
            "updates rejected {rejected}, declined {}; messages dropped: late {}, duplicate {}, unknown sender {}",
            report.declined, d.late, d.duplicate, d.unknown_sender
        );
    }
    out
}
