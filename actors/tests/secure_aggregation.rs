//! Federations over a secure sum (SecAgg+), in one process with real
//! actors, on labelled synthetic data (two Gaussian blobs): the secure
//! round equals plain weighted FedAvg within the quantisation error, and a
//! hospital that dies at any of the four stages leaves the round to the
//! survivors; too many dead abort the run without a model.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use medfed_actors::coordinator::fsm::{FsmConfig, Phase};
use medfed_actors::coordinator::{Protocol, Scaling, SecureSettings, StageKind};
use medfed_actors::messages::secure::masked_words;
use medfed_actors::messages::TrainOutcome;
use medfed_actors::{
    Coordinator, CoordinatorArgs, CoordinatorMsg, CrashAt, EventBus, FederationEvent, Hospital, HospitalArgs,
    HospitalLearner, Recording, RunReport, RunRequest, TaskSetup, ToCoordinator,
};
use medfed_models::aggregate::{FedAvg, UpdateCheck};
use medfed_models::data::synthetic::gaussian_blobs;
use medfed_models::learner::logistic::{LogisticEvaluator, LogisticLearner};
use medfed_models::learner::TrainPlan;
use medfed_models::Params;

const TASK: &str = "synthetic";
const HOSPITALS: usize = 5;

fn settings() -> SecureSettings {
    SecureSettings {
        num_shares: None,
        threshold: None,
        clipping_range: 8.0,
        quantization_bits: 22,
        max_weight: 500,
        min_inputs: 3,
        max_update_norm: Some(100.0),
    }
}

struct Fed {
    coordinator: ActorRef<CoordinatorMsg>,
    events: Recording,
    /// Every hospital message the coordinator received.
    received: Arc<Mutex<Vec<ToCoordinator>>>,
}

/// Sits in front of the coordinator: records every hospital message, then
/// hands it on unchanged (the coordinator still binds it to its sender).
struct Tap;

impl Actor for Tap {
    type Msg = CoordinatorMsg;
    type State = (ActorRef<CoordinatorMsg>, Arc<Mutex<Vec<ToCoordinator>>>);
    type Arguments = Self::State;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: Self::State,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let CoordinatorMsg::FromHospital { message, .. } = &msg {
            state.1.lock().unwrap().push(message.clone());
        }
        state.0.send_message(msg)?;
        Ok(())
    }
}

/// Five hospitals (sizes 100..500: unequal weights), secure or not, with
/// `crashes` dying where they say.
async fn federation(secure: bool, rounds: u32, quorum: usize, crashes: &[(usize, CrashAt)]) -> Fed {
    federation_of(6, secure, rounds, quorum, crashes).await
}

