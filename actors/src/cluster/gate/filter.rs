//! Both directions of an authenticated session. Every frame the peer sends
//! passes here before ractor_cluster reads it, which gets the gate's own
//! encoding of what was checked: actor messages stamped with the session's
//! identity (whatever the peer put there), actor and process-group
//! announcements budgeted and limited to the groups the peer's role joins,
//! its node name its identity's, frames size-limited by family before they
//! are read and again once decoded. Direct frames (`direct`) are read and
//! delivered here, stamped the same way. Anything outside that closes the
//! session with a logged reason.

use std::collections::HashSet;
use std::time::Duration;

use bytes::BytesMut;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::direct;
use super::frames::{self, AuthKind, ControlKind, Family, NetworkMessage, NodeKind};
use super::identity::Identity;
use super::limits::Limits;
use super::sessions::Activity;
use super::stats::GateStats;

/// Why the gate closed an authenticated session.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Breach {
    #[error("no frame for {} s", .0.as_secs())]
    Idle(Duration),
    #[error("a frame's body took longer than {} s to arrive", .0.as_secs())]
    Slow(Duration),
    #[error("it did not read what this node sent for {} s", .0.as_secs())]
    NotReading(Duration),
    #[error("a {family} frame of {len} bytes (at most {limit})")]
    TooLarge {
        family: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("an undecodable frame: {0}")]
    Malformed(String),
    #[error("its node name {shown} is not one of {identity}'s (they start with '{prefix}')")]
    NodeName {
        shown: String,
        identity: String,
        prefix: String,
    },
    #[error("it announced {count} actors (at most {limit} per session)")]
    TooManyActors { count: usize, limit: usize },
    #[error("it made {count} process-group memberships (at most {limit} per session)")]
    TooManyMemberships { count: usize, limit: usize },
    #[error("it joined process group {0}, which is not one it may join")]
    Group(String),
    #[error("it made an actor call or reply, which medfed's protocol does not use")]
    Call,
    #[error("it asked for the cluster's other sessions, which medfed's isolated nodes do not share")]
    Transitive,
}

impl Breach {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Idle(_) => "idle",
            Self::Slow(_) => "slow_frame",
            Self::NotReading(_) => "not_reading",
            Self::TooLarge { .. } => "frame_too_large",
            Self::Malformed(_) => "malformed_frame",
            Self::NodeName { .. } => "node_name",
            Self::TooManyActors { .. } => "too_many_actors",
            Self::TooManyMemberships { .. } => "too_many_memberships",
            Self::Group(_) => "foreign_group",
            Self::Call => "actor_call",
            Self::Transitive => "session_enumeration",
        }
    }
}

/// What one session's peer may send.
pub struct Policy {
    peer: Identity,
    limits: Limits,
    /// We accepted the session (the peer is a hospital that dialled us).
    inbound: bool,
    announced: HashSet<u64>,
    memberships: HashSet<(String, u64)>,
    activity: Activity,
}

/// ractor's default process-group scope, the only one medfed uses.
const SCOPE: &str = ractor::pg::DEFAULT_SCOPE;

impl Policy {
    pub fn new(peer: Identity, limits: Limits, inbound: bool, activity: Activity) -> Self {
        Self {
            peer,
            limits,
            inbound,
            announced: HashSet::new(),
            memberships: HashSet::new(),
            activity,
        }
    }

    fn limit_for(&self, first: u8) -> (&'static str, u64) {
        match first {
            frames::KEY_NODE => ("message", self.limits.max_message_frame),
            frames::KEY_CONTROL => ("control", self.limits.max_control_frame),
            _ => ("handshake", self.limits.max_auth_frame),
        }
    }

    /// The groups this peer may join: a hospital its task's link group, the
    /// coordinator its own group (and groups under it).
    fn may_join(&self, group: &str) -> bool {
        match self.peer {
            Identity::Hospital(_) => {
                group.len() <= 128
                    && group
                        .strip_prefix("medfed.link.")
                        .is_some_and(|task| !task.is_empty())
            }
            Identity::Coordinator => group
                .strip_prefix(super::super::COORDINATOR_GROUP)
                .is_some_and(|rest| rest.is_empty() || (rest.starts_with('.') && group.len() <= 128)),
        }
    }

