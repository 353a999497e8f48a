//! A hospital's own record of what left it: one line per release (what,
//! which round, how many bytes, the privacy it cost and what remains) —
//! never the data itself.

use tracing::{debug, info};

use crate::messages::{EvalOutcome, SecAggAnswer, StatsOutcome, ToCoordinator, TrainOutcome};

/// Log the release `reply` is; at INFO for a hospital in its own process
/// (the site's record), DEBUG for the in-process simulation.
pub fn log_release(hospital: &str, reply: &ToCoordinator, site_record: bool) {
    let line = describe(reply);
    let round = reply.ask().map(|a| a.round);
    if site_record {
        info!(hospital, round, "{line}");
    } else {
        debug!(hospital, round, "{line}");
    }
}

/// The release in words.
pub fn describe(reply: &ToCoordinator) -> String {
    match reply {
        ToCoordinator::Hello { .. } => "released its hello (name, task, kind, record count)".into(),
        ToCoordinator::Stats { outcome, .. } => match outcome {
            StatsOutcome::Released { stats: Some(s) } => format!(
                "released feature statistics: {} bytes",
                (2 * s.sum.len() + 1) * std::mem::size_of::<f64>()
            ),
            StatsOutcome::Released { stats: None } => "released no feature statistics (public scaler)".into(),
            StatsOutcome::Declined { reason } => format!("released nothing (statistics declined: {reason})"),
        },
        ToCoordinator::Update { outcome, .. } => match outcome {
            TrainOutcome::Trained { update } => {
                let bytes = std::mem::size_of_val(update.delta.as_slice());
                match &update.privacy {
                    Some(p) => format!(
                        "released a model update: {bytes} bytes; epsilon spent {:.4} of {:.4} ({:.4} remaining, delta {:e})",
                        p.epsilon,
                        p.budget,
                        (p.budget - p.epsilon).max(0.0),
                        p.delta
                    ),
                    None => format!("released a model update: {bytes} bytes (differential privacy off)"),
                }
            }
            TrainOutcome::Masked { vector, privacy, .. } => {
                let bytes = std::mem::size_of_val(vector.as_slice());
                match privacy {
                    Some(p) => format!(
                        "released a masked model update (secure aggregation): {bytes} bytes; epsilon spent {:.4} of \
                         {:.4} ({:.4} remaining, delta {:e})",
                        p.epsilon,
                        p.budget,
                        (p.budget - p.epsilon).max(0.0),
                        p.delta
                    ),
                    None => format!(
                        "released a masked model update (secure aggregation): {bytes} bytes (differential privacy off)"
                    ),
                }
            }
            TrainOutcome::Declined { reason } => format!("released nothing (training declined: {reason})"),
            TrainOutcome::Failed { reason } => format!("released nothing (training failed: {reason})"),
        },
        ToCoordinator::SecAgg { answer, .. } => match answer {
            SecAggAnswer::Keys { keys } if keys.signature.is_empty() => {
                "released its secure-aggregation public keys for the round (unsigned)".into()
            }
            SecAggAnswer::Keys { .. } => {
                "released its secure-aggregation public keys for the round, signed with its TLS identity"
                    .into()
            }
            SecAggAnswer::Shares { shares } => format!(
                "released encrypted key shares for {} neighbours (secure aggregation)",
                shares.ciphertexts.len()
            ),
            SecAggAnswer::Unmask { shares } => format!(
                "released unmasking shares: {} seed shares of survivors, {} mask-key shares of dropouts",
                shares.seed_shares.len(),
                shares.key_shares.len()
            ),
            SecAggAnswer::Declined { stage, reason } => {
                format!(
                    "released nothing (secure aggregation {} declined: {reason})",
                    stage.name()
                )
            }
        },
        ToCoordinator::Evaluated { outcome, .. } => match outcome {
            EvalOutcome::Evaluated { .. } => "released local evaluation metrics".into(),
            EvalOutcome::Declined { reason } => format!("released nothing (evaluation declined: {reason})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Ask;

    #[test]
    fn declines_release_nothing_and_say_why() {
        let ask = Ask {
            run: 1,
            round: 3,
            attempt: 0,
        };
        let declined = ToCoordinator::Update {
            ask,
            outcome: TrainOutcome::Declined {
                reason: "privacy budget spent".into(),
            },
        };
        assert_eq!(
            describe(&declined),
            "released nothing (training declined: privacy budget spent)"
        );
        let stats = ToCoordinator::Stats {
            ask,
            outcome: StatsOutcome::Released {
                stats: Some(medfed_models::data::scaling::MomentSums {
                    count: 10.0,
                    sum: vec![1.0; 30],
                    sum_sq: vec![1.0; 30],
                }),
            },
        };
        assert_eq!(describe(&stats), "released feature statistics: 488 bytes");
    }
}
