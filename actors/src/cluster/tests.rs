use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use medfed_models::data::Standardizer;
use medfed_models::learner::{GlobalModel, TrainPlan};
use medfed_models::Params;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::envelope::Envelope;
use super::gate::Identity;
use super::hospital_link::{HospitalLink, LinkArgs, LinkStatus, Shared};
use super::link::{Inbox, WireStats, MAX_ENVELOPE};
use super::{version_mismatch, Gateway, GatewayArgs, NodeDirectory, Side};
use crate::messages::samples::{every_to_coordinator, every_to_hospital, params, update};
use crate::messages::wire::{CarriesTensors, Uplinked, WireMessage, KIND_CHUNK};
use crate::messages::{
    Ask, CoordinatorMsg, SecAggAnswer, SecAggStep, ToCoordinator, ToHospital, TrainOutcome,
};
use crate::wire::{chunks, Frame, VERSION};

fn inbox<M: WireMessage>() -> Inbox<M> {
    Inbox::new(Arc::new(WireStats::default()))
}

fn through_inbox<M: WireMessage>(message: &M) -> M {
    let bytes = message.encode().unwrap();
    inbox().accept(Envelope::new(bytes)).expect("decodes")
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
        attempt: 0,
        local_epochs: 2,
        batch_size: 16,
        learning_rate: 0.1 + 0.2,
        l2: 1e-4,
        seed: u64::MAX,
        proximal_mu: 0.0,
        privacy: None,
    };
    let ask = Ask {
        run: u64::MAX,
        round: 4,
        attempt: 1,
    };
    let sent = ToHospital::Train {
        ask,
        model: model.clone(),
        plan: plan.clone(),
        shares: None,
    };
    let ToHospital::Train {
        ask: got_ask,
        model: got,
        plan: got_plan,
        ..
    } = through_inbox(&sent)
    else {
        panic!("wrong variant");
    };
    assert_eq!(got_ask, ask);
    assert_eq!(got_plan, plan);
    assert_eq!(bits(&got.params), bits(&model.params));
    assert_eq!(got.params.layout().specs(), model.params.layout().specs());
    assert_eq!(got.standardizer, model.standardizer);
}

/// Which variant a message is. No wildcard arm: a new variant fails to
/// compile here until it is added to the samples below.
fn to_hospital_variant(m: &ToHospital) -> usize {
    match m {
        ToHospital::Welcome => 0,
        ToHospital::CollectStats { .. } => 1,
        ToHospital::Train { .. } => 2,
        ToHospital::Evaluate { .. } => 3,
        ToHospital::Refused { .. } => 4,
        ToHospital::Leaving => 5,
        ToHospital::SecAgg { step, .. } => match step {
            SecAggStep::Setup { .. } => 6,
            SecAggStep::ShareKeys { .. } => 7,
            SecAggStep::Unmask { .. } => 8,
        },
    }
}
const TO_HOSPITAL_VARIANTS: usize = 9;

fn to_coordinator_variant(m: &ToCoordinator) -> usize {
    match m {
        ToCoordinator::Hello { .. } => 0,
        ToCoordinator::Stats { .. } => 1,
        ToCoordinator::Update { .. } => 2,
        ToCoordinator::Evaluated { .. } => 3,
        ToCoordinator::SecAgg { answer, .. } => match answer {
            SecAggAnswer::Keys { .. } => 4,
            SecAggAnswer::Shares { .. } => 5,
            SecAggAnswer::Unmask { .. } => 6,
            SecAggAnswer::Declined { .. } => 7,
        },
    }
}
const TO_COORDINATOR_VARIANTS: usize = 8;

#[test]
fn every_message_of_the_set_round_trips_through_the_wire() {
    let sent = every_to_hospital();
    let covered: std::collections::BTreeSet<usize> = sent.iter().map(to_hospital_variant).collect();
    assert_eq!(
        covered.len(),
        TO_HOSPITAL_VARIANTS,
        "a ToHospital variant has no sample"
    );
    for m in &sent {
        assert_eq!(&through_inbox(m), m, "{}", m.name());
    }
    let sent = every_to_coordinator();
    let covered: std::collections::BTreeSet<usize> = sent.iter().map(to_coordinator_variant).collect();
    assert_eq!(
        covered.len(),
        TO_COORDINATOR_VARIANTS,
        "a ToCoordinator variant has no sample"
    );
    for m in sent {
        let up = Uplinked {
            link: "medfed.hospital.h1.0123456789abcdef".into(),
            message: m,
        };
        assert_eq!(through_inbox(&up), up, "{}", up.message.name());
    }
    // Tensors travel bit for bit (PartialEq alone would let -0.0 == 0.0 pass).
    let up = Uplinked {
        link: "l".into(),
        message: ToCoordinator::Update {
            ask: Ask {
                run: 7,
                round: 1,
                attempt: 0,
            },
            outcome: TrainOutcome::Trained { update: update() },
        },
    };
    match through_inbox(&up).message {
        ToCoordinator::Update {
            outcome: TrainOutcome::Trained { update: u },
            ..
        } => assert_eq!(bits(&u.delta), bits(&update().delta)),
        other => panic!("{other:?}"),
    }
}

