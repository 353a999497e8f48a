//! Whole federations of real actors in one process, on labelled synthetic
//! data (two Gaussian blobs), exercising the runtime's fault handling.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};

use medfed_actors::coordinator::fsm::{FsmConfig, Phase};
use medfed_actors::coordinator::{Protocol, Scaling};
use medfed_actors::{
    Coordinator, CoordinatorArgs, CoordinatorMsg, EventBus, FederationEvent, Hospital, HospitalArgs,
    HospitalLearner, Recording, RunOutcome, RunReport, RunRequest, TaskSetup, ToHospital,
};
use medfed_models::aggregate::{FedAvg, UpdateCheck};
use medfed_models::data::synthetic::gaussian_blobs;
use medfed_models::data::{Dataset, MomentSums, Partition};
use medfed_models::learner::logistic::{LocalDp, LogisticEvaluator, LogisticLearner, StatsPolicy};
use medfed_models::learner::private::{Budget, CountRelease, PrivateLearner};
use medfed_models::learner::{DpLearner, GlobalModel, Learner, LocalUpdate, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::privacy::bounds::FeatureBounds;
use medfed_models::privacy::ledger::{Ledger, LedgerKey};
use medfed_models::privacy::mechanisms::NoiseSource;
use medfed_models::{Layout, Result as ModelResult};

const TASK: &str = "synthetic";

/// How a test hospital misbehaves.
#[derive(Clone, Copy)]
enum Behaviour {
    Honest,
    /// Sends NaN in its update.
    Poisoned,
    /// Takes this long per round.
    Slow(Duration),
}

struct TestLearner {
    inner: LogisticLearner,
    behaviour: Behaviour,
}

impl Learner for TestLearner {
    fn layout(&self) -> Arc<Layout> {
        self.inner.layout()
    }
    fn num_examples(&self) -> usize {
        self.inner.num_examples()
    }
    fn feature_stats(&mut self) -> ModelResult<Option<MomentSums>> {
        self.inner.feature_stats()
    }
    fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> ModelResult<LocalUpdate> {
        if let Behaviour::Slow(d) = self.behaviour {
            std::thread::sleep(d);
        }
        let mut update = self.inner.train(global, plan)?;
        if let Behaviour::Poisoned = self.behaviour {
            update.delta.as_mut_slice()[0] = f32::NAN;
        }
        Ok(update)
    }
    fn evaluate(&mut self, global: &GlobalModel) -> ModelResult<Metrics> {
        self.inner.evaluate(global)
    }
}

struct Fed {
    coordinator: ActorRef<CoordinatorMsg>,
    hospitals: Vec<ActorRef<ToHospital>>,
    /// A recorder: every event, in order.
    events: Recording,
}

fn data() -> (Vec<Dataset>, Dataset) {
    let all = gaussian_blobs(1200, 6, 0.4, 1.5, 11);
    let train = all.select(&(0..1000).collect::<Vec<_>>());
    let test = all.select(&(1000..1200).collect::<Vec<_>>());
    let shards = Partition::Iid
        .split(&train, 3, 5)
        .unwrap()
        .iter()
        .map(|rows| train.select(rows))
        .collect();
    (shards, test)
}

async fn federation(behaviours: &[Behaviour], min_hospitals: usize, rounds: u32, timeout: Duration) -> Fed {
    federation_on(EventBus::default(), behaviours, min_hospitals, rounds, timeout).await
}

/// As `federation`, publishing on `bus` (record on it first to see the joins).
async fn federation_on(
    bus: EventBus,
    behaviours: &[Behaviour],
    min_hospitals: usize,
    rounds: u32,
    timeout: Duration,
) -> Fed {
    let (mut shards, test) = data();
    let events = bus.record("test");
    let setup = TaskSetup {
        name: TASK.into(),
        fsm: FsmConfig {
            rounds,
            expected_hospitals: min_hospitals,
            assemble_timeout: Duration::from_secs(30),
            protocol: Protocol::federated(true, min_hospitals, 1, timeout),
        },
        plan: TrainPlan {
            round: 0,
            attempt: 0,
            local_epochs: 2,
            batch_size: 16,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 7,
            proximal_mu: 0.0,
            privacy: None,
        },
        check: UpdateCheck {
            max_examples: None,
            max_norm: Some(100.0),
        },
        max_hospitals: None,
        evaluator: Box::new(LogisticEvaluator::new(test).unwrap()),
        strategy: Box::new(FedAvg),
        scaling: Scaling::Federated,
        checkpoint_dir: None,
        held_out: None,
        features: None,
        expected_names: Vec::new(),
        secure: None,
    };
    let (coordinator, _) = Actor::spawn(
        None,
        Coordinator,
        CoordinatorArgs {
            tasks: vec![setup],
            events: bus,
            store: None,
            denied: Vec::new(),
        },
    )
    .await
    .unwrap();
    let mut hospitals = Vec::new();
    for (i, behaviour) in behaviours.iter().enumerate() {
        let name = format!("h{}", i + 1);
        let shard = shards.remove(0);
        hospitals.push(spawn_hospital(&coordinator, &name, shard, *behaviour).await);
    }
    Fed {
        coordinator,
        hospitals,
        events,
    }
}

async fn spawn_hospital(
    coordinator: &ActorRef<CoordinatorMsg>,
    name: &str,
    shard: Dataset,
    behaviour: Behaviour,
) -> ActorRef<ToHospital> {
    let learner = TestLearner {
        inner: LogisticLearner::new(name, shard).unwrap(),
        behaviour,
    };
    spawn_hospital_with(coordinator, name, HospitalLearner::Open(Box::new(learner))).await
}

async fn spawn_hospital_with(
    coordinator: &ActorRef<CoordinatorMsg>,
    name: &str,
    learner: HospitalLearner,
) -> ActorRef<ToHospital> {
    let (actor, _) = Actor::spawn(
        None,
        Hospital,
        HospitalArgs {
            name: name.into(),
            task: TASK.into(),
            kind: "tabular".into(),
            learner,
            coordinator: coordinator.clone(),
            local_test: None,
            held_out: None,
            features: None,
            attack: None,
            site_record: false,
            observer: None,
            secagg_identity: None,
            crash_at: None,
            secure_policy: Default::default(),
        },
    )
    .await
    .unwrap();
    actor
}

impl Fed {
    async fn start(&self, rounds: Option<u32>) {
        ractor::call!(self.coordinator, |reply| CoordinatorMsg::StartRun {
            request: RunRequest {
                rounds,
                ..RunRequest::default()
            },
            reply
        })
        .unwrap()
        .unwrap();
    }

    /// Events until the run ends (bounded by a generous deadline).
    async fn until_end(&mut self) -> Vec<FederationEvent> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("run did not end within 60 s")
                .expect("event bus closed its recordings");
            let end = matches!(event, FederationEvent::RunEnded { .. });
            seen.push(event);
            if end {
                return seen;
            }
        }
    }

    async fn report(&self) -> RunReport {
        ractor::call!(self.coordinator, CoordinatorMsg::Report).unwrap()
    }
}

