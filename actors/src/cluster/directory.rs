//! The cluster's sessions by ractor node id: who the gate authenticated
//! there (for binding messages to hospitals), the session's direct stream
//! (where `link::send` queues envelopes for that node) and a description
//! for logs and the hospitals table ("hospital h3 at 127.0.0.1:40112").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ractor::ActorId;

use super::gate::direct::Route;
use super::gate::Identity;

#[derive(Debug, Clone, Default)]
pub struct NodeDirectory(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    /// Sessions handed to ractor_cluster, by their label, until it opens them.
    expected: HashMap<String, (Identity, Route)>,
    nodes: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    description: String,
    identity: Option<Identity>,
    route: Option<Route>,
}

impl NodeDirectory {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    /// The gate authenticated `identity` on the session labelled `label`,
    /// whose direct stream is `route`.
    pub fn expect(&self, label: &str, identity: Identity, route: Route) {
        self.with(|d| d.expected.insert(label.to_string(), (identity, route)));
    }

    /// ractor_cluster opened node `node_id` for the session labelled `label`.
    pub fn opened(&self, node_id: u64, label: &str) {
        self.with(|d| {
            let (identity, route) = d.expected.remove(label).unzip();
            d.nodes.insert(
                node_id,
                Entry {
                    description: label.to_string(),
                    identity,
                    route,
                },
            );
        });
    }

    /// The session labelled `label` ended (whether or not ractor_cluster opened it).
    pub fn ended(&self, label: &str) {
        self.with(|d| d.expected.remove(label));
    }

    pub fn closed(&self, node_id: u64) {
        self.with(|d| d.nodes.remove(&node_id));
    }

    /// Who the gate authenticated on the node `actor` lives on.
    pub fn identity(&self, actor: &ActorId) -> Option<Identity> {
        match actor {
            ActorId::Local(_) => None,
            ActorId::Remote { node_id, .. } => {
                self.with(|d| d.nodes.get(node_id).and_then(|e| e.identity.clone()))
            }
        }
    }

    /// The direct stream to the node `actor` lives on, and the actor's pid there.
    pub fn route(&self, actor: &ActorId) -> Option<(Route, u64)> {
        match actor {
            ActorId::Local(_) => None,
            ActorId::Remote { node_id, pid } => self
                .with(|d| d.nodes.get(node_id).and_then(|e| e.route.clone()))
                .map(|route| (route, *pid)),
        }
    }

    /// Where an actor lives, for logs and the hospitals table.
    pub fn describe(&self, actor: &ActorId) -> String {
        match actor {
            ActorId::Local(_) => "local".to_string(),
            ActorId::Remote { node_id, .. } => self
                .with(|d| d.nodes.get(node_id).map(|e| e.description.clone()))
                .map_or_else(|| format!("node {node_id}"), |d| format!("node {node_id} ({d})")),
        }
    }
}
