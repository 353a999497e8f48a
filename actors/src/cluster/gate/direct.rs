//! A session's direct stream: medfed's envelopes travel on the gate's own
//! connection, beside ractor_cluster's frames, instead of inside them.
//! ractor_cluster wraps a message in protobuf, copies it through its
//! session actors and caps a frame at 16 MiB (so a model went as chunks,
//! each copied several times more); here a model's values go from the
//! sender's memory straight into the socket and from the socket straight
//! into the receiver's buffer, which becomes the received model.
//!
//! The connection is the one the gate authenticated (cookie, mutual TLS),
//! so a direct frame's sender is the session's identity, whatever it says.
//! On the socket a direct frame is framed like ractor_cluster's (length
//! first) and told apart by its first byte, which no ractor_cluster frame
//! starts with:
//!
//! ```text
//! length u64 BE | 0xD7 | pid u64 | frame length u32 | values length u64 | frame | values | CRC-32 of values u32
//! ```
//!
//! (little-endian after the key). `frame` is a wire frame (`crate::wire`,
//! with its own checksum); `values` are the f32 values of a `KIND_APART`
//! frame in memory order. Every size is checked before anything is
//! allocated; a frame that breaks the format closes the session, one for an
//! actor that is not here is counted and dropped. Frames are delivered in
//! the order they arrive, so one sender's envelopes keep their order.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorCell, ActorId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::warn;

use medfed_models::Params;

use super::super::envelope::Envelope;
use super::filter::Breach;
use super::identity::Identity;
use super::sessions::Activity;
use super::stats::GateStats;

/// The first byte of a direct frame (ractor_cluster's frames start with a
/// protobuf field key: 0x0A, 0x12 or 0x1A).
pub const KEY: u8 = 0xD7;
/// pid, frame length and values length.
const HEAD: usize = 8 + 4 + 8;
const TRAILER: usize = 4;
/// Values are written and read in slices this large, each checksummed
/// while it is in cache.
const SLICE: usize = 256 << 10;
/// A sender slower than this (bytes per second) on one frame is cut off.
pub const MIN_RATE: u64 = 64 << 10;

/// An envelope for the actor `pid` on the peer's node.
pub struct Direct {
    pub pid: u64,
    pub frame: Vec<u8>,
    pub values: Option<Arc<Params>>,
}

/// What a session writes to its socket, in order.
pub enum Outgoing {
    /// One of ractor_cluster's frames, its length in front.
    Cluster(Vec<u8>),
    Direct(Direct),
}

/// The queue of one session's socket.
#[derive(Clone)]
pub struct Route(UnboundedSender<Outgoing>);

impl Route {
    pub fn new(to: UnboundedSender<Outgoing>) -> Self {
        Self(to)
    }

    /// Queue `direct`; `Err` once the session has closed.
    pub fn send(&self, direct: Direct) -> Result<(), SessionClosed> {
        self.0.send(Outgoing::Direct(direct)).map_err(|_| SessionClosed)
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_closed() {
            "Route(closed)"
        } else {
            "Route(open)"
        })
    }
}

/// The session of a route has closed.
#[derive(Debug)]
pub struct SessionClosed;

/// ractor_cluster's output, whole frame by whole frame, onto the session's
/// queue (so direct frames go between its frames, never inside one).
pub async fn cluster_frames<R: AsyncRead + Unpin>(mut from: R, to: UnboundedSender<Outgoing>) {
    loop {
        let mut len = [0u8; 8];
        if from.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = u64::from_be_bytes(len);
        // ractor_cluster's own frames stay below its inbound limit; anything
        // else means its end is broken: end the session.
        let Some(total) = usize::try_from(n)
            .ok()
            .filter(|&n| n as u64 <= ractor_cluster::DEFAULT_MAX_INBOUND_FRAME_SIZE)
            .map(|n| n + 8)
        else {
            return;
        };
        let mut frame = vec![0u8; total];
        frame[..8].copy_from_slice(&len);
        if from.read_exact(&mut frame[8..]).await.is_err() || to.send(Outgoing::Cluster(frame)).is_err() {
            return;
        }
    }
}