fn final_accuracy(report: &RunReport) -> f64 {
    report.tasks[TASK]
        .rounds
        .last()
        .expect("at least one round")
        .metrics
        .accuracy
}

#[tokio::test]
async fn honest_federation_trains_and_publishes_events_in_order() {
    let mut fed = federation(&[Behaviour::Honest; 3], 3, 4, Duration::from_secs(30)).await;
    fed.start(None).await;
    let events = fed.until_end().await;
    let report = fed.report().await;
    assert_eq!(report.tasks[TASK].phase, Phase::Finished { rounds: 4 });
    assert_eq!(report.tasks[TASK].rounds.len(), 4);
    assert!(
        final_accuracy(&report) > 0.85,
        "accuracy {}",
        final_accuracy(&report)
    );
    let started = events
        .iter()
        .position(|e| matches!(e, FederationEvent::RunStarted { .. }))
        .expect("run started");
    let first_round = events
        .iter()
        .position(|e| matches!(e, FederationEvent::RoundStarted { .. }))
        .expect("a round started");
    assert!(started < first_round);
    assert!(matches!(
        events.last(),
        Some(FederationEvent::RunEnded {
            outcome: RunOutcome::Finished,
            ..
        })
    ));
    let rounds: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            FederationEvent::RoundAggregated { round, .. } => Some(*round),
            _ => None,
        })
        .collect();
    assert_eq!(rounds, vec![1, 2, 3, 4]);
    let accepted = events
        .iter()
        .filter(|e| matches!(e, FederationEvent::UpdateAccepted { .. }))
        .count();
    assert_eq!(accepted, 12);
}

