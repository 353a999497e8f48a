//! Sending and receiving messages of the one message set as envelopes. To a
//! node with a session, an envelope goes on the session's direct stream
//! (`gate::direct`), its tensor values written from where they are; without
//! one (a session ractor_cluster has not opened yet) it goes through
//! ractor_cluster, where frames above the chunk limit are split. Inbound
//! frames are reassembled, checked and decoded. A frame that fails is
//! dropped with a logged reason and counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ractor::ActorRef;
use tracing::warn;

use super::directory::NodeDirectory;
use super::envelope::Envelope;
use super::gate::direct::{Direct, Route};
use crate::messages::wire::{WireMessage, KIND_APART, KIND_CHUNK, KIND_MESSAGE};
use crate::wire::chunks::{self, Reassembler};
use crate::wire::{encode_frame, parse, WireError};

/// The largest envelope sent: half of ractor_cluster's default 16 MiB
/// inbound frame limit, which leaves room for its own framing.
pub const MAX_ENVELOPE: usize = 8 << 20;
/// The largest message reassembled from chunks (a model of 256M parameters).
pub const MAX_MESSAGE: u64 = 1 << 30;
/// Incomplete chunked messages kept at once from one sender (each sender
/// has its own decoder): the oldest is dropped beyond it.
const MAX_IN_FLIGHT: usize = 4;
/// Bytes of incomplete messages kept from one sender: one largest message
/// and the start of the next.
const MAX_BUFFERED: u64 = MAX_MESSAGE + MAX_ENVELOPE as u64;
/// At most one log line per sender and period about dropped incomplete messages.
const DROP_LOG_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);
/// How long an incomplete message waits for its next chunks.
const PARTIAL_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// Frame header bytes around a chunk (see `wire`).
const FRAME_OVERHEAD: usize = 16;

/// Traffic and drop counters of one node, shared with whoever reports them,
/// and the node's sessions, shared with its gate (`NodeOptions::directory`).
#[derive(Debug, Default)]
pub struct WireStats {
    /// The node's gate: connections, sessions, refusals, certificates.
    pub gate: Arc<super::gate::GateStats>,
    /// Where `send` finds the direct stream to each node.
    pub directory: NodeDirectory,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_sent: AtomicU64,
    /// Of `messages_sent`, those sent on a session's direct stream.
    pub messages_sent_direct: AtomicU64,
    pub messages_received: AtomicU64,
    dropped: Mutex<BTreeMap<String, u64>>,
}

impl WireStats {
    pub fn count_drop(&self, label: &str) {
        self.count_drops(label, 1);
    }

    pub fn count_drops(&self, label: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Ok(mut d) = self.dropped.lock() {
            *d.entry(label.to_string()).or_default() += n;
        }
    }