async fn federation_of(
    features: usize,
    secure: bool,
    rounds: u32,
    quorum: usize,
    crashes: &[(usize, CrashAt)],
) -> Fed {
    let all = gaussian_blobs(1700, features, 0.4, 1.5, 11);
    let train = all.select(&(0..1500).collect::<Vec<_>>());
    let test = all.select(&(1500..1700).collect::<Vec<_>>());
    let sizes = [100, 200, 300, 400, 500];
    let mut start = 0;
    let shards: Vec<_> = sizes
        .iter()
        .map(|n| {
            let rows: Vec<usize> = (start..start + n).collect();
            start += n;
            train.select(&rows)
        })
        .collect();
    let bus = EventBus::default();
    let events = bus.record("test");
    let deadline = Duration::from_secs(20);
    let protocol = if secure {
        Protocol::secure(false, quorum, 1, deadline)
    } else {
        Protocol::federated(false, quorum, 1, deadline)
    };
    let setup = TaskSetup {
        name: TASK.into(),
        fsm: FsmConfig {
            rounds,
            expected_hospitals: HOSPITALS,
            assemble_timeout: Duration::from_secs(30),
            protocol,
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
        scaling: Scaling::None,
        checkpoint_dir: None,
        held_out: None,
        features: None,
        expected_names: Vec::new(),
        secure: secure.then(settings),
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
    let received = Arc::new(Mutex::new(Vec::new()));
    let (tap, _) = Actor::spawn(None, Tap, (coordinator.clone(), received.clone()))
        .await
        .unwrap();
    for (i, shard) in shards.into_iter().enumerate() {
        let name = format!("h{}", i + 1);
        let crash_at = crashes.iter().find(|(h, _)| *h == i).map(|(_, c)| *c);
        Actor::spawn(
            None,
            Hospital,
            HospitalArgs {
                name: name.clone(),
                task: TASK.into(),
                kind: "tabular".into(),
                learner: HospitalLearner::Open(Box::new(LogisticLearner::new(&name, shard).unwrap())),
                coordinator: tap.clone(),
                local_test: None,
                held_out: None,
                features: None,
                attack: None,
                site_record: false,
                observer: None,
                secagg_identity: None,
                crash_at,
                secure_policy: Default::default(),
            },
        )
        .await
        .unwrap();
    }
    Fed {
        coordinator,
        events,
        received,
    }
}

impl Fed {
    async fn run(&mut self) -> (Vec<FederationEvent>, RunReport) {
        ractor::call!(self.coordinator, |reply| CoordinatorMsg::StartRun {
            request: RunRequest::default(),
            reply
        })
        .unwrap()
        .unwrap();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("run did not end within 120 s")
                .expect("event bus closed its recordings");
            let end = matches!(event, FederationEvent::RunEnded { .. });
            seen.push(event);
            if end {
                break;
            }
        }
        let report = ractor::call!(self.coordinator, CoordinatorMsg::Report).unwrap();
        (seen, report)
    }

    async fn model(&self) -> Params {
        let checkpoint = ractor::call!(self.coordinator, |reply| CoordinatorMsg::Model {
            task: TASK.into(),
            reply
        })
        .unwrap()
        .expect("the task has a model");
        (*checkpoint.model.params).clone()
    }
}

fn participants(events: &[FederationEvent]) -> Vec<(u32, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            FederationEvent::RoundAggregated {
                round, participants, ..
            } => Some((*round, *participants)),
            _ => None,
        })
        .collect()
}

fn relative_error(a: &Params, b: &Params) -> f64 {
    let diff: f64 = a
        .as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b
        .as_slice()
        .iter()
        .map(|y| f64::from(*y).powi(2))
        .sum::<f64>()
        .sqrt();
    diff / norm
}

#[tokio::test]
async fn a_secure_round_equals_weighted_fedavg_within_the_quantisation_error() {
    let mut plain = federation(false, 1, 3, &[]).await;
    let (_, plain_report) = plain.run().await;
    let mut secure = federation(true, 1, 3, &[]).await;
    let (events, secure_report) = secure.run().await;
    assert_eq!(participants(&events), vec![(1, HOSPITALS)]);
    let error = relative_error(&secure.model().await, &plain.model().await);
    // Quantisation with 22 bits over [-8, 8]: a step of 3.8e-6 per coordinate.
    assert!(error <= 1e-4, "relative error {error:e}");
    let (a, b) = (
        &plain_report.tasks[TASK].rounds[0].metrics,
        &secure_report.tasks[TASK].rounds[0].metrics,
    );
    assert_eq!(a.accuracy, b.accuracy);
    // The stages ran in order, in one attempt.
    let mut phases: Vec<&'static str> = events
        .iter()
        .filter_map(|e| match e {
            FederationEvent::PhaseChanged { phase, .. } => Some(phase.name()),
            _ => None,
        })
        .collect();
    // Setup and share keys are both "securing"; the run may wait for the
    // last hello (they pass the tap).
    phases.dedup();
    phases.retain(|p| *p != "assembling");
    assert_eq!(
        phases,
        [
            "securing",
            "training",
            "unmasking",
            "aggregating",
            "evaluating",
            "finished"
        ]
    );
}

