//! The hospital node's side of cluster mode. `HospitalLink` is the
//! remotely addressable actor (named uniquely per process, member of the
//! task's link group); it hands the coordinator's requests to the local
//! `Hospital`. `Uplink` stands in for the coordinator: the unchanged
//! hospital actor talks to it, and it forwards over the current connection,
//! saying hello again whenever a coordinator (re)appears.

use std::sync::{Arc, Mutex};

use ractor::pg::{self, GroupChangeMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::envelope::Envelope;
use super::gate::Identity;
use super::link::{send, Inbox, Received, WireStats};
use super::{link_group, version_mismatch, Side, COORDINATOR_GROUP};
use crate::messages::wire::Uplinked;
use crate::messages::{CoordinatorMsg, HospitalInfo, StartRefused, ToCoordinator, ToHospital};
use crate::wire::WireError;

/// What the link tells the process that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    CoordinatorUp,
    CoordinatorDown,
    /// It announced a normal shutdown.
    CoordinatorLeaving,
    /// The coordinator welcomed this node's session (sent once the gate
    /// admitted it: cookie, certificate, allow list). In the same channel
    /// as the others, so a welcome of a lost session never outlives its
    /// `CoordinatorDown`.
    Welcomed,
    Refused(String),
}

/// State shared by the link and the uplink of one hospital process.
pub struct Shared {
    link: String,
    coordinator: Mutex<Option<ActorRef<Envelope>>>,
    hello: Mutex<Option<HospitalInfo>>,
    stats: Arc<WireStats>,
}

impl Shared {
    /// `link` must be unique in the cluster (the name plus a random suffix).
    pub fn new(link: String, stats: Arc<WireStats>) -> Arc<Self> {
        Arc::new(Self {
            link,
            coordinator: Mutex::new(None),
            hello: Mutex::new(None),
            stats,
        })
    }

    pub fn link_name(&self) -> &str {
        &self.link
    }

    fn coordinator(&self) -> Option<ActorRef<Envelope>> {
        self.coordinator.lock().ok().and_then(|c| c.clone())
    }

    fn set_coordinator(&self, to: Option<ActorRef<Envelope>>) {
        if let Ok(mut c) = self.coordinator.lock() {
            *c = to;
        }
    }

    /// Say hello when both the hospital's info and a coordinator are known.
    fn say_hello(&self) {
        let info = self.hello.lock().ok().and_then(|h| h.clone());
        if let (Some(info), Some(to)) = (info, self.coordinator()) {
            let hello = Uplinked {
                link: self.link.clone(),
                message: ToCoordinator::Hello { info },
            };
            if let Err(e) = send(&to, hello, &self.stats) {
                warn!("could not say hello to the coordinator: {e}");
            }
        }
    }
}

pub struct HospitalLink;

pub struct LinkArgs {
    pub task: String,
    pub hospital: ActorRef<ToHospital>,
    pub shared: Arc<Shared>,
    pub status: UnboundedSender<LinkStatus>,
}

pub struct LinkState {
    args: LinkArgs,
    inbox: Inbox<ToHospital>,
}

impl Actor for HospitalLink {
    type Msg = Envelope;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        pg::monitor(COORDINATOR_GROUP.to_string(), myself.get_cell());
        pg::join(link_group(&args.task), vec![myself.get_cell()]);
        let state = LinkState {
            inbox: Inbox::new(args.shared.stats.clone()),
            args,
        };
        if let Some(cell) = pg::get_members(&COORDINATOR_GROUP.to_string())
            .into_iter()
            .find(|c| !c.get_id().is_local())
        {
            adopt(&state.args, ActorRef::from(cell));
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        envelope: Envelope,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Only the coordinator's session (the one this hospital dialled;
        // hospitals accept none) speaks to the link.
        if envelope.from != Some(Identity::Coordinator) {
            state.args.shared.stats.count_drop("not_from_coordinator");
            warn!("dropped a cluster message that did not come from the coordinator's session");
            return Ok(());
        }
        let message = match state.inbox.receive(envelope) {
            Received::Message(m) => m,
            Received::Dropped(WireError::UnsupportedVersion { got, supported }) => {
                let reason = version_mismatch(Side::Hospital, got, supported);
                let _ = state.args.status.send(LinkStatus::Refused(reason));
                return Ok(());
            }
            Received::Pending | Received::Dropped(_) => return Ok(()),
        };
        match &message {
            // The agent's readiness (`medfed hospital --http`'s /readyz)
            // follows it; nothing for the hospital actor to do.
            ToHospital::Welcome => {
                let _ = state.args.status.send(LinkStatus::Welcomed);
                return Ok(());
            }
            ToHospital::Leaving => {
                let _ = state.args.status.send(LinkStatus::CoordinatorLeaving);
                return Ok(());
            }
            ToHospital::Refused { reason } => {
                let _ = state.args.status.send(LinkStatus::Refused(reason.clone()));
            }
            _ => {}
        }
        state.args.hospital.cast(message)?;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Join(_, group, cells))
                if group == COORDINATOR_GROUP =>
            {
                if let Some(cell) = cells.into_iter().find(|c| !c.get_id().is_local()) {
                    adopt(&state.args, ActorRef::from(cell));
                }
            }
            SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Leave(_, group, cells))
                if group == COORDINATOR_GROUP =>
            {
                let current = state.args.shared.coordinator().map(|c| c.get_id());
                if cells.iter().any(|c| Some(c.get_id()) == current) {
                    warn!("lost the coordinator (its node disconnected)");
                    state.args.shared.set_coordinator(None);
                    let _ = state.args.status.send(LinkStatus::CoordinatorDown);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn adopt(args: &LinkArgs, coordinator: ActorRef<Envelope>) {
    info!(coordinator = %coordinator.get_id(), "coordinator found");
    args.shared.set_coordinator(Some(coordinator));
    args.shared.say_hello();
    let _ = args.status.send(LinkStatus::CoordinatorUp);
}

/// The hospital actor's coordinator, in cluster mode.
pub struct Uplink;

impl Actor for Uplink {
    type Msg = CoordinatorMsg;
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        shared: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let message = match msg {
            CoordinatorMsg::FromHospital {
                message: ToCoordinator::Hello { info },
                ..
            } => {
                if let Ok(mut hello) = shared.hello.lock() {
                    *hello = Some(info);
                }
                shared.say_hello();
                return Ok(());
            }
            CoordinatorMsg::FromHospital { message, .. } => Uplinked {
                link: shared.link.clone(),
                message,
            },
            CoordinatorMsg::StartRun { reply, .. } => {
                let _ = reply.send(Err(StartRefused::Invalid(
                    "runs are started on the coordinator, not on a hospital".into(),
                )));
                return Ok(());
            }
            _ => return Ok(()),
        };
        match shared.coordinator() {
            Some(to) => {
                let name = message.message.name();
                if let Err(e) = send(&to, message, &shared.stats) {
                    warn!(message = name, "could not send to the coordinator: {e}");
                }
            }
            None => warn!(
                message = message.message.name(),
                "not connected to a coordinator: message dropped"
            ),
        }
        Ok(())
    }
}