    /// Check one frame's payload and return what ractor_cluster gets: the
    /// gate's own encoding of exactly what it checked (casts stamped).
    pub fn inspect(&mut self, payload: bytes::Bytes) -> Result<Vec<u8>, Breach> {
        let len = payload.len() as u64;
        let mut message = NetworkMessage::decode(payload).map_err(|e| Breach::Malformed(e.to_string()))?;
        // The decoded family's limit, whatever the first byte announced.
        let first = match &message.message {
            Some(Family::Auth(_)) => frames::KEY_AUTH,
            Some(Family::Node(_)) => frames::KEY_NODE,
            Some(Family::Control(_)) => frames::KEY_CONTROL,
            None => return Err(Breach::Malformed("an empty frame".into())),
        };
        let (family, limit) = self.limit_for(first);
        if len > limit {
            return Err(Breach::TooLarge { family, len, limit });
        }
        match &mut message.message {
            Some(Family::Auth(auth)) => {
                if let (true, Some(AuthKind::Name(name))) = (self.inbound, &auth.msg) {
                    self.check_node_name(&name.name)?;
                }
            }
            Some(Family::Control(control)) => self.check_control(control)?,
            Some(Family::Node(node)) => match &mut node.msg {
                Some(NodeKind::Cast(cast)) => cast.metadata = Some(self.peer.stamp()),
                Some(NodeKind::Call(_) | NodeKind::Reply(_)) => return Err(Breach::Call),
                None => return Err(Breach::Malformed("an empty node message".into())),
            },
            None => {}
        }
        Ok(message.encode_to_vec())
    }

    fn check_node_name(&self, name: &str) -> Result<(), Breach> {
        let node = name.split('@').next().unwrap_or_default();
        let prefix = self.peer.node_name_prefix();
        // The prefix, then the 16 hex digits that make it unique.
        let suffix_ok = node
            .strip_prefix(&prefix)
            .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
        if suffix_ok {
            Ok(())
        } else {
            Err(Breach::NodeName {
                shown: crate::names::shown(name),
                identity: self.peer.to_string(),
                prefix,
            })
        }
    }

    fn check_control(&mut self, control: &frames::ControlMessage) -> Result<(), Breach> {
        match &control.msg {
            Some(ControlKind::Spawn(spawn)) => self.announce(spawn.actors.iter().map(|a| a.pid)),
            Some(ControlKind::PgJoin(join)) => {
                if !self.may_join(&join.group) || join.scope != SCOPE {
                    return Err(Breach::Group(crate::names::shown(&format!(
                        "{}/{}",
                        join.scope, join.group
                    ))));
                }
                self.announce(join.actors.iter().map(|a| a.pid))?;
                for actor in &join.actors {
                    self.memberships.insert((join.group.clone(), actor.pid));
                }
                let limit = self.limits.max_announced_actors;
                if self.memberships.len() > limit {
                    return Err(Breach::TooManyMemberships {
                        count: self.memberships.len(),
                        limit,
                    });
                }
                Ok(())
            }
            Some(ControlKind::PgLeave(leave)) => {
                for actor in &leave.actors {
                    self.memberships.remove(&(leave.group.clone(), actor.pid));
                }
                Ok(())
            }
            Some(ControlKind::Terminate(t)) => {
                for pid in &t.ids {
                    self.announced.remove(pid);
                    self.memberships.retain(|(_, p)| p != pid);
                }
                Ok(())
            }
            Some(ControlKind::EnumerateNodeSessions(_) | ControlKind::NodeSessions(_)) => {
                Err(Breach::Transitive)
            }
            Some(ControlKind::Ping(_) | ControlKind::Pong(_) | ControlKind::Ready(_)) => Ok(()),
            None => Err(Breach::Malformed("an empty control message".into())),
        }
    }

    fn announce(&mut self, pids: impl Iterator<Item = u64>) -> Result<(), Breach> {
        for pid in pids {
            self.announced.insert(pid);
            if self.announced.len() > self.limits.max_announced_actors {
                return Err(Breach::TooManyActors {
                    count: self.announced.len(),
                    limit: self.limits.max_announced_actors,
                });
            }
        }
        Ok(())
    }
}

/// Least rate a frame's body must arrive at once its length is known.
const MIN_RATE: u64 = direct::MIN_RATE;

