//! A cluster node: ractor_cluster's `NodeServer` with the cookie, optional
//! mutual TLS and Isolated connection mode (hospitals connect to the
//! coordinator only, never to each other), plus its session events.

use std::collections::HashSet;
use std::net::SocketAddr;

use ractor::{Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::ClientConnectErr;
use ractor_cluster::{IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::gateway::NodeDirectory;
use super::tls::{self, TlsFiles};
use super::ClusterError;

pub struct NodeOptions {
    /// This node's name in the cluster (the hospital's name, or "coordinator").
    pub name: String,
    pub cookie: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEventKind {
    Opened,
    Authenticated,
    Disconnected,
}

#[derive(Debug, Clone)]
pub struct SessionEvent {
    pub kind: SessionEventKind,
    pub node_id: u64,
    pub peer_addr: String,
    pub peer_name: Option<String>,
    /// An inbound session (we are its server).
    pub inbound: bool,
}

struct Forward {
    to: UnboundedSender<SessionEvent>,
    directory: NodeDirectory,
}

impl Forward {
    fn send(&self, kind: SessionEventKind, ses: NodeServerSessionInformation) {
        let peer_name = ses.peer_name.map(|p| p.name);
        if kind == SessionEventKind::Authenticated {
            let name = peer_name.clone().unwrap_or_else(|| "unnamed".into());
            self.directory
                .set(ses.node_id, format!("{name} at {}", ses.peer_addr));
        }
        let _ = self.to.send(SessionEvent {
            kind,
            node_id: ses.node_id,
            peer_addr: ses.peer_addr,
            peer_name,
            inbound: ses.is_server,
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

/// How long opening a connection (TCP and, with TLS, its handshake) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A running node; cheap to clone (connecting can run in its own task).
#[derive(Clone)]
pub struct Node {
    pub server: ActorRef<NodeServerMessage>,
    pub directory: NodeDirectory,
    connector: Option<TlsConnector>,
}

/// Start the node server; its session events arrive on the receiver.
pub async fn start(options: NodeOptions) -> Result<(Node, UnboundedReceiver<SessionEvent>), ClusterError> {
    if options.cookie.trim().is_empty() {
        return Err(ClusterError::Config("the cluster cookie is empty".into()));
    }
    let (encryption, connector) = match &options.tls {
        Some(files) => (
            Some(IncomingEncryptionMode::Tls(tls::acceptor(files)?)),
            Some(tls::connector(files)?),
        ),
        None => (None, None),
    };
    let server = NodeServer::new(
        options.listen.port(),
        options.cookie.trim().to_string(),
        options.name.clone(),
        options.listen.ip().to_string(),
        encryption,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(options.listen.ip());
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| ClusterError::Start(format!("cluster node on {}: {e}", options.listen)))?;
    let (to, events) = unbounded_channel();
    let directory = NodeDirectory::default();
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "medfed".into(),
            subscription: Box::new(Forward {
                to,
                directory: directory.clone(),
            }),
        })
        .map_err(|e| ClusterError::Start(e.to_string()))?;
    Ok((
        Node {
            server,
            directory,
            connector,
        },
        events,
    ))
}

impl Node {
    /// Open a session to `addr` (TLS when this node has certificates).
    /// Ok means the connection is open, not that the peer accepted us:
    /// authentication is reported by the session events.
    pub async fn connect(&self, addr: &str) -> Result<(), ClusterError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_now(addr)).await {
            Ok(result) => result,
            Err(_) => Err(ClusterError::Connect(format!(
                "{addr}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn connect_now(&self, addr: &str) -> Result<(), ClusterError> {
        let result = match &self.connector {
            Some(connector) => {
                ractor_cluster::client_connect_enc(
                    &self.server,
                    addr,
                    connector.clone(),
                    tls::server_name(addr)?,
                )
                .await
            }
            None => ractor_cluster::client_connect(&self.server, addr).await,
        };
        // Its Display is a Debug dump: worded here instead. A TLS handshake
        // cut short (a coordinator stopping or starting) is a connection
        // failure to retry; anything else in TLS is a refusal.
        result.map_err(|e| match e {
            ClientConnectErr::Encryption(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                ClusterError::Connect(format!("{addr}: the TLS handshake was cut short ({e})"))
            }
            ClientConnectErr::Encryption(e) => {
                ClusterError::Tls(format!("handshake with {addr} failed: {e}"))
            }
            ClientConnectErr::Socket(e) => ClusterError::Connect(format!("{addr}: {e}")),
            ClientConnectErr::Messaging(_) => {
                ClusterError::Connect(format!("{addr}: this node's cluster server has stopped"))
            }
        })
    }

    pub fn stop(&self) {
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