/// Write the session's queue to the peer, until the queue or the socket
/// closes; a peer that does not take a write for `stall` is a breach.
pub async fn write<W: AsyncWrite + Unpin>(
    mut queue: UnboundedReceiver<Outgoing>,
    mut to: W,
    stall: Duration,
) -> Result<(), Breach> {
    while let Some(item) = queue.recv().await {
        let written = match item {
            Outgoing::Cluster(frame) => within(stall, to.write_all(&frame)).await,
            Outgoing::Direct(direct) => write_direct(&mut to, &direct, stall).await,
        };
        match written {
            Ok(()) => {}
            Err(Written::Stalled) => return Err(Breach::NotReading(stall)),
            Err(Written::Closed) => return Ok(()),
        }
        match within(stall, to.flush()).await {
            Ok(()) => {}
            Err(Written::Stalled) => return Err(Breach::NotReading(stall)),
            Err(Written::Closed) => return Ok(()),
        }
    }
    Ok(())
}

enum Written {
    Stalled,
    Closed,
}

async fn within(
    stall: Duration,
    io: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), Written> {
    match tokio::time::timeout(stall, io).await {
        Err(_) => Err(Written::Stalled),
        Ok(Err(_)) => Err(Written::Closed),
        Ok(Ok(())) => Ok(()),
    }
}

/// The bytes of a direct frame in front of its values.
fn head(direct: &Direct) -> Result<Vec<u8>, String> {
    let frame_len =
        u32::try_from(direct.frame.len()).map_err(|_| format!("a frame of {} bytes", direct.frame.len()))?;
    let values_len = direct
        .values
        .as_ref()
        .map_or(0, |v| v.as_slice().len() as u64 * 4);
    let len = 1 + (HEAD + TRAILER) as u64 + u64::from(frame_len) + values_len;
    let mut head = Vec::with_capacity(8 + 1 + HEAD + direct.frame.len());
    head.extend_from_slice(&len.to_be_bytes());
    head.push(KEY);
    head.extend_from_slice(&direct.pid.to_le_bytes());
    head.extend_from_slice(&frame_len.to_le_bytes());
    head.extend_from_slice(&values_len.to_le_bytes());
    head.extend_from_slice(&direct.frame);
    Ok(head)
}

async fn write_direct<W: AsyncWrite + Unpin>(
    to: &mut W,
    direct: &Direct,
    stall: Duration,
) -> Result<(), Written> {
    // Frames are encoded by this node, far below 4 GiB.
    let head = head(direct).map_err(|_| Written::Closed)?;
    within(stall, to.write_all(&head)).await?;
    let values: &[u8] = direct.values.as_ref().map_or(&[], |v| values_le(v.as_slice()));
    let mut crc = crc32fast::Hasher::new();
    for slice in values.chunks(SLICE) {
        crc.update(slice);
        within(stall, to.write_all(slice)).await?;
    }
    within(stall, to.write_all(&crc.finalize().to_le_bytes())).await
}

/// A direct frame as `write` sends it, in one buffer (for tests and the
/// fuzzer's corpus; `write` streams it from the model's memory instead).
pub fn encode(direct: &Direct) -> Result<Vec<u8>, String> {
    let mut out = head(direct)?;
    let values: &[u8] = direct.values.as_ref().map_or(&[], |v| values_le(v.as_slice()));
    out.extend_from_slice(values);
    out.extend_from_slice(&crc32fast::hash(values).to_le_bytes());
    Ok(out)
}

/// The values as the little-endian bytes the stream carries (only
/// little-endian nodes send on it: see `link::send`).
fn values_le(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}

/// The limits a direct frame is read under, and the session's activity
/// (touched as its slices arrive: a long model is not a silent session).
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Largest frame part (header, names and shapes).
    pub max_frame: u64,
    /// Largest values part, in bytes.
    pub max_values: u64,
    pub idle: Duration,
    pub activity: Activity,
}

/// Read the rest of a direct frame of `len` bytes (its key already read)
/// and deliver it to its actor on this node, from `peer`.
pub async fn receive<R: AsyncRead + Unpin>(
    from: &mut R,
    len: u64,
    peer: &Identity,
    bounds: &Bounds,
    stats: &GateStats,
) -> Result<(), Breach> {
    let deadline = bounds.idle + Duration::from_secs(len / MIN_RATE);
    let envelope = match tokio::time::timeout(deadline, read(from, len, peer, bounds)).await {
        Err(_) => return Err(Breach::Slow(deadline)),
        Ok(result) => result?,
    };
    let Some((pid, envelope)) = envelope else {
        // The peer closed the connection mid-frame: the session is over.
        return Ok(());
    };
    deliver(pid, envelope, stats);
    Ok(())
}