#[tokio::test]
async fn a_hospital_dying_at_any_stage_leaves_the_round_to_the_survivors() {
    for stage in [
        StageKind::Setup,
        StageKind::ShareKeys,
        StageKind::Train,
        StageKind::Unmask,
    ] {
        let crash = CrashAt { round: 1, stage };
        let mut fed = federation(true, 2, 3, &[(2, crash)]).await;
        let (events, report) = fed.run().await;
        assert_eq!(
            report.tasks[TASK].phase,
            Phase::Finished { rounds: 2 },
            "{stage:?}"
        );
        // Its input is lost unless it died during unmask, after sending it.
        let first = if stage == StageKind::Unmask { 5 } else { 4 };
        assert_eq!(participants(&events), vec![(1, first), (2, 4)], "{stage:?}");
        let attempts = events
            .iter()
            .filter(|e| matches!(e, FederationEvent::RoundStarted { round: 1, .. }))
            .count();
        assert_eq!(attempts, 1, "{stage:?}: the round completed without a retry");
    }
}

#[tokio::test]
async fn too_many_dead_hospitals_abort_the_run_without_unmasking() {
    let crash = CrashAt {
        round: 1,
        stage: StageKind::Train,
    };
    let crashes: Vec<(usize, CrashAt)> = (0..3).map(|h| (h, crash)).collect();
    let mut fed = federation(true, 2, 3, &crashes).await;
    let (events, report) = fed.run().await;
    let Phase::Aborted { reason } = &report.tasks[TASK].phase else {
        panic!("the run should abort, got {:?}", report.tasks[TASK].phase);
    };
    assert!(reason.contains("round 1"), "{reason}");
    assert!(participants(&events).is_empty(), "no round was aggregated");
}

/// Chi-square of the top bytes of `words` over 256 buckets (255 degrees of
/// freedom: the 99.9th percentile is 330.5).
fn top_byte_chi_square(words: &[u32]) -> f64 {
    let mut counts = [0f64; 256];
    for w in words {
        counts[(w >> 24) as usize] += 1.0;
    }
    let expected = words.len() as f64 / 256.0;
    counts.iter().map(|c| (c - expected).powi(2) / expected).sum()
}

/// What the coordinator receives of the hospitals' updates: under secure
/// aggregation only masked vectors, whose words are indistinguishable from
/// uniform; the same test on the plain run's updates fails by far.
#[tokio::test]
async fn the_coordinator_only_ever_receives_masked_vectors_that_look_uniform() {
    let updates = |fed: &Fed| -> Vec<ToCoordinator> {
        fed.received
            .lock()
            .unwrap()
            .iter()
            .filter(|m| matches!(m, ToCoordinator::Update { .. }))
            .cloned()
            .collect()
    };
    let mut secure = federation_of(500, true, 3, 3, &[]).await;
    secure.run().await;
    let received = updates(&secure);
    assert_eq!(received.len(), 15, "five hospitals, three rounds");
    let mut words = Vec::new();
    for m in &received {
        let ToCoordinator::Update {
            outcome: TrainOutcome::Masked { vector, .. },
            ..
        } = m
        else {
            panic!(
                "the coordinator received an update that is not masked: {}",
                m.name()
            );
        };
        words.extend(masked_words(vector).unwrap());
    }
    assert_eq!(words.len(), 15 * 502);
    let chi = top_byte_chi_square(&words);
    assert!(chi < 330.5, "chi-square {chi:.1}");
    let mut plain = federation_of(500, false, 3, 3, &[]).await;
    plain.run().await;
    let plain_words: Vec<u32> = updates(&plain)
        .iter()
        .filter_map(|m| match m {
            ToCoordinator::Update {
                outcome: TrainOutcome::Trained { update },
                ..
            } => Some(
                update
                    .delta
                    .as_slice()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(top_byte_chi_square(&plain_words) > 10_000.0);
}
