use super::*;
use crate::coordinator::stage::Protocol;

const DEADLINE: Duration = Duration::from_secs(30);

fn config() -> FsmConfig {
    FsmConfig {
        rounds: 2,
        expected_hospitals: 2,
        assemble_timeout: Duration::from_secs(60),
        protocol: Protocol::federated(true, 2, 1, DEADLINE),
    }
}

fn ids(names: &[&str]) -> Vec<HospitalId> {
    names.iter().map(|s| s.to_string()).collect()
}

fn joined(fsm: &mut TaskFsm, names: &[&str]) {
    for n in names {
        fsm.handle(Event::Joined(n.to_string()));
    }
}

fn answer(from: &str, stage: StageKind, round: u32, attempt: u32, verdict: Verdict) -> Event {
    Event::Answered {
        from: from.into(),
        stage,
        round,
        attempt,
        verdict,
    }
}

fn valid(from: &str, round: u32, attempt: u32) -> Event {
    answer(from, StageKind::Train, round, attempt, Verdict::Usable)
}

fn stats(from: &str, attempt: u32) -> Event {
    answer(from, StageKind::Stats, 0, attempt, Verdict::Usable)
}

fn evaluation(from: &str, round: u32) -> Event {
    answer(from, StageKind::Evaluate, round, 0, Verdict::Usable)
}

fn training(round: u32, attempt: u32) -> Phase {
    Phase::Collecting {
        round,
        stage: StageKind::Train,
        attempt,
    }
}

fn evaluating(round: u32) -> Phase {
    Phase::Collecting {
        round,
        stage: StageKind::Evaluate,
        attempt: 0,
    }
}

fn preparing(attempt: u32) -> Phase {
    Phase::Collecting {
        round: 0,
        stage: StageKind::Stats,
        attempt,
    }
}

fn last_timer(fx: &[Effect]) -> TimerId {
    fx.iter()
        .rev()
        .find_map(|e| match e {
            Effect::ArmDeadline { timer, .. } => Some(*timer),
            _ => None,
        })
        .expect("a deadline was armed")
}

/// A machine with a, b, c joined and preparation done: in round 1, attempt 0.
fn in_round_one() -> (TaskFsm, TimerId) {
    let mut fsm = TaskFsm::new(config());
    joined(&mut fsm, &["a", "b", "c"]);
    fsm.handle(Event::Start { rounds: 2 });
    fsm.handle(stats("a", 0));
    fsm.handle(stats("b", 0));
    let fx = fsm.handle(stats("c", 0));
    assert_eq!(fsm.phase(), &training(1, 0));
    (fsm, last_timer(&fx))
}

/// Round `round` trained by everyone and aggregated: evaluation begins.
/// "a" and "b" through a whole one-round run: statistics, training,
/// evaluation; the machine is `Finished { rounds: 1 }`.
fn finished_one_round_run() -> TaskFsm {
    let mut fsm = TaskFsm::new(FsmConfig {
        rounds: 1,
        ..config()
    });
    joined(&mut fsm, &["a", "b"]);
    fsm.handle(Event::Start { rounds: 1 });
    fsm.handle(stats("a", 0));
    fsm.handle(stats("b", 0));
    through_training(&mut fsm, 1, &["a", "b"]);
    fsm.handle(evaluation("a", 1));
    fsm.handle(evaluation("b", 1));
    assert_eq!(fsm.phase(), &Phase::Finished { rounds: 1 });
    fsm
}

fn through_training(fsm: &mut TaskFsm, round: u32, names: &[&str]) -> Vec<Effect> {
    for h in names {
        fsm.handle(valid(h, round, 0));
    }
    assert_eq!(fsm.phase(), &Phase::Aggregating { round });
    fsm.handle(Event::Aggregated { round })
}

