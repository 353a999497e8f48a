//! A federation of three imaging hospitals training the CNN on SYNTHETIC
//! chest-X-ray-like images (not patient data), evaluated on a held-out set
//! that no hospital trains on.

use std::time::Duration;

use ractor::Actor;

use medfed_actors::coordinator::fsm::{FsmConfig, Phase};
use medfed_actors::coordinator::{Protocol, Scaling};
use medfed_actors::{
    Coordinator, CoordinatorArgs, CoordinatorMsg, EventBus, FederationEvent, Hospital, HospitalArgs,
    HospitalLearner, RunReport, RunRequest, TaskSetup,
};
use medfed_models::aggregate::{FedAvg, UpdateCheck};
use medfed_models::data::images::synth::{generate, SynthSpec};
use medfed_models::learner::cnn::{CnnConfig, CnnEvaluator, CnnLearner};
use medfed_models::learner::TrainPlan;

const TASK: &str = "pneumonia_xray";
const SIZE: usize = 32;

async fn run_federation(rounds: u32) -> RunReport {
    let all = generate(&SynthSpec {
        count: 900,
        size: SIZE,
        seed: 17,
        pneumonia_share: 0.5,
    })
    .unwrap();
    let held_out = all.select(&(750..900).collect::<Vec<_>>());
    let config = CnnConfig {
        size: SIZE,
        ..CnnConfig::default()
    };
    let bus = EventBus::default();
    let mut events = bus.record("test");
    let setup = TaskSetup {
        name: TASK.into(),
        fsm: FsmConfig {
            rounds,
            expected_hospitals: 3,
            assemble_timeout: Duration::from_secs(60),
            protocol: Protocol::federated(false, 3, 0, Duration::from_secs(600)),
        },
        plan: TrainPlan {
            round: 0,
            attempt: 0,
            local_epochs: 2,
            batch_size: 32,
            learning_rate: 0.003,
            l2: 1e-4,
            seed: 3,
            proximal_mu: 0.0,
            privacy: None,
        },
        check: UpdateCheck::default(),
        max_hospitals: None,
        evaluator: Box::new(CnnEvaluator::new(held_out, config, 3).unwrap()),
        strategy: Box::new(FedAvg),
        scaling: Scaling::None,
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
    for h in 0..3 {
        let shard = all.select(&(h * 250..(h + 1) * 250).collect::<Vec<_>>());
        let name = format!("imaging-{}", h + 1);
        Actor::spawn(
            None,
            Hospital,
            HospitalArgs {
                name: name.clone(),
                task: TASK.into(),
                kind: "imaging".into(),
                learner: HospitalLearner::Open(Box::new(CnnLearner::new(name, shard, config).unwrap())),
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
    }
    ractor::call!(coordinator, |reply| CoordinatorMsg::StartRun {
        request: RunRequest::default(),
        reply
    })
    .unwrap()
    .unwrap();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(600), events.recv())
            .await
            .expect("run ends within 10 minutes")
            .expect("a recording ends only when the bus closes");
        if let FederationEvent::RunEnded { .. } = event {
            break;
        }
    }
    ractor::call!(coordinator, CoordinatorMsg::Report).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_imaging_hospitals_reach_90_percent_within_10_rounds_reproducibly() {
    let a = run_federation(10).await;
    let task = &a.tasks[TASK];
    assert_eq!(task.phase, Phase::Finished { rounds: 10 });
    let best = task.rounds.iter().map(|r| r.metrics.accuracy).fold(0.0, f64::max);
    let last = task.rounds.last().unwrap().metrics.accuracy;
    assert!(last >= 0.90, "final held-out accuracy {last} (best {best})");
    let b = run_federation(10).await;
    let metrics = |r: &RunReport| {
        r.tasks[TASK]
            .rounds
            .iter()
            .map(|x| x.metrics.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(&a), metrics(&b), "same seed, same results");
}