/// `message` as a session's direct stream carries it: its values apart.
fn through_inbox_apart<M: WireMessage + Clone>(message: &M) -> M {
    let (frame, values) = message.clone().encode_apart().unwrap();
    let envelope = Envelope {
        frame,
        values: values.map(|v| v.as_slice().to_vec()),
        from: Some(h1()),
    };
    inbox().accept(envelope).expect("decodes")
}

#[test]
fn every_message_round_trips_with_its_values_apart() {
    for m in every_to_hospital() {
        assert_eq!(through_inbox_apart(&m), m, "{}", m.name());
    }
    for m in every_to_coordinator() {
        let up = Uplinked {
            link: "medfed.hospital.h1.0123456789abcdef".into(),
            message: m,
        };
        let got = through_inbox_apart(&up);
        assert_eq!(got, up, "{}", up.message.name());
        if let (Some(a), Some(b)) = (got.message.tensors(), up.message.tensors()) {
            assert_eq!(bits(a), bits(b), "bit for bit");
        }
    }
}

#[test]
fn values_apart_come_only_with_a_frame_that_leaves_them_out() {
    let stats = Arc::new(WireStats::default());
    let mut inbox: Inbox<ToHospital> = Inbox::new(stats.clone());
    let train = every_to_hospital()
        .into_iter()
        .find(|m| matches!(m, ToHospital::Train { .. }))
        .unwrap();
    let (apart, values) = train.clone().encode_apart().unwrap();
    let values = values.unwrap().as_slice().to_vec();
    let arrived = |frame: Vec<u8>, values: Option<Vec<f32>>| Envelope {
        frame,
        values,
        from: Some(h1()),
    };
    // The frame without its values; values beside a whole frame; one value
    // short of what the names describe; values for a message that has none.
    assert!(inbox.accept(arrived(apart.clone(), None)).is_none());
    assert!(inbox
        .accept(arrived(train.encode().unwrap(), Some(values.clone())))
        .is_none());
    assert!(inbox
        .accept(arrived(apart.clone(), Some(values[1..].to_vec())))
        .is_none());
    let json = serde_json::to_vec(&ToHospital::Welcome).unwrap();
    let names = crate::wire::tensors::header(&params(3, 1));
    let payload = [&(json.len() as u32).to_le_bytes()[..], &json, &names].concat();
    let welcome_apart = Frame {
        kind: crate::messages::wire::KIND_APART,
        payload,
    }
    .encode()
    .unwrap();
    assert!(inbox
        .accept(arrived(welcome_apart, Some(params(3, 1).as_slice().to_vec())))
        .is_none());
    assert_eq!(
        stats.dropped().get("malformed"),
        Some(&4),
        "{:?}",
        stats.dropped()
    );
    // And whole, it decodes.
    assert_eq!(inbox.accept(arrived(apart, Some(values))), Some(train));
}

#[test]
fn header_and_tensor_block_must_agree() {
    // A train request whose tensors were cut off, and tensors on a message that has none.
    let train = &every_to_hospital()[2];
    let json = serde_json::to_vec(train).unwrap();
    let payload = [&(json.len() as u32).to_le_bytes()[..], &json].concat();
    let frame = Frame { kind: 1, payload }.encode().unwrap();
    let stats = Arc::new(WireStats::default());
    let mut inbox: Inbox<ToHospital> = Inbox::new(stats.clone());
    assert!(inbox.accept(Envelope::new(frame)).is_none());
    let json = serde_json::to_vec(&ToHospital::Welcome).unwrap();
    let tensors = crate::wire::tensors::encode(&params(3, 1));
    let payload = [&(json.len() as u32).to_le_bytes()[..], &json, &tensors].concat();
    assert!(inbox
        .accept(Envelope::new(Frame { kind: 1, payload }.encode().unwrap()))
        .is_none());
    assert_eq!(
        stats.dropped().get("malformed"),
        Some(&2),
        "{:?}",
        stats.dropped()
    );
    // A field the sender's version has and ours does not is refused, not ignored.
    let mut value = serde_json::to_value(ToHospital::CollectStats {
        ask: Ask {
            run: 1,
            round: 0,
            attempt: 1,
        },
        privacy: None,
    })
    .unwrap();
    value["unknown"] = serde_json::json!(1);
    let json = serde_json::to_vec(&value).unwrap();
    let payload = [&(json.len() as u32).to_le_bytes()[..], &json].concat();
    assert!(inbox
        .accept(Envelope::new(Frame { kind: 1, payload }.encode().unwrap()))
        .is_none());
}

