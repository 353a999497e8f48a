//! The coordinator node's side of cluster mode. The `Gateway` is the one
//! remotely addressable actor: hospitals find it in the `COORDINATOR_GROUP`
//! process group and send it envelopes. For each hospital that says hello
//! it spawns a local `HospitalProxy`, which the unchanged coordinator
//! treats as the hospital itself (it joins the task's process group, so
//! its stop is the hospital's departure).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ractor::pg::{self, GroupChangeMessage};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{debug, info, warn};

use super::envelope::Envelope;
use super::link::{send, Inbox, WireStats};
use super::protocol::ClusterMessage;
use super::{link_group, COORDINATOR_GROUP};
use crate::coordinator::task_group;
use crate::messages::{CoordinatorMsg, HospitalInfo, HospitalMsg};

/// Hellos kept while waiting for their sender's group membership.
const MAX_PENDING_HELLOS: usize = 1024;

/// Node ids of the cluster's sessions, described for logs ("h3 at 127.0.0.1:40112").
#[derive(Debug, Clone, Default)]
pub struct NodeDirectory(Arc<Mutex<HashMap<u64, String>>>);

impl NodeDirectory {
    pub fn set(&self, node_id: u64, description: String) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(node_id, description);
        }
    }

    /// Where an actor lives, for logs and the hospitals table.
    pub fn describe(&self, actor: &ActorId) -> String {
        match actor {
            ActorId::Local(_) => "local".to_string(),
            ActorId::Remote { node_id, .. } => self
                .0
                .lock()
                .ok()
                .and_then(|m| m.get(node_id).cloned())
                .map_or_else(|| format!("node {node_id}"), |d| format!("node {node_id} ({d})")),
        }
    }
}

pub struct Gateway;

pub struct GatewayArgs {
    pub coordinator: ActorRef<CoordinatorMsg>,
    pub tasks: Vec<String>,
    pub stats: Arc<WireStats>,
    pub nodes: NodeDirectory,
}

struct Link {
    hospital: String,
    remote: ActorId,
    proxy: ActorRef<HospitalMsg>,
}

pub struct GatewayState {
    coordinator: ActorRef<CoordinatorMsg>,
    inbox: Inbox,
    nodes: NodeDirectory,
    /// By link name (unique per hospital process).
    links: HashMap<String, Link>,
    /// Hellos that arrived before their sender's process-group membership.
    pending: HashMap<String, HospitalInfo>,
}

