//! The gate: medfed's own authenticated transport in front of
//! ractor_cluster. It owns the accept loop and the outgoing connect, runs
//! TLS and a mutual cookie handshake with deadlines and caps, names the
//! peer of every session (a hospital, or the coordinator), and hands
//! ractor_cluster a stream whose inbound frames it filters: every actor
//! message is stamped with the session's identity, announcements of actors
//! and process groups are budgeted, and node names must match the identity.
//! Node names are not secrets and authorise nothing.

pub mod accept;
pub mod cookie;
pub mod dial;
pub mod direct;
pub mod filter;
pub mod frames;
pub mod handover;
pub mod handshake;
pub mod identity;
pub mod limits;
pub mod sessions;
pub mod stats;

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use cookie::Cookie;
pub use identity::Identity;
pub use limits::Limits;
pub use sessions::Sessions;
pub use stats::GateStats;

/// Everything a node's gate decides with; cheap to clone.
#[derive(Clone)]
pub struct Gate {
    pub me: Identity,
    /// Where each session's identity is published for the actors.
    pub directory: super::directory::NodeDirectory,
    /// The node's session events (the gate adds its refusals).
    pub events: tokio::sync::mpsc::UnboundedSender<super::node::SessionEvent>,
    pub cookie: Arc<Cookie>,
    pub tls: Option<GateTls>,
    pub limits: Limits,
    pub stats: Arc<GateStats>,
    pub sessions: Sessions,
    /// The coordinator's list of expected hospital names (others refused).
    pub allow: Option<Arc<BTreeSet<String>>>,
}

/// The TLS halves of a node with certificates.
#[derive(Clone)]
pub struct GateTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl Gate {
    /// Whether `peer` may be admitted: on the allow-list, when there is one
    /// (one session per identity is `Sessions::claim`'s to decide).
    pub fn admit(&self, peer: &Identity) -> Result<(), handshake::Refusal> {
        if let (Identity::Hospital(name), Some(allow)) = (peer, &self.allow) {
            if !allow.contains(name) {
                return Err(handshake::Refusal::fatal(
                    "not_admitted",
                    format!(
                    "hospital '{name}' is not on this coordinator's list of expected hospitals (cluster.allow)"
                ),
                ));
            }
        }
        Ok(())
    }
}