/// `bytes` as a node speaking wire version `version` would frame them.
fn as_version(mut bytes: Vec<u8>, version: u16) -> Vec<u8> {
    bytes[4..6].copy_from_slice(&version.to_le_bytes());
    bytes
}

struct Sink;

impl Actor for Sink {
    type Msg = ToHospital;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<ToHospital>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

struct CoordinatorSink;

impl Actor for CoordinatorSink {
    type Msg = CoordinatorMsg;
    type State = tokio::sync::mpsc::UnboundedSender<String>;
    type Arguments = tokio::sync::mpsc::UnboundedSender<String>;

    async fn pre_start(
        &self,
        _: ActorRef<CoordinatorMsg>,
        to: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(to)
    }

    async fn handle(
        &self,
        _: ActorRef<CoordinatorMsg>,
        msg: CoordinatorMsg,
        to: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let CoordinatorMsg::FromHospital { message, .. } = msg {
            let _ = to.send(message.name().to_string());
        }
        Ok(())
    }
}

#[tokio::test]
async fn another_wire_version_is_refused_at_hello_naming_both_versions_on_both_sides() {
    let other = VERSION + 1;
    // Hospital side: the coordinator's welcome (or any frame) in another version.
    let (hospital, _) = Actor::spawn(None, Sink, ()).await.unwrap();
    let (status_tx, mut status) = tokio::sync::mpsc::unbounded_channel();
    let shared = Shared::new("medfed.hospital.h1.test".into(), Arc::new(WireStats::default()));
    let (link, _) = Actor::spawn(
        None,
        HospitalLink,
        LinkArgs {
            task: "version_test".into(),
            hospital,
            shared,
            status: status_tx,
        },
    )
    .await
    .unwrap();
    let welcome = as_version(ToHospital::Welcome.encode().unwrap(), other);
    link.cast(Envelope::arrived(welcome, Identity::Coordinator))
        .unwrap();
    let refused = tokio::time::timeout(std::time::Duration::from_secs(5), status.recv())
        .await
        .unwrap();
    let expected = version_mismatch(Side::Hospital, other, VERSION);
    assert_eq!(refused, Some(LinkStatus::Refused(expected.clone())));
    assert!(
        expected.contains(&format!("the coordinator speaks wire version {other}")),
        "{expected}"
    );
    assert!(
        expected.contains(&format!("this hospital speaks wire version {VERSION}")),
        "{expected}"
    );

    // Coordinator side: a hello in another version reaches no coordinator;
    // a hello in ours does.
    let (gateway, stats, mut seen) = gateway_for("version_test").await;
    let hello = Uplinked {
        link: "l".into(),
        message: every_to_coordinator().remove(0),
    };
    gateway
        .cast(Envelope::arrived(
            as_version(hello.encode().unwrap(), other),
            h1(),
        ))
        .unwrap();
    let update = Uplinked {
        link: "l".into(),
        message: every_to_coordinator().remove(4),
    };
    gateway
        .cast(Envelope::arrived(update.encode().unwrap(), h1()))
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        stats.dropped().get("bad_version"),
        Some(&1),
        "{:?}",
        stats.dropped()
    );
    // The update of a link that never said hello (in our version) is not forwarded either.
    assert_eq!(
        stats.dropped().get("unknown_link"),
        Some(&1),
        "{:?}",
        stats.dropped()
    );
    assert!(seen.try_recv().is_err());
    let said = version_mismatch(Side::Coordinator, other, VERSION);
    assert!(
        said.contains(&format!("the hospital speaks wire version {other}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("this coordinator speaks wire version {VERSION}")),
        "{said}"
    );
}

#[test]
fn a_model_above_the_envelope_limit_arrives_whole_from_shuffled_chunks() {
    // 5M floats = 20 MB: above ractor_cluster's 16 MiB frame limit.
    let model = GlobalModel {
        params: Arc::new(params(5_000_000, 3)),
        standardizer: None,
    };
    let message = ToHospital::Evaluate {
        ask: Ask {
            run: 1,
            round: 1,
            attempt: 0,
        },
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
    let mut inbox: Inbox<ToHospital> = inbox();
    let last = envelopes.pop().unwrap();
    for e in envelopes {
        assert!(inbox.accept(Envelope::new(e)).is_none());
    }
    match inbox.accept(Envelope::new(last)) {
        Some(ToHospital::Evaluate { model: got, .. }) => {
            assert_eq!(bits(&got.params), bits(&model.params))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_envelopes_are_dropped_counted_and_never_panic() {
    let stats = Arc::new(WireStats::default());
    let mut inbox: Inbox<ToHospital> = Inbox::new(stats.clone());
    let good = ToHospital::Refused { reason: "x".into() }.encode().unwrap();
    // Truncated, corrupted, garbage, wrong version, a header that is not ours.
    assert!(inbox
        .accept(Envelope::new(good[..good.len() - 1].to_vec()))
        .is_none());
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x20;
    assert!(inbox.accept(Envelope::new(flipped)).is_none());
    assert!(inbox
        .accept(Envelope::new(b"GET / HTTP/1.1\r\n\r\n".to_vec()))
        .is_none());
    let mut version = good.clone();
    version[4] = 99;
    assert!(inbox.accept(Envelope::new(version)).is_none());
    let not_json = Frame {
        kind: 1,
        payload: [&3u32.to_le_bytes()[..], b"{{{"].concat(),
    };
    assert!(inbox.accept(Envelope::new(not_json.encode().unwrap())).is_none());
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
        let _ = inbox.accept(Envelope::new(bytes));
    }
    // The inbox still works afterwards.
    assert!(matches!(
        inbox.accept(Envelope::new(good)),
        Some(ToHospital::Refused { .. })
    ));
}

/// A gateway for `task` whose coordinator reports what reaches it.
async fn gateway_for(
    task: &str,
) -> (
    ActorRef<Envelope>,
    Arc<WireStats>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let (coordinator, _) = Actor::spawn(None, CoordinatorSink, seen_tx).await.unwrap();
    let stats = Arc::new(WireStats::default());
    let args = GatewayArgs {
        coordinator,
        tasks: vec![task.into()],
        stats: stats.clone(),
        nodes: NodeDirectory::default(),
    };
    let (gateway, _) = Actor::spawn(None, Gateway, args).await.unwrap();
    (gateway, stats, seen)
}

fn h1() -> Identity {
    Identity::Hospital("h1".into())
}

/// One sender's flood of incomplete chunked messages (ids high and low)
/// evicts only its own: another sender's chunked message, interleaved with
/// the flood, arrives whole.
#[tokio::test]
async fn a_chunk_flood_from_one_sender_leaves_the_others_uploads_whole() {
    let (gateway, stats, _seen) = gateway_for("flood_test").await;
    let chunk = |id: u64, payload: &[u8], size: usize| -> Vec<Vec<u8>> {
        chunks::split(id, payload, size)
            .unwrap()
            .into_iter()
            .map(|c| {
                Frame {
                    kind: KIND_CHUNK,
                    payload: c,
                }
                .encode()
                .unwrap()
            })
            .collect()
    };
    // h1's update, framed and split in 3 chunks.
    let honest = Uplinked {
        link: "l".into(),
        message: every_to_coordinator().remove(4),
    }
    .encode()
    .unwrap();
    let size = honest.len() / 3 + chunks::CHUNK_HEADER + 1;
    let honest = chunk(1, &honest, size);
    let flood = Identity::Hospital("flood".into());
    for (i, part) in honest.iter().enumerate() {
        for n in 0..50u64 {
            // Messages announced as 1 MiB, never completed.
            let id = if n % 2 == 0 { u64::MAX - n } else { n + 2 };
            let first = chunk(id.wrapping_add(i as u64 * 1000), &vec![0u8; 1 << 20], 64 << 10).remove(0);
            gateway.cast(Envelope::arrived(first, flood.clone())).unwrap();
        }
        gateway.cast(Envelope::arrived(part.clone(), h1())).unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let dropped = stats.dropped();
    // The flooder lost its own partial messages (4 kept at most)...
    assert!(
        dropped.get("chunks_evicted").copied().unwrap_or(0) >= 140,
        "{dropped:?}"
    );
    // ...and h1's update was reassembled and decoded: dropped only because
    // h1 never said hello here.
    assert_eq!(dropped.get("unknown_link"), Some(&1), "{dropped:?}");
}
