//! The run lifecycle and admission, decided by the pure core: no actors.

use std::time::Duration;

use ractor::ActorId;

use medfed_models::aggregate::{
    FedAvg, FedOpt, FedOptConfig, FedOptRule, Strategy, UpdateCheck, WeightedDelta,
};
use medfed_models::learner::{Evaluator, GlobalModel, LocalUpdate, Release, TrainPlan};
use medfed_models::metrics::{binary_metrics, Metrics};
use medfed_models::Params;

use super::*;
use crate::coordinator::fsm::FsmConfig;
use crate::coordinator::stage::Protocol;
use crate::coordinator::task::{run_aggregation, Aggregated, Scaling, TaskSetup};
use crate::events::RunOutcome;

struct FixedEvaluator;

impl Evaluator for FixedEvaluator {
    fn init_params(&self) -> Params {
        Params::single("w", vec![0.0; 3]).unwrap()
    }
    fn evaluate(&mut self, _: &GlobalModel) -> medfed_models::error::Result<Metrics> {
        Ok(binary_metrics(&[0.9, 0.1], &[true, false]))
    }
}

fn setup(name: &str) -> TaskSetup {
    TaskSetup {
        name: name.into(),
        fsm: FsmConfig {
            rounds: 1,
            expected_hospitals: 2,
            assemble_timeout: Duration::from_secs(60),
            protocol: Protocol::federated(false, 2, 0, Duration::from_secs(30)),
        },
        plan: TrainPlan {
            round: 0,
            attempt: 0,
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 1,
            proximal_mu: 0.0,
            privacy: None,
        },
        check: UpdateCheck {
            max_norm: Some(10.0),
            max_examples: Some(1_000_000),
        },
        max_hospitals: None,
        evaluator: Box::new(FixedEvaluator),
        strategy: Box::new(FedAvg),
        scaling: Scaling::None,
        checkpoint_dir: None,
        held_out: Some("113 examples, crc32 00000001".into()),
        secure: None,
        features: Some(vec!["x0".into(), "x1".into()]),
        expected_names: vec!["a".into(), "b".into()],
    }
}

fn actor(n: u64) -> ActorId {
    ActorId::Local(n)
}

fn info(name: &str, task: &str) -> HospitalInfo {
    HospitalInfo {
        name: name.into(),
        task: task.into(),
        kind: "tabular".into(),
        samples: 10,
        node: "in-process".into(),
        held_out: None,
        attack: None,
        privacy: None,
        features: None,
    }
}

fn hello(core: &mut Core, n: u64, name: &str, task: &str) -> Vec<Output> {
    core.handle(
        Duration::ZERO,
        Input::Hello {
            actor: actor(n),
            info: info(name, task),
        },
    )
}

fn events(out: &[Output]) -> Vec<&FederationEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Publish(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn sent(out: &[Output]) -> Vec<(ActorId, &ToHospital)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, message } => Some((*to, message)),
            _ => None,
        })
        .collect()
}

fn refusal(out: &[Output]) -> Option<String> {
    sent(out).into_iter().find_map(|(_, m)| match m {
        ToHospital::Refused { reason } => Some(reason.clone()),
        _ => None,
    })
}

/// An update answering round 1, attempt 0 of run 1 (the first run's generation).
fn update(value: f32) -> ToCoordinator {
    update_of_run(1, value)
}

fn update_of_run(run: u64, value: f32) -> ToCoordinator {
    ToCoordinator::Update {
        ask: Ask {
            run,
            round: 1,
            attempt: 0,
        },
        outcome: TrainOutcome::Trained {
            update: LocalUpdate {
                delta: Params::single("w", vec![value; 3]).unwrap(),
                num_examples: 10,
                train_loss: Some(0.5),
                release: Release::NonPrivate,
                privacy: None,
            },
        },
    }
}

/// The aggregation job among a step's outputs, if a training stage closed.
fn aggregate_job(out: Vec<Output>) -> Option<AggregateJob> {
    out.into_iter().find_map(|o| match o {
        Output::Aggregate(job) => Some(*job),
        _ => None,
    })
}

/// Hospitals "a" and "b" join, run-1 starts, both send round 1's update
/// (1.0 and 3.0): the stage closes and this is its aggregation job.
fn first_round_closed(core: &mut Core) -> AggregateJob {
    hello(core, 1, "a", "t");
    hello(core, 2, "b", "t");
    start(core, "run-1").0.unwrap();
    core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(1),
            message: update(1.0),
        },
    );
    let out = core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(2),
            message: update(3.0),
        },
    );
    aggregate_job(out).expect("the closed stage is aggregated")
}

