use super::*;

fn config() -> FsmConfig {
    FsmConfig {
        min_hospitals: 2,
        rounds: 2,
        max_retries: 1,
        round_timeout: Duration::from_secs(30),
        assemble_timeout: Duration::from_secs(60),
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

fn valid(from: &str, round: u32, attempt: u32) -> Event {
    Event::UpdateArrived {
        from: from.into(),
        round,
        attempt,
        verdict: Verdict::Valid,
    }
}

fn stats(from: &str, attempt: u32) -> Event {
    Event::StatsArrived {
        from: from.into(),
        attempt,
        usable: true,
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
    assert_eq!(fsm.phase(), &Phase::Training { round: 1, attempt: 0 });
    (fsm, last_timer(&fx))
}

#[test]
fn start_without_quorum_assembles_then_prepares_when_enough_join() {
    let mut fsm = TaskFsm::new(config());
    let fx = fsm.handle(Event::Start { rounds: 3 });
    assert_eq!(fsm.phase(), &Phase::Assembling);
    assert!(matches!(fx[..], [Effect::ArmDeadline { after, .. }] if after == Duration::from_secs(60)));
    assert!(fsm.handle(Event::Joined("a".into())).is_empty());
    let fx = fsm.handle(Event::Joined("b".into()));
    assert_eq!(fsm.phase(), &Phase::Preparing { attempt: 0 });
    assert!(fx.contains(&Effect::RequestStats {
        to: ids(&["a", "b"]),
        attempt: 0
    }));
    assert_eq!(fsm.target_rounds(), 3);
}

#[test]
fn assembling_deadline_aborts_with_reason() {
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
        vec![Effect::KeepStats { from: "a".into() }]
    );
    let fx = fsm.handle(stats("b", 0));
    assert_eq!(fx[0], Effect::KeepStats { from: "b".into() });
    assert_eq!(
        fx[1],
        Effect::CombineStats {
            from: ids(&["a", "b"])
        }
    );
    assert!(fx.contains(&Effect::RequestTraining {
        to: ids(&["a", "b"]),
        round: 1,
        attempt: 0
    }));
    assert!(fx.contains(&Effect::RoundStarted {
        round: 1,
        attempt: 0,
        participants: ids(&["a", "b"])
    }));
}

#[test]
fn full_run_of_two_rounds_finishes() {
    let (mut fsm, _) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    fsm.handle(valid("b", 1, 0));
    let fx = fsm.handle(valid("c", 1, 0));
    assert!(fx.contains(&Effect::Aggregate {
        round: 1,
        from: ids(&["a", "b", "c"])
    }));
    assert_eq!(fsm.phase(), &Phase::Evaluating { round: 1 });
    let fx = fsm.handle(Event::Evaluated { round: 1 });
    assert_eq!(fsm.phase(), &Phase::Training { round: 2, attempt: 0 });
    assert!(fx.contains(&Effect::DiscardCollected));
    for h in ["a", "b", "c"] {
        fsm.handle(valid(h, 2, 0));
    }
    let fx = fsm.handle(Event::Evaluated { round: 2 });
    assert_eq!(fsm.phase(), &Phase::Finished { rounds: 2 });
    assert_eq!(fx, vec![Effect::RunFinished { rounds: 2 }]);
}

#[test]
fn deadline_closes_round_with_quorum() {
    let (mut fsm, timer) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    fsm.handle(valid("c", 1, 0));
    let fx = fsm.handle(Event::DeadlineExpired(timer));
    assert!(fx.contains(&Effect::Aggregate {
        round: 1,
        from: ids(&["a", "c"])
    }));
}

#[test]
fn deadline_below_quorum_retries_then_aborts() {
    let (mut fsm, timer) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    let fx = fsm.handle(Event::DeadlineExpired(timer));
    assert!(fx.contains(&Effect::RoundBelowQuorum {
        round: 1,
        attempt: 0,
        accepted: 1,
        needed: 2
    }));
    assert_eq!(fsm.phase(), &Phase::Training { round: 1, attempt: 1 });
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
    assert_eq!(fsm.phase(), &Phase::Training { round: 1, attempt: 1 });
    assert_eq!(
        fsm.handle(valid("b", 1, 0)),
        vec![Effect::Drop {
            from: "b".into(),
            reason: DropReason::Late
        }]
    );
    assert_eq!(
        fsm.drops(),
        &DropCounts {
            late: 1,
            duplicate: 1,
            unknown_sender: 1,
            unexpected: 0
        }
    );
}

#[test]
fn update_for_a_round_being_evaluated_is_late() {
    let (mut fsm, _) = in_round_one();
    for h in ["a", "b"] {
        fsm.handle(valid(h, 1, 0));
    }
    fsm.handle(Event::Left("c".into()));
    assert_eq!(fsm.phase(), &Phase::Evaluating { round: 1 });
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
    assert!(fx.contains(&Effect::Aggregate {
        round: 1,
        from: ids(&["a", "b"])
    }));
    assert!(!fsm.members().contains("c"));
}

#[test]
fn refused_and_declined_updates_count_as_answers_but_not_toward_quorum() {
    let (mut fsm, _) = in_round_one();
    fsm.handle(valid("a", 1, 0));
    let fx = fsm.handle(Event::UpdateArrived {
        from: "b".into(),
        round: 1,
        attempt: 0,
        verdict: Verdict::Invalid {
            label: "norm_too_large".into(),
            reason: "update norm 12 exceeds the bound 10".into(),
        },
    });
    assert!(matches!(&fx[0], Effect::RefuseUpdate { from, .. } if from == "b"));
    let fx = fsm.handle(Event::UpdateArrived {
        from: "c".into(),
        round: 1,
        attempt: 0,
        verdict: Verdict::Declined("privacy budget exhausted".into()),
    });
    // Everyone answered, one usable update: below quorum, so a retry starts.
    assert!(fx.contains(&Effect::RoundBelowQuorum {
        round: 1,
        attempt: 0,
        accepted: 1,
        needed: 2
    }));
    assert_eq!(fsm.phase(), &Phase::Training { round: 1, attempt: 1 });
}

#[test]
fn a_hospital_joining_mid_round_is_asked_from_the_next_round() {
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
    for h in ["a", "b", "c"] {
        fsm.handle(valid(h, 1, 0));
    }
    let fx = fsm.handle(Event::Evaluated { round: 1 });
    assert!(fx.contains(&Effect::RequestTraining {
        to: ids(&["a", "b", "c", "d"]),
        round: 2,
        attempt: 0
    }));
}

#[test]
fn stop_in_every_phase() {
    // Idle: nothing happens.
    let mut fsm = TaskFsm::new(config());
    assert!(fsm.handle(Event::Stop).is_empty());
    assert_eq!(fsm.phase(), &Phase::Idle);

    let stopped = |fsm: &mut TaskFsm| {
        let fx = fsm.handle(Event::Stop);
        assert_eq!(
            fsm.phase(),
            &Phase::Aborted {
                reason: "stopped by operator".into()
            }
        );
        assert!(fx.contains(&Effect::DiscardCollected));
        assert!(fx.contains(&Effect::RunAborted {
            reason: "stopped by operator".into()
        }));
    };
    // Assembling.
    let mut fsm = TaskFsm::new(config());
    fsm.handle(Event::Start { rounds: 2 });
    stopped(&mut fsm);
    // Preparing.
    let mut fsm = TaskFsm::new(config());
    joined(&mut fsm, &["a", "b"]);
    fsm.handle(Event::Start { rounds: 2 });
    assert!(matches!(fsm.phase(), Phase::Preparing { .. }));
    stopped(&mut fsm);
    // Training: the live deadline is disarmed.
    let (mut fsm, timer) = in_round_one();
    stopped(&mut fsm);
    assert!(fsm.handle(Event::DeadlineExpired(timer)).is_empty());
    // Evaluating: a late evaluation result changes nothing.
    let (mut fsm, _) = in_round_one();
    for h in ["a", "b", "c"] {
        fsm.handle(valid(h, 1, 0));
    }
    stopped(&mut fsm);
    assert!(fsm.handle(Event::Evaluated { round: 1 }).is_empty());
    assert!(matches!(fsm.phase(), Phase::Aborted { .. }));
    // Finished: stays finished.
    let mut fsm = TaskFsm::new(FsmConfig {
        rounds: 1,
        ..config()
    });
    joined(&mut fsm, &["a", "b"]);
    fsm.handle(Event::Start { rounds: 1 });
    fsm.handle(stats("a", 0));
    fsm.handle(stats("b", 0));
    fsm.handle(valid("a", 1, 0));
    fsm.handle(valid("b", 1, 0));
    fsm.handle(Event::Evaluated { round: 1 });
    assert_eq!(fsm.phase(), &Phase::Finished { rounds: 1 });
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
    assert_eq!(fsm.phase(), &Phase::Preparing { attempt: 1 });
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
    assert_eq!(fsm.phase(), &Phase::Preparing { attempt: 0 });
    assert_eq!(fsm.target_rounds(), 4);
}

#[test]
fn evaluation_failure_aborts() {
    let (mut fsm, _) = in_round_one();
    for h in ["a", "b", "c"] {
        fsm.handle(valid(h, 1, 0));
    }
    fsm.handle(Event::EvaluationFailed {
        round: 1,
        reason: "shape".into(),
    });
    assert!(matches!(fsm.phase(), Phase::Aborted { reason } if reason.contains("evaluation failed")));
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
}

#[test]
fn declined_statistics_count_as_answers_but_not_toward_quorum() {
    let mut fsm = TaskFsm::new(config());
    joined(&mut fsm, &["a", "b", "c"]);
    fsm.handle(Event::Start { rounds: 1 });
    fsm.handle(stats("a", 0));
    let fx = fsm.handle(Event::StatsArrived {
        from: "b".into(),
        attempt: 0,
        usable: false,
    });
    assert!(fx.is_empty());
    let fx = fsm.handle(Event::StatsArrived {
        from: "c".into(),
        attempt: 0,
        usable: false,
    });
    assert!(fx.contains(&Effect::RoundBelowQuorum {
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
        fsm.handle(Event::UpdateArrived {
            from: h.into(),
            round: 1,
            attempt,
            verdict: Verdict::Declined("privacy budget exhausted: epsilon spent 3 of 3".into()),
        })
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