/// A recorder that handles nothing until the run is over — as slow as a
/// recorder can be — holds no round back and loses nothing: the run ends
/// while it is blocked, its backlog (the exported depth) holds every event,
/// and it then receives exactly what a prompt recorder saw, in order.
#[tokio::test]
async fn a_blocked_recorder_stalls_no_round_and_then_receives_every_event_in_order() {
    let rounds = 20;
    let bus = EventBus::default();
    let mut blocked = bus.record("blocked");
    let mut fed = federation_on(
        bus.clone(),
        &[Behaviour::Honest; 3],
        3,
        rounds,
        Duration::from_secs(30),
    )
    .await;
    let started = std::time::Instant::now();
    fed.start(None).await;
    let prompt = fed.until_end().await;
    let wall = started.elapsed();
    let report = fed.report().await;
    assert_eq!(report.tasks[TASK].phase, Phase::Finished { rounds });
    let depth = |bus: &EventBus| {
        bus.depths()
            .into_iter()
            .find(|(name, _)| name == "blocked")
            .map(|(_, depth)| depth)
            .expect("the blocked recorder is registered")
    };
    let held = depth(&bus);
    assert!(
        held as usize >= prompt.len(),
        "backlog {held} < {} events",
        prompt.len()
    );
    assert_eq!(blocked.depth(), held);
    // Now it drains, slowly; the prompt recorder was registered after it, so
    // both saw the same stream from the hospitals' joins on.
    let mut received = Vec::new();
    while received.len() < prompt.len() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        received.push(blocked.recv().await.expect("an event"));
    }
    assert_eq!(received, prompt);
    assert_eq!(depth(&bus), held - prompt.len() as u64);
    let aggregated = received
        .iter()
        .filter(|e| matches!(e, FederationEvent::RoundAggregated { .. }))
        .count();
    assert_eq!(aggregated, rounds as usize);
    // The same run without the blocked recorder, for the wall-time comparison
    // (printed, not asserted: the machines are shared and noisy).
    let mut plain = federation(&[Behaviour::Honest; 3], 3, rounds, Duration::from_secs(30)).await;
    let started = std::time::Instant::now();
    plain.start(None).await;
    plain.until_end().await;
    eprintln!(
        "{} events over {rounds} rounds: {:.1} ms with a blocked recorder, {:.1} ms without",
        prompt.len(),
        wall.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
}