fn start(core: &mut Core, id: &str) -> (Result<String, StartRefused>, Vec<Output>) {
    core.start_run(Duration::ZERO, RunRequest::default(), id.into())
}

#[test]
fn admission_refuses_taken_names_unknown_tasks_and_other_held_out_sets() {
    let mut core = Core::new(vec![setup("t")]);
    assert!(refusal(&hello(&mut core, 1, "h1", "t")).is_none());
    // The same actor saying hello again (a reconnect) is welcome.
    assert!(refusal(&hello(&mut core, 1, "h1", "t")).is_none());
    let out = hello(&mut core, 2, "h1", "t");
    assert_eq!(
        refusal(&out).as_deref(),
        Some("hospital name 'h1' is already in use")
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Forget(a) if *a == actor(2))));
    let out = hello(&mut core, 3, "h3", "other");
    assert!(refusal(&out)
        .unwrap()
        .contains("task 'other' is not served by this coordinator (tasks: t)"));
    let mut split = info("h4", "t");
    split.held_out = Some("113 examples, crc32 0badf00d".into());
    let out = core.handle(
        Duration::ZERO,
        Input::Hello {
            actor: actor(4),
            info: split,
        },
    );
    assert!(refusal(&out).unwrap().contains("different held-out set"));
    // Other model inputs than the task's are refused, naming the columns;
    // the same ones are welcome.
    for (n, features, expected) in [
        (
            5,
            vec!["x0", "x2"],
            Some(
                "its data lacks the feature columns x1; has feature columns the federation does not use: x2",
            ),
        ),
        (
            6,
            vec!["x1", "x0"],
            Some("its data has the federation's features in another order (x1, x0)"),
        ),
        (7, vec!["x0", "x1"], None),
    ] {
        let mut other = info(&format!("h{n}"), "t");
        other.features = Some(features.iter().map(|f| f.to_string()).collect());
        let out = core.handle(
            Duration::ZERO,
            Input::Hello {
                actor: actor(n),
                info: other,
            },
        );
        match expected {
            Some(reason) => assert!(refusal(&out).unwrap().starts_with(reason), "{:?}", refusal(&out)),
            None => assert!(refusal(&out).is_none()),
        }
    }
    assert_eq!(core.report().tasks["t"].hospitals, 2, "h1 and h7");
    // Once gone, the name is free again.
    core.handle(Duration::ZERO, Input::Left { actor: actor(1) });
    assert!(refusal(&hello(&mut core, 2, "h1", "t")).is_none());
    assert_eq!(core.report().tasks["t"].departures, 1);
}

#[test]
fn hellos_with_unsafe_names_or_from_revoked_hospitals_are_refused_and_published_escaped() {
    let mut core = Core::new(vec![setup("t")]).deny(["revoked-1".to_string()]);
    let evil = "<img src=x onerror=alert(1)>\nINFO forged line";
    let out = hello(&mut core, 1, evil, "t");
    let reason = refusal(&out).unwrap();
    assert!(
        reason.contains("is not allowed: use 1 to 64 characters"),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "{reason}");
    let published = out.iter().find_map(|o| match o {
        Output::Publish(FederationEvent::HospitalRefused { hospital, .. }) => Some(hospital.clone()),
        _ => None,
    });
    assert_eq!(
        published.as_deref(),
        Some("\"<img src=x onerror=alert(1)>\\nINFO forged line\"")
    );
    // An unknown task name is published escaped too.
    let out = hello(&mut core, 2, "h2", "t\u{1b}[31m");
    assert!(out.iter().any(|o| matches!(o,
        Output::Publish(FederationEvent::HospitalRefused { task, .. }) if task == "t\\u{1b}[31m")));
    let out = hello(&mut core, 3, "revoked-1", "t");
    assert!(refusal(&out).unwrap().contains("deny list"));
    assert_eq!(core.report().tasks["t"].hospitals, 0);
}