/// Copy checked frames from the peer to ractor_cluster, and deliver its
/// direct frames here, until the peer closes (`Ok`) or breaks a rule
/// (`Err`, the session is then closed).
pub async fn pump<R, W>(mut from: R, mut to: W, mut policy: Policy, stats: &GateStats) -> Result<(), Breach>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let idle = policy.limits.idle_timeout;
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout(idle, from.read_exact(&mut head)).await {
            Err(_) => return Err(Breach::Idle(idle)),
            Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
        let len = u64::from_be_bytes(head[..8].try_into().unwrap_or_default());
        if len == 0 {
            return Err(Breach::Malformed("a frame of 0 bytes".into()));
        }
        if head[8] == direct::KEY {
            let bounds = direct::Bounds {
                max_frame: policy.limits.max_message_frame,
                max_values: policy.limits.max_direct_values,
                idle,
                activity: policy.activity.clone(),
            };
            direct::receive(&mut from, len, &policy.peer, &bounds, stats).await?;
            policy.activity.touch();
            continue;
        }
        let (family, limit) = policy.limit_for(head[8]);
        if len > limit {
            return Err(Breach::TooLarge { family, len, limit });
        }
        let mut payload = BytesMut::zeroed(len as usize);
        payload[0] = head[8];
        let body = idle + Duration::from_secs(len / MIN_RATE);
        match tokio::time::timeout(body, from.read_exact(&mut payload[1..])).await {
            Err(_) => return Err(Breach::Slow(body)),
            Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
        policy.activity.touch();
        let out = policy.inspect(payload.freeze())?;
        let written = async {
            to.write_all(&(out.len() as u64).to_be_bytes()).await?;
            to.write_all(&out).await?;
            to.flush().await
        };
        if written.await.is_err() {
            // ractor_cluster closed its end: the session is over.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frames::{Actor, Actors, Cast, ControlMessage, NodeMessage, PgChange};

    fn policy() -> Policy {
        Policy::new(
            Identity::Hospital("h1".into()),
            Limits::default(),
            true,
            Activity::default(),
        )
    }

    fn control(msg: ControlKind) -> NetworkMessage {
        NetworkMessage {
            message: Some(Family::Control(ControlMessage { msg: Some(msg) })),
        }
    }

    fn actors(n: u64) -> Vec<Actor> {
        (0..n).map(|pid| Actor { pid, name: None }).collect()
    }

    fn join(group: &str, n: u64) -> NetworkMessage {
        control(ControlKind::PgJoin(PgChange {
            group: group.into(),
            actors: actors(n),
            scope: SCOPE.into(),
        }))
    }

    fn label(p: &mut Policy, m: &NetworkMessage) -> &'static str {
        p.inspect(m.encode_to_vec().into()).unwrap_err().label()
    }

    #[test]
    fn casts_are_stamped_with_the_session_identity() {
        let forged = NetworkMessage {
            message: Some(Family::Node(NodeMessage {
                msg: Some(NodeKind::Cast(Cast {
                    to: 7,
                    what: bytes::Bytes::from_static(b"frame"),
                    variant: "medfed.frame".into(),
                    metadata: Some(b"hospital:h2".to_vec()),
                })),
            })),
        };
        let out = policy().inspect(forged.encode_to_vec().into()).unwrap();
        let Some(Family::Node(NodeMessage {
            msg: Some(NodeKind::Cast(cast)),
        })) = NetworkMessage::decode(out.as_slice()).unwrap().message
        else {
            panic!("not a cast");
        };
        assert_eq!(cast.metadata.as_deref(), Some(b"hospital:h1".as_slice()));
        assert_eq!((cast.to, &cast.what[..]), (7, b"frame".as_slice()));
    }

    #[test]
    fn announcements_and_group_joins_are_budgeted_and_limited_to_the_peers_role() {
        let mut p = policy();
        assert!(p
            .inspect(join("medfed.link.breast_cancer", 3).encode_to_vec().into())
            .is_ok());
        assert_eq!(
            label(&mut p, &join("medfed.link.breast_cancer", 17)),
            "too_many_actors"
        );
        // 200,000 actors do not even fit a control frame.
        assert_eq!(
            label(&mut policy(), &join("medfed.link.breast_cancer", 200_000)),
            "frame_too_large"
        );
        let spawn = control(ControlKind::Spawn(Actors { actors: actors(17) }));
        assert_eq!(label(&mut policy(), &spawn), "too_many_actors");
        // The same actors in many groups: memberships are budgeted too.
        let mut p = policy();
        let mut last = Ok(Vec::new());
        for task in 0..20 {
            last = p.inspect(join(&format!("medfed.link.t{task}"), 1).encode_to_vec().into());
        }
        assert_eq!(last.unwrap_err().label(), "too_many_memberships");
        // A hospital joins link groups only, in the default scope.
        for group in ["other", "medfed.coordinator", "medfed.link."] {
            assert_eq!(label(&mut policy(), &join(group, 1)), "foreign_group", "{group}");
        }
        let mut scoped = join("medfed.link.t", 1);
        if let Some(Family::Control(ControlMessage {
            msg: Some(ControlKind::PgJoin(j)),
        })) = &mut scoped.message
        {
            j.scope = "elsewhere".into();
        }
        assert_eq!(label(&mut policy(), &scoped), "foreign_group");
        // The coordinator joins its own group only.
        let mut c = Policy::new(
            Identity::Coordinator,
            Limits::default(),
            false,
            Activity::default(),
        );
        assert!(c
            .inspect(join("medfed.coordinator", 1).encode_to_vec().into())
            .is_ok());
        assert_eq!(label(&mut c, &join("medfed.link.t", 1)), "foreign_group");
    }

    #[test]
    fn the_gate_forwards_what_it_checked_not_what_was_sent() {
        // A join, a ping and a second join in one frame: prost keeps the last
        // variant. The gate checks that one and forwards exactly it.
        let mut bytes = join("medfed.link.t", 1).encode_to_vec();
        bytes.extend(control(ControlKind::Ping(frames::Ping { timestamp: None })).encode_to_vec());
        bytes.extend(join("medfed.link.u", 1).encode_to_vec());
        let out = policy().inspect(bytes.into()).unwrap();
        let decoded = NetworkMessage::decode(out.as_slice()).unwrap();
        let Some(Family::Control(ControlMessage {
            msg: Some(ControlKind::PgJoin(j)),
        })) = decoded.message
        else {
            panic!("{decoded:?}");
        };
        assert_eq!(j.group, "medfed.link.u");
        // A frame announced as a message but holding a control message gets
        // the control limit.
        let big = join("medfed.link.t", 16);
        let mut padded = vec![frames::KEY_NODE, 0];
        padded.extend(big.encode_to_vec());
        let limits = Limits {
            max_control_frame: 64,
            ..Limits::default()
        };
        let mut p = Policy::new(Identity::Hospital("h1".into()), limits, true, Activity::default());
        assert_eq!(p.inspect(padded.into()).unwrap_err().label(), "frame_too_large");
    }

    #[test]
    fn session_enumeration_and_calls_close_the_session() {
        let enumerate = control(ControlKind::EnumerateNodeSessions(frames::NameMessage::default()));
        assert_eq!(label(&mut policy(), &enumerate), "session_enumeration");
        let call = NetworkMessage {
            message: Some(Family::Node(NodeMessage {
                msg: Some(NodeKind::Call(frames::Call::default())),
            })),
        };
        assert_eq!(label(&mut policy(), &call), "actor_call");
    }

    #[test]
    fn a_node_name_must_be_the_identitys() {
        let name = |n: &str| NetworkMessage {
            message: Some(Family::Auth(frames::AuthenticationMessage {
                msg: Some(AuthKind::Name(frames::NameMessage {
                    name: n.into(),
                    ..Default::default()
                })),
            })),
        };
        let ok = name("medfed.hospital.h1.00ff00ff00ff00ff@127.0.0.1");
        assert!(policy().inspect(ok.encode_to_vec().into()).is_ok());
        // Not h2's, nor "h10"'s or "h1.x"'s.
        for other in [
            "medfed.hospital.h2.00ff00ff00ff00ff@127.0.0.1",
            "medfed.hospital.h10.00ff00ff00ff00ff",
            "medfed.hospital.h1.x.00ff00ff00ff00ff",
        ] {
            assert_eq!(label(&mut policy(), &name(other)), "node_name", "{other}");
        }
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_they_are_read() {
        let (mut peer, gate_side) = tokio::io::duplex(64);
        let (ractor_side, _keep) = tokio::io::duplex(64);
        // A control frame claiming 1 GiB: refused from its first 9 bytes.
        let mut head = (1u64 << 30).to_be_bytes().to_vec();
        head.push(frames::KEY_CONTROL);
        peer.write_all(&head).await.unwrap();
        let r = pump(gate_side, ractor_side, policy(), &GateStats::default()).await;
        assert_eq!(r.unwrap_err().label(), "frame_too_large");
    }

    #[tokio::test]
    async fn a_silent_peer_is_closed() {
        let (_peer, gate_side) = tokio::io::duplex(64);
        let (ractor_side, _keep) = tokio::io::duplex(64);
        let limits = Limits {
            idle_timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        let r = pump(
            gate_side,
            ractor_side,
            Policy::new(Identity::Coordinator, limits, false, Activity::default()),
            &GateStats::default(),
        )
        .await;
        assert_eq!(r.unwrap_err().label(), "idle");
    }
}
