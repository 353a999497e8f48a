//! A cluster node: ractor_cluster's `NodeServer` in Isolated mode behind
//! medfed's gate. The gate accepts (coordinator) and dials (hospital); the
//! NodeServer's own listener is bound to loopback behind a TLS acceptor
//! without a certificate, so no session can start through it.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use ractor::{Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, info, warn};

use super::directory::NodeDirectory;
use super::gate::{self, Cookie, Gate, GateStats, GateTls, Identity, Limits, Sessions};
use super::tls::{self, TlsFiles};
use super::ClusterError;

pub struct NodeOptions {
    /// This node's ractor_cluster name: `medfed.coordinator`, or
    /// `medfed.hospital.<name>.<16 hex digits>` (see `Identity::node_name_prefix`).
    pub name: String,
    /// Who this node is (under TLS, its certificate must say the same).
    pub identity: Identity,
    pub cookie: String,
    /// Where the coordinator accepts hospitals; hospitals listen nowhere.
    pub listen: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    /// The coordinator's expected hospitals (others refused); `None`: any.
    pub allow: Option<BTreeSet<String>>,
    /// Accept a non-loopback listener without TLS.
    pub insecure_plaintext: bool,
    /// Where the gate counts (shared with `/metrics`).
    pub stats: Arc<GateStats>,
    /// Where the gate registers its sessions (shared with `WireStats`,
    /// through which `link::send` finds each session's direct stream).
    pub directory: NodeDirectory,
}

impl NodeOptions {
    pub fn new(name: String, identity: Identity, cookie: String) -> Self {
        Self {
            name,
            identity,
            cookie,
            listen: None,
            tls: None,
            limits: Limits::default(),
            allow: None,
            insecure_plaintext: false,
            stats: Arc::new(GateStats::default()),
            directory: NodeDirectory::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEventKind {
    Opened,
    Authenticated,
    Disconnected,
    /// The gate refused a connection (logged there; for the audit log).
    Refused,
}

#[derive(Debug, Clone)]
pub struct SessionEvent {
    pub kind: SessionEventKind,
    pub node_id: u64,
    /// Who the gate authenticated, and where: "hospital h1 at 10.0.0.7:40112".
    pub peer_addr: String,
    pub peer_name: Option<String>,
    /// An inbound session (we are its server).
    pub inbound: bool,
    /// Why the gate refused it (`Refused` only).
    pub reason: Option<String>,
}

struct Forward {
    to: UnboundedSender<SessionEvent>,
    directory: NodeDirectory,
}

impl Forward {
    fn send(&self, kind: SessionEventKind, ses: NodeServerSessionInformation) {
        let peer_name = ses.peer_name.map(|p| p.name);
        match kind {
            SessionEventKind::Opened => self.directory.opened(ses.node_id, &ses.peer_addr),
            SessionEventKind::Disconnected => self.directory.closed(ses.node_id),
            SessionEventKind::Authenticated | SessionEventKind::Refused => {}
        }
        let _ = self.to.send(SessionEvent {
            kind,
            node_id: ses.node_id,
            peer_addr: ses.peer_addr,
            peer_name,
            inbound: ses.is_server,
            reason: None,
        });
    }
}

impl NodeEventSubscription for Forward {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEventKind::Opened, ses);
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEventKind::Disconnected, ses);
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEventKind::Authenticated, ses);
    }
}

/// A running node; cheap to clone (connecting can run in its own task).
#[derive(Clone)]
pub struct Node {
    pub server: ActorRef<NodeServerMessage>,
    pub directory: NodeDirectory,
    pub gate: Gate,
    /// Where the gate accepts sessions (the coordinator's node).
    pub listening: Option<SocketAddr>,
    accept: Option<tokio::task::AbortHandle>,
}

