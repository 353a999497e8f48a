use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use medfed_models::data::Standardizer;
use medfed_models::learner::{GlobalModel, LocalUpdate, PrivacySpent, Release, TrainPlan};
use medfed_models::{Layout, Params, TensorSpec};

use super::envelope::Envelope;
use super::link::{Inbox, WireStats, MAX_ENVELOPE};
use super::protocol::{ClusterMessage, KIND_CHUNK};
use crate::messages::{EvalOutcome, HospitalInfo, StatsOutcome, TrainOutcome};
use crate::wire::{chunks, Frame};

fn params(n: usize, seed: u64) -> Params {
    let layout = Arc::new(
        Layout::new(vec![
            TensorSpec::new("weight", &[n]),
            TensorSpec::new("bias", &[1]),
        ])
        .unwrap(),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Awkward values on purpose: subnormals, negative zero, extremes.
    let mut values: Vec<f32> = (0..=n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    values[0] = f32::MIN_POSITIVE / 3.0;
    values[1] = -0.0;
    values[2] = f32::MAX;
    Params::new(layout, values).unwrap()
}

fn inbox() -> Inbox {
    Inbox::new(Arc::new(WireStats::default()))
}

fn through_inbox(message: &ClusterMessage) -> ClusterMessage {
    let bytes = message.encode().unwrap();
    inbox().accept(Envelope(bytes)).expect("decodes")
}

fn bits(p: &Params) -> Vec<u32> {
    p.as_slice().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn train_request_round_trips_bit_exactly() {
    let model = GlobalModel {
        params: Arc::new(params(30, 1)),
        standardizer: Some(Arc::new(Standardizer {
            mean: vec![0.1, 1e-300, -3.5],
            std: vec![1.0 / 3.0, 2.0, 7.25],
        })),
    };
    let plan = TrainPlan {
        round: 4,
        local_epochs: 2,
        batch_size: 16,
        learning_rate: 0.1 + 0.2,
        l2: 1e-4,
        seed: u64::MAX,
    };
    let sent = ClusterMessage::Train {
        task: "breast_cancer".into(),
        round: 4,
        attempt: 1,
        model: model.clone(),
        plan: plan.clone(),
    };
    let ClusterMessage::Train {
        task,
        round,
        attempt,
        model: got,
        plan: got_plan,
    } = through_inbox(&sent)
    else {
        panic!("wrong variant");
    };
    assert_eq!((task.as_str(), round, attempt), ("breast_cancer", 4, 1));
    assert_eq!(got_plan, plan);
    assert_eq!(bits(&got.params), bits(&model.params));
    assert_eq!(got.params.layout().specs(), model.params.layout().specs());
    assert_eq!(got.standardizer, model.standardizer);
}

#[test]
fn updates_stats_and_evaluations_round_trip() {
    let update = LocalUpdate {
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
        }),
    };
    let sent = ClusterMessage::Update {
        link: "l".into(),
        from: "h1".into(),
        task: "t".into(),
        round: 3,
        attempt: 0,
        outcome: TrainOutcome::Trained(update.clone()),
    };
    match through_inbox(&sent) {
        ClusterMessage::Update {
            outcome: TrainOutcome::Trained(u),
            ..
        } => {
            assert_eq!(bits(&u.delta), bits(&update.delta));
            assert_eq!((u.num_examples, u.train_loss), (91, None));
            assert_eq!(u.release, update.release);
            assert_eq!(u.privacy, update.privacy);
        }
        other => panic!("{other:?}"),
    }
    let declined = ClusterMessage::Stats {
        link: "l".into(),
        from: "h1".into(),
        task: "t".into(),
        attempt: 2,
        outcome: StatsOutcome::Declined("budget".into()),
    };
    assert!(matches!(
        through_inbox(&declined),
        ClusterMessage::Stats { outcome: StatsOutcome::Declined(r), attempt: 2, .. } if r == "budget"
    ));
    let eval = ClusterMessage::Evaluated {
        link: "l".into(),
        from: "h1".into(),
        task: "t".into(),
        round: 9,
        outcome: EvalOutcome::Declined { reason: "dp".into() },
    };
    assert!(matches!(
        through_inbox(&eval),
        ClusterMessage::Evaluated { round: 9, .. }
    ));
    let hello = ClusterMessage::Hello {
        link: "l".into(),
        info: HospitalInfo {
            name: "h1".into(),
            task: "t".into(),
            kind: "tabular".into(),
            samples: 91,
            node: String::new(),
            held_out: Some("113 examples, crc32 0badf00d".into()),
        },
    };
    assert!(matches!(through_inbox(&hello), ClusterMessage::Hello { info, .. } if info.samples == 91));
}

#[test]
fn a_model_above_the_envelope_limit_arrives_whole_from_shuffled_chunks() {
    // 5M floats = 20 MB: above ractor_cluster's 16 MiB frame limit.
    let model = GlobalModel {
        params: Arc::new(params(5_000_000, 3)),
        standardizer: None,
    };
    let message = ClusterMessage::Evaluate {
        task: "t".into(),
        round: 1,
        model: model.clone(),
    };
    let whole = message.encode().unwrap();
    let mut envelopes: Vec<Vec<u8>> = chunks::split(7, &whole, MAX_ENVELOPE - 16)
        .unwrap()
        .into_iter()
        .map(|payload| {
            Frame {
                kind: KIND_CHUNK,
                payload,
            }
            .encode()
            .unwrap()
        })
        .collect();
    assert!(envelopes.len() >= 3);
    assert!(envelopes.iter().all(|e| e.len() <= MAX_ENVELOPE));
    envelopes.reverse();
    let mut inbox = inbox();
    let last = envelopes.pop().unwrap();
    for e in envelopes {
        assert!(inbox.accept(Envelope(e)).is_none());
    }
    match inbox.accept(Envelope(last)) {
        Some(ClusterMessage::Evaluate { model: got, .. }) => {
            assert_eq!(bits(&got.params), bits(&model.params))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_envelopes_are_dropped_counted_and_never_panic() {
    let stats = Arc::new(WireStats::default());
    let mut inbox = Inbox::new(stats.clone());
    let good = ClusterMessage::Refused { reason: "x".into() }.encode().unwrap();
    // Truncated, corrupted, garbage, wrong version, a header that is not ours.
    assert!(inbox.accept(Envelope(good[..good.len() - 1].to_vec())).is_none());
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x20;
    assert!(inbox.accept(Envelope(flipped)).is_none());
    assert!(inbox
        .accept(Envelope(b"GET / HTTP/1.1\r\n\r\n".to_vec()))
        .is_none());
    let mut version = good.clone();
    version[4] = 99;
    assert!(inbox.accept(Envelope(version)).is_none());
    let not_json = Frame {
        kind: 1,
        payload: [&3u32.to_le_bytes()[..], b"{{{"].concat(),
    };
    assert!(inbox.accept(Envelope(not_json.encode().unwrap())).is_none());
    let dropped = stats.dropped();
    assert_eq!(dropped.get("truncated"), Some(&1), "{dropped:?}");
    assert_eq!(dropped.get("bad_checksum"), Some(&1));
    assert_eq!(dropped.get("bad_magic"), Some(&1));
    assert_eq!(dropped.get("bad_version"), Some(&1));
    assert_eq!(dropped.get("malformed"), Some(&1));
    // Random bytes, with and without a valid frame header in front.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for i in 0..5_000 {
        let len = rng.random_range(0..200);
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let bytes = if i % 2 == 0 {
            Frame {
                kind: rng.random_range(0..4),
                payload: body,
            }
            .encode()
            .unwrap()
        } else {
            body
        };
        let _ = inbox.accept(Envelope(bytes));
    }
    // The inbox still works afterwards.
    assert!(matches!(
        inbox.accept(Envelope(good)),
        Some(ClusterMessage::Refused { .. })
    ));
}
