//! One example of every wire message, with awkward values (subnormals,
//! negative zero, extremes): the round-trip tests and the fuzzers' corpus.
#![allow(clippy::missing_panics_doc)]

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use medfed_models::data::{MomentSums, Standardizer};
use medfed_models::learner::{GlobalModel, LocalUpdate, PrivacySpent, Release, TrainPlan};
use medfed_models::{Layout, Params, TensorSpec};

use medfed_models::secagg::{
    Client, MaskedInputRequest, PublicKeys, RoundContext, RoundPlan, Server, ShareKeysAnswer,
    ShareKeysRequest, UnmaskAnswer, UnmaskRequest, Weighting,
};

use super::secure::masked_to_params;
use super::{
    Ask, EvalOutcome, HospitalInfo, SecAggAnswer, SecAggStep, StatsOutcome, ToCoordinator, ToHospital,
    TrainOutcome,
};
use crate::coordinator::StageKind;

const SECURE_ASK: Ask = Ask {
    run: 7,
    round: 4,
    attempt: 1,
};

pub fn secure_plan() -> RoundPlan {
    RoundPlan {
        num_shares: 3,
        threshold: 2,
        clipping_range: 4.0,
        quantization_bits: 20,
        min_inputs: 3,
        graph_seed: 9,
    }
}

/// One real round of three hospitals, as far as its messages go.
pub struct SecureSamples {
    pub keys: PublicKeys,
    pub share_keys: ShareKeysRequest,
    pub shares: ShareKeysAnswer,
    pub masked_request: MaskedInputRequest,
    pub masked: Vec<u32>,
    pub unmask: UnmaskRequest,
    pub unmask_shares: UnmaskAnswer,
}

