//! A hospital's part in secure aggregation: one `secagg::Client` per
//! attempt, created at setup and dropped (its secrets zeroised) when the
//! attempt ends, is replaced, or fails. What the coordinator asks is
//! checked against the attempt it belongs to; anything else is declined.

use std::sync::Arc;

use medfed_models::learner::LocalUpdate;
use medfed_models::secagg::{Client, KeySigner, KeyVerifier, MaskedInputRequest, RoundContext, Weighting};
use tracing::warn;

use crate::coordinator::StageKind;
use crate::messages::secure::masked_to_params;
use crate::messages::{Ask, SecAggAnswer, SecAggStep, TrainOutcome};

/// The hospital's node identity for signing its keys and checking its
/// peers' (mutual TLS); without it keys go unsigned.
#[derive(Clone)]
pub struct SecAggIdentity {
    pub signer: Arc<dyn KeySigner>,
    pub verifier: Arc<dyn KeyVerifier>,
}

struct Attempt {
    ask: Ask,
    client: Client,
    max_weight: u64,
    max_update_norm: Option<f64>,
}

/// The secure-aggregation side of one hospital.
pub struct SecureRounds {
    hospital: String,
    task: String,
    identity: Option<SecAggIdentity>,
    current: Option<Attempt>,
}

fn declined(stage: StageKind, reason: impl Into<String>) -> SecAggAnswer {
    SecAggAnswer::Declined {
        stage,
        reason: reason.into(),
    }
}

impl SecureRounds {
    pub fn new(hospital: &str, task: &str, identity: Option<SecAggIdentity>) -> Self {
        Self {
            hospital: hospital.to_string(),
            task: task.to_string(),
            identity,
            current: None,
        }
    }

    /// The attempt `ask` belongs to, if it is the current one.
    fn attempt(&mut self, ask: Ask) -> Option<&mut Attempt> {
        self.current.as_mut().filter(|a| a.ask == ask)
    }

    pub fn step(&mut self, ask: Ask, step: SecAggStep) -> SecAggAnswer {
        let stage = step.stage();
        let answer = self.try_step(ask, step);
        if let SecAggAnswer::Declined { reason, .. } = &answer {
            warn!(hospital = %self.hospital, round = ask.round, "secure aggregation {}: {reason}", stage.name());
        }
        if matches!(
            answer,
            SecAggAnswer::Declined { .. } | SecAggAnswer::Unmask { .. }
        ) {
            // The attempt is over for this hospital: its secrets go.
            self.current = None;
        }
        answer
    }

    fn try_step(&mut self, ask: Ask, step: SecAggStep) -> SecAggAnswer {
        let stage = step.stage();
        let mut rng = rand::rng();
        match step {
            SecAggStep::Setup {
                plan,
                max_weight,
                max_update_norm,
            } => {
                let ctx = RoundContext {
                    task: self.task.clone(),
                    run: ask.run,
                    round: ask.round,
                    attempt: ask.attempt,
                };
                let signer = self.identity.as_ref().map(|i| i.signer.as_ref());
                match Client::setup(&self.hospital, ctx, plan, &mut rng, signer) {
                    Ok((client, keys)) => {
                        self.current = Some(Attempt {
                            ask,
                            client,
                            max_weight,
                            max_update_norm,
                        });
                        SecAggAnswer::Keys { keys }
                    }
                    Err(e) => declined(stage, e.to_string()),
                }
            }
            SecAggStep::ShareKeys { request } => {
                let verifier = self.identity.as_ref().map(|i| i.verifier.clone());
                let Some(attempt) = self.attempt(ask) else {
                    return declined(stage, "no secure-aggregation setup for this round and attempt");
                };
                match attempt.client.share_keys(&request, verifier.as_deref(), &mut rng) {
                    Ok(shares) => SecAggAnswer::Shares { shares },
                    Err(e) => declined(stage, e.to_string()),
                }
            }
            SecAggStep::Unmask { request } => {
                let Some(attempt) = self.attempt(ask) else {
                    return declined(
                        stage,
                        "no secure-aggregation round to unmask for this round and attempt",
                    );
                };
                match attempt.client.unmask(&request) {
                    Ok(shares) => SecAggAnswer::Unmask { shares },
                    Err(e) => declined(stage, e.to_string()),
                }
            }
        }
    }

    /// Masked input, before training: take the shares sent to this
    /// hospital. An error (no setup, tampered shares, too few holders) is
    /// the reason to decline, before any privacy budget is spent.
    pub fn accept_shares(&mut self, ask: Ask, shares: &MaskedInputRequest) -> Result<(), String> {
        let accepted = match self.attempt(ask) {
            None => Err("no secure-aggregation setup for this round and attempt".to_string()),
            Some(attempt) => attempt.client.accept_shares(shares).map_err(|e| e.to_string()),
        };
        if accepted.is_err() {
            self.current = None;
        }
        accepted
    }

    /// The fewest hospitals the current attempt's sum will hold (see
    /// `Client::summed_with`), once shares were accepted.
    pub fn summed_with(&mut self, ask: Ask) -> Option<usize> {
        self.attempt(ask).map(|a| a.client.summed_with())
    }

    /// Masked input, after training: enforce the norm bound here (the
    /// coordinator cannot see the update), then quantise and mask it.
    pub fn mask(&mut self, ask: Ask, update: LocalUpdate) -> TrainOutcome {
        let masked = self.try_mask(ask, &update);
        match masked {
            Ok(vector) => TrainOutcome::Masked {
                vector,
                release: update.release,
                privacy: update.privacy,
            },
            Err(reason) => {
                self.current = None;
                warn!(hospital = %self.hospital, round = ask.round, "masked input not sent: {reason}");
                TrainOutcome::Declined { reason }
            }
        }
    }

    fn try_mask(&mut self, ask: Ask, update: &LocalUpdate) -> Result<medfed_models::Params, String> {
        let hospital = self.hospital.clone();
        let Some(attempt) = self.attempt(ask) else {
            return Err("no secure-aggregation round for this masked input".into());
        };
        if let Some(bound) = attempt.max_update_norm {
            let norm = update
                .delta
                .as_slice()
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            if norm.is_nan() || norm > bound {
                return Err(format!(
                    "its update's L2 norm {norm:.4} is above the task's bound {bound} (checked by the hospital \
                     under secure aggregation); not sent"
                ));
            }
        }
        let weighting = Weighting::Counted {
            count: update.num_examples as u64,
            max_weight: attempt.max_weight,
        };
        let masked = attempt
            .client
            .mask(update.delta.as_slice(), weighting, &mut rand::rng())
            .map_err(|e| e.to_string())?;
        if masked.clipped > 0 {
            warn!(
                hospital = %hospital,
                round = ask.round,
                "{} of {} update coordinates were outside the clipping range and were clipped \
                 (secure_aggregation.clipping_range may be too small)",
                masked.clipped,
                update.delta.as_slice().len()
            );
        }
        Ok(masked_to_params(&masked.vector))
    }
}
