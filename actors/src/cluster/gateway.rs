//! The coordinator node's side of cluster mode. The `Gateway` is the one
//! remotely addressable actor: hospitals find it in the `COORDINATOR_GROUP`
//! process group and send it envelopes. Every envelope carries the identity
//! the gate authenticated on the session it arrived on; a hello must name
//! that identity, and every later message must come from the session of the
//! hospital it is bound to. For each hospital that says hello it spawns a
//! local `HospitalProxy`, which the unchanged coordinator treats as the
//! hospital itself (it joins the task's process group, so its stop is the
//! hospital's departure).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::pg::{self, GroupChangeMessage};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{debug, info, warn};

use super::directory::NodeDirectory;
use super::envelope::Envelope;
use super::gate::stats::LogThrottle;
use super::gate::Identity;
use super::link::{send, Inbox, Received, WireStats};
use super::{link_group, version_mismatch, Side, COORDINATOR_GROUP};
use crate::coordinator::task_group;
use crate::messages::wire::Uplinked;
use crate::messages::{CoordinatorMsg, HospitalInfo, ToCoordinator, ToHospital};
use crate::wire::WireError;

/// A sender's decoder is dropped after this long without a message (its
/// incomplete messages would have expired by then anyway).
const INBOX_IDLE: Duration = Duration::from_secs(600);
const INBOX_PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a hello waits for its sender's process-group membership.
const PENDING_HELLO_TTL: Duration = Duration::from_secs(60);

pub struct Gateway;

pub struct GatewayArgs {
    pub coordinator: ActorRef<CoordinatorMsg>,
    pub tasks: Vec<String>,
    pub stats: Arc<WireStats>,
    pub nodes: NodeDirectory,
}

struct Link {
    /// The hospital's link actor's name (unique per hospital process).
    name: String,
    remote: ActorId,
    proxy: ActorRef<ToHospital>,
}

struct PendingHello {
    link: String,
    info: HospitalInfo,
    since: Instant,
}

pub struct GatewayState {
    coordinator: ActorRef<CoordinatorMsg>,
    stats: Arc<WireStats>,
    /// One decoder (and chunk reassembler) per sending hospital, with when
    /// it last sent.
    inboxes: HashMap<String, (Inbox<Uplinked>, Instant)>,
    last_prune: Instant,
    nodes: NodeDirectory,
    /// By hospital name: the session identity each link is bound to.
    links: HashMap<String, Link>,
    /// Hellos that arrived before their sender's process-group membership,
    /// one per hospital, expiring.
    pending: HashMap<String, PendingHello>,
    logs: LogThrottle,
}

impl GatewayState {
    /// Drop hellos whose sender never joined its group in time (counted).
    fn expire_pending(&mut self) {
        let before = self.pending.len();
        self.pending.retain(|_, p| p.since.elapsed() < PENDING_HELLO_TTL);
        self.stats
            .count_drops("hello_expired", (before - self.pending.len()) as u64);
    }

