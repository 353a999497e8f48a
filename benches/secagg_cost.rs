//! The per-round cost of secure aggregation (SecAgg+), for K = 5, 20 and
//! 100 hospitals in one process: each hospital's compute (setup, share
//! keys, decrypting its shares, masking, unmask) and the coordinator's
//! (routing, checks, unmasking the sum), in ms, and the bytes each hospital
//! sends and receives — the real wire frames of the real messages — as a
//! ratio to the plain round of the same model (the model down, the update
//! up) measured in the same run. Without dropouts, and with one hospital
//! dropping after share keys (unmasking then also rebuilds its mask key and
//! removes its pairwise masks: the coordinator's extra work).
//!
//!     cargo bench --bench secagg_cost

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medfed_actors::messages::secure::masked_to_params;
use medfed_actors::messages::wire::{Uplinked, WireMessage};
use medfed_actors::messages::{Ask, SecAggAnswer, SecAggStep, ToCoordinator, ToHospital, TrainOutcome};
use medfed_models::learner::{GlobalModel, LocalUpdate, Release, TrainPlan};
use medfed_models::secagg::{Client, RoundContext, RoundPlan, Server, Weighting};
use medfed_models::{Layout, Params, TensorSpec};

const ROUNDS: u32 = 3;

fn model(dims: usize) -> Params {
    let layout = Arc::new(Layout::new(vec![TensorSpec::new("w", &[dims])]).expect("a layout"));
    Params::new(layout, (0..dims).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect()).expect("params")
}

fn plan() -> TrainPlan {
    TrainPlan {
        round: 1,
        attempt: 0,
        local_epochs: 1,
        batch_size: 16,
        learning_rate: 0.1,
        l2: 0.0,
        seed: 1,
        proximal_mu: 0.0,
        privacy: None,
    }
}

fn down(m: &ToHospital) -> usize {
    m.encode().expect("encodes").len()
}

fn up(m: ToCoordinator) -> usize {
    Uplinked {
        link: "bench".into(),
        message: m,
    }
    .encode()
    .expect("encodes")
    .len()
}

#[derive(Default)]
struct Cost {
    hospital: Duration,
    coordinator: Duration,
    bytes_down: usize,
    bytes_up: usize,
}