#[test]
fn a_run_from_start_to_end_with_payloads_in_the_outputs() {
    let mut core = Core::new(vec![setup("t")]);
    hello(&mut core, 1, "a", "t");
    let (started, out) = start(&mut core, "run-1");
    assert_eq!(started.as_deref(), Ok("run-1"));
    // Waiting for the second expected hospital: nothing asked yet.
    assert!(sent(&out).is_empty());
    let out = hello(&mut core, 2, "b", "t");
    let asked = sent(&out);
    assert_eq!(asked.len(), 2);
    assert!(asked.iter().all(|(_, m)| matches!(
        m,
        ToHospital::Train {
            ask: Ask {
                run: 1,
                round: 1,
                attempt: 0
            },
            ..
        }
    )));
    // A second start is refused while the run is active.
    assert_eq!(
        start(&mut core, "run-2").0,
        Err(StartRefused::RunActive("run-1".into()))
    );
    core.handle(
        Duration::from_millis(5),
        Input::Message {
            actor: actor(1),
            message: update(1.0),
        },
    );
    let out = core.handle(
        Duration::from_millis(9),
        Input::Message {
            actor: actor(2),
            message: update(3.0),
        },
    );
    let job = aggregate_job(out).expect("the closed stage is aggregated");
    assert_eq!((job.round, job.generation, job.updates.len()), (1, 1, 2));
    let result = run_aggregation(job);
    assert_eq!(result.as_ref().unwrap().params.as_slice(), &[2.0, 2.0, 2.0]);
    let out = core.handle(
        Duration::from_millis(20),
        Input::Aggregated {
            task: "t".into(),
            generation: 1,
            round: 1,
            result,
        },
    );
    assert_eq!(core.report().tasks["t"].rounds[0].seconds, 0.02);
    let evaluate = sent(&out);
    assert_eq!(evaluate.len(), 2);
    let ToHospital::Evaluate { model, .. } = evaluate[0].1 else {
        panic!("evaluation requested");
    };
    assert_eq!(model.params.as_slice(), &[2.0, 2.0, 2.0]);
    for n in [1, 2] {
        let message = ToCoordinator::Evaluated {
            ask: Ask {
                run: 1,
                round: 1,
                attempt: 0,
            },
            outcome: EvalOutcome::Declined {
                reason: "no test split".into(),
            },
        };
        let out = core.handle(
            Duration::ZERO,
            Input::Message {
                actor: actor(n),
                message,
            },
        );
        if n == 2 {
            assert!(events(&out).iter().any(|e| matches!(
                e,
                FederationEvent::RunEnded {
                    outcome: RunOutcome::Finished,
                    ..
                }
            )));
        }
    }
    let report = core.report();
    assert_eq!(report.tasks["t"].rounds[0].federated.answered, 2);
    assert_eq!(report.run_id.as_deref(), Some("run-1"));
    // Ended: a new run may start, from the initial model.
    assert!(start(&mut core, "run-2").0.is_ok());
    assert_eq!(core.checkpoint("t").unwrap().model.params.as_slice(), &[0.0; 3]);
}

#[test]
fn a_message_counts_for_the_actor_that_sent_it_and_strangers_are_ignored() {
    let mut core = Core::new(vec![setup("t")]);
    hello(&mut core, 1, "a", "t");
    hello(&mut core, 2, "b", "t");
    start(&mut core, "run-1").0.unwrap();
    // An actor that never said hello.
    let out = core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(9),
            message: update(1.0),
        },
    );
    assert!(out.is_empty());
    // "a" answering twice is a duplicate, whatever it claims.
    core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(1),
            message: update(1.0),
        },
    );
    core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(1),
            message: update(1.0),
        },
    );
    assert_eq!(core.report().tasks["t"].drops.duplicate, 1);
}

#[test]
fn stop_ends_the_run_and_results_of_a_stopped_generation_are_ignored() {
    let mut core = Core::new(vec![setup("t")]);
    hello(&mut core, 1, "a", "t");
    hello(&mut core, 2, "b", "t");
    start(&mut core, "run-1").0.unwrap();
    core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(1),
            message: update(1.0),
        },
    );
    core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(2),
            message: update(1.0),
        },
    );
    let (stopped, out) = core.stop(Duration::ZERO);
    assert_eq!(stopped.as_deref(), Some("run-1"));
    assert!(events(&out).iter().any(|e| matches!(
        e,
        FederationEvent::RunEnded {
            outcome: RunOutcome::Stopped,
            ..
        }
    )));
    assert_eq!(core.report().tasks["t"].phase, Phase::Stopped { rounds: 0 });
    // Nothing to stop now.
    let (again, out) = core.stop(Duration::ZERO);
    assert!(again.is_none() && out.is_empty());
    start(&mut core, "run-2").0.unwrap();
    let late = core.handle(
        Duration::ZERO,
        Input::Aggregated {
            task: "t".into(),
            generation: 1,
            round: 1,
            result: Ok(Aggregated {
                params: Arc::new(Params::single("w", vec![9.0; 3]).unwrap()),
                participants: 2,
                metrics: binary_metrics(&[0.5], &[true]),
                strategy: Box::new(FedAvg),
            }),
        },
    );
    assert!(late.is_empty());
    assert!(core.report().tasks["t"].rounds.is_empty());
}