/// Start the node; its session events arrive on the receiver.
pub async fn start(options: NodeOptions) -> Result<(Node, UnboundedReceiver<SessionEvent>), ClusterError> {
    let cookie = Cookie::new(&options.cookie).map_err(|e| ClusterError::Config(e.to_string()))?;
    if !options.name.starts_with(&options.identity.node_name_prefix()) {
        return Err(ClusterError::Config(format!(
            "node name '{}' is not one of {}'s",
            options.name, options.identity
        )));
    }
    let tls = match &options.tls {
        Some(files) => {
            tls::check_own(files, &options.identity)?;
            options.stats.set_expiry("node", tls::not_after(&files.cert)?);
            options.stats.set_expiry("ca", tls::not_after(&files.ca)?);
            Some(GateTls {
                acceptor: tls::acceptor(files)?,
                connector: tls::connector(files)?,
            })
        }
        None => None,
    };
    if let Some(addr) = options.listen {
        if tls.is_none() && !addr.ip().is_loopback() {
            if !options.insecure_plaintext {
                return Err(ClusterError::Config(format!(
                    "refusing to accept hospitals on {addr} without TLS: models, updates and sums would \
                     cross the network readable and alterable. Give --tls-cert, --tls-key and --tls-ca \
                     (see `medfed cluster gen-certs`), listen on 127.0.0.1, or pass --insecure-plaintext \
                     on a network you trust"
                )));
            }
            warn!(
                listen = %addr,
                "INSECURE: accepting hospitals without TLS on a non-loopback address (--insecure-plaintext): \
                     anyone on the network can read and alter models and updates"
            );
        }
    }
    let directory = options.directory.clone();
    let (to, events) = unbounded_channel();
    let gate = Gate {
        events: to.clone(),
        directory: directory.clone(),
        me: options.identity.clone(),
        cookie: Arc::new(cookie),
        tls,
        limits: options.limits.clone(),
        stats: options.stats.clone(),
        sessions: Sessions::default(),
        allow: options.allow.clone().map(Arc::new),
    };
    // ractor_cluster always runs a listener of its own: on loopback, behind
    // TLS without a certificate, it accepts nothing.
    let server = NodeServer::new(
        0,
        options.cookie.trim().to_string(),
        options.name.clone(),
        "127.0.0.1".to_string(),
        Some(IncomingEncryptionMode::Tls(tls::refuse_all()?)),
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into());
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| ClusterError::Start(format!("cluster node: {e}")))?;
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "medfed".into(),
            subscription: Box::new(Forward {
                to,
                directory: directory.clone(),
            }),
        })
        .map_err(|e| ClusterError::Start(e.to_string()))?;
    let (accept, listening) = match options.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ClusterError::Start(format!("cannot listen on {addr}: {e}")))?;
            let bound = listener.local_addr().unwrap_or(addr);
            let task = tokio::spawn(gate::accept::serve(listener, gate.clone(), server.clone()));
            (Some(task.abort_handle()), Some(bound))
        }
        None => (None, None),
    };
    Ok((
        Node {
            server,
            directory,
            gate,
            listening,
            accept,
        },
        events,
    ))
}

impl Node {
    /// Open an authenticated session to the coordinator at `addr` (TLS
    /// when this node has certificates). Ok means the coordinator proved
    /// itself and admitted this node.
    pub async fn connect(&self, addr: &str) -> Result<(), ClusterError> {
        gate::dial::dial(&self.gate, addr, &self.server).await
    }

    pub fn stop(&self) {
        if let Some(accept) = &self.accept {
            accept.abort();
        }
        self.server.stop(None);
    }
}

/// Logs session events and recognises sessions that closed before they
/// authenticated (see `reconnect` for what they mean).
#[derive(Default)]
pub struct SessionLog {
    authenticated: HashSet<u64>,
}

/// A session that closed before it authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyClose {
    /// The peer had named itself: the handshake itself failed (a wrong
    /// cookie). Otherwise it closed before any handshake message.
    pub peer_named: bool,
    pub description: String,
}

impl SessionLog {
    /// Log `event`; returns what it means when a session closed unauthenticated.
    pub fn observe(&mut self, event: &SessionEvent) -> Option<EarlyClose> {
        let peer = event.peer_name.as_deref().unwrap_or("unnamed node");
        match event.kind {
            SessionEventKind::Opened => {
                debug!(node = event.node_id, addr = %event.peer_addr, inbound = event.inbound, "cluster session opened");
                None
            }
            SessionEventKind::Authenticated => {
                self.authenticated.insert(event.node_id);
                info!(node = event.node_id, peer = %crate::names::printable(peer), addr = %event.peer_addr, "cluster node authenticated");
                None
            }
            SessionEventKind::Disconnected if self.authenticated.remove(&event.node_id) => {
                info!(node = event.node_id, peer = %crate::names::printable(peer), addr = %event.peer_addr, "cluster node disconnected");
                None
            }
            SessionEventKind::Disconnected if event.peer_name.is_some() => {
                // The peer's name is whatever it said before the cookie check.
                let description = format!(
                    "the session with {} ({}) closed before authenticating: refused \
                     (a wrong cookie on one side)",
                    event.peer_addr,
                    crate::names::printable(peer)
                );
                warn!(node = event.node_id, addr = %event.peer_addr, "{description}");
                Some(EarlyClose {
                    peer_named: true,
                    description,
                })
            }
            SessionEventKind::Refused => None,
            SessionEventKind::Disconnected => {
                let description = format!(
                    "the session with {} closed before any handshake message \
                     (a node stopping or starting there, TLS on one side only, or an untrusted certificate)",
                    event.peer_addr
                );
                info!(node = event.node_id, addr = %event.peer_addr, "{description}");
                Some(EarlyClose {
                    peer_named: false,
                    description,
                })
            }
        }
    }
}
