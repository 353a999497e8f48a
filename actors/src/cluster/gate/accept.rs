//! The coordinator's accept loop, owned by the gate: capped unauthenticated
//! connections (in all and per source), TLS and the cookie handshake off
//! the loop under one deadline, backoff on accept errors (descriptor
//! exhaustion), throttled logs. Only authenticated, admitted sessions reach
//! ractor_cluster.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::NodeServerMessage;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::super::node::{SessionEvent, SessionEventKind};
use super::handover::{hand_over, BoxIo};
use super::handshake::{self, Failure, Refusal};
use super::identity::Identity;
use super::sessions::{Live, OverCap};
use super::stats::{Held, LogThrottle};
use super::Gate;

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accept sessions on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, gate: Gate, server: ActorRef<NodeServerMessage>) {
    let logs = Arc::new(LogThrottle::default());
    let mut backoff = FIRST_BACKOFF;
    loop {
        match listener.accept().await {
            Ok((tcp, addr)) => {
                backoff = FIRST_BACKOFF;
                match gate.sessions.begin(addr.ip(), &gate.limits) {
                    Ok(pending) => {
                        let (gate, server, logs) = (gate.clone(), server.clone(), logs.clone());
                        tokio::spawn(async move {
                            let admitted = admit(tcp, addr, &gate).await;
                            drop(pending);
                            match admitted {
                                Ok((io, peer, live)) => {
                                    gate.stats.accepted.fetch_add(1, Ordering::Relaxed);
                                    if let Err(e) =
                                        hand_over(io, peer, Some(live), addr, true, &server, &gate)
                                    {
                                        warn!("cannot open a cluster session: {e}");
                                    }
                                }
                                Err(failure) => report(&gate, &logs, addr, &failure),
                            }
                        });
                    }
                    Err(cap) => {
                        gate.stats.over_cap.fetch_add(1, Ordering::Relaxed);
                        drop(tcp);
                        let (what, limit) = match cap {
                            OverCap::Total => ("in all", gate.limits.unauthenticated_total),
                            OverCap::Source => ("from one address", gate.limits.unauthenticated_per_source),
                        };
                        if let Some(suppressed) = logs.allow(&format!("over_cap {what}")) {
                            warn!(
                                addr = %addr,
                                suppressed,
                                "closed a cluster connection at once: {limit} connections {what} are still authenticating"
                            );
                        }
                    }
                }
            }
            Err(e) => {
                gate.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = logs.allow("accept_error") {
                    warn!(
                        suppressed,
                        "cannot accept cluster connections ({e}); pausing {} ms",
                        backoff.as_millis()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// TLS, the handshake and admission, under the handshake deadline.
async fn admit(tcp: TcpStream, addr: SocketAddr, gate: &Gate) -> Result<(BoxIo, Identity, Live), Failure> {
    let _unauthenticated = Held::new(&gate.stats, |s| &s.unauthenticated);
    let deadline = gate.limits.handshake_deadline;
    match tokio::time::timeout(deadline, admit_now(tcp, gate)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no complete handshake from {addr} within {} s",
                deadline.as_secs()
            ),
        ))),
    }
}

async fn admit_now(tcp: TcpStream, gate: &Gate) -> Result<(BoxIo, Identity, Live), Failure> {
    let _ = tcp.set_nodelay(true);
    // Under TLS: who the certificate names, or why it names no hospital
    // (told to the hospital in the verdict, after the handshake).
    type Certified = Option<Result<Identity, String>>;
    let (mut io, binding, certified): (BoxIo, Vec<u8>, Certified) = match &gate.tls {
        Some(tls) => {
            let stream = tls.acceptor.accept(tcp).await.map_err(Failure::Tls)?;
            let (_, connection) = stream.get_ref();
            let binding = super::super::tls::exporter(connection)?;
            let certified = super::super::tls::peer_identity(connection.peer_certificates());
            (Box::new(stream), binding, Some(certified))
        }
        None => (Box::new(tcp), Vec::new(), None),
    };
    let claim = handshake::as_coordinator(&mut io, &gate.cookie, &binding).await?;
    let verdict = check(gate, &claim.identity, certified.as_ref());
    let live = match verdict {
        Ok(()) => gate
            .sessions
            .claim(&claim.identity)
            .map_err(|silent| duplicate(&claim.identity, silent, gate.limits.idle_timeout)),
        Err(r) => Err(r),
    };
    match live {
        Ok(live) => {
            handshake::answer(&mut io, Ok(())).await?;
            Ok((io, claim.identity, live))
        }
        Err(refusal) => {
            let _ = handshake::answer(&mut io, Err(&refusal)).await;
            Err(Failure::Refused(refusal))
        }
    }
}

/// A second session of an identity whose first one lives: refused, to be
/// retried. A first one that stays active means two nodes use one name
/// (the newcomer gives up after a while); a silent one may be a dead
/// connection not yet closed (retry when it is).
fn duplicate(identity: &Identity, silent: Duration, idle: Duration) -> Refusal {
    if silent < ACTIVE_WITHIN {
        Refusal {
            reason: format!(
                "{identity} is already connected from another session (active {} s ago): \
                 two nodes use the name, and the first one keeps it",
                silent.as_secs()
            ),
            retry: true,
            label: handshake::DUPLICATE_LABEL,
        }
    } else {
        Refusal {
            reason: format!(
                "{identity} still has a session, silent for {} s; it is closed after {} s of silence: retry then",
                silent.as_secs(),
                idle.as_secs()
            ),
            retry: true,
            label: "stale_session",
        }
    }
}

/// A session that received a frame this recently is alive (ractor_cluster
/// pings every 1-5 s).
const ACTIVE_WITHIN: Duration = Duration::from_secs(10);

/// The certificate's identity must be the handshake's; then the allow-list.
fn check(
    gate: &Gate,
    claimed: &Identity,
    certified: Option<&Result<Identity, String>>,
) -> Result<(), Refusal> {
    match certified {
        Some(Err(why)) => return Err(Refusal::fatal("certificate", why.clone())),
        Some(Ok(certified)) if certified != claimed => {
            return Err(Refusal::fatal(
                "certificate_mismatch",
                format!("its certificate names {certified} but its handshake says {claimed}"),
            ))
        }
        _ => {}
    }
    gate.admit(claimed)
}

fn report(gate: &Gate, logs: &LogThrottle, addr: SocketAddr, failure: &Failure) {
    let label = failure.label();
    gate.stats.count_refused(label);
    // One line per kind and source per period; peers that merely hang up
    // or time out are routine (scanners, health checks).
    let Some(suppressed) = logs.allow(&format!("{label} {}", addr.ip())) else {
        return;
    };
    match failure {
        Failure::Io(e) | Failure::Unanswered(e) => {
            info!(addr = %addr, suppressed, "a cluster connection ended before authenticating: {e}")
        }
        other => {
            warn!(addr = %addr, suppressed, reason = label, "refused a cluster connection: {other}");
            let _ = gate.events.send(SessionEvent {
                kind: SessionEventKind::Refused,
                node_id: 0,
                peer_addr: addr.to_string(),
                peer_name: None,
                inbound: true,
                reason: Some(format!(
                    "{label}: {other} ({suppressed} more like it since the last report)"
                )),
            });
        }
    }
}