#[test]
fn bad_run_requests_are_refused_with_the_reason() {
    let mut core = Core::new(vec![setup("t")]);
    let refuse = |core: &mut Core, request: RunRequest| {
        core.start_run(Duration::ZERO, request, "r".into())
            .0
            .unwrap_err()
            .to_string()
    };
    let e = refuse(
        &mut core,
        RunRequest {
            rounds: None,
            tasks: Some(vec!["x".into()]),
            exclude: Vec::new(),
            ..Default::default()
        },
    );
    assert_eq!(e, "unknown task 'x' (tasks: t)");
    assert_eq!(
        refuse(
            &mut core,
            RunRequest {
                rounds: Some(0),
                tasks: None,
                exclude: Vec::new(),
                ..Default::default()
            }
        ),
        "rounds must be at least 1"
    );
    assert_eq!(
        refuse(
            &mut core,
            RunRequest {
                rounds: None,
                tasks: Some(vec![]),
                exclude: Vec::new(),
                ..Default::default()
            }
        ),
        "a run needs at least one task"
    );
    assert!(core.report().run_id.is_none());
}

#[test]
fn an_answer_to_an_earlier_run_is_dropped_as_late_and_the_fresh_one_counts() {
    let mut core = Core::new(vec![setup("t")]);
    hello(&mut core, 1, "a", "t");
    hello(&mut core, 2, "b", "t");
    start(&mut core, "run-1").0.unwrap();
    core.stop(Duration::ZERO);
    start(&mut core, "run-2").0.unwrap();
    // "a" finishes the round-1 training it was asked for in run 1 (generation 1).
    core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(1),
            message: update_of_run(1, 100.0),
        },
    );
    assert_eq!(core.report().tasks["t"].drops.late, 1);
    // Run 2's answers (generation 2) make the round.
    core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(1),
            message: update_of_run(2, 1.0),
        },
    );
    let out = core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(2),
            message: update_of_run(2, 3.0),
        },
    );
    let job = aggregate_job(out).expect("run 2's round closes with its own two updates");
    assert_eq!(run_aggregation(job).unwrap().params.as_slice(), &[2.0; 3]);
    assert_eq!(core.report().tasks["t"].drops.duplicate, 0);
}

#[test]
fn a_stopped_runs_aggregation_changes_neither_the_strategy_nor_the_checkpoints() {
    let dir = std::env::temp_dir().join("medfed-core-test-checkpoints");
    let mut with_adam = setup("t");
    with_adam.strategy = Box::new(FedOpt::adam(FedOptConfig::defaults(FedOptRule::Adam)));
    with_adam.checkpoint_dir = Some(dir.clone());
    let mut core = Core::new(vec![with_adam]);
    let job = first_round_closed(&mut core);
    // The run is stopped and a new one starts while the job runs elsewhere.
    core.stop(Duration::ZERO);
    start(&mut core, "run-2").0.unwrap();
    let fresh = core.strategy_state("t").unwrap();
    assert!(
        fresh.vectors.values().all(Vec::is_empty),
        "a new run starts with no moments"
    );
    let late = run_aggregation(job);
    let moved_on = &late.as_ref().unwrap().strategy.state();
    assert!(
        moved_on.vectors["m"].iter().any(|&m| m != 0.0),
        "the job's copy took a step"
    );
    let out = core.handle(
        Duration::ZERO,
        Input::Aggregated {
            task: "t".into(),
            generation: 1,
            round: 1,
            result: late,
        },
    );
    assert!(
        out.is_empty(),
        "no checkpoint, no event for a stopped run's round"
    );
    assert_eq!(core.strategy_state("t").unwrap(), fresh);
    assert!(core.report().tasks["t"].rounds.is_empty());
}

#[test]
fn an_accepted_round_is_checkpointed_and_the_strategy_adopted() {
    let mut with_adam = setup("t");
    with_adam.strategy = Box::new(FedOpt::adam(FedOptConfig::defaults(FedOptRule::Adam)));
    with_adam.checkpoint_dir = Some("/nonexistent/checkpoints".into());
    let mut core = Core::new(vec![with_adam]);
    let job = first_round_closed(&mut core);
    let result = run_aggregation(job);
    let stepped = result.as_ref().unwrap().strategy.state();
    let out = core.handle(
        Duration::ZERO,
        Input::Aggregated {
            task: "t".into(),
            generation: 1,
            round: 1,
            result,
        },
    );
    let written = out.iter().find_map(|o| match o {
        Output::WriteCheckpoint { dir, checkpoint } => Some((dir.clone(), checkpoint.round)),
        _ => None,
    });
    assert_eq!(written, Some(("/nonexistent/checkpoints".into(), 1)));
    assert_eq!(core.strategy_state("t").unwrap(), stepped);
}