fn malformed(what: String) -> Breach {
    Breach::Malformed(format!("a direct frame {what}"))
}

async fn read<R: AsyncRead + Unpin>(
    from: &mut R,
    len: u64,
    peer: &Identity,
    bounds: &Bounds,
) -> Result<Option<(u64, Envelope)>, Breach> {
    let mut head = [0u8; HEAD];
    if from.read_exact(&mut head).await.is_err() {
        return Ok(None);
    }
    let pid = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    let frame_len = u64::from(u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()));
    let values_len = u64::from_le_bytes(head[12..20].try_into().unwrap_or_default());
    if frame_len > bounds.max_frame {
        return Err(Breach::TooLarge {
            family: "direct frame header",
            len: frame_len,
            limit: bounds.max_frame,
        });
    }
    if values_len > bounds.max_values {
        return Err(Breach::TooLarge {
            family: "direct frame values",
            len: values_len,
            limit: bounds.max_values,
        });
    }
    if values_len % 4 != 0 {
        return Err(malformed(format!(
            "carries {values_len} bytes of values, not whole f32s"
        )));
    }
    let expected = 1 + (HEAD + TRAILER) as u64 + frame_len + values_len;
    if len != expected {
        return Err(malformed(format!(
            "says it is {len} bytes long, but its parts make {expected}"
        )));
    }
    let mut frame = vec![0u8; frame_len as usize];
    if from.read_exact(&mut frame).await.is_err() {
        return Ok(None);
    }
    let mut crc = crc32fast::Hasher::new();
    let values = if values_len > 0 {
        let mut values = medfed_models::buffers::take((values_len / 4) as usize);
        for slice in bytemuck::cast_slice_mut::<f32, u8>(&mut values).chunks_mut(SLICE) {
            if from.read_exact(slice).await.is_err() {
                return Ok(None);
            }
            crc.update(slice);
            bounds.activity.touch();
        }
        if cfg!(target_endian = "big") {
            values
                .iter_mut()
                .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
        }
        Some(values)
    } else {
        None
    };
    let mut trailer = [0u8; TRAILER];
    if from.read_exact(&mut trailer).await.is_err() {
        return Ok(None);
    }
    if u32::from_le_bytes(trailer) != crc.finalize() {
        return Err(malformed(
            "whose values fail their checksum (corrupted on the way)".into(),
        ));
    }
    Ok(Some((
        pid,
        Envelope {
            frame,
            values,
            from: Some(peer.clone()),
        },
    )))
}

/// Hand `envelope` to the actor `pid` of this node, as ractor_cluster would
/// a cast: only to an actor that takes envelopes.
fn deliver(pid: u64, envelope: Envelope, stats: &GateStats) {
    let reason = match ractor::registry::where_is_pid(ActorId::Local(pid)) {
        None => "no_such_actor",
        Some(cell) => match send(&cell, envelope) {
            Ok(()) => return,
            Err(reason) => reason,
        },
    };
    stats.count_undelivered(reason);
    warn!(
        reason,
        "dropped an envelope that came on a direct stream: no actor here takes it"
    );
}