#[test]
fn start_waits_for_every_expected_hospital_then_prepares() {
    let mut fsm = TaskFsm::new(FsmConfig {
        expected_hospitals: 3,
        ..config()
    });
    let fx = fsm.handle(Event::Start { rounds: 3 });
    assert_eq!(fsm.phase(), &Phase::Assembling);
    assert!(matches!(fx[..], [Effect::ArmDeadline { after, .. }] if after == Duration::from_secs(60)));
    assert!(fsm.handle(Event::Joined("a".into())).is_empty());
    // The quorum (2) is there, but a third hospital is expected: keep waiting.
    assert!(fsm.handle(Event::Joined("b".into())).is_empty());
    assert_eq!(fsm.phase(), &Phase::Assembling);
    let fx = fsm.handle(Event::Joined("c".into()));
    assert_eq!(fsm.phase(), &preparing(0));
    assert!(fx.contains(&Effect::Request {
        stage: StageKind::Stats,
        round: 0,
        attempt: 0,
        to: ids(&["a", "b", "c"]),
    }));
    assert_eq!(fsm.target_rounds(), 3);
}

#[test]
fn at_the_assembly_deadline_a_quorum_starts_and_says_who_is_missing() {
    let mut fsm = TaskFsm::new(FsmConfig {
        expected_hospitals: 5,
        ..config()
    });
    let fx = fsm.handle(Event::Start { rounds: 3 });
    joined(&mut fsm, &["a", "b"]);
    let fx = fsm.handle(Event::DeadlineExpired(last_timer(&fx)));
    assert_eq!(
        fx[0],
        Effect::StartingWithout {
            joined: ids(&["a", "b"]),
            expected: 5
        }
    );
    assert_eq!(fsm.phase(), &preparing(0));
}

#[test]
fn assembling_deadline_below_quorum_aborts_with_reason() {
    let mut fsm = TaskFsm::new(config());
    let fx = fsm.handle(Event::Start { rounds: 3 });
    fsm.handle(Event::Joined("a".into()));
    let fx = fsm.handle(Event::DeadlineExpired(last_timer(&fx)));
    let Phase::Aborted { reason } = fsm.phase() else {
        panic!("expected aborted, got {:?}", fsm.phase());
    };
    assert!(
        reason.contains("only 1 of 2 required hospitals joined"),
        "{reason}"
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::RunAborted { .. })));
}

#[test]
fn preparation_combines_stats_and_starts_round_one_with_all_members() {
    let mut fsm = TaskFsm::new(config());
    joined(&mut fsm, &["a", "b"]);
    fsm.handle(Event::Start { rounds: 2 });
    assert_eq!(
        fsm.handle(stats("a", 0)),
        vec![Effect::Keep {
            from: "a".into(),
            stage: StageKind::Stats,
            round: 0
        }]
    );
    let fx = fsm.handle(stats("b", 0));
    assert_eq!(
        fx[1],
        Effect::StageClosed {
            stage: StageKind::Stats,
            round: 0,
            from: ids(&["a", "b"])
        }
    );
    assert!(fx.contains(&Effect::Request {
        stage: StageKind::Train,
        round: 1,
        attempt: 0,
        to: ids(&["a", "b"]),
    }));
    assert!(fx.contains(&Effect::RoundStarted {
        round: 1,
        attempt: 0,
        participants: ids(&["a", "b"])
    }));
}

#[test]
fn without_a_preparation_stage_the_run_starts_with_round_one() {
    let mut fsm = TaskFsm::new(FsmConfig {
        protocol: Protocol::federated(false, 2, 1, DEADLINE),
        ..config()
    });
    joined(&mut fsm, &["a", "b"]);
    let fx = fsm.handle(Event::Start { rounds: 1 });
    assert_eq!(fsm.phase(), &training(1, 0));
    assert!(!fx.iter().any(|e| matches!(
        e,
        Effect::Request {
            stage: StageKind::Stats,
            ..
        }
    )));
}

