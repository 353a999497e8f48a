//! One example of every wire message, with awkward values (subnormals,
//! negative zero, extremes): the round-trip tests and the fuzzers' corpus.
#![allow(clippy::missing_panics_doc)]

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use medfed_models::data::{MomentSums, Standardizer};
use medfed_models::learner::{GlobalModel, LocalUpdate, PrivacySpent, Release, TrainPlan};
use medfed_models::{Layout, Params, TensorSpec};

use super::{Ask, EvalOutcome, HospitalInfo, StatsOutcome, ToCoordinator, ToHospital, TrainOutcome};

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
            budget: 3.0,
            delta: 1e-5,
            sampling_rate: None,
            steps_per_round: None,
        }),
    }
}

pub fn every_to_hospital() -> Vec<ToHospital> {
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
        },
        ToHospital::Evaluate {
            ask: Ask {
                run: 7,
                round: 9,
                attempt: 0,
            },
            model: model(),
        },
        ToHospital::Refused {
            reason: "hospital name 'h1' is already in use".into(),
        },
        ToHospital::Leaving,
    ]
}

pub fn every_to_coordinator() -> Vec<ToCoordinator> {
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
                    budget: 3.0,
                    delta: 1e-5,
                    sampling_rate: None,
                    steps_per_round: None,
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
    ]
}