impl Actor for Gateway {
    type Msg = Envelope;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        for task in &args.tasks {
            pg::monitor(link_group(task), myself.get_cell());
        }
        pg::join(COORDINATOR_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(GatewayState {
            coordinator: args.coordinator,
            inbox: Inbox::new(args.stats),
            nodes: args.nodes,
            links: HashMap::new(),
            pending: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        envelope: Envelope,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(message) = state.inbox.accept(envelope) else {
            return Ok(());
        };
        let forward = match message {
            ClusterMessage::Hello { link, info } => {
                on_hello(&myself, state, link, info).await;
                return Ok(());
            }
            ClusterMessage::Stats {
                link,
                from,
                task,
                attempt,
                outcome,
            } => state.sender_is(&link, &from).then_some(CoordinatorMsg::Stats {
                from,
                task,
                attempt,
                outcome,
            }),
            ClusterMessage::Update {
                link,
                from,
                task,
                round,
                attempt,
                outcome,
            } => state.sender_is(&link, &from).then_some(CoordinatorMsg::Update {
                from,
                task,
                round,
                attempt,
                outcome,
            }),
            ClusterMessage::Evaluated {
                link,
                from,
                task,
                round,
                outcome,
            } => state
                .sender_is(&link, &from)
                .then_some(CoordinatorMsg::Evaluated {
                    from,
                    task,
                    round,
                    outcome,
                }),
            other => {
                warn!(
                    message = other.name(),
                    "dropped a coordinator-bound message of the wrong direction"
                );
                state.inbox.stats().count_drop("wrong_direction");
                return Ok(());
            }
        };
        match forward {
            Some(msg) => state.coordinator.cast(msg)?,
            None => state.inbox.stats().count_drop("unknown_link"),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Join(_, group, cells)) => {
                for cell in cells.iter().filter(|c| !c.get_id().is_local()) {
                    let name = cell.get_name().unwrap_or_default();
                    info!(group = %group, link = %name, node = %state.nodes.describe(&cell.get_id()), "hospital node joined its task group");
                    if let Some(info) = state.pending.remove(&name) {
                        on_hello(&myself, state, name, info).await;
                    }
                }
            }
            SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Leave(_, group, cells)) => {
                for cell in cells {
                    let id = cell.get_id();
                    let Some(link) = state
                        .links
                        .iter()
                        .find(|(_, l)| l.remote == id)
                        .map(|(name, _)| name.clone())
                    else {
                        continue;
                    };
                    if let Some(l) = state.links.remove(&link) {
                        let reason = format!(
                            "its node left the cluster ({}; process exited or connection lost)",
                            state.nodes.describe(&id)
                        );
                        warn!(hospital = %l.hospital, group = %group, link = %link, "hospital departed: {reason}");
                        l.proxy.stop(Some(reason));
                    }
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // A proxy stopped on its own (its hospital was refused).
                state.links.retain(|_, l| l.proxy.get_id() != cell.get_id());
                debug!(?reason, "hospital proxy stopped");
            }
            SupervisionEvent::ActorFailed(cell, e) => {
                state.links.retain(|_, l| l.proxy.get_id() != cell.get_id());
                warn!("hospital proxy failed: {e}");
            }
            _ => {}
        }
        Ok(())
    }
}

impl GatewayState {
    /// Messages are accepted only from a registered link, for its own hospital.
    fn sender_is(&self, link: &str, from: &str) -> bool {
        let ok = self.links.get(link).is_some_and(|l| l.hospital == from);
        if !ok {
            warn!(
                link,
                hospital = from,
                "dropped a message from an unregistered link or for another hospital"
            );
        }
        ok
    }
}

fn member_named(group: &str, name: &str) -> Option<ActorCell> {
    pg::get_members(&group.to_string())
        .into_iter()
        .find(|c| !c.get_id().is_local() && c.get_name().as_deref() == Some(name))
}

async fn on_hello(
    myself: &ActorRef<Envelope>,
    state: &mut GatewayState,
    link: String,
    mut info: HospitalInfo,
) {
    // A hospital of a task not served here still gets a proxy: the
    // coordinator then refuses it with the list of its tasks.
    let Some(cell) = member_named(&link_group(&info.task), &link) else {
        debug!(link = %link, "hello before the link's group membership arrived; waiting");
        if state.pending.len() < MAX_PENDING_HELLOS {
            state.pending.insert(link, info);
        } else {
            warn!(link = %link, "too many hellos from unknown links: dropped");
        }
        return;
    };
    info.node = state.nodes.describe(&cell.get_id());
    let proxy = match state.links.get(&link) {
        Some(existing) => existing.proxy.clone(),
        None => {
            let args = ProxyArgs {
                remote: ActorRef::from(cell.clone()),
                task: info.task.clone(),
                stats: state.inbox.stats().clone(),
            };
            match Actor::spawn_linked(None, HospitalProxy, args, myself.get_cell()).await {
                Ok((proxy, _)) => proxy,
                Err(e) => {
                    warn!(hospital = %info.name, "cannot start a proxy for the hospital: {e}");
                    return;
                }
            }
        }
    };
    info!(hospital = %info.name, task = %info.task, node = %info.node, link = %link, "hospital said hello");
    state.links.insert(
        link,
        Link {
            hospital: info.name.clone(),
            remote: cell.get_id(),
            proxy: proxy.clone(),
        },
    );
    let _ = state.coordinator.cast(CoordinatorMsg::Join {
        info,
        hospital: proxy,
    });
}

/// Stands in for a remote hospital on the coordinator's node.
pub struct HospitalProxy;

pub struct ProxyArgs {
    remote: ActorRef<Envelope>,
    task: String,
    stats: Arc<WireStats>,
}

impl Actor for HospitalProxy {
    type Msg = HospitalMsg;
    type State = ProxyArgs;
    type Arguments = ProxyArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        pg::join(task_group(&args.task), vec![myself.get_cell()]);
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let refused = matches!(msg, HospitalMsg::Refused { .. });
        let message = match msg {
            HospitalMsg::CollectStats { task, attempt } => ClusterMessage::CollectStats { task, attempt },
            HospitalMsg::Train {
                task,
                round,
                attempt,
                model,
                plan,
            } => ClusterMessage::Train {
                task,
                round,
                attempt,
                model,
                plan,
            },
            HospitalMsg::Evaluate { task, round, model } => ClusterMessage::Evaluate { task, round, model },
            HospitalMsg::Refused { reason } => ClusterMessage::Refused { reason },
        };
        if let Err(e) = send(&state.remote, &message, &state.stats) {
            warn!(message = message.name(), "could not send to the hospital: {e}");
        }
        if refused {
            myself.stop(Some("hospital refused".into()));
        }
        Ok(())
    }
}
