//! The live picture the panel and `/api/state` show: what each task and
//! hospital is doing, built only from `FederationEvent`s by a pure `apply`.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use medfed_actors::coordinator::fsm::Phase;
use medfed_actors::FederationEvent;

use crate::output::MetricsJson;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskView {
    pub kind: String,
    /// Phase name: idle, assembling, preparing, securing (secure
    /// aggregation's setup and share keys), training, unmasking,
    /// aggregating, evaluating, finished, stopped, aborted.
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
    /// Rounds aggregated in the current (or last) run.
    pub round: u32,
    /// Rounds the current (or last) run asked for.
    pub target_rounds: u32,
    /// The configured rounds, used when a run does not ask for a number.
    pub default_rounds: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_metrics: Option<MetricsJson>,
    /// When the current round asked for updates (Unix seconds).
    #[serde(skip)]
    pub round_started_at: Option<f64>,
}

/// A DP hospital's mechanism, as it announced it when it joined: public
/// parameters, from which anyone can compute what a run would cost.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MechanismView {
    pub mechanism: String,
    pub noise_multiplier: f64,
    pub delta: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_per_round: Option<u64>,
    /// Distributed DP: the noise multiplier of the hospital's own share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_share: Option<f64>,
}

/// One point of a hospital's epsilon over rounds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EpsilonPoint {
    pub run: String,
    pub task: String,
    pub round: u32,
    pub epsilon: f64,
}

/// Points kept per hospital (the panel's privacy chart).
pub const EPSILON_HISTORY: usize = 500;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HospitalView {
    pub name: String,
    pub task: String,
    pub kind: String,
    /// Where the hospital runs ("in-process" in `medfed serve`).
    pub node: String,
    /// online, offline or refused.
    pub status: String,
    /// Unix seconds of the last event from or about this hospital.
    pub last_seen: Option<f64>,
    pub samples: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_spent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_budget: Option<f64>,
    /// Distributed DP: epsilon against the coordinator colluding with every
    /// other hospital (`epsilon_spent` is against the coordinator alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_collusion: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<MechanismView>,
    /// What it is doing now ("training round 3"), between a request and its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
    /// Its updates since it joined, by outcome.
    pub accepted: u64,
    pub declined: u64,
    pub rejected: u64,
    /// Seconds from the round's request to its last answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_seconds: Option<f64>,
    /// The hospital's own training loss of its last accepted update:
    /// NOT private (withheld under DP, where this stays empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_train_loss: Option<f64>,
    /// The hospital's last update: accepted, rejected: ..., declined: ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LiveView {
    pub run_id: Option<String>,
    pub run_active: bool,
    pub tasks: BTreeMap<String, TaskView>,
    pub hospitals: BTreeMap<String, HospitalView>,
    /// Per DP hospital, its epsilon after each accepted round (the latest
    /// `EPSILON_HISTORY`), for the privacy view.
    pub epsilon_history: BTreeMap<String, VecDeque<EpsilonPoint>>,
}

impl LiveView {
    /// Record a run's target rounds per task before its events arrive.
    pub fn set_targets(&mut self, tasks: &[String], rounds: Option<u32>) {
        for name in tasks {
            if let Some(t) = self.tasks.get_mut(name) {
                t.target_rounds = rounds.unwrap_or(t.default_rounds);
            }
        }
    }

