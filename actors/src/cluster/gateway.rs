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
use super::link::{send, Inbox, Received, WireStats};
use super::{link_group, version_mismatch, Side, COORDINATOR_GROUP};
use crate::coordinator::task_group;
use crate::messages::wire::Uplinked;
use crate::messages::{CoordinatorMsg, HospitalInfo, ToCoordinator, ToHospital};
use crate::wire::WireError;

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
    proxy: ActorRef<ToHospital>,
}

pub struct GatewayState {
    coordinator: ActorRef<CoordinatorMsg>,
    inbox: Inbox<Uplinked>,
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
            // Hospitals already waiting learn this coordinator's wire version too.
            for cell in pg::get_members(&link_group(task)) {
                welcome(&cell, &args.stats);
            }
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
        let Uplinked { link, message } = match state.inbox.receive(envelope) {
            Received::Message(m) => m,
            Received::Dropped(WireError::UnsupportedVersion { got, supported }) => {
                warn!(
                    "refused a hospital node's frame: {}",
                    version_mismatch(Side::Coordinator, got, supported)
                );
                return Ok(());
            }
            Received::Pending | Received::Dropped(_) => return Ok(()),
        };
        if let ToCoordinator::Hello { info } = message {
            on_hello(&myself, state, link, info).await;
            return Ok(());
        }
        // Bound to the link it came from: the coordinator sees it from that
        // hospital's proxy, whatever the message says.
        match state.links.get(&link) {
            Some(l) => {
                // The coordinator stops first at a shutdown: not an error here.
                if let Err(e) = state.coordinator.cast(CoordinatorMsg::FromHospital {
                    sender: l.proxy.clone(),
                    message,
                }) {
                    debug!("the coordinator did not take a hospital's message: {e}");
                }
            }
            None => {
                warn!(link = %crate::names::printable(&link), message = message.name(), "dropped a message from a link that has not said hello");
                state.inbox.stats().count_drop("unknown_link");
            }
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
                    welcome(cell, state.inbox.stats());
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
                        warn!(hospital = %crate::names::printable(&l.hospital), group = %group, link = %crate::names::printable(&link), "hospital departed: {reason}");
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

/// Tell every hospital node of `tasks` that this coordinator is shutting
/// down normally (before its node stops); returns how many were told.
pub fn farewell(tasks: &[String], stats: &WireStats) -> usize {
    let mut told = 0;
    for task in tasks {
        for cell in pg::get_members(&link_group(task)) {
            if cell.get_id().is_local() {
                continue;
            }
            match send(&ActorRef::<Envelope>::from(cell), &ToHospital::Leaving, stats) {
                Ok(()) => told += 1,
                Err(e) => debug!("could not tell a hospital node the coordinator is leaving: {e}"),
            }
        }
    }
    told
}

/// Tell a hospital node this coordinator is here, in this node's wire version.
fn welcome(cell: &ActorCell, stats: &WireStats) {
    if cell.get_id().is_local() {
        return;
    }
    if let Err(e) = send(
        &ActorRef::<Envelope>::from(cell.clone()),
        &ToHospital::Welcome,
        stats,
    ) {
        debug!("could not welcome a hospital node: {e}");
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
        debug!(link = %crate::names::printable(&link), "hello before the link's group membership arrived; waiting");
        if state.pending.len() < MAX_PENDING_HELLOS {
            state.pending.insert(link, info);
        } else {
            warn!(link = %crate::names::printable(&link), "too many hellos from unknown links: dropped");
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
                    warn!(hospital = %crate::names::printable(&info.name), "cannot start a proxy for the hospital: {e}");
                    return;
                }
            }
        }
    };
    // Not checked yet (the coordinator does that): logged escaped.
    info!(
        hospital = %crate::names::printable(&info.name),
        task = %crate::names::printable(&info.task),
        node = %crate::names::printable(&info.node),
        link = %crate::names::printable(&link),
        "hospital said hello"
    );
    state.links.insert(
        link,
        Link {
            hospital: info.name.clone(),
            remote: cell.get_id(),
            proxy: proxy.clone(),
        },
    );
    let _ = state.coordinator.cast(CoordinatorMsg::FromHospital {
        sender: proxy,
        message: ToCoordinator::Hello { info },
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
    type Msg = ToHospital;
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
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(e) = send(&state.remote, &message, &state.stats) {
            warn!(message = message.name(), "could not send to the hospital: {e}");
        }
        if matches!(message, ToHospital::Refused { .. }) {
            myself.stop(Some("hospital refused".into()));
        }
        Ok(())
    }
}