fn send(cell: &ActorCell, envelope: Envelope) -> Result<(), &'static str> {
    cell.send_message(envelope).map_err(|e| match e {
        ractor::MessagingErr::InvalidActorType => "not_an_envelope_actor",
        _ => "actor_stopped",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::gate::filter::{pump, Policy};
    use crate::cluster::gate::limits::Limits;
    use crate::cluster::gate::sessions::Activity;
    use crate::cluster::link::{Inbox, WireStats};
    use crate::messages::wire::WireMessage;
    use crate::messages::{Ask, ToHospital};
    use medfed_models::learner::{GlobalModel, TrainPlan};
    use medfed_models::{Layout, TensorSpec};
    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::sync::mpsc::unbounded_channel;

    /// Hands every envelope it gets to the test.
    struct Collector;

    impl Actor for Collector {
        type Msg = Envelope;
        type State = UnboundedSender<Envelope>;
        type Arguments = UnboundedSender<Envelope>;

        async fn pre_start(
            &self,
            _: ActorRef<Envelope>,
            to: UnboundedSender<Envelope>,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(to)
        }

        async fn handle(
            &self,
            _: ActorRef<Envelope>,
            envelope: Envelope,
            to: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = to.send(envelope);
            Ok(())
        }
    }

    fn model(n: usize) -> Params {
        let layout = Arc::new(
            Layout::new(vec![
                TensorSpec::new("conv1.weight", &[n, 1, 3, 3]),
                TensorSpec::new("fc.bias", &[1]),
            ])
            .unwrap(),
        );
        let mut values: Vec<f32> = (0..n * 9 + 1).map(|i| i as f32 * -0.37).collect();
        values[3] = f32::NAN;
        values[4] = -0.0;
        values[5] = f32::MIN_POSITIVE / 2.0;
        Params::new(layout, values).unwrap()
    }

    fn train(params: Params) -> ToHospital {
        ToHospital::Train {
            ask: Ask {
                run: 3,
                round: 2,
                attempt: 0,
            },
            model: GlobalModel {
                params: Arc::new(params),
                standardizer: None,
            },
            plan: TrainPlan {
                round: 2,
                attempt: 0,
                local_epochs: 1,
                batch_size: 8,
                learning_rate: 0.1,
                l2: 0.0,
                seed: 5,
                proximal_mu: 0.0,
                privacy: None,
            },
            shares: None,
        }
    }

    fn direct(pid: u64, message: ToHospital) -> Outgoing {
        let (frame, values) = message.encode_apart().unwrap();
        Outgoing::Direct(Direct { pid, frame, values })
    }

    fn bits(p: &Params) -> Vec<u32> {
        p.as_slice().iter().map(|v| v.to_bits()).collect()
    }

    #[tokio::test]
    async fn envelopes_cross_in_order_bit_exact_and_stamped_with_the_session() {
        let (to_test, mut arrived) = unbounded_channel();
        let (collector, _) = Actor::spawn(None, Collector, to_test).await.unwrap();
        let pid = collector.get_id().pid();
        // Large enough for several slices of values.
        let params = model(100_000);
        let (queue, outgoing) = unbounded_channel();
        queue.send(direct(pid, train(params.clone()))).unwrap();
        queue.send(direct(pid, ToHospital::Welcome)).unwrap();
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (ractor_side, _keep) = tokio::io::duplex(64);
        let stats = GateStats::default();
        let peer = Identity::Hospital("h1".into());
        let policy = Policy::new(peer.clone(), Limits::default(), true, Activity::default());
        let writer = tokio::spawn(write(outgoing, ours, Duration::from_secs(5)));
        let reader = async { pump(theirs, ractor_side, policy, &stats).await };
        let receive = async {
            let mut inbox = Inbox::<ToHospital>::new(Arc::new(WireStats::default()));
            let first = arrived.recv().await.unwrap();
            assert_eq!(
                first.from,
                Some(peer.clone()),
                "stamped with the session's identity"
            );
            match inbox.accept(first) {
                Some(ToHospital::Train { model, plan, .. }) => {
                    assert_eq!(bits(&model.params), bits(&params));
                    assert_eq!(model.params.layout().specs(), params.layout().specs());
                    assert_eq!(plan.seed, 5);
                }
                other => panic!("{other:?}"),
            }
            let second = arrived.recv().await.unwrap();
            assert!(
                matches!(inbox.accept(second), Some(ToHospital::Welcome)),
                "in order"
            );
            drop(queue);
        };
        tokio::select! {
            _ = reader => panic!("the reader stopped first"),
            () = receive => {}
        }
        writer.await.unwrap().unwrap();
        assert!(stats.undelivered().is_empty());
        collector.stop(None);
    }

    /// A direct frame as a peer could write it: length, key, head, parts.
    fn raw(pid: u64, frame: &[u8], values: &[u8], crc: Option<u32>) -> Vec<u8> {
        let len = (1 + HEAD + TRAILER + frame.len() + values.len()) as u64;
        let mut out = len.to_be_bytes().to_vec();
        out.push(KEY);
        out.extend_from_slice(&pid.to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(values.len() as u64).to_le_bytes());
        out.extend_from_slice(frame);
        out.extend_from_slice(values);
        out.extend_from_slice(&crc.unwrap_or_else(|| crc32fast::hash(values)).to_le_bytes());
        out
    }

    /// What the gate makes of `bytes` from a hospital.
    async fn read_from_peer(bytes: Vec<u8>, limits: Limits, stats: &GateStats) -> Result<(), Breach> {
        let (ractor_side, _keep) = tokio::io::duplex(64);
        let policy = Policy::new(Identity::Hospital("h1".into()), limits, true, Activity::default());
        pump(&bytes[..], ractor_side, policy, stats).await
    }

    #[tokio::test]
    async fn bad_direct_frames_close_the_session_before_anything_is_allocated() {
        let stats = GateStats::default();
        let values = [0u8; 64];
        let label = |r: Result<(), Breach>| r.unwrap_err().label();
        // Values above the limit: refused from the head alone.
        let limits = Limits {
            max_direct_values: 32,
            ..Limits::default()
        };
        let mut head_only = raw(1, b"x", &values, None);
        head_only.truncate(8 + 1 + HEAD);
        assert_eq!(
            label(read_from_peer(head_only, limits, &stats).await),
            "frame_too_large"
        );
        // A frame part above the message-frame limit.
        let limits = Limits {
            max_message_frame: 4,
            ..Limits::default()
        };
        let big_frame = raw(1, &[0u8; 5], &values, None);
        assert_eq!(
            label(read_from_peer(big_frame, limits, &stats).await),
            "frame_too_large"
        );
        // Lengths that do not add up, values that are not whole f32s.
        let mut wrong_len = raw(1, b"x", &values, None);
        wrong_len[7] += 1;
        let r = read_from_peer(wrong_len, Limits::default(), &stats).await;
        assert!(
            r.as_ref().unwrap_err().to_string().contains("its parts make"),
            "{r:?}"
        );
        let ragged = raw(1, b"x", &values[..63], None);
        let r = read_from_peer(ragged, Limits::default(), &stats).await;
        assert!(
            r.as_ref().unwrap_err().to_string().contains("not whole f32s"),
            "{r:?}"
        );
        // Values corrupted on the way.
        let corrupt = raw(1, b"x", &values, Some(crc32fast::hash(&values) ^ 1));
        let r = read_from_peer(corrupt, Limits::default(), &stats).await;
        assert!(r.as_ref().unwrap_err().to_string().contains("checksum"), "{r:?}");
        assert!(stats.undelivered().is_empty());
    }

    #[tokio::test]
    async fn envelopes_for_no_actor_or_another_kind_of_actor_are_counted_and_dropped() {
        let stats = GateStats::default();
        // An actor that takes ToHospital, not envelopes.
        struct Other;
        impl Actor for Other {
            type Msg = ToHospital;
            type State = ();
            type Arguments = ();
            async fn pre_start(&self, _: ActorRef<ToHospital>, _: ()) -> Result<(), ActorProcessingErr> {
                Ok(())
            }
        }
        let (other, _) = Actor::spawn(None, Other, ()).await.unwrap();
        let frame = ToHospital::Welcome.encode().unwrap();
        let mut bytes = raw(u64::MAX - 7, &frame, &[], None);
        bytes.extend(raw(other.get_id().pid(), &frame, &[], None));
        read_from_peer(bytes, Limits::default(), &stats).await.unwrap();
        let undelivered = stats.undelivered();
        assert_eq!(undelivered.get("no_such_actor"), Some(&1));
        assert_eq!(undelivered.get("not_an_envelope_actor"), Some(&1));
        other.stop(None);
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_is_cut_off() {
        // The peer's side holds 64 bytes and is never read.
        let (_peer, gate_side) = tokio::io::duplex(64);
        let (queue, outgoing) = unbounded_channel();
        queue.send(direct(1, train(model(1000)))).unwrap();
        let r = write(outgoing, gate_side, Duration::from_millis(50)).await;
        assert_eq!(r.unwrap_err().label(), "not_reading");
    }

    #[tokio::test]
    async fn cluster_frames_go_whole_onto_the_queue() {
        let (mut ractor_side, gate_in) = tokio::io::duplex(1 << 16);
        let (queue, mut outgoing) = unbounded_channel();
        let mut frames = Vec::new();
        for n in [1usize, 300, 70_000] {
            let mut f = (n as u64).to_be_bytes().to_vec();
            f.extend(std::iter::repeat_n(n as u8, n));
            frames.push(f);
        }
        let all: Vec<u8> = frames.concat();
        let feed = async move {
            ractor_side.write_all(&all).await.unwrap();
            drop(ractor_side);
        };
        tokio::join!(feed, cluster_frames(gate_in, queue));
        for f in frames {
            match outgoing.recv().await {
                Some(Outgoing::Cluster(got)) => assert_eq!(got, f),
                _ => panic!("a whole cluster frame"),
            }
        }
    }
}