    /// Fold one event into the view; `now` is Unix seconds.
    pub fn apply(&mut self, event: &FederationEvent, now: f64) {
        use FederationEvent as E;
        match event {
            E::RunStarted {
                run_id,
                tasks,
                resumed_after,
                ..
            } => {
                self.run_id = Some(run_id.clone());
                self.run_active = true;
                for name in tasks {
                    if let Some(t) = self.tasks.get_mut(name) {
                        // A resumed run shows the rounds it had committed.
                        t.round = resumed_after.get(name).copied().unwrap_or(0);
                        t.last_metrics = None;
                        t.abort_reason = None;
                        if t.target_rounds == 0 {
                            t.target_rounds = t.default_rounds;
                        }
                    }
                }
            }
            E::RunEnded { .. } => {
                self.run_active = false;
                for h in self.hospitals.values_mut() {
                    h.activity = None;
                }
            }
            E::HospitalJoined {
                task,
                hospital,
                kind,
                samples,
                node,
                privacy,
                ..
            } => {
                let h = self
                    .hospitals
                    .entry(hospital.clone())
                    .or_insert_with(|| HospitalView {
                        epsilon_collusion: None,
                        name: hospital.clone(),
                        task: task.clone(),
                        kind: kind.clone(),
                        node: node.clone(),
                        status: String::new(),
                        last_seen: None,
                        samples: *samples,
                        epsilon_spent: None,
                        epsilon_budget: None,
                        mechanism: None,
                        activity: None,
                        accepted: 0,
                        declined: 0,
                        rejected: 0,
                        update_seconds: None,
                        last_train_loss: None,
                        last_update: None,
                    });
                h.status = "online".into();
                h.node = node.clone();
                h.samples = *samples;
                h.last_seen = Some(now);
                h.activity = None;
                if let Some(spent) = privacy {
                    h.epsilon_spent = Some(spent.epsilon);
                    h.epsilon_budget = Some(spent.budget);
                    h.epsilon_collusion = spent.epsilon_collusion;
                    h.mechanism = Some(MechanismView {
                        mechanism: spent.mechanism.clone(),
                        noise_multiplier: spent.noise_multiplier,
                        delta: spent.delta,
                        sampling_rate: spent.sampling_rate,
                        steps_per_round: spent.steps_per_round,
                        noise_share: spent.noise_share,
                    });
                }
            }
            E::HospitalLeft { hospital, reason, .. } => self.hospital(hospital, now, |h| {
                h.status = "offline".into();
                h.activity = None;
                h.last_update = Some(format!("left: {reason}"));
            }),
            E::HospitalRefused { hospital, reason, .. } => self.hospital(hospital, now, |h| {
                h.status = "refused".into();
                h.last_update = Some(format!("refused: {reason}"));
            }),
            E::PhaseChanged { task, phase } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.phase = phase.name().into();
                    if let Phase::Aborted { reason } = phase {
                        t.abort_reason = Some(reason.clone());
                    }
                }
            }
            E::UpdateAccepted {
                task,
                round,
                hospital,
                train_loss,
                epsilon_spent,
                epsilon_collusion,
                ..
            } => {
                self.answer(task, hospital, now, |h| {
                    h.last_train_loss = *train_loss;
                    if epsilon_spent.is_some() {
                        h.epsilon_spent = *epsilon_spent;
                    }
                    if epsilon_collusion.is_some() {
                        h.epsilon_collusion = *epsilon_collusion;
                    }
                    h.accepted += 1;
                    h.last_update = Some(format!("round {round}: accepted"));
                });
                if let (Some(epsilon), Some(run)) = (epsilon_spent, &self.run_id) {
                    let points = self.epsilon_history.entry(hospital.clone()).or_default();
                    points.push_back(EpsilonPoint {
                        run: run.clone(),
                        task: task.clone(),
                        round: *round,
                        epsilon: *epsilon,
                    });
                    while points.len() > EPSILON_HISTORY {
                        points.pop_front();
                    }
                }
            }
            E::UpdateRejected {
                task,
                round,
                hospital,
                reason,
                ..
            } => self.answer(task, hospital, now, |h| {
                h.rejected += 1;
                h.last_update = Some(format!("round {round}: rejected: {reason}"));
            }),
            E::UpdateDeclined {
                task,
                round,
                hospital,
                reason,
                ..
            } => self.answer(task, hospital, now, |h| {
                h.declined += 1;
                h.last_update = Some(format!("round {round}: declined: {reason}"));
            }),
            E::RoundStarted {
                task,
                round,
                participants,
                ..
            } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.round_started_at = Some(now);
                }
                // Busy, not silent: a long local round (imaging) shows as such.
                for name in participants {
                    if let Some(h) = self.hospitals.get_mut(name) {
                        h.activity = Some(format!("training round {round}"));
                    }
                }
            }
            E::RoundAggregated {
                task, round, metrics, ..
            } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.round = *round;
                    t.last_metrics = Some(metrics.into());
                }
            }
            E::HospitalEvaluated {
                round,
                hospital,
                metrics: Some(m),
                ..
            } => self.hospital(hospital, now, |h| {
                h.last_update = Some(format!("round {round}: local test accuracy {:.4}", m.accuracy));
            }),
            E::HospitalEvaluated { .. }
            | E::MessageDropped { .. }
            | E::RoundBelowQuorum { .. }
            | E::StartingWithout { .. }
            | E::TaskStopped { .. }
            | E::TaskFinished { .. }
            | E::TaskAborted { .. } => {}
        }
    }

    /// Take up the epsilon history a store kept (oldest first), so that the
    /// privacy chart shows earlier runs after a restart.
    pub fn seed_epsilon_history(&mut self, points: impl IntoIterator<Item = (String, EpsilonPoint)>) {
        for (hospital, point) in points {
            let kept = self.epsilon_history.entry(hospital).or_default();
            kept.push_back(point);
            while kept.len() > EPSILON_HISTORY {
                kept.pop_front();
            }
        }
    }

    /// A hospital answered `task`'s training request.
    fn answer(&mut self, task: &str, hospital: &str, now: f64, update: impl FnOnce(&mut HospitalView)) {
        let since = self
            .tasks
            .get(task)
            .and_then(|t| t.round_started_at)
            .map(|started| (now - started).max(0.0));
        self.hospital(hospital, now, |h| {
            h.answered(since);
            update(h);
        });
    }

    fn hospital(&mut self, name: &str, now: f64, update: impl FnOnce(&mut HospitalView)) {
        if let Some(h) = self.hospitals.get_mut(name) {
            h.last_seen = Some(now);
            update(h);
        }
    }
}