/// One secure round of `k` hospitals over a model of `dims` values; with
/// `drop`, the last hospital drops after share keys.
fn secure_round(k: usize, dims: usize, round: u32, drop: bool) -> Cost {
    let mut cost = Cost::default();
    let names: Vec<String> = (0..k).map(|i| format!("hospital-{i:03}")).collect();
    let ask = Ask {
        run: 1,
        round,
        attempt: 0,
    };
    let ctx = RoundContext {
        task: "bench".into(),
        run: 1,
        round,
        attempt: 0,
    };
    let num_shares = RoundPlan::default_num_shares(k);
    let plan_ = RoundPlan {
        num_shares,
        threshold: RoundPlan::default_threshold(num_shares),
        clipping_range: 10.0,
        quantization_bits: 22,
        min_inputs: 3,
        graph_seed: u64::from(round),
    };
    let global = GlobalModel {
        params: Arc::new(model(dims)),
        standardizer: None,
    };
    let update = model(dims);
    let mut rng = rand::rng();
    let clock = Instant::now();
    let mut server = Server::new(ctx.clone(), plan_, dims, true).expect("a server");
    cost.coordinator += clock.elapsed();
    // Setup.
    let setup = ToHospital::SecAgg {
        ask,
        step: SecAggStep::Setup {
            plan: plan_,
            max_weight: 1000,
            max_update_norm: None,
        },
    };
    let mut clients = BTreeMap::new();
    for name in &names {
        cost.bytes_down += down(&setup);
        let clock = Instant::now();
        let (client, keys) = Client::setup(name, ctx.clone(), plan_, &mut rng, None).expect("setup");
        cost.hospital += clock.elapsed();
        cost.bytes_up += up(ToCoordinator::SecAgg {
            ask,
            answer: SecAggAnswer::Keys { keys: keys.clone() },
        });
        let clock = Instant::now();
        server.add_keys(name, keys).expect("keys");
        cost.coordinator += clock.elapsed();
        clients.insert(name.clone(), client);
    }
    // Share keys.
    let clock = Instant::now();
    let request = server.close_setup().expect("setup closes");
    cost.coordinator += clock.elapsed();
    let message = ToHospital::SecAgg {
        ask,
        step: SecAggStep::ShareKeys {
            request: request.clone(),
        },
    };
    for (name, client) in clients.iter_mut() {
        cost.bytes_down += down(&message);
        let clock = Instant::now();
        let shares = client.share_keys(&request, None, &mut rng).expect("share keys");
        cost.hospital += clock.elapsed();
        cost.bytes_up += up(ToCoordinator::SecAgg {
            ask,
            answer: SecAggAnswer::Shares {
                shares: shares.clone(),
            },
        });
        let clock = Instant::now();
        server.add_shares(name, shares).expect("shares");
        cost.coordinator += clock.elapsed();
    }
    // Masked input (the last hospital has died).
    let clock = Instant::now();
    let requests = server.close_share_keys().expect("share keys close");
    cost.coordinator += clock.elapsed();
    for (name, request) in requests {
        let train = ToHospital::Train {
            ask,
            model: global.clone(),
            plan: plan(),
            shares: Some(request.clone()),
        };
        if drop && name == names[k - 1] {
            continue;
        }
        cost.bytes_down += down(&train);
        let client = clients.get_mut(&name).expect("a client");
        let clock = Instant::now();
        client.accept_shares(&request).expect("shares accepted");
        let weighting = Weighting::Counted {
            count: 100,
            max_weight: 1000,
        };
        let masked = client
            .mask(update.as_slice(), weighting, &mut rng)
            .expect("masked");
        cost.hospital += clock.elapsed();
        let vector = masked_to_params(&masked.vector);
        cost.bytes_up += up(ToCoordinator::Update {
            ask,
            outcome: TrainOutcome::Masked {
                vector,
                release: Release::NonPrivate,
                privacy: None,
            },
        });
        let clock = Instant::now();
        server.add_masked(&name, masked.vector).expect("masked input");
        cost.coordinator += clock.elapsed();
    }
    // Unmask.
    let clock = Instant::now();
    let unmask = server.close_masked_input().expect("masked input closes");
    cost.coordinator += clock.elapsed();
    let message = ToHospital::SecAgg {
        ask,
        step: SecAggStep::Unmask {
            request: unmask.clone(),
        },
    };
    for name in &unmask.survivors {
        cost.bytes_down += down(&message);
        let client = clients.get_mut(name).expect("a client");
        let clock = Instant::now();
        let shares = client.unmask(&unmask).expect("unmask");
        cost.hospital += clock.elapsed();
        cost.bytes_up += up(ToCoordinator::SecAgg {
            ask,
            answer: SecAggAnswer::Unmask {
                shares: shares.clone(),
            },
        });
        let clock = Instant::now();
        server.add_unmask(name, shares).expect("unmask shares");
        cost.coordinator += clock.elapsed();
    }
    let clock = Instant::now();
    let sum = server.finish().expect("the sum");
    cost.coordinator += clock.elapsed();
    assert_eq!(sum.inputs.len(), if drop { k - 1 } else { k });
    cost
}

/// The plain round's bytes per hospital: the model down, the update up.
fn plain_bytes(dims: usize) -> usize {
    let global = GlobalModel {
        params: Arc::new(model(dims)),
        standardizer: None,
    };
    let ask = Ask {
        run: 1,
        round: 1,
        attempt: 0,
    };
    let train = ToHospital::Train {
        ask,
        model: global,
        plan: plan(),
        shares: None,
    };
    let update = ToCoordinator::Update {
        ask,
        outcome: TrainOutcome::Trained {
            update: LocalUpdate {
                delta: model(dims),
                num_examples: 100,
                train_loss: Some(0.5),
                release: Release::NonPrivate,
                privacy: None,
            },
        },
    };
    down(&train) + up(update)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "| K | model values | hospital ms/round | coordinator ms/round | coordinator ms, one dropout | bytes/hospital/round (secure) | plain | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for dims in [31, 100_000] {
        for k in [5, 20, 100] {
            let mut total = Cost::default();
            let mut dropped = Duration::ZERO;
            // Round 1 warms up; rounds 2.. are measured.
            secure_round(k, dims, 1, false);
            for round in 2..=ROUNDS + 1 {
                let c = secure_round(k, dims, round, false);
                total.hospital += c.hospital;
                total.coordinator += c.coordinator;
                total.bytes_down += c.bytes_down;
                total.bytes_up += c.bytes_up;
                dropped += secure_round(k, dims, round, true).coordinator;
            }
            let dropped_ms = dropped.as_secs_f64() * 1e3 / f64::from(ROUNDS);
            let rounds = f64::from(ROUNDS);
            let per_hospital_ms = total.hospital.as_secs_f64() * 1e3 / rounds / k as f64;
            let coordinator_ms = total.coordinator.as_secs_f64() * 1e3 / rounds;
            let bytes = (total.bytes_down + total.bytes_up) as f64 / rounds / k as f64;
            let plain = plain_bytes(dims) as f64;
            println!(
                "| {k} | {dims} | {per_hospital_ms:.2} | {coordinator_ms:.2} | {dropped_ms:.2} | {bytes:.0} | {plain:.0} | {:.2}x |",
                bytes / plain
            );
        }
    }
}
