//! The gate's budgets, before and after authentication.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Connecting, TLS and the cookie handshake together.
    pub handshake_deadline: Duration,
    /// Connections still in their handshake, in all.
    pub unauthenticated_total: usize,
    /// Connections still in their handshake, from one source address.
    pub unauthenticated_per_source: usize,
    /// An authenticated session with no inbound frame this long is closed
    /// (ractor_cluster pings every 1-5 s).
    pub idle_timeout: Duration,
    /// Largest inbound frame carrying an actor message.
    pub max_message_frame: u64,
    /// Largest inbound frame of ractor_cluster's own handshake.
    pub max_auth_frame: u64,
    /// Largest inbound control frame (actor and process-group announcements).
    pub max_control_frame: u64,
    /// Remote actors one session may announce (a hospital has one).
    pub max_announced_actors: usize,
    /// Largest model (values, in bytes) one direct frame may carry.
    pub max_direct_values: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_deadline: Duration::from_secs(10),
            unauthenticated_total: 128,
            unauthenticated_per_source: 8,
            idle_timeout: Duration::from_secs(30),
            // Room for the identity stamp the gate adds: ractor_cluster
            // refuses frames above its own limit.
            max_message_frame: ractor_cluster::DEFAULT_MAX_INBOUND_FRAME_SIZE - (4 << 10),
            max_auth_frame: 4 << 10,
            max_control_frame: 64 << 10,
            max_announced_actors: 16,
            // The largest message a node sends or reassembles (256M parameters).
            max_direct_values: super::super::link::MAX_MESSAGE,
        }
    }
}