#[test]
fn a_round_is_train_then_aggregate_then_evaluate_and_the_run_finishes() {
    let (mut fsm, _) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    fsm.handle(valid("b", 1, 0));
    let fx = fsm.handle(valid("c", 1, 0));
    assert!(fx.contains(&Effect::StageClosed {
        stage: StageKind::Train,
        round: 1,
        from: ids(&["a", "b", "c"])
    }));
    assert_eq!(fsm.phase(), &Phase::Aggregating { round: 1 });
    let fx = fsm.handle(Event::Aggregated { round: 1 });
    assert_eq!(fsm.phase(), &evaluating(1));
    assert!(fx.contains(&Effect::Request {
        stage: StageKind::Evaluate,
        round: 1,
        attempt: 0,
        to: ids(&["a", "b", "c"]),
    }));
    fsm.handle(evaluation("a", 1));
    fsm.handle(evaluation("b", 1));
    let fx = fsm.handle(evaluation("c", 1));
    assert_eq!(fsm.phase(), &training(2, 0));
    assert!(fx.contains(&Effect::DiscardCollected));
    // Evaluation needs no quorum: its deadline closes it with whoever answered.
    let fx = through_training(&mut fsm, 2, &["a", "b", "c"]);
    fsm.handle(evaluation("b", 2));
    let fx = fsm.handle(Event::DeadlineExpired(last_timer(&fx)));
    assert_eq!(fsm.phase(), &Phase::Finished { rounds: 2 });
    assert_eq!(
        fx,
        vec![
            Effect::StageClosed {
                stage: StageKind::Evaluate,
                round: 2,
                from: ids(&["b"])
            },
            Effect::RoundClosed { round: 2 },
            Effect::RunFinished { rounds: 2 }
        ]
    );
}

#[test]
fn an_excused_hospital_is_not_waited_for() {
    let (mut fsm, _) = in_round_one();
    through_training(&mut fsm, 1, &["a", "b", "c"]);
    fsm.handle(evaluation("a", 1));
    fsm.handle(Event::Excused("b".into()));
    assert_eq!(fsm.phase(), &evaluating(1));
    fsm.handle(Event::Excused("c".into()));
    assert_eq!(fsm.phase(), &training(2, 0));
}

#[test]
fn deadline_closes_round_with_quorum() {
    let (mut fsm, timer) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    fsm.handle(valid("c", 1, 0));
    let fx = fsm.handle(Event::DeadlineExpired(timer));
    assert!(fx.contains(&Effect::StageClosed {
        stage: StageKind::Train,
        round: 1,
        from: ids(&["a", "c"])
    }));
}

#[test]
fn deadline_below_quorum_retries_then_aborts() {
    let (mut fsm, timer) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    let fx = fsm.handle(Event::DeadlineExpired(timer));
    assert!(fx.contains(&Effect::StageBelowQuorum {
        stage: StageKind::Train,
        round: 1,
        attempt: 0,
        accepted: 1,
        needed: 2
    }));
    assert_eq!(fsm.phase(), &training(1, 1));
    assert!(fx.contains(&Effect::DiscardCollected));
    let retry_timer = last_timer(&fx);
    // The stale deadline of attempt 0 no longer counts.
    assert!(fsm.handle(Event::DeadlineExpired(timer)).is_empty());
    let fx = fsm.handle(Event::DeadlineExpired(retry_timer));
    let Phase::Aborted { reason } = fsm.phase() else {
        panic!("expected aborted");
    };
    assert!(
        reason.contains("round 1: 0 of 2 required updates accepted after 2 attempts"),
        "{reason}"
    );
    assert!(fx.contains(&Effect::RunAborted {
        reason: reason.clone()
    }));
}

#[test]
fn late_duplicate_and_unknown_updates_are_dropped_and_counted() {
    let (mut fsm, timer) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    assert_eq!(
        fsm.handle(valid("a", 1, 0)),
        vec![Effect::Drop {
            from: "a".into(),
            reason: DropReason::Duplicate
        }]
    );
    assert_eq!(
        fsm.handle(valid("stranger", 1, 0)),
        vec![Effect::Drop {
            from: "stranger".into(),
            reason: DropReason::UnknownSender
        }]
    );
    // Retry: attempt 0's answers are now late.
    fsm.handle(Event::DeadlineExpired(timer));
    assert_eq!(fsm.phase(), &training(1, 1));
    assert_eq!(
        fsm.handle(valid("b", 1, 0)),
        vec![Effect::Drop {
            from: "b".into(),
            reason: DropReason::Late
        }]
    );
    // Statistics after preparation are late too.
    assert_eq!(
        fsm.handle(stats("c", 0)),
        vec![Effect::Drop {
            from: "c".into(),
            reason: DropReason::Late
        }]
    );
    assert_eq!(
        fsm.drops(),
        &DropCounts {
            late: 2,
            duplicate: 1,
            unknown_sender: 1,
            unexpected: 0
        }
    );
}

