//! Cluster mode (DESIGN §3): the coordinator and each hospital in their own
//! process, connected by ractor_cluster with cookie authentication,
//! optional mutual TLS and Isolated connections. Only `Envelope`s cross
//! nodes; on each side a local stand-in (`HospitalProxy`, `Uplink`) lets
//! the coordinator and hospital actors run unchanged.

pub mod envelope;
pub mod gateway;
pub mod hospital_link;
pub mod link;
pub mod node;
pub mod protocol;
pub mod tls;

pub use envelope::Envelope;
pub use gateway::{Gateway, GatewayArgs, NodeDirectory};
pub use hospital_link::{HospitalLink, LinkArgs, LinkStatus, Shared, Uplink};
pub use link::WireStats;
pub use node::{Node, NodeOptions, SessionEvent, SessionEventKind, SessionLog};
pub use tls::TlsFiles;

/// The process group of the coordinator's gateway.
pub const COORDINATOR_GROUP: &str = "medfed.coordinator";

/// The process group of the hospital links of `task`.
pub fn link_group(task: &str) -> String {
    format!("medfed.link.{task}")
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
}

#[cfg(test)]
mod tests;