    /// Dropped inbound frames by reason.
    pub fn dropped(&self) -> BTreeMap<String, u64> {
        self.dropped.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot encode the {0} message: {1}")]
    Encode(&'static str, WireError),
    #[error("the receiving actor is gone: {0}")]
    Gone(String),
}

/// Encode `message` and send it to `to`: on the direct stream of `to`'s
/// node when there is one, otherwise cast through ractor_cluster, in chunks
/// when it is large.
pub fn send<M: WireMessage>(to: &ActorRef<Envelope>, message: M, stats: &WireStats) -> Result<(), SendError> {
    match stats.directory.route(&to.get_id()) {
        Some((route, pid)) if cfg!(target_endian = "little") => send_direct(route, pid, message, stats),
        _ => send_cast(to, &message, stats),
    }
}

fn send_direct<M: WireMessage>(
    route: Route,
    pid: u64,
    message: M,
    stats: &WireStats,
) -> Result<(), SendError> {
    let label = message.label();
    let (frame, values) = message.encode_apart().map_err(|e| SendError::Encode(label, e))?;
    let values_len = values.as_ref().map_or(0, |v| v.as_slice().len() as u64 * 4);
    // What the receiving gate takes (`gate::Limits`' defaults, from these
    // constants): refused here
    // rather than closing the session there.
    if values_len > MAX_MESSAGE || frame.len() > MAX_ENVELOPE {
        return Err(SendError::Encode(
            label,
            WireError::TooLarge(format!(
                "a frame of {} bytes with {values_len} bytes of values (at most {MAX_ENVELOPE} and {MAX_MESSAGE})",
                frame.len()
            )),
        ));
    }
    let n = frame.len() as u64 + values_len;
    route
        .send(Direct { pid, frame, values })
        .map_err(|_| SendError::Gone("the session with its node has closed".into()))?;
    stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
    stats.messages_sent.fetch_add(1, Ordering::Relaxed);
    stats.messages_sent_direct.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn send_cast<M: WireMessage>(
    to: &ActorRef<Envelope>,
    message: &M,
    stats: &WireStats,
) -> Result<(), SendError> {
    let encode = |e| SendError::Encode(message.label(), e);
    let bytes = message.encode().map_err(encode)?;
    let envelopes = if bytes.len() <= MAX_ENVELOPE {
        vec![bytes]
    } else {
        let id: u64 = rand::random();
        chunks::plan(id, bytes.len(), MAX_ENVELOPE - FRAME_OVERHEAD)
            .and_then(|plan| {
                plan.into_iter()
                    .map(|(header, range)| encode_frame(KIND_CHUNK, &[&header, &bytes[range]]))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(encode)?
    };
    for envelope in envelopes {
        let n = envelope.len() as u64;
        to.cast(Envelope::new(envelope))
            .map_err(|e| SendError::Gone(e.to_string()))?;
        stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }
    stats.messages_sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// One receiving actor's decoder of the message family `M`.
pub struct Inbox<M> {
    reassembler: Reassembler,
    /// Incomplete messages dropped since the last log line about them.
    unlogged_drops: u64,
    drops_logged: std::time::Instant,
    stats: Arc<WireStats>,
    family: std::marker::PhantomData<fn() -> M>,
}

/// What an envelope came to.
#[derive(Debug)]
pub enum Received<M> {
    Message(M),
    /// A chunk of a message still incomplete.
    Pending,
    /// Dropped: logged and counted already.
    Dropped(WireError),
}

impl<M: WireMessage> Inbox<M> {
    pub fn new(stats: Arc<WireStats>) -> Self {
        Self {
            reassembler: Reassembler::new(MAX_MESSAGE, MAX_IN_FLIGHT).with_budget(MAX_BUFFERED, PARTIAL_TTL),
            unlogged_drops: 0,
            drops_logged: std::time::Instant::now() - DROP_LOG_PERIOD,
            stats,
            family: std::marker::PhantomData,
        }
    }

    pub fn stats(&self) -> &Arc<WireStats> {
        &self.stats
    }

    /// The message, once complete; `None` while chunks are outstanding or
    /// when the envelope was dropped (logged and counted here).
    pub fn accept(&mut self, envelope: Envelope) -> Option<M> {
        match self.receive(envelope) {
            Received::Message(m) => Some(m),
            Received::Pending | Received::Dropped(_) => None,
        }
    }

    /// As `accept`, saying why nothing came of the envelope.
    pub fn receive(&mut self, envelope: Envelope) -> Received<M> {
        let values = envelope.values.as_ref().map_or(0, |v| v.len() as u64 * 4);
        self.stats
            .bytes_received
            .fetch_add(envelope.frame.len() as u64 + values, Ordering::Relaxed);
        let bytes = envelope.frame.len();
        let decoded = self.decode(&envelope.frame, envelope.values);
        let (evicted, expired) = self.reassembler.take_dropped();
        for (n, label) in [(evicted, "chunks_evicted"), (expired, "chunks_expired")] {
            self.stats.count_drops(label, n);
            self.unlogged_drops += n;
        }
        if self.unlogged_drops > 0 && self.drops_logged.elapsed() >= DROP_LOG_PERIOD {
            warn!(
                count = self.unlogged_drops,
                "dropped incomplete messages of one sender (its buffer was full, or its chunks stopped coming)"
            );
            self.unlogged_drops = 0;
            self.drops_logged = std::time::Instant::now();
        }
        match decoded {
            Ok(Some(message)) => {
                self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
                Received::Message(message)
            }
            Ok(None) => Received::Pending,
            Err(e) => {
                warn!(reason = e.label(), bytes, "dropped an inbound cluster frame: {e}");
                self.stats.count_drop(e.label());
                Received::Dropped(e)
            }
        }
    }

    fn decode(&mut self, bytes: &[u8], values: Option<Vec<f32>>) -> Result<Option<M>, WireError> {
        let frame = parse(bytes)?;
        match (frame.kind, values) {
            (KIND_APART, Some(values)) => M::decode_apart(frame.payload, values).map(Some),
            (KIND_APART, None) => Err(WireError::Malformed(
                "a frame whose values travel apart came without them".into(),
            )),
            (_, Some(_)) => Err(WireError::Malformed(
                "values came apart from a frame that holds its own".into(),
            )),
            (KIND_MESSAGE, None) => M::decode(frame.payload).map(Some),
            (KIND_CHUNK, None) => match self.reassembler.push(frame.payload)? {
                Some((_, whole)) => {
                    let inner = parse(&whole)?;
                    if inner.kind != KIND_MESSAGE {
                        return Err(WireError::Malformed("a chunked frame must hold a message".into()));
                    }
                    M::decode(inner.payload).map(Some)
                }
                None => Ok(None),
            },
            (other, None) => Err(WireError::Malformed(format!("unknown frame kind {other}"))),
        }
    }
}