#[test]
fn update_for_a_round_being_aggregated_is_late() {
    let (mut fsm, _) = in_round_one();
    for h in ["a", "b"] {
        fsm.handle(valid(h, 1, 0));
    }
    fsm.handle(Event::Left("c".into()));
    assert_eq!(fsm.phase(), &Phase::Aggregating { round: 1 });
    let fx = fsm.handle(valid("c", 1, 0));
    assert_eq!(
        fx,
        vec![Effect::Drop {
            from: "c".into(),
            reason: DropReason::Late
        }]
    );
}

#[test]
fn departure_mid_round_closes_round_when_remaining_answered() {
    let (mut fsm, _) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    fsm.handle(valid("b", 1, 0));
    let fx = fsm.handle(Event::Left("c".into()));
    assert!(fx.contains(&Effect::StageClosed {
        stage: StageKind::Train,
        round: 1,
        from: ids(&["a", "b"])
    }));
    assert!(!fsm.members().contains("c"));
}

#[test]
fn refused_and_declined_updates_count_as_answers_but_not_toward_quorum() {
    let (mut fsm, _) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    let invalid = Verdict::Invalid {
        label: "norm_too_large".into(),
        reason: "update norm 12 exceeds the bound 10".into(),
    };
    let fx = fsm.handle(answer("b", StageKind::Train, 1, 0, invalid));
    assert!(matches!(&fx[0], Effect::Refuse { from, round: 1, .. } if from == "b"));
    let declined = Verdict::Declined("privacy budget exhausted".into());
    let fx = fsm.handle(answer("c", StageKind::Train, 1, 0, declined));
    // Everyone answered, one usable update: below quorum, so a retry starts.
    assert!(fx.contains(&Effect::StageBelowQuorum {
        stage: StageKind::Train,
        round: 1,
        attempt: 0,
        accepted: 1,
        needed: 2
    }));
    assert_eq!(fsm.phase(), &training(1, 1));
}

#[test]
fn a_hospital_joining_mid_round_is_asked_from_the_next_stage() {
    let (mut fsm, _) = in_round_one();
    fsm.handle(Event::Joined("d".into()));
    let fx = fsm.handle(valid("d", 1, 0));
    assert!(matches!(
        &fx[0],
        Effect::Drop {
            reason: DropReason::UnknownSender,
            ..
        }
    ));
    let fx = through_training(&mut fsm, 1, &["a", "b", "c"]);
    assert!(fx.contains(&Effect::Request {
        stage: StageKind::Evaluate,
        round: 1,
        attempt: 0,
        to: ids(&["a", "b", "c", "d"]),
    }));
}