impl HospitalView {
    fn answered(&mut self, since_request: Option<f64>) {
        self.activity = None;
        // A DP hospital's training time grows with its record count, which
        // DP noises or withholds: its answer time is not shown either.
        if since_request.is_some() && self.mechanism.is_none() {
            self.update_seconds = since_request;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medfed_models::metrics::Metrics;

    fn view() -> LiveView {
        let mut v = LiveView::default();
        v.tasks.insert(
            "t".into(),
            TaskView {
                kind: "tabular".into(),
                phase: "idle".into(),
                abort_reason: None,
                round: 0,
                target_rounds: 0,
                default_rounds: 10,
                last_metrics: None,
                round_started_at: None,
            },
        );
        v
    }

    fn metrics(accuracy: f64) -> Metrics {
        Metrics {
            count: 10,
            accuracy,
            precision: 1.0,
            recall: 0.8,
            f1: 0.89,
            auc: Some(0.95),
            loss: 0.2,
            confusion: Default::default(),
        }
    }

    /// A DP hospital's answer time would track its record count, which DP
    /// noises or withholds: it is not kept.
    #[test]
    fn a_private_hospitals_answer_time_is_not_kept() {
        let mut v = view();
        let spent = medfed_models::learner::PrivacySpent {
            mechanism: "dp-sgd".into(),
            noise_multiplier: 1.1,
            epsilon: 0.5,
            epsilon_collusion: None,
            budget: 3.0,
            delta: 1e-5,
            sampling_rate: Some(0.2),
            steps_per_round: Some(10),
            noise_share: None,
        };
        v.apply(
            &FederationEvent::HospitalJoined {
                task: "t".into(),
                hospital: "t-1".into(),
                kind: "tabular".into(),
                samples: 90,
                attack: None,
                node: "in-process".into(),
                privacy: Some(spent),
            },
            1.0,
        );
        v.apply(
            &FederationEvent::RoundStarted {
                task: "t".into(),
                round: 1,
                attempt: 0,
                participants: vec!["t-1".into()],
            },
            2.0,
        );
        v.apply(
            &FederationEvent::UpdateAccepted {
                task: "t".into(),
                round: 1,
                hospital: "t-1".into(),
                num_examples: 90,
                train_loss: None,
                epsilon_spent: Some(0.9),
                epsilon_collusion: None,
            },
            3.0,
        );
        let h = &v.hospitals["t-1"];
        assert_eq!(
            (h.accepted, h.update_seconds, h.epsilon_spent),
            (1, None, Some(0.9))
        );
        assert_eq!(h.mechanism.as_ref().unwrap().steps_per_round, Some(10));
    }

    #[test]
    fn a_run_moves_phase_round_and_hospital_status() {
        let mut v = view();
        v.apply(
            &FederationEvent::HospitalJoined {
                task: "t".into(),
                hospital: "t-1".into(),
                kind: "tabular".into(),
                samples: 90,
                attack: None,
                node: "in-process".into(),
                privacy: None,
            },
            1.0,
        );
        v.set_targets(&["t".into()], Some(5));
        v.apply(
            &FederationEvent::RunStarted {
                run_id: "r".into(),
                tasks: vec!["t".into()],
                resumed_after: Default::default(),
                excluded: Vec::new(),
                settings: Default::default(),
            },
            2.0,
        );
        assert!(v.run_active);
        assert_eq!(v.tasks["t"].target_rounds, 5);
        v.apply(
            &FederationEvent::RoundStarted {
                task: "t".into(),
                round: 1,
                attempt: 0,
                participants: vec!["t-1".into()],
            },
            2.5,
        );
        assert_eq!(v.hospitals["t-1"].activity.as_deref(), Some("training round 1"));
        v.apply(
            &FederationEvent::PhaseChanged {
                task: "t".into(),
                phase: Phase::Collecting {
                    round: 1,
                    stage: medfed_actors::coordinator::StageKind::Train,
                    attempt: 0,
                },
            },
            3.0,
        );
        v.apply(
            &FederationEvent::UpdateAccepted {
                task: "t".into(),
                round: 1,
                hospital: "t-1".into(),
                num_examples: 90,
                train_loss: Some(0.3),
                epsilon_spent: Some(0.5),
                epsilon_collusion: None,
            },
            4.0,
        );
        v.apply(
            &FederationEvent::RoundAggregated {
                task: "t".into(),
                round: 1,
                participants: 1,
                metrics: metrics(0.9),
                seconds: 0.1,
            },
            5.0,
        );
        let t = &v.tasks["t"];
        assert_eq!((t.phase.as_str(), t.round), ("training", 1));
        assert_eq!(t.last_metrics.as_ref().unwrap().accuracy, 0.9);
        let h = &v.hospitals["t-1"];
        assert_eq!(
            (h.status.as_str(), h.samples, h.last_seen),
            ("online", 90, Some(4.0))
        );
        assert_eq!((h.epsilon_spent, h.last_train_loss), (Some(0.5), Some(0.3)));
        assert_eq!((h.accepted, h.declined, h.rejected), (1, 0, 0));
        assert_eq!((h.activity.as_deref(), h.update_seconds), (None, Some(1.5)));
        let points = &v.epsilon_history["t-1"];
        assert_eq!((points.len(), points[0].round, points[0].epsilon), (1, 1, 0.5));
        v.apply(
            &FederationEvent::HospitalLeft {
                task: "t".into(),
                hospital: "t-1".into(),
                reason: "stopped".into(),
            },
            6.0,
        );
        assert_eq!(v.hospitals["t-1"].status, "offline");
        v.apply(
            &FederationEvent::PhaseChanged {
                task: "t".into(),
                phase: Phase::Aborted {
                    reason: "below quorum".into(),
                },
            },
            7.0,
        );
        v.apply(
            &FederationEvent::RunEnded {
                run_id: "r".into(),
                outcome: medfed_actors::RunOutcome::Aborted,
            },
            8.0,
        );
        assert!(!v.run_active);
        assert_eq!(v.tasks["t"].abort_reason.as_deref(), Some("below quorum"));
        // A new run without a number of rounds takes the configured default.
        v.set_targets(&["t".into()], None);
        assert_eq!(v.tasks["t"].target_rounds, 10);
    }
}