pub fn secure_samples() -> SecureSamples {
    let ctx = RoundContext {
        task: "t".into(),
        run: SECURE_ASK.run,
        round: SECURE_ASK.round,
        attempt: SECURE_ASK.attempt,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let names = ["h1", "h2", "h3"];
    let mut server = Server::new(ctx.clone(), secure_plan(), 6, true).expect("a valid sample");
    let mut clients = Vec::new();
    let mut first_keys = None;
    for name in names {
        let (client, keys) =
            Client::setup(name, ctx.clone(), secure_plan(), &mut rng, None).expect("a valid sample");
        first_keys.get_or_insert(keys.clone());
        server.add_keys(name, keys).expect("a valid sample");
        clients.push(client);
    }
    let share_keys = server.close_setup().expect("a valid sample");
    let mut first_shares = None;
    for (name, client) in names.iter().zip(&mut clients) {
        let shares = client
            .share_keys(&share_keys, None, &mut rng)
            .expect("a valid sample");
        first_shares.get_or_insert(shares.clone());
        server.add_shares(name, shares).expect("a valid sample");
    }
    let requests = server.close_share_keys().expect("a valid sample");
    let mut first_masked = None;
    for (name, client) in names.iter().zip(&mut clients) {
        client.accept_shares(&requests[*name]).expect("a valid sample");
        let w = Weighting::Counted {
            count: 91,
            max_weight: 200,
        };
        let masked = client
            .mask(&[0.5, -0.25, 1.0, 0.0, 3.5, -4.0], w, &mut rng)
            .expect("a valid sample");
        first_masked.get_or_insert(masked.vector.clone());
        server.add_masked(name, masked.vector).expect("a valid sample");
    }
    let unmask = server.close_masked_input().expect("a valid sample");
    let unmask_shares = clients[0].unmask(&unmask).expect("a valid sample");
    SecureSamples {
        keys: first_keys.expect("three hospitals"),
        share_keys,
        shares: first_shares.expect("three hospitals"),
        masked_request: requests["h1"].clone(),
        masked: first_masked.expect("three hospitals"),
        unmask,
        unmask_shares,
    }
}

pub fn params(n: usize, seed: u64) -> Params {
    let layout = Arc::new(
        Layout::new(vec![
            TensorSpec::new("weight", &[n]),
            TensorSpec::new("bias", &[1]),
        ])
        .expect("a valid sample"),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Awkward values on purpose: subnormals, negative zero, extremes.
    let mut values: Vec<f32> = (0..=n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    values[0] = f32::MIN_POSITIVE / 3.0;
    values[1] = -0.0;
    values[2] = f32::MAX;
    Params::new(layout, values).expect("a valid sample")
}

pub fn model() -> GlobalModel {
    GlobalModel {
        params: Arc::new(params(7, 5)),
        standardizer: Some(Arc::new(Standardizer {
            mean: vec![0.5, -1.0],
            std: vec![2.0, 0.25],
        })),
    }
}

pub fn update() -> LocalUpdate {
    LocalUpdate {
        delta: params(5, 2),
        num_examples: 91,
        train_loss: None,
        release: Release::Noised {
            mechanism: "gaussian".into(),
            noise_multiplier: 1.1,
        },
        privacy: Some(PrivacySpent {
            mechanism: "dp_sgd".into(),
            noise_multiplier: 1.1,
            epsilon: 0.123456789012345,
            epsilon_collusion: None,
            budget: 3.0,
            delta: 1e-5,
            sampling_rate: None,
            steps_per_round: None,
            noise_share: None,
        }),
    }
}

pub fn every_to_hospital() -> Vec<ToHospital> {
    let secure = secure_samples();
    vec![
        ToHospital::Welcome,
        ToHospital::CollectStats {
            ask: Ask {
                run: 7,
                round: 0,
                attempt: 2,
            },
            privacy: None,
        },
        ToHospital::Train {
            ask: Ask {
                run: 7,
                round: 3,
                attempt: 1,
            },
            model: model(),
            plan: TrainPlan {
                round: 3,
                attempt: 0,
                local_epochs: 1,
                batch_size: 8,
                learning_rate: 0.05,
                l2: 0.0,
                seed: 42,
                proximal_mu: 0.0,
                privacy: None,
            },
            shares: None,
        },
        ToHospital::Evaluate {
            ask: Ask {
                run: 7,
                round: 9,
                attempt: 0,
            },
            model: model(),
        },
        ToHospital::Train {
            ask: SECURE_ASK,
            model: model(),
            plan: TrainPlan {
                round: 4,
                attempt: 1,
                local_epochs: 1,
                batch_size: 8,
                learning_rate: 0.05,
                l2: 0.0,
                seed: 42,
                proximal_mu: 0.0,
                privacy: None,
            },
            shares: Some(secure.masked_request),
        },
        ToHospital::SecAgg {
            ask: SECURE_ASK,
            step: SecAggStep::Setup {
                plan: secure_plan(),
                max_weight: 200,
                max_update_norm: Some(100.0),
            },
        },
        ToHospital::SecAgg {
            ask: SECURE_ASK,
            step: SecAggStep::ShareKeys {
                request: secure.share_keys,
            },
        },
        ToHospital::SecAgg {
            ask: SECURE_ASK,
            step: SecAggStep::Unmask {
                request: secure.unmask,
            },
        },
        ToHospital::Refused {
            reason: "hospital name 'h1' is already in use".into(),
        },
        ToHospital::Leaving,
    ]
}

pub fn every_to_coordinator() -> Vec<ToCoordinator> {
    let secure = secure_samples();
    let metrics = medfed_models::metrics::binary_metrics(&[0.2, 0.7, 0.9], &[false, true, false]);
    vec![
        ToCoordinator::Hello {
            info: HospitalInfo {
                name: "h1".into(),
                task: "t".into(),
                kind: "tabular".into(),
                samples: 91,
                node: String::new(),
                held_out: Some("113 examples, crc32 0badf00d".into()),
                attack: Some("sign_flip:10".into()),
                privacy: Some(medfed_models::learner::PrivacySpent {
                    mechanism: "dp-sgd".into(),
                    noise_multiplier: 1.25,
                    epsilon: 0.375,
                    epsilon_collusion: None,
                    budget: 3.0,
                    delta: 1e-5,
                    sampling_rate: None,
                    steps_per_round: None,
                    noise_share: None,
                }),
                features: Some(vec!["mean_radius".into(), "worst_area".into()]),
            },
        },
        ToCoordinator::Stats {
            ask: Ask {
                run: 7,
                round: 0,
                attempt: 2,
            },
            outcome: StatsOutcome::Released {
                // The sums of the rows [1, 2] and [3, 5].
                stats: Some(MomentSums {
                    count: 2.0,
                    sum: vec![4.0, 7.0],
                    sum_sq: vec![10.0, 29.0],
                }),
            },
        },
        ToCoordinator::Stats {
            ask: Ask {
                run: 7,
                round: 0,
                attempt: 2,
            },
            outcome: StatsOutcome::Released { stats: None },
        },
        ToCoordinator::Stats {
            ask: Ask {
                run: 7,
                round: 0,
                attempt: 2,
            },
            outcome: StatsOutcome::Declined {
                reason: "budget".into(),
            },
        },
        ToCoordinator::Update {
            ask: Ask {
                run: 7,
                round: 3,
                attempt: 0,
            },
            outcome: TrainOutcome::Trained { update: update() },
        },
        ToCoordinator::Update {
            ask: Ask {
                run: 7,
                round: 3,
                attempt: 0,
            },
            outcome: TrainOutcome::Failed {
                reason: "nan loss".into(),
            },
        },
        ToCoordinator::Update {
            ask: Ask {
                run: 7,
                round: 3,
                attempt: 1,
            },
            outcome: TrainOutcome::Declined {
                reason: "budget".into(),
            },
        },
        ToCoordinator::Evaluated {
            ask: Ask {
                run: 7,
                round: 9,
                attempt: 0,
            },
            outcome: EvalOutcome::Evaluated { metrics },
        },
        ToCoordinator::Evaluated {
            ask: Ask {
                run: 7,
                round: 9,
                attempt: 0,
            },
            outcome: EvalOutcome::Declined { reason: "dp".into() },
        },
        ToCoordinator::Update {
            ask: SECURE_ASK,
            outcome: TrainOutcome::Masked {
                vector: masked_to_params(&secure.masked),
                release: Release::NonPrivate,
                privacy: None,
            },
        },
        ToCoordinator::SecAgg {
            ask: SECURE_ASK,
            answer: SecAggAnswer::Keys { keys: secure.keys },
        },
        ToCoordinator::SecAgg {
            ask: SECURE_ASK,
            answer: SecAggAnswer::Shares {
                shares: secure.shares,
            },
        },
        ToCoordinator::SecAgg {
            ask: SECURE_ASK,
            answer: SecAggAnswer::Unmask {
                shares: secure.unmask_shares,
            },
        },
        ToCoordinator::SecAgg {
            ask: SECURE_ASK,
            answer: SecAggAnswer::Declined {
                stage: StageKind::ShareKeys,
                reason: "the keys of 'h2' are not signed".into(),
            },
        },
    ]
}