#[test]
fn a_joined_actor_saying_hello_as_someone_else_leaves_as_what_it_was() {
    let mut core = Core::new(vec![setup("t")]);
    hello(&mut core, 1, "a", "t");
    let out = hello(&mut core, 1, "renamed", "t");
    assert!(refusal(&out).is_none());
    assert!(events(&out).iter().any(|e| matches!(
        e,
        FederationEvent::HospitalLeft { hospital, .. } if hospital == "a"
    )));
    assert_eq!(core.report().tasks["t"].hospitals, 1);
    // The old name is free again; the new one is taken.
    assert!(refusal(&hello(&mut core, 2, "a", "t")).is_none());
    assert!(refusal(&hello(&mut core, 3, "renamed", "t")).is_some());
}

/// FedAvg whose federated evaluation is the best hospital's metrics.
#[derive(Clone)]
struct BestOfEvaluations;

impl Strategy for BestOfEvaluations {
    fn name(&self) -> &'static str {
        "best"
    }
    fn boxed_clone(&self) -> Box<dyn Strategy> {
        Box::new(self.clone())
    }
    fn aggregate_train(
        &mut self,
        round: u32,
        global: &Params,
        updates: &[WeightedDelta<'_>],
    ) -> medfed_models::error::Result<Params> {
        FedAvg.aggregate_train(round, global, updates)
    }
    fn aggregate_evaluate(&self, _round: u32, results: &[&Metrics]) -> Option<Metrics> {
        results
            .iter()
            .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
            .map(|m| (*m).clone())
    }
}

#[test]
fn federated_evaluation_is_combined_by_the_strategys_hook() {
    let mut custom = setup("t");
    custom.strategy = Box::new(BestOfEvaluations);
    let mut core = Core::new(vec![custom]);
    let job = first_round_closed(&mut core);
    core.handle(
        Duration::ZERO,
        Input::Aggregated {
            task: "t".into(),
            generation: 1,
            round: 1,
            result: run_aggregation(job),
        },
    );
    let good = binary_metrics(&[0.9, 0.1], &[true, false]);
    let bad = binary_metrics(&[0.1, 0.9], &[true, false]);
    for (n, metrics) in [(1, good.clone()), (2, bad)] {
        core.handle(
            Duration::ZERO,
            Input::Message {
                actor: actor(n),
                message: ToCoordinator::Evaluated {
                    ask: Ask {
                        run: 1,
                        round: 1,
                        attempt: 0,
                    },
                    outcome: EvalOutcome::Evaluated { metrics },
                },
            },
        );
    }
    let federated = &core.report().tasks["t"].rounds[0].federated;
    assert_eq!(federated.pooled.as_ref(), Some(&good));
}

#[test]
fn starting_without_everyone_names_who_is_missing() {
    let mut three = setup("t");
    three.fsm.expected_hospitals = 3;
    three.expected_names = vec!["a".into(), "b".into(), "c".into()];
    let mut core = Core::new(vec![three]);
    hello(&mut core, 1, "a", "t");
    hello(&mut core, 2, "elsewhere", "t");
    let (_, out) = start(&mut core, "run-1");
    let timer = out
        .iter()
        .find_map(|o| match o {
            Output::ArmDeadline { timer, .. } => Some(*timer),
            _ => None,
        })
        .expect("the assembly deadline");
    let out = core.handle(
        Duration::ZERO,
        Input::Deadline {
            task: "t".into(),
            timer,
        },
    );
    let missing = events(&out).into_iter().find_map(|e| match e {
        FederationEvent::StartingWithout { missing, .. } => Some(missing.clone()),
        _ => None,
    });
    assert_eq!(missing, Some(vec!["b".to_string(), "c".to_string()]));
}

#[test]
fn a_hospital_that_declares_an_attack_is_recorded_as_such() {
    let mut core = Core::new(vec![setup("t")]);
    let mut attacker = info("a", "t");
    attacker.attack = Some("sign_flip:10".into());
    let out = core.handle(
        Duration::ZERO,
        Input::Hello {
            actor: actor(1),
            info: attacker,
        },
    );
    assert!(events(&out).iter().any(|e| matches!(
        e,
        FederationEvent::HospitalJoined { attack: Some(a), .. } if a == "sign_flip:10"
    )));
    hello(&mut core, 2, "b", "t");
    let attacks = core.report().tasks["t"].attacks.clone();
    assert_eq!(attacks.len(), 1);
    assert_eq!(attacks["a"], "sign_flip:10");
}