    /// Drop `why`'s message from `from`: logged (throttled) and counted.
    fn refuse(&self, label: &'static str, from: &str, why: &str) {
        self.stats.count_drop(label);
        if let Some(suppressed) = self.logs.allow(&format!("{label} {from}")) {
            warn!(sender = %crate::names::printable(from), suppressed, reason = label, "dropped a cluster message: {why}");
        }
    }
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
            stats: args.stats,
            inboxes: HashMap::new(),
            last_prune: Instant::now(),
            nodes: args.nodes,
            links: HashMap::new(),
            pending: HashMap::new(),
            logs: LogThrottle::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        envelope: Envelope,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(Identity::Hospital(sender)) = envelope.from.clone() else {
            state.refuse(
                "no_hospital_session",
                "?",
                "it did not arrive on a hospital's authenticated session",
            );
            return Ok(());
        };
        let now = Instant::now();
        if now.duration_since(state.last_prune) >= INBOX_PRUNE_EVERY {
            // Senders gone quiet (disconnected before a hello, say) give back
            // what their partial messages held.
            state
                .inboxes
                .retain(|_, (_, seen)| now.duration_since(*seen) < INBOX_IDLE);
            state.last_prune = now;
        }
        let stats = state.stats.clone();
        let (inbox, seen) = state
            .inboxes
            .entry(sender.clone())
            .or_insert_with(|| (Inbox::new(stats), now));
        *seen = now;
        let Uplinked { link, message } = match inbox.receive(envelope) {
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
        crate::failpoints::tap_update(&sender, &message);
        if let ToCoordinator::Hello { info } = message {
            if info.name != sender {
                let why = format!(
                    "a hello naming {} arrived on hospital {sender}'s session",
                    crate::names::shown(&info.name)
                );
                state.refuse("identity_mismatch", &sender, &why);
                return Ok(());
            }
            on_hello(&myself, state, link, info).await;
            return Ok(());
        }
        // Bound to the session's hospital: the coordinator sees it from that
        // hospital's proxy, and only if it names that hospital's link.
        match state.links.get(&sender) {
            Some(l) if l.name == link => {
                // The coordinator stops first at a shutdown: not an error here.
                if let Err(e) = state.coordinator.cast(CoordinatorMsg::FromHospital {
                    sender: l.proxy.clone(),
                    message,
                }) {
                    debug!("the coordinator did not take a hospital's message: {e}");
                }
            }
            Some(_) => {
                let why = format!("its {} names another link than the hospital's", message.name());
                state.refuse("wrong_link", &sender, &why);
            }
            None => {
                let why = format!("a {} before the hospital's hello", message.name());
                state.refuse("unknown_link", &sender, &why);
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
                state.expire_pending();
                for cell in cells.iter().filter(|c| !c.get_id().is_local()) {
                    let name = cell.get_name().unwrap_or_default();
                    info!(group = %group, link = %crate::names::printable(&name), node = %state.nodes.describe(&cell.get_id()), "hospital node joined its task group");
                    welcome(cell, &state.stats);
                    let Some(Identity::Hospital(hospital)) = state.nodes.identity(&cell.get_id()) else {
                        continue;
                    };
                    if state.pending.get(&hospital).is_some_and(|p| p.link == name) {
                        if let Some(p) = state.pending.remove(&hospital) {
                            on_hello(&myself, state, p.link, p.info).await;
                        }
                    }
                }
            }
            SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Leave(_, group, cells)) => {
                for cell in cells {
                    let id = cell.get_id();
                    let Some(hospital) = state
                        .links
                        .iter()
                        .find(|(_, l)| l.remote == id)
                        .map(|(name, _)| name.clone())
                    else {
                        continue;
                    };
                    state.inboxes.remove(&hospital);
                    if let Some(l) = state.links.remove(&hospital) {
                        let reason = format!(
                            "its node left the cluster ({}; process exited or connection lost)",
                            state.nodes.describe(&id)
                        );
                        warn!(hospital = %crate::names::printable(&hospital), group = %group, link = %crate::names::printable(&l.name), "hospital departed: {reason}");
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
            match send(&ActorRef::<Envelope>::from(cell), ToHospital::Leaving, stats) {
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
        ToHospital::Welcome,
        stats,
    ) {
        debug!("could not welcome a hospital node: {e}");
    }
}

/// The member of `group` named `link` on a node the gate authenticated as `hospital`.
fn member_of(group: &str, link: &str, hospital: &str, nodes: &NodeDirectory) -> Option<ActorCell> {
    pg::get_members(&group.to_string()).into_iter().find(|c| {
        !c.get_id().is_local()
            && c.get_name().as_deref() == Some(link)
            && nodes.identity(&c.get_id()) == Some(Identity::Hospital(hospital.to_string()))
    })
}

/// A hello whose name the gate vouched for (`info.name` is the sender).
async fn on_hello(
    myself: &ActorRef<Envelope>,
    state: &mut GatewayState,
    link: String,
    mut info: HospitalInfo,
) {
    // A hospital of a task not served here still gets a proxy: the
    // coordinator then refuses it with the list of its tasks.
    let Some(cell) = member_of(&link_group(&info.task), &link, &info.name, &state.nodes) else {
        debug!(link = %crate::names::printable(&link), "hello before the link's group membership arrived; waiting");
        state.expire_pending();
        state.pending.insert(
            info.name.clone(),
            PendingHello {
                link,
                info,
                since: Instant::now(),
            },
        );
        return;
    };
    info.node = state.nodes.describe(&cell.get_id());
    let existing = state
        .links
        .get(&info.name)
        .filter(|l| l.remote == cell.get_id())
        .map(|l| l.proxy.clone());
    let proxy = match existing {
        Some(proxy) => proxy,
        None => {
            if let Some(stale) = state.links.remove(&info.name) {
                // Its departure must reach the coordinator before the new
                // hello, or the name would still look taken.
                let stopped = stale
                    .proxy
                    .stop_and_wait(
                        Some("the hospital said hello from a new link".into()),
                        Some(Duration::from_secs(2)),
                    )
                    .await;
                if let Err(e) = stopped {
                    debug!("the stale proxy did not stop in time: {e}");
                }
            }
            let args = ProxyArgs {
                remote: ActorRef::from(cell.clone()),
                task: info.task.clone(),
                stats: state.stats.clone(),
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
    // The coordinator checks the rest of the hello: logged escaped.
    info!(
        hospital = %crate::names::printable(&info.name),
        task = %crate::names::printable(&info.task),
        node = %crate::names::printable(&info.node),
        link = %crate::names::printable(&link),
        "hospital said hello"
    );
    state.links.insert(
        info.name.clone(),
        Link {
            name: link,
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
        let (name, refused) = (message.name(), matches!(message, ToHospital::Refused { .. }));
        if let Err(e) = send(&state.remote, message, &state.stats) {
            warn!(message = name, "could not send to the hospital: {e}");
        }
        if refused {
            myself.stop(Some("hospital refused".into()));
        }
        Ok(())
    }
}
