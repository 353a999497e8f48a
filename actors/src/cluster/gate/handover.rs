//! Handing an authenticated connection to ractor_cluster: it gets one end
//! of an in-memory pipe; the gate pumps the socket into it through the
//! frame filter (delivering direct frames itself) and writes the session's
//! queue to the socket: ractor_cluster's frames as they are and, between
//! them, the direct frames `link::send` queues on the session's route.

use std::net::SocketAddr;

use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tracing::{debug, warn};

use super::direct::{self, Route};
use super::filter::{self, Policy};
use super::identity::Identity;
use super::sessions::Live;
use super::stats::Held;
use super::Gate;

/// An established connection, plain or TLS, either side.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// The pipe between the gate and ractor_cluster holds this much.
const PIPE: usize = 1 << 20;

struct Pipe {
    end: DuplexStream,
    label: String,
}

impl ClusterBidiStream for Pipe {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w) = tokio::io::split(self.end);
        (Box::new(r), Box::new(w))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

/// Start the session of `peer` over `io` (`live` holds its one session
/// slot on the accepting side).
pub fn hand_over(
    io: BoxIo,
    peer: Identity,
    live: Option<Live>,
    addr: SocketAddr,
    inbound: bool,
    server: &ActorRef<NodeServerMessage>,
    gate: &Gate,
) -> Result<(), String> {
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let label = format!("{peer} at {addr}");
    let (queue, outgoing) = tokio::sync::mpsc::unbounded_channel();
    gate.directory
        .expect(&label, peer.clone(), Route::new(queue.clone()));
    server
        .cast(NodeServerMessage::ConnectionOpenedExternal {
            stream: Box::new(Pipe {
                end: theirs,
                label: label.clone(),
            }),
            is_server: inbound,
        })
        .map_err(|_| {
            gate.directory.ended(&label);
            "this node's cluster server has stopped".to_string()
        })?;
    let activity = live.as_ref().map(|l| l.activity.clone()).unwrap_or_default();
    let policy = Policy::new(peer, gate.limits.clone(), inbound, activity);
    let stall = gate.limits.idle_timeout;
    let stats = gate.stats.clone();
    let directory = gate.directory.clone();
    tokio::spawn(async move {
        let _live = live;
        let _open = Held::new(&stats, |s| &s.sessions);
        let (socket_in, socket_out) = tokio::io::split(io);
        let (pipe_in, pipe_out) = tokio::io::split(ours);
        let result = tokio::select! {
            result = filter::pump(socket_in, pipe_out, policy, &stats) => result,
            () = direct::cluster_frames(pipe_in, queue) => Ok(()),
            result = direct::write(outgoing, socket_out, stall) => result,
        };
        if let Err(breach) = result {
            stats.count_closed(breach.label());
            warn!(peer = %label, "closed the cluster session: {breach}");
        }
        directory.ended(&label);
        debug!(peer = %label, "cluster connection closed");
    });
    Ok(())
}
