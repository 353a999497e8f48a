//! `GET /api/privacy`: the panel's privacy view. Per DP hospital: what its
//! ledger has spent and has left, its epsilon after each accepted round,
//! and what a run of the task's rounds (or `?rounds=N`) would cost on its
//! own, computed by the RDP accountant from the mechanism's public
//! parameters the hospital announced.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use medfed_models::privacy::rdp::epsilon_of;

use super::api::{ApiError, MAX_ROUNDS};
use super::live::{EpsilonPoint, MechanismView};
use super::state::AppState;

/// One DP hospital as the live view has it.
struct Row {
    name: String,
    task: String,
    spent: f64,
    budget: f64,
    mechanism: MechanismView,
    rounds: u32,
    history: Vec<EpsilonPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivacyQuery {
    rounds: Option<u32>,
}

/// Epsilon of `rounds` rounds of `m` alone; `None` for a mechanism whose
/// parameters were not announced (an older hospital) or cannot be accounted.
fn run_cost(m: &MechanismView, rounds: u32) -> Option<f64> {
    let q = m.sampling_rate?;
    let steps = m.steps_per_round?.checked_mul(u64::from(rounds))?;
    epsilon_of(q, m.noise_multiplier, steps, m.delta)
        .ok()
        .map(|(epsilon, _)| epsilon)
}

pub async fn privacy(req: HttpRequest, state: web::Data<Arc<AppState>>) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<PrivacyQuery>::from_query(req.query_string()).map_err(|e| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            format!("expected ?rounds=N: {e}"),
        )
    })?;
    if let Some(r) = query.rounds {
        if r == 0 || r > MAX_ROUNDS {
            return Err(ApiError::new(
                actix_web::http::StatusCode::BAD_REQUEST,
                format!("rounds must be 1..={MAX_ROUNDS}, got {r}"),
            ));
        }
    }
    // Copied out, so that the accountant runs without holding the live view.
    let rows: Vec<Row> = {
        let live = state.live.read().map_err(|_| {
            ApiError::new(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "view lock poisoned",
            )
        })?;
        live.hospitals
            .values()
            .filter_map(|h| {
                let (spent, budget, m) = (h.epsilon_spent?, h.epsilon_budget?, h.mechanism.clone()?);
                let rounds = query
                    .rounds
                    .or_else(|| live.tasks.get(&h.task).map(|t| t.default_rounds))
                    .unwrap_or(1);
                let history = live
                    .epsilon_history
                    .get(&h.name)
                    .map(|p| p.iter().cloned().collect())
                    .unwrap_or_default();
                Some(Row {
                    name: h.name.clone(),
                    task: h.task.clone(),
                    spent,
                    budget,
                    mechanism: m,
                    rounds,
                    history,
                })
            })
            .collect()
    };
    // Hospitals of a task mostly share one mechanism: account for each once.
    let mut costs: HashMap<(u64, u64, u64, u64, u32), Option<f64>> = HashMap::new();
    let mut hospitals = Vec::new();
    for r in rows {
        let m = &r.mechanism;
        let key = (
            m.sampling_rate.unwrap_or(0.0).to_bits(),
            m.noise_multiplier.to_bits(),
            m.steps_per_round.unwrap_or(0),
            m.delta.to_bits(),
            r.rounds,
        );
        let cost = *costs.entry(key).or_insert_with(|| run_cost(m, r.rounds));
        hospitals.push(json!({
            "name": r.name,
            "task": r.task,
            "epsilon_spent": r.spent,
            "epsilon_budget": r.budget,
            "epsilon_remaining": (r.budget - r.spent).max(0.0),
            "mechanism": m,
            "next_run": {
                "rounds": r.rounds,
                "epsilon": cost,
                // Composing adds to what was spent; the ledger refuses any
                // round past the budget, so a run never overspends.
                "fits": cost.map(|c| r.spent + c <= r.budget),
            },
            "history": r.history,
        }));
    }
    Ok(HttpResponse::Ok().json(json!({
        "hospitals": hospitals,
        "notes": {
            "next_run": "epsilon of a run of that many rounds on its own (RDP accountant, the hospital's announced mechanism); composed with what was spent it is about their sum, and the ledger refuses any round past the budget",
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_cost_is_the_accountants_epsilon_of_its_steps() {
        let m = MechanismView {
            mechanism: "dp-sgd".into(),
            noise_multiplier: 1.1,
            delta: 1e-5,
            sampling_rate: Some(0.2),
            steps_per_round: Some(10),
            noise_share: None,
        };
        let ten = run_cost(&m, 10).unwrap();
        assert_eq!(ten, epsilon_of(0.2, 1.1, 100, 1e-5).unwrap().0);
        assert!(run_cost(&m, 20).unwrap() > ten);
        let unknown = MechanismView {
            sampling_rate: None,
            ..m
        };
        assert_eq!(run_cost(&unknown, 10), None);
    }
}