fn declined_evaluation(round: u32) -> ToCoordinator {
    ToCoordinator::Evaluated {
        ask: Ask {
            run: 1,
            round,
            attempt: 0,
        },
        outcome: EvalOutcome::Declined {
            reason: "private".into(),
        },
    }
}

/// Round 1 of a one-round run, aggregated and evaluated: the commit it
/// asks for, then everything else that step produced.
fn committed_round_one(core: &mut Core) -> (RoundCommit, Vec<Output>) {
    let job = first_round_closed(core);
    let result = run_aggregation(job);
    core.handle(
        Duration::ZERO,
        Input::Aggregated {
            task: "t".into(),
            generation: 1,
            round: 1,
            result,
        },
    );
    core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(1),
            message: declined_evaluation(1),
        },
    );
    let out = core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(2),
            message: declined_evaluation(1),
        },
    );
    let position = out
        .iter()
        .position(|o| matches!(o, Output::CommitRound(_)))
        .expect("the closed round is committed");
    let mut out = out;
    let Output::CommitRound(commit) = out.remove(position) else {
        unreachable!()
    };
    let rest = out.split_off(position);
    (*commit, rest)
}

#[test]
fn a_closed_round_is_committed_with_its_lineage_before_anything_follows() {
    let mut core = Core::new(vec![setup("t")]);
    let (commit, after) = committed_round_one(&mut core);
    assert_eq!((commit.run_id.as_str(), commit.task.as_str()), ("run-1", "t"));
    assert_eq!((commit.checkpoint.round, commit.target_rounds), (1, 1));
    assert_eq!(commit.checkpoint.model.params.as_slice(), &[2.0, 2.0, 2.0]);
    assert_eq!(commit.record.round, 1);
    let accepted: Vec<(&String, Option<usize>)> = commit
        .record
        .participation
        .iter()
        .map(|(h, p)| {
            assert_eq!(p.outcome, ParticipationOutcome::Accepted);
            (h, p.samples)
        })
        .collect();
    assert_eq!(
        accepted,
        vec![(&"a".to_string(), Some(10)), (&"b".to_string(), Some(10))]
    );
    assert_eq!(commit.strategy.strategy, "fedavg");
    // The run's end comes after the commit.
    assert!(events(&after)
        .iter()
        .any(|e| matches!(e, FederationEvent::RunEnded { .. })));
}

/// A new coordinator given the commit carries on at round 2 with the
/// committed model, and reports round 1 too.
#[test]
fn a_resumed_run_carries_on_from_its_commit() {
    let mut first = Core::new(vec![setup("t")]);
    let (commit, _) = committed_round_one(&mut first);
    let mut core = Core::new(vec![setup("t")]);
    hello(&mut core, 7, "a", "t");
    hello(&mut core, 8, "b", "t");
    let point = ResumePoint {
        run_id: "run-1".into(),
        tasks: [(
            "t".to_string(),
            TaskResume {
                target_rounds: 2,
                committed: Some((commit.checkpoint.model.clone(), commit.strategy.clone())),
                history: vec![commit.record.clone()],
                totals: commit.totals.clone(),
                privacy: commit.privacy.clone(),
            },
        )]
        .into(),
        excluded: Vec::new(),
        settings: [("t".to_string(), lower_rate())].into(),
    };
    let (id, out) = core.resume(Duration::ZERO, point);
    assert_eq!(id.unwrap(), "run-1");
    assert!(events(&out).iter().any(|e| matches!(
        e,
        FederationEvent::RunStarted { resumed_after, .. } if resumed_after.get("t") == Some(&1)
    )));
    let asked = sent(&out);
    assert_eq!(asked.len(), 2);
    for (_, message) in asked {
        let ToHospital::Train { ask, model, plan, .. } = message else {
            panic!("round 2 is asked for, got {message:?}");
        };
        assert_eq!((ask.round, ask.attempt), (2, 0));
        assert_eq!(plan.learning_rate, 0.05, "the run's own settings carry on");
        assert_eq!(model.params.as_slice(), &[2.0, 2.0, 2.0]);
    }
    assert_eq!(core.report().tasks["t"].rounds.len(), 1);
    assert_eq!(core.report().run_id.as_deref(), Some("run-1"));
    // A second resume (or start) while it runs is refused.
    let again = ResumePoint {
        run_id: "run-1".into(),
        tasks: Default::default(),
        excluded: Vec::new(),
        settings: Default::default(),
    };
    assert!(matches!(
        core.resume(Duration::ZERO, again).0,
        Err(StartRefused::RunActive(_))
    ));
}

