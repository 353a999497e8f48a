//! What a federation's events become in MLflow (a pure translation), and
//! the bounded queue that holds it while MLflow is slow or away.
//!
//! One MLflow run per task per federation run. Metrics have `step = round`:
//! the global model's held-out metrics, the round's participants and
//! seconds, and per hospital only what it released (`samples`,
//! `epsilon_spent`; with DP off its local `accuracy` and `loss`).

use std::collections::VecDeque;

use medfed_actors::{FederationEvent, TaskRunSettings};

use super::batch::{Metric, Param, Tag};
use super::client::RunStatus;

/// One thing to tell MLflow, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    StartRun {
        task: String,
        medfed_run: String,
        params: Vec<Param>,
        tags: Vec<Tag>,
    },
    Log {
        task: String,
        metrics: Vec<Metric>,
    },
    EndRun {
        task: String,
        status: RunStatus,
    },
    /// The task's final model: an MLflow 3 logged model of the run with its
    /// files, registered as a version of `<prefix><task>`.
    LogModel {
        task: String,
        medfed_run: String,
        round: u32,
        /// Held-out accuracy of the model (decides the `champion` alias).
        accuracy: f64,
        safetensors: std::sync::Arc<Vec<u8>>,
        /// The task's report (JSON), as `model-report.json`.
        report: std::sync::Arc<Vec<u8>>,
    },
}

impl Op {
    /// Only metrics may be dropped when the queue is full: a run that is
    /// never started or ended would leave MLflow wrong, not just thinner.
    fn droppable(&self) -> bool {
        matches!(self, Op::Log { .. })
    }
}

pub(crate) fn tag(key: &str, value: &str) -> Tag {
    Tag {
        key: key.into(),
        value: value.into(),
    }
}

/// A task's params for a run: the configuration's, with the run's own settings.
pub type ParamsFn = dyn Fn(&str, Option<&TaskRunSettings>) -> Vec<Param> + Send + Sync;

/// The MLflow calls `event` leads to. `params(task, settings)` gives a task's params
/// for the run (from the configuration and the run's own settings).
pub fn ops_for(event: &FederationEvent, now_ms: i64, params: &ParamsFn) -> Vec<Op> {
    use FederationEvent as E;
    let metric = |key: String, value: f64, step: u32| Metric {
        key,
        value,
        timestamp: now_ms,
        step: i64::from(step),
    };
    match event {
        E::RunStarted {
            run_id,
            tasks,
            settings,
            ..
        } => tasks
            .iter()
            .map(|task| Op::StartRun {
                task: task.clone(),
                medfed_run: run_id.clone(),
                params: params(task, settings.get(task)),
                tags: vec![
                    tag("medfed.run_id", run_id),
                    tag("medfed.task", task),
                    tag("mlflow.runName", &format!("{run_id} {task}")),
                ],
            })
            .collect(),
        E::RoundAggregated {
            task,
            round,
            participants,
            metrics: m,
            seconds,
        } => {
            let mut metrics = vec![
                metric("accuracy".into(), m.accuracy, *round),
                metric("precision".into(), m.precision, *round),
                metric("recall".into(), m.recall, *round),
                metric("f1".into(), m.f1, *round),
                metric("loss".into(), m.loss, *round),
                metric("participants".into(), *participants as f64, *round),
                metric("round_seconds".into(), *seconds, *round),
            ];
            if let Some(auc) = m.auc {
                metrics.push(metric("auc".into(), auc, *round));
            }
            vec![Op::Log {
                task: task.clone(),
                metrics,
            }]
        }
        E::UpdateAccepted {
            task,
            round,
            hospital,
            num_examples,
            epsilon_spent,
            ..
        } => {
            let mut metrics = vec![metric(
                format!("hospital.{hospital}.samples"),
                *num_examples as f64,
                *round,
            )];
            if let Some(eps) = epsilon_spent {
                metrics.push(metric(format!("hospital.{hospital}.epsilon_spent"), *eps, *round));
            }
            vec![Op::Log {
                task: task.clone(),
                metrics,
            }]
        }
        // Present only when the hospital released them (DP off).
        E::HospitalEvaluated {
            task,
            round,
            hospital,
            metrics: Some(m),
            ..
        } => vec![Op::Log {
            task: task.clone(),
            metrics: vec![
                metric(format!("hospital.{hospital}.accuracy"), m.accuracy, *round),
                metric(format!("hospital.{hospital}.loss"), m.loss, *round),
            ],
        }],
        E::TaskFinished { task, .. } => vec![Op::EndRun {
            task: task.clone(),
            status: RunStatus::Finished,
        }],
        E::TaskStopped { task, .. } => vec![Op::EndRun {
            task: task.clone(),
            status: RunStatus::Killed,
        }],
        E::TaskAborted { task, .. } => vec![Op::EndRun {
            task: task.clone(),
            status: RunStatus::Failed,
        }],
        _ => Vec::new(),
    }
}

/// The calls waiting for MLflow, at most `limit`: past it the oldest
/// metrics are dropped and counted.
#[derive(Debug)]
pub struct Queue {
    ops: VecDeque<Op>,
    limit: usize,
    pub dropped: u64,
}

impl Queue {
    pub fn new(limit: usize) -> Self {
        Self {
            ops: VecDeque::new(),
            limit: limit.max(1),
            dropped: 0,
        }
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push_back(op);
        while self.ops.len() > self.limit {
            match self.ops.iter().position(Op::droppable) {
                Some(i) => {
                    self.ops.remove(i);
                    self.dropped += 1;
                }
                // Only starts and ends: keep them all (they are few).
                None => break,
            }
        }
    }