#[tokio::test]
async fn same_seed_gives_identical_results() {
    let mut a = federation(&[Behaviour::Honest; 3], 3, 3, Duration::from_secs(30)).await;
    a.start(None).await;
    a.until_end().await;
    let mut b = federation(&[Behaviour::Honest; 3], 3, 3, Duration::from_secs(30)).await;
    b.start(None).await;
    b.until_end().await;
    let (ra, rb) = (a.report().await, b.report().await);
    let metrics = |r: &RunReport| {
        r.tasks[TASK]
            .rounds
            .iter()
            .map(|x| x.metrics.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(&ra), metrics(&rb));
}

#[tokio::test]
async fn poisoned_update_is_rejected_and_the_run_completes_with_quorum() {
    let mut fed = federation(
        &[Behaviour::Honest, Behaviour::Poisoned, Behaviour::Honest],
        2,
        2,
        Duration::from_secs(30),
    )
    .await;
    fed.start(None).await;
    let events = fed.until_end().await;
    let report = fed.report().await;
    let task = &report.tasks[TASK];
    assert_eq!(task.phase, Phase::Finished { rounds: 2 });
    assert_eq!(task.rejected.get("non_finite"), Some(&2));
    assert!(task.rounds.iter().all(|r| r.participants == 2));
    assert!(events.iter().any(|e| matches!(e,
        FederationEvent::UpdateRejected { hospital, reason, .. } if hospital == "h2" && reason.contains("not finite"))));
}

#[tokio::test]
async fn slow_hospital_misses_the_deadline_and_its_late_update_is_dropped() {
    let mut fed = federation(
        &[
            Behaviour::Honest,
            Behaviour::Honest,
            Behaviour::Slow(Duration::from_millis(1500)),
        ],
        2,
        2,
        Duration::from_millis(500),
    )
    .await;
    fed.start(None).await;
    fed.until_end().await;
    // Let the slow hospital's answers arrive after the run.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let report = fed.report().await;
    let task = &report.tasks[TASK];
    assert_eq!(task.phase, Phase::Finished { rounds: 2 });
    assert!(task.rounds.iter().all(|r| r.participants == 2));
    assert!(task.drops.late >= 1, "drops: {:?}", task.drops);
}

#[tokio::test]
async fn hospital_killed_mid_round_is_counted_out_and_the_run_completes() {
    let mut fed = federation(
        &[
            Behaviour::Honest,
            Behaviour::Honest,
            Behaviour::Slow(Duration::from_millis(400)),
        ],
        2,
        3,
        Duration::from_secs(30),
    )
    .await;
    fed.start(None).await;
    // Wait until round 2 starts, then kill the slow hospital while it trains.
    loop {
        if let FederationEvent::RoundStarted { round: 2, .. } = fed.events.recv().await.unwrap() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    fed.hospitals[2].kill();
    let events = fed.until_end().await;
    let report = fed.report().await;
    let task = &report.tasks[TASK];
    assert_eq!(task.phase, Phase::Finished { rounds: 3 });
    assert_eq!(task.rounds[1].participants, 2);
    assert_eq!(task.hospitals, 2);
    assert!(events
        .iter()
        .any(|e| matches!(e, FederationEvent::HospitalLeft { hospital, .. } if hospital == "h3")));
}

#[tokio::test]
async fn below_quorum_retries_then_aborts_with_reason() {
    let mut fed = federation(
        &[Behaviour::Honest, Behaviour::Poisoned, Behaviour::Poisoned],
        2,
        2,
        Duration::from_secs(30),
    )
    .await;
    fed.start(None).await;
    let events = fed.until_end().await;
    assert!(matches!(
        events.last(),
        Some(FederationEvent::RunEnded {
            outcome: RunOutcome::Aborted,
            ..
        })
    ));
    let retries = events
        .iter()
        .filter(|e| matches!(e, FederationEvent::RoundBelowQuorum { .. }))
        .count();
    assert_eq!(retries, 2); // attempt 0 and the one retry
    let report = fed.report().await;
    let Phase::Aborted { reason } = &report.tasks[TASK].phase else {
        panic!("expected aborted");
    };
    assert!(
        reason.contains("round 1: 1 of 2 required updates accepted after 2 attempts"),
        "{reason}"
    );
}

#[tokio::test]
async fn stop_ends_the_run_and_a_new_run_can_start() {
    let mut fed = federation(
        &[Behaviour::Slow(Duration::from_millis(200)); 3],
        3,
        50,
        Duration::from_secs(30),
    )
    .await;
    fed.start(None).await;
    loop {
        if let FederationEvent::RoundStarted { round: 2, .. } = fed.events.recv().await.unwrap() {
            break;
        }
    }
    let stopped = ractor::call!(fed.coordinator, CoordinatorMsg::Stop).unwrap();
    assert!(stopped.is_some_and(|id| id.starts_with("run-")));
    let events = fed.until_end().await;
    assert!(matches!(
        events.last(),
        Some(FederationEvent::RunEnded {
            outcome: RunOutcome::Stopped,
            ..
        })
    ));
    let report = fed.report().await;
    // Stopped in round 2: round 1 was aggregated, and the report keeps it.
    assert_eq!(report.tasks[TASK].phase, Phase::Stopped { rounds: 1 });
    assert_eq!(report.tasks[TASK].rounds.len(), 1);
    // A second start while idle works; while active it is refused.
    fed.start(Some(1)).await;
    let refused = ractor::call!(fed.coordinator, |reply| CoordinatorMsg::StartRun {
        request: RunRequest::default(),
        reply
    })
    .unwrap();
    assert!(matches!(
        refused.unwrap_err(),
        medfed_actors::StartRefused::RunActive(_)
    ));
    fed.until_end().await;
    let report = fed.report().await;
    assert_eq!(report.tasks[TASK].phase, Phase::Finished { rounds: 1 });
    assert_eq!(report.tasks[TASK].rounds.len(), 1);
}

#[tokio::test]
async fn duplicate_hospital_name_is_refused() {
    let mut fed = federation(&[Behaviour::Honest; 2], 2, 1, Duration::from_secs(30)).await;
    let (mut shards, _) = data();
    let impostor = spawn_hospital(&fed.coordinator, "h1", shards.remove(2), Behaviour::Honest).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = tokio::time::timeout_at(deadline, fed.events.recv())
            .await
            .unwrap()
            .unwrap();
        if let FederationEvent::HospitalRefused { hospital, reason, .. } = e {
            assert_eq!(hospital, "h1");
            assert!(reason.contains("already in use"), "{reason}");
            break;
        }
    }
    // The refused hospital stops itself.
    for _ in 0..100 {
        if impostor.get_status() == ractor::ActorStatus::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(impostor.get_status(), ractor::ActorStatus::Stopped);
    fed.start(None).await;
    fed.until_end().await;
    assert_eq!(fed.report().await.tasks[TASK].hospitals, 2);
}

/// With DP on, a hospital's actor holds a private learner: it announces
/// the noised count, sends noised statistics and noised updates weighted by
/// that count, and no loss.
#[tokio::test]
async fn with_dp_on_a_hospital_sends_only_noised_releases() {
    let mut fed = federation(&[Behaviour::Honest; 2], 2, 1, Duration::from_secs(30)).await;
    let (mut shards, _) = data();
    let shard = shards.remove(2);
    let exact = shard.len();
    let inner = LogisticLearner::new("guarded", shard)
        .unwrap()
        .with_privacy(
            LocalDp::DpSgd {
                sampling_rate: 0.5,
                max_grad_norm: 1.0,
                noise_multiplier: 1.0,
                local_steps: 5,
            },
            // The federation scales features from every hospital's sums: noised ones here.
            StatsPolicy::Noised {
                bounds: FeatureBounds {
                    lo: vec![-6.0; 6],
                    hi: vec![8.0; 6],
                },
                noise_multiplier: 5.0,
            },
            NoiseSource::seeded(3),
        )
        .unwrap();
    let key = LedgerKey {
        dataset: TASK.into(),
        fingerprint: inner.fingerprint(),
    };
    let private = PrivateLearner::new(
        Box::new(inner),
        Ledger::in_memory(&key),
        Budget {
            epsilon: 50.0,
            delta: 1e-5,
        },
        "guarded",
        "test",
        CountRelease {
            noise_multiplier: 10.0,
        },
        &mut NoiseSource::seeded(4),
    )
    .unwrap();
    let announced = private.announced_samples();
    spawn_hospital_with(
        &fed.coordinator,
        "guarded",
        HospitalLearner::Private(Box::new(private)),
    )
    .await;
    fed.start(None).await;
    let events = fed.until_end().await;
    assert!(events.iter().any(|e| matches!(e,
        FederationEvent::HospitalJoined { hospital, samples, .. } if hospital == "guarded" && *samples == announced)));
    assert_ne!(
        announced, exact,
        "the exact count left the hospital (or the noise was zero)"
    );
    assert!(events.iter().any(|e| matches!(e,
        FederationEvent::UpdateAccepted { hospital, num_examples, train_loss: None, epsilon_spent: Some(_), .. }
            if hospital == "guarded" && *num_examples == announced)));
    let report = fed.report().await;
    assert_eq!(report.tasks[TASK].phase, Phase::Finished { rounds: 1 });
    assert_eq!(report.tasks[TASK].rounds[0].participants, 3);
}
