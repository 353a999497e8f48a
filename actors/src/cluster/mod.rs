//! Cluster mode (DESIGN §3): the coordinator and each hospital in their own
//! process, connected by ractor_cluster behind medfed's gate (`gate`: its
//! own accept loop and connect, mutual cookie authentication, optional
//! mutual TLS whose certificates name each node, a per-session identity on
//! every message) in Isolated mode. Only `Envelope`s cross
//! nodes, each one frame of the one message set (`messages`), on the
//! session's direct stream beside ractor_cluster (`gate::direct`); on each side a
//! local stand-in (`HospitalProxy`, `Uplink`) forwards those messages
//! unchanged, so the coordinator and hospital actors run as in process.

pub mod directory;
pub mod envelope;
pub mod gate;
pub mod gateway;
pub mod hospital_link;
pub mod key_signature;
pub mod link;
pub mod node;
pub mod reconnect;
pub mod tls;

pub use directory::NodeDirectory;
pub use envelope::Envelope;
pub use gateway::{Gateway, GatewayArgs};
pub use hospital_link::{HospitalLink, LinkArgs, LinkStatus, Shared, Uplink};
pub use link::WireStats;
pub use node::{EarlyClose, Node, NodeOptions, SessionEvent, SessionEventKind, SessionLog};
pub use tls::TlsFiles;

/// The process group of the coordinator's gateway.
pub const COORDINATOR_GROUP: &str = "medfed.coordinator";

/// The process group of the hospital links of `task`.
pub fn link_group(task: &str) -> String {
    format!("medfed.link.{task}")
}

/// Which end of a session speaks, for the version-mismatch message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Coordinator,
    Hospital,
}

/// The refusal both ends log when the other speaks another wire version
/// (hospitals upgrade at different times): both versions, and what to do.
pub fn version_mismatch(side: Side, theirs: u16, ours: u16) -> String {
    let (me, peer) = match side {
        Side::Coordinator => ("this coordinator", "the hospital"),
        Side::Hospital => ("this hospital", "the coordinator"),
    };
    format!(
        "{peer} speaks wire version {theirs}, {me} speaks wire version {ours}: \
         run the same medfed release on both (or one whose wire versions match)"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot start the cluster node: {0}")]
    Start(String),
    #[error("cannot connect to {0}")]
    Connect(String),
    /// The coordinator turned this hospital away for good (or is not one).
    #[error("the coordinator refused this hospital: {0}")]
    Refused(String),
    /// The cluster handshake failed for good (a wrong cookie, or not a coordinator).
    #[error("{0}")]
    Handshake(String),
    /// The peer closed the connection before answering the hello.
    #[error("{0}")]
    ClosedEarly(String),
    /// Another session of this hospital's name is active at the coordinator.
    #[error("the coordinator refused this hospital: {0}")]
    Duplicate(String),
    /// The coordinator turned this hospital away for now (retry later).
    #[error("the coordinator cannot take this hospital yet: {0}")]
    Busy(String),
}

#[cfg(test)]
mod tests;