    pub fn front(&self) -> Option<&Op> {
        self.ops.front()
    }

    /// The next call to make and how many queued ops it stands for:
    /// consecutive metrics of one task go out as one batch (the batching
    /// splits it again where MLflow's limits need).
    pub fn next_call(&self) -> Option<(Op, usize)> {
        let first = self.ops.front()?.clone();
        let Op::Log { task, mut metrics } = first else {
            return Some((first, 1));
        };
        let mut taken = 1;
        for op in self.ops.iter().skip(1) {
            match op {
                Op::Log {
                    task: t,
                    metrics: more,
                } if *t == task && metrics.len() + more.len() <= 5_000 => {
                    metrics.extend(more.iter().cloned());
                    taken += 1;
                }
                _ => break,
            }
        }
        Some((Op::Log { task, metrics }, taken))
    }

    /// Remove the `n` ops a call stood for.
    pub fn done(&mut self, n: usize) {
        for _ in 0..n {
            self.ops.pop_front();
        }
    }

    pub fn pop(&mut self) -> Option<Op> {
        self.ops.pop_front()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medfed_models::metrics::Metrics;

    fn params(task: &str, _: Option<&TaskRunSettings>) -> Vec<Param> {
        vec![Param {
            key: "task".into(),
            value: task.into(),
        }]
    }

    fn metrics() -> Metrics {
        Metrics {
            count: 100,
            accuracy: 0.9,
            precision: 0.8,
            recall: 0.7,
            f1: 0.75,
            auc: Some(0.95),
            loss: 0.3,
            confusion: Default::default(),
        }
    }

    #[test]
    fn a_round_and_each_hospitals_releases_become_metrics_at_its_step() {
        let ops = ops_for(
            &FederationEvent::RoundAggregated {
                task: "bc".into(),
                round: 3,
                participants: 5,
                metrics: metrics(),
                seconds: 0.25,
            },
            7,
            &params,
        );
        let [Op::Log { task, metrics }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(task, "bc");
        let keys: Vec<&str> = metrics.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "accuracy",
                "precision",
                "recall",
                "f1",
                "loss",
                "participants",
                "round_seconds",
                "auc"
            ]
        );
        assert!(metrics.iter().all(|m| m.step == 3 && m.timestamp == 7));
        // Under DP a hospital releases no local metrics: nothing to log.
        let declined = FederationEvent::HospitalEvaluated {
            task: "bc".into(),
            round: 3,
            hospital: "bc-1".into(),
            metrics: None,
            reason: Some("withheld under differential privacy".into()),
        };
        assert!(ops_for(&declined, 7, &params).is_empty());
        let accepted = FederationEvent::UpdateAccepted {
            task: "bc".into(),
            round: 3,
            hospital: "bc-1".into(),
            num_examples: 91,
            train_loss: None,
            epsilon_spent: Some(1.5),
            epsilon_collusion: None,
        };
        let ops = ops_for(&accepted, 7, &params);
        let [Op::Log { metrics, .. }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(metrics[0].key, "hospital.bc-1.samples");
        assert_eq!(
            (metrics[1].key.as_str(), metrics[1].value),
            ("hospital.bc-1.epsilon_spent", 1.5)
        );
    }

    #[test]
    fn a_run_starts_one_mlflow_run_per_task_and_each_ends_with_its_outcome() {
        let started = FederationEvent::RunStarted {
            run_id: "run-1".into(),
            tasks: vec!["a".into(), "b".into()],
            resumed_after: Default::default(),
            excluded: Vec::new(),
            settings: Default::default(),
        };
        let ops = ops_for(&started, 0, &params);
        assert_eq!(ops.len(), 2);
        let Op::StartRun {
            task,
            params: logged,
            tags,
            ..
        } = &ops[1]
        else {
            panic!()
        };
        assert_eq!((task.as_str(), logged[0].value.as_str()), ("b", "b"));
        assert!(tags.contains(&tag("medfed.run_id", "run-1")));
        for (event, status) in [
            (
                FederationEvent::TaskFinished {
                    task: "a".into(),
                    rounds: 5,
                },
                RunStatus::Finished,
            ),
            (
                FederationEvent::TaskStopped {
                    task: "a".into(),
                    rounds: 2,
                },
                RunStatus::Killed,
            ),
            (
                FederationEvent::TaskAborted {
                    task: "a".into(),
                    reason: "below quorum".into(),
                },
                RunStatus::Failed,
            ),
        ] {
            assert_eq!(
                ops_for(&event, 0, &params),
                vec![Op::EndRun {
                    task: "a".into(),
                    status
                }]
            );
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_metrics_never_a_start_or_an_end() {
        let log = |i: u32| Op::Log {
            task: "t".into(),
            metrics: vec![Metric {
                key: "accuracy".into(),
                value: f64::from(i),
                timestamp: 0,
                step: i64::from(i),
            }],
        };
        let start = Op::StartRun {
            task: "t".into(),
            medfed_run: "r".into(),
            params: Vec::new(),
            tags: Vec::new(),
        };
        let mut q = Queue::new(3);
        q.push(start.clone());
        for i in 1..=5 {
            q.push(log(i));
        }
        assert_eq!((q.len(), q.dropped), (3, 3));
        assert_eq!(q.pop(), Some(start));
        // The two metrics left go out as one call.
        let (call, n) = q.next_call().unwrap();
        let Op::Log { metrics, .. } = call else { panic!() };
        assert_eq!((n, metrics.len()), (2, 2));
        q.done(n);
        assert!(q.is_empty());
    }
}