#[test]
fn stop_in_every_phase() {
    // Idle: nothing happens.
    let mut fsm = TaskFsm::new(config());
    assert!(fsm.handle(Event::Stop).is_empty());
    assert_eq!(fsm.phase(), &Phase::Idle);

    let stopped_after = |fsm: &mut TaskFsm, rounds: u32| {
        let fx = fsm.handle(Event::Stop);
        assert_eq!(fsm.phase(), &Phase::Stopped { rounds });
        assert!(fx.contains(&Effect::DiscardCollected));
        assert!(fx.contains(&Effect::RunStopped { rounds }));
    };
    let stopped = |fsm: &mut TaskFsm| stopped_after(fsm, 0);
    // Assembling.
    let mut fsm = TaskFsm::new(config());
    fsm.handle(Event::Start { rounds: 2 });
    stopped(&mut fsm);
    // Preparing.
    let mut fsm = TaskFsm::new(config());
    joined(&mut fsm, &["a", "b"]);
    fsm.handle(Event::Start { rounds: 2 });
    assert_eq!(fsm.phase(), &preparing(0));
    stopped(&mut fsm);
    // Training: the live deadline is disarmed.
    let (mut fsm, timer) = in_round_one();
    stopped(&mut fsm);
    assert!(fsm.handle(Event::DeadlineExpired(timer)).is_empty());
    // Aggregating: a late aggregation result changes nothing.
    let (mut fsm, _) = in_round_one();
    for h in ["a", "b", "c"] {
        fsm.handle(valid(h, 1, 0));
    }
    stopped(&mut fsm);
    assert!(fsm.handle(Event::Aggregated { round: 1 }).is_empty());
    assert!(matches!(fsm.phase(), Phase::Stopped { rounds: 0 }));
    // Evaluating: round 1 was aggregated, and the stop says so.
    let (mut fsm, _) = in_round_one();
    through_training(&mut fsm, 1, &["a", "b", "c"]);
    stopped_after(&mut fsm, 1);
    // Finished: stays finished.
    let mut fsm = finished_one_round_run();
    assert!(fsm.handle(Event::Stop).is_empty());
    assert_eq!(fsm.phase(), &Phase::Finished { rounds: 1 });
}

#[test]
fn preparation_below_quorum_retries_then_aborts() {
    let mut fsm = TaskFsm::new(config());
    joined(&mut fsm, &["a", "b"]);
    let fx = fsm.handle(Event::Start { rounds: 2 });
    fsm.handle(stats("a", 0));
    let fx2 = fsm.handle(Event::DeadlineExpired(last_timer(&fx)));
    assert_eq!(fsm.phase(), &preparing(1));
    fsm.handle(Event::DeadlineExpired(last_timer(&fx2)));
    let Phase::Aborted { reason } = fsm.phase() else {
        panic!("expected aborted");
    };
    assert!(reason.starts_with("preparation: 0 of 2"), "{reason}");
}

#[test]
fn a_finished_machine_can_run_again() {
    let mut fsm = TaskFsm::new(FsmConfig {
        rounds: 1,
        ..config()
    });
    joined(&mut fsm, &["a", "b"]);
    fsm.handle(Event::Start { rounds: 1 });
    fsm.handle(Event::Stop);
    fsm.handle(Event::Start { rounds: 4 });
    assert_eq!(fsm.phase(), &preparing(0));
    assert_eq!(fsm.target_rounds(), 4);
}

#[test]
fn aggregation_failure_aborts() {
    let (mut fsm, _) = in_round_one();
    for h in ["a", "b", "c"] {
        fsm.handle(valid(h, 1, 0));
    }
    fsm.handle(Event::AggregationFailed {
        round: 1,
        reason: "shape".into(),
    });
    assert!(matches!(fsm.phase(), Phase::Aborted { reason } if reason.contains("evaluation failed: shape")));
}

#[test]
fn shell_failure_aborts_an_active_run_only() {
    let mut fsm = TaskFsm::new(config());
    assert!(fsm.handle(Event::Failed { reason: "x".into() }).is_empty());
    let (mut fsm, _) = in_round_one();
    fsm.handle(Event::Failed {
        reason: "feature statistics disagree".into(),
    });
    assert!(matches!(fsm.phase(), Phase::Aborted { reason } if reason == "feature statistics disagree"));
}

#[test]
fn answers_after_the_run_are_late_and_unasked_rounds_unexpected() {
    let (mut fsm, _) = in_round_one();
    assert_eq!(
        fsm.handle(valid("a", 7, 0)),
        vec![Effect::Drop {
            from: "a".into(),
            reason: DropReason::Unexpected
        }]
    );
    fsm.handle(Event::Stop);
    assert_eq!(
        fsm.handle(valid("a", 1, 0)),
        vec![Effect::Drop {
            from: "a".into(),
            reason: DropReason::Late
        }]
    );
    let mut fresh = TaskFsm::new(config());
    assert_eq!(
        fresh.handle(valid("a", 1, 0)),
        vec![Effect::Drop {
            from: "a".into(),
            reason: DropReason::Unexpected
        }]
    );
    assert_eq!(
        fresh.handle(evaluation("a", 1)),
        vec![Effect::Drop {
            from: "a".into(),
            reason: DropReason::Unexpected
        }]
    );
}

