//! The hospital's way in: connect, TLS (the coordinator's certificate must
//! be a coordinator's, for the dialled name), the cookie handshake (the
//! coordinator proves itself first), all under one deadline. The session
//! then carries the coordinator this hospital dialled, and no other.

use std::sync::atomic::Ordering;

use ractor::ActorRef;
use ractor_cluster::NodeServerMessage;
use tokio::net::TcpStream;

use super::super::{tls, ClusterError};
use super::handover::{hand_over, BoxIo};
use super::handshake::{self, Failure};
use super::identity::Identity;
use super::Gate;

/// Open an authenticated session to the coordinator at `addr`.
pub async fn dial(gate: &Gate, addr: &str, server: &ActorRef<NodeServerMessage>) -> Result<(), ClusterError> {
    let deadline = gate.limits.handshake_deadline;
    match tokio::time::timeout(deadline, dial_now(gate, addr, server)).await {
        Ok(result) => result,
        Err(_) => Err(ClusterError::Connect(format!(
            "{addr}: no answer within {} s",
            deadline.as_secs()
        ))),
    }
}

async fn dial_now(gate: &Gate, addr: &str, server: &ActorRef<NodeServerMessage>) -> Result<(), ClusterError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| ClusterError::Connect(format!("{addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp
        .peer_addr()
        .map_err(|e| ClusterError::Connect(format!("{addr}: {e}")))?;
    let (mut io, binding): (BoxIo, Vec<u8>) = match &gate.tls {
        Some(t) => {
            let stream = t
                .connector
                .connect(tls::server_name(addr)?, tcp)
                .await
                .map_err(|e| tls::handshake_error(addr, e))?;
            let (_, connection) = stream.get_ref();
            match tls::peer_identity(connection.peer_certificates()) {
                Ok(Identity::Coordinator) => {}
                Ok(other) => {
                    return Err(ClusterError::Refused(format!(
                        "{addr} presented the certificate of {other}, not a coordinator's"
                    )))
                }
                Err(e) => return Err(ClusterError::Refused(format!("{addr} is not a coordinator: {e}"))),
            }
            let binding = tls::exporter(connection).map_err(|e| ClusterError::Tls(e.to_string()))?;
            (Box::new(stream), binding)
        }
        None => (Box::new(tcp), Vec::new()),
    };
    match handshake::as_hospital(&mut io, &gate.cookie, &gate.me, &binding).await {
        Ok(()) => {}
        Err(Failure::Io(e)) => {
            return Err(ClusterError::Connect(format!(
                "{addr}: the connection closed during the handshake ({e})"
            )))
        }
        Err(Failure::Unanswered(e)) => {
            return Err(ClusterError::ClosedEarly(format!(
                "{addr} closed the connection without answering ({e}): a coordinator stopping or \
                 starting there, TLS on one side only, or not a medfed coordinator"
            )))
        }
        Err(Failure::Refused(r)) if r.label == handshake::DUPLICATE_LABEL => {
            return Err(ClusterError::Duplicate(r.reason))
        }
        Err(Failure::Refused(r)) if r.retry => return Err(ClusterError::Busy(r.reason)),
        Err(Failure::Refused(r)) => return Err(ClusterError::Refused(r.reason)),
        Err(other) => return Err(ClusterError::Handshake(format!("{addr}: {other}"))),
    }
    gate.stats.accepted.fetch_add(1, Ordering::Relaxed);
    hand_over(io, Identity::Coordinator, None, peer, false, server, gate).map_err(ClusterError::Connect)
}
