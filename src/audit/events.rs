//! Which federation events the audit log keeps, and in what words.

use serde_json::json;

use medfed_actors::FederationEvent;

use super::AuditLog;

/// Record `event` if it is one an auditor asks about; `actor` is the
/// process that saw it (the coordinator acts on its own).
pub fn observe(log: &AuditLog, event: &FederationEvent) {
    use FederationEvent as E;
    let actor = "coordinator";
    match event {
        E::RunStarted {
            run_id,
            tasks,
            resumed_after,
            excluded,
            ..
        } => log.record(
            actor,
            if resumed_after.is_empty() {
                "run_started"
            } else {
                "run_resumed"
            },
            json!({ "run": run_id, "tasks": tasks, "resumed_after": resumed_after, "excluded": excluded }),
        ),
        E::RunEnded { run_id, outcome } => log.record(
            actor,
            "run_ended",
            json!({ "run": run_id, "outcome": outcome.name() }),
        ),
        E::HospitalJoined {
            task,
            hospital,
            node,
            attack,
            ..
        } => log.record(
            actor,
            "hospital_admitted",
            json!({ "task": task, "hospital": hospital, "node": node, "declared_attack": attack }),
        ),
        E::HospitalRefused {
            task,
            hospital,
            reason,
        } => log.record(
            actor,
            "hospital_refused",
            json!({ "task": task, "hospital": hospital, "reason": reason }),
        ),
        E::UpdateDeclined {
            task,
            round,
            hospital,
            reason,
        } if reason.contains("budget") => log.record(
            actor,
            "budget_exhausted",
            json!({ "task": task, "round": round, "hospital": hospital, "reason": reason }),
        ),
        _ => {}
    }
}