#[test]
fn declined_statistics_count_as_answers_but_not_toward_quorum() {
    let mut fsm = TaskFsm::new(config());
    joined(&mut fsm, &["a", "b", "c"]);
    fsm.handle(Event::Start { rounds: 1 });
    fsm.handle(stats("a", 0));
    let declined = || Verdict::Declined("budget".into());
    let fx = fsm.handle(answer("b", StageKind::Stats, 0, 0, declined()));
    assert!(matches!(
        &fx[..],
        [Effect::Refuse {
            stage: StageKind::Stats,
            ..
        }]
    ));
    let fx = fsm.handle(answer("c", StageKind::Stats, 0, 0, declined()));
    assert!(fx.contains(&Effect::StageBelowQuorum {
        stage: StageKind::Stats,
        round: 0,
        attempt: 0,
        accepted: 1,
        needed: 2
    }));
}

#[test]
fn abort_after_declines_names_the_reason() {
    let (mut fsm, _) = in_round_one();
    let decline = |fsm: &mut TaskFsm, h: &str, attempt: u32| {
        let why = Verdict::Declined("privacy budget exhausted: epsilon spent 3 of 3".into());
        fsm.handle(answer(h, StageKind::Train, 1, attempt, why))
    };
    for attempt in 0..2 {
        for h in ["a", "b", "c"] {
            decline(&mut fsm, h, attempt);
        }
    }
    let Phase::Aborted { reason } = fsm.phase() else {
        panic!("expected aborted, got {:?}", fsm.phase());
    };
    assert!(
        reason.contains("0 of 2 required updates accepted after 2 attempts"),
        "{reason}"
    );
    assert!(
        reason.contains("hospitals declined: privacy budget exhausted"),
        "{reason}"
    );
}

#[test]
fn phases_serialise_with_the_name_the_panel_shows() {
    let json = |p: &Phase| serde_json::to_value(p).unwrap();
    assert_eq!(
        json(&training(3, 1)),
        serde_json::json!({"phase": "training", "round": 3, "stage": "train", "attempt": 1})
    );
    assert_eq!(json(&preparing(0))["phase"], "preparing");
    assert_eq!(json(&evaluating(2))["phase"], "evaluating");
    assert_eq!(
        json(&Phase::Aggregating { round: 2 }),
        serde_json::json!({"phase": "aggregating", "round": 2})
    );
    assert_eq!(
        json(&Phase::Aborted { reason: "x".into() }),
        serde_json::json!({"phase": "aborted", "reason": "x"})
    );
    assert_eq!(json(&Phase::Idle), serde_json::json!({"phase": "idle"}));
}

#[test]
fn a_run_stopped_while_assembling_reports_none_of_the_previous_runs_rounds() {
    let mut fsm = finished_one_round_run();
    // The next run waits for a hospital that left, and is stopped meanwhile.
    fsm.handle(Event::Left("b".into()));
    fsm.handle(Event::Start { rounds: 1 });
    assert_eq!(fsm.phase(), &Phase::Assembling);
    let fx = fsm.handle(Event::Stop);
    assert_eq!(fsm.phase(), &Phase::Stopped { rounds: 0 });
    assert!(fx.contains(&Effect::RunStopped { rounds: 0 }));
}

#[test]
fn an_answer_to_an_earlier_run_is_dropped_as_late() {
    let (mut fsm, _) = in_round_one();
    let fx = fsm.handle(Event::Outdated("a".into()));
    assert_eq!(
        fx,
        vec![Effect::Drop {
            from: "a".into(),
            reason: DropReason::Late
        }]
    );
    assert_eq!(fsm.drops().late, 1);
    // It still owes this run's answer.
    let fx = fsm.handle(valid("a", 1, 0));
    assert!(fx.iter().any(|e| matches!(e, Effect::Keep { .. })));
}