/// A withdrawn hospital is never asked for anything; the others train.
#[test]
fn an_excluded_hospital_is_never_asked() {
    let mut setup = setup("t");
    setup.fsm.protocol = Protocol::federated(false, 1, 0, Duration::from_secs(30));
    let mut core = Core::new(vec![setup]);
    hello(&mut core, 1, "a", "t");
    hello(&mut core, 2, "b", "t");
    let (id, out) = core.start_run(
        Duration::ZERO,
        RunRequest {
            exclude: vec!["b".into()],
            ..RunRequest::default()
        },
        "run-1".into(),
    );
    id.unwrap();
    let asked: Vec<ActorId> = sent(&out).into_iter().map(|(to, _)| to).collect();
    assert_eq!(asked, vec![actor(1)]);
    assert!(events(&out).iter().any(|e| matches!(
        e,
        FederationEvent::RunStarted { excluded, .. } if excluded == &vec!["b".to_string()]
    )));
    // Its update, were it to send one, is not one that was asked for.
    let out = core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(2),
            message: update(1.0),
        },
    );
    assert!(aggregate_job(out).is_none());
    let out = core.handle(
        Duration::ZERO,
        Input::Message {
            actor: actor(1),
            message: update(3.0),
        },
    );
    let job = aggregate_job(out).expect("a alone closes the stage");
    assert_eq!(job.updates.len(), 1);
}

/// The last round's commit fails: the outputs after it (the finish, the
/// run's end) were dropped by the shell, and the run ends aborted instead
/// of hanging.
#[test]
fn a_failed_last_commit_aborts_the_run_instead_of_finishing_it() {
    let mut core = Core::new(vec![setup("t")]);
    let (_, after) = committed_round_one(&mut core);
    assert!(events(&after).iter().any(|e| matches!(
        e,
        FederationEvent::RunEnded {
            outcome: RunOutcome::Finished,
            ..
        }
    )));
    let out = core.handle(
        Duration::ZERO,
        Input::CommitFailed {
            task: "t".into(),
            reason: "disk full".into(),
        },
    );
    let ended: Vec<&FederationEvent> = events(&out)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                FederationEvent::RunEnded { .. } | FederationEvent::TaskAborted { .. }
            )
        })
        .collect();
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert!(matches!(
        ended[1],
        FederationEvent::RunEnded {
            outcome: RunOutcome::Aborted,
            ..
        }
    ));
    let FederationEvent::TaskAborted { reason, .. } = ended[0] else {
        panic!("{ended:?}")
    };
    assert_eq!(reason, "disk full");
}

#[test]
fn claims_above_the_tasks_bounds_are_refused_and_its_hospital_cap_holds() {
    let mut capped = setup("t");
    capped.max_hospitals = Some(2);
    let mut core = Core::new(vec![capped]);
    // A hello declaring more examples than the bound (1,000,000 here).
    let mut sybil = info("big", "t");
    sybil.samples = 100_000_000;
    let out = core.handle(
        Duration::ZERO,
        Input::Hello {
            actor: actor(9),
            info: sybil,
        },
    );
    let reason = refusal(&out).expect("refused");
    assert!(
        reason.contains("declares 100000000 training examples"),
        "{reason}"
    );
    assert!(reason.contains("max_examples_per_hospital"), "{reason}");
    assert!(refusal(&hello(&mut core, 1, "a", "t")).is_none());
    assert!(refusal(&hello(&mut core, 2, "b", "t")).is_none());
    let reason = refusal(&hello(&mut core, 3, "c", "t")).expect("over the cap");
    assert!(reason.contains("already has its most hospitals (2"), "{reason}");
}

/// Settings that lower the learning rate.
fn lower_rate() -> TaskRunSettings {
    TaskRunSettings {
        training: Some(crate::messages::TrainingSettings {
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.05,
            l2: 0.0,
        }),
        ..Default::default()
    }
}