/// A closed round is announced for its commit before the next round's
/// request; a round that has evaluation closes after it, not at aggregation.
#[test]
fn a_round_closes_after_its_last_stage_and_before_the_next_request() {
    let (mut fsm, _) = in_round_one();
    let fx = through_training(&mut fsm, 1, &["a", "b", "c"]);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::RoundClosed { .. })),
        "{fx:?}"
    );
    assert_eq!(fsm.phase(), &evaluating(1));
    fsm.handle(evaluation("a", 1));
    fsm.handle(evaluation("b", 1));
    let fx = fsm.handle(evaluation("c", 1));
    let closed = fx
        .iter()
        .position(|e| e == &Effect::RoundClosed { round: 1 })
        .expect("round 1 closed");
    let next = fx
        .iter()
        .position(|e| {
            matches!(
                e,
                Effect::Request {
                    stage: StageKind::Train,
                    round: 2,
                    ..
                }
            )
        })
        .expect("round 2 asked for");
    assert!(closed < next, "{fx:?}");
    // The last round closes before the run finishes.
    through_training(&mut fsm, 2, &["a", "b", "c"]);
    fsm.handle(evaluation("a", 2));
    fsm.handle(evaluation("b", 2));
    let fx = fsm.handle(evaluation("c", 2));
    assert_eq!(
        fx[fx.len() - 2..],
        [
            Effect::RoundClosed { round: 2 },
            Effect::RunFinished { rounds: 2 }
        ]
    );
}

/// A resumed run assembles, skips the preparation (its result is in the
/// committed model) and begins at the round after its last commit.
#[test]
fn a_resumed_run_begins_after_its_last_committed_round() {
    let mut fsm = TaskFsm::new(FsmConfig {
        rounds: 5,
        ..config()
    });
    let fx = fsm.handle(Event::Resume { rounds: 5, after: 3 });
    assert_eq!(fsm.phase(), &Phase::Assembling, "{fx:?}");
    joined(&mut fsm, &["a"]);
    let fx = fsm.handle(Event::Joined("b".into()));
    assert_eq!(fsm.phase(), &training(4, 0));
    assert!(fx.contains(&Effect::Request {
        stage: StageKind::Train,
        round: 4,
        attempt: 0,
        to: ids(&["a", "b"]),
    }));
    // Stopped now, it reports the committed rounds.
    fsm.handle(Event::Stop);
    assert_eq!(fsm.phase(), &Phase::Stopped { rounds: 3 });
    // Nothing committed yet: it starts over with the preparation.
    let mut fresh = TaskFsm::new(config());
    joined(&mut fresh, &["a", "b"]);
    fresh.handle(Event::Resume { rounds: 2, after: 0 });
    assert_eq!(fresh.phase(), &preparing(0));
    // Every round committed, only the end unrecorded: it finishes at once.
    let mut done = TaskFsm::new(config());
    let fx = done.handle(Event::Resume { rounds: 2, after: 2 });
    assert_eq!(done.phase(), &Phase::Finished { rounds: 2 });
    assert_eq!(fx, vec![Effect::RunFinished { rounds: 2 }]);
}

fn secure_config() -> FsmConfig {
    FsmConfig {
        rounds: 1,
        expected_hospitals: 4,
        assemble_timeout: Duration::from_secs(60),
        protocol: Protocol::secure(false, 3, 1, DEADLINE),
    }
}

fn asked(fx: &[Effect], stage: StageKind) -> Option<(u32, Vec<HospitalId>)> {
    fx.iter().find_map(|e| match e {
        Effect::Request {
            stage: s,
            attempt,
            to,
            ..
        } if *s == stage => Some((*attempt, to.clone())),
        _ => None,
    })
}

#[test]
fn secure_stages_ask_whom_the_previous_stage_kept_in_the_same_attempt() {
    let mut fsm = TaskFsm::new(secure_config());
    joined(&mut fsm, &["a", "b", "c", "d"]);
    let fx = fsm.handle(Event::Start { rounds: 1 });
    assert_eq!(
        asked(&fx, StageKind::Setup),
        Some((0, ids(&["a", "b", "c", "d"])))
    );
    fsm.handle(answer("a", StageKind::Setup, 1, 0, Verdict::Usable));
    fsm.handle(answer("b", StageKind::Setup, 1, 0, Verdict::Usable));
    fsm.handle(answer("c", StageKind::Setup, 1, 0, Verdict::Usable));
    // d declines setup: share keys asks a, b, c only.
    let fx = fsm.handle(answer(
        "d",
        StageKind::Setup,
        1,
        0,
        Verdict::Declined("policy".into()),
    ));
    assert_eq!(asked(&fx, StageKind::ShareKeys), Some((0, ids(&["a", "b", "c"]))));
    for h in ["a", "b", "c"] {
        fsm.handle(answer(h, StageKind::ShareKeys, 1, 0, Verdict::Usable));
    }
    assert_eq!(fsm.phase(), &training(1, 0));
    for h in ["a", "b", "c"] {
        fsm.handle(answer(h, StageKind::Train, 1, 0, Verdict::Usable));
    }
    // Training closed: unmask next, not aggregation.
    assert!(matches!(
        fsm.phase(),
        Phase::Collecting {
            stage: StageKind::Unmask,
            ..
        }
    ));
    fsm.handle(answer("a", StageKind::Unmask, 1, 0, Verdict::Usable));
    fsm.handle(answer("b", StageKind::Unmask, 1, 0, Verdict::Usable));
    let fx = fsm.handle(answer("c", StageKind::Unmask, 1, 0, Verdict::Usable));
    assert!(fx.contains(&Effect::StageClosed {
        stage: StageKind::Unmask,
        round: 1,
        from: ids(&["a", "b", "c"]),
    }));
    assert_eq!(fsm.phase(), &Phase::Aggregating { round: 1 });
}

#[test]
fn a_secure_attempt_that_cannot_go_on_restarts_from_setup_then_aborts() {
    let mut fsm = TaskFsm::new(secure_config());
    joined(&mut fsm, &["a", "b", "c", "d"]);
    fsm.handle(Event::Start { rounds: 1 });
    let mut fx = Vec::new();
    for h in ["a", "b", "c", "d"] {
        fx = fsm.handle(answer(h, StageKind::Setup, 1, 0, Verdict::Usable));
    }
    let share_keys_deadline = last_timer(&fx);
    // Two of four share keys: below the quorum of 3 at the deadline.
    fsm.handle(answer("a", StageKind::ShareKeys, 1, 0, Verdict::Usable));
    fsm.handle(answer("b", StageKind::ShareKeys, 1, 0, Verdict::Usable));
    let fx = fsm.handle(Event::DeadlineExpired(share_keys_deadline));
    // A new attempt from setup, asking every member again.
    assert_eq!(
        asked(&fx, StageKind::Setup),
        Some((1, ids(&["a", "b", "c", "d"])))
    );
    // The secure sum aborts during the aggregation of attempt 1: no retry is left.
    for h in ["a", "b", "c", "d"] {
        fsm.handle(answer(h, StageKind::Setup, 1, 1, Verdict::Usable));
    }
    for stage in [StageKind::ShareKeys, StageKind::Train, StageKind::Unmask] {
        for h in ["a", "b", "c", "d"] {
            fsm.handle(answer(h, stage, 1, 1, Verdict::Usable));
        }
    }
    assert_eq!(fsm.phase(), &Phase::Aggregating { round: 1 });
    let fx = fsm.handle(Event::RoundFailed {
        round: 1,
        reason: "round 1: only 2 of 3 shares".into(),
    });
    assert!(matches!(fsm.phase(), Phase::Aborted { reason } if reason.contains("2 of 3 shares")));
    assert!(fx.contains(&Effect::DiscardCollected));
    // An answer of the aborted attempt is late.
    let fx = fsm.handle(answer("a", StageKind::Unmask, 1, 1, Verdict::Usable));
    assert!(matches!(
        fx[..],
        [Effect::Drop {
            reason: DropReason::Late,
            ..
        }]
    ));
}