#[test]
fn a_runs_settings_reach_the_plan_and_the_next_run_is_back_to_the_configuration() {
    let mut core = Core::new(vec![setup("t")]);
    hello(&mut core, 1, "a", "t");
    hello(&mut core, 2, "b", "t");
    let settings = TaskRunSettings {
        strategy: medfed_models::aggregate::StrategyConfig::named("fedprox"),
        privacy: Some(medfed_models::learner::RunPrivacy {
            epsilon: Some(1.0),
            delta: None,
            noise_multiplier: Some(2.0),
            rounds: 0,
        }),
        ..lower_rate()
    };
    let request = RunRequest {
        rounds: Some(4),
        settings: [("t".to_string(), settings)].into(),
        ..Default::default()
    };
    let (id, out) = core.start_run(Duration::ZERO, request, "run-1".into());
    id.unwrap();
    let begin = out.iter().find_map(|o| match o {
        Output::BeginRun(b) => Some(b.clone()),
        _ => None,
    });
    assert!(
        begin.unwrap().settings["t"].strategy.is_some(),
        "recorded with the run"
    );
    let asked = sent(&out);
    assert_eq!(asked.len(), 2);
    for (_, message) in asked {
        let ToHospital::Train { plan, .. } = message else {
            panic!("training is asked for, got {message:?}");
        };
        assert_eq!(plan.learning_rate, 0.05);
        assert!(plan.proximal_mu > 0.0, "FedProx configured the round");
        let privacy = plan.privacy.unwrap();
        assert_eq!(
            (privacy.epsilon, privacy.noise_multiplier, privacy.rounds),
            (Some(1.0), Some(2.0), 4)
        );
    }
    core.stop(Duration::ZERO);
    let (_, out) = start(&mut core, "run-2");
    for (_, message) in sent(&out) {
        let ToHospital::Train { plan, .. } = message else {
            panic!("training is asked for, got {message:?}");
        };
        assert_eq!(
            (plan.learning_rate, plan.proximal_mu, plan.privacy),
            (0.1, 0.0, None)
        );
    }
}

#[test]
fn settings_the_task_cannot_take_are_refused_before_anything_starts() {
    let mut five = setup("t");
    five.fsm.expected_hospitals = 5;
    let mut core = Core::new(vec![five, setup("u")]);
    let refuse = |core: &mut Core, task: &str, settings: TaskRunSettings| {
        let request = RunRequest {
            tasks: Some(vec!["t".into()]),
            settings: [(task.to_string(), settings)].into(),
            ..Default::default()
        };
        core.start_run(Duration::ZERO, request, "r".into())
            .0
            .unwrap_err()
            .to_string()
    };
    let e = refuse(&mut core, "u", lower_rate());
    assert_eq!(
        e,
        "settings for task 'u', which this run does not train (tasks: t)"
    );
    // Krum with f = 1 fits 5 hospitals but needs more updates than this
    // task's quorum of 2; with f = 2 it does not fit 5 hospitals at all.
    let krum = |f| TaskRunSettings {
        strategy: Some(medfed_models::aggregate::StrategyConfig::Krum { f }),
        ..Default::default()
    };
    let e = refuse(&mut core, "t", krum(1));
    assert!(
        e.contains("needs at least 5 updates") && e.contains("quorum of 2"),
        "{e}"
    );
    let e = refuse(&mut core, "t", krum(2));
    assert!(e.starts_with("task 't': strategy krum: `f`:"), "{e}");
    assert!(core.report().run_id.is_none());
}

/// A configured strategy that raised the quorum does not hold a run that
/// uses another strategy to it; the next run without settings has it again.
#[test]
fn the_quorum_follows_the_runs_strategy() {
    let mut krum = setup("t");
    krum.fsm.expected_hospitals = 5;
    krum.strategy = medfed_models::aggregate::StrategyConfig::named("krum")
        .unwrap()
        .build(5);
    let mut core = Core::new(vec![krum]);
    let quorum = |core: &Core| core.tasks["t"].fsm.config().quorum();
    assert_eq!(
        quorum(&core),
        5,
        "Krum with f = 1 raised the configured quorum of 2"
    );
    let fedavg = TaskRunSettings {
        strategy: medfed_models::aggregate::StrategyConfig::named("fedavg"),
        ..Default::default()
    };
    let request = RunRequest {
        settings: [("t".to_string(), fedavg)].into(),
        ..Default::default()
    };
    core.start_run(Duration::ZERO, request, "run-1".into()).0.unwrap();
    assert_eq!(quorum(&core), 2);
    assert!(core.tasks["t"].quorum_note.is_none());
    core.stop(Duration::ZERO);
    start(&mut core, "run-2").0.unwrap();
    assert_eq!(quorum(&core), 5);
    assert!(core.tasks["t"].quorum_note.as_deref().unwrap().contains("krum"));
}
