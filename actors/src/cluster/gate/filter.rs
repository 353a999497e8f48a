//! The inbound side of an authenticated session: every frame the peer sends
//! passes here before ractor_cluster reads it. Actor messages are stamped
//! with the session's identity (whatever the peer put there), actor and
//! process-group announcements are budgeted, the peer's node name must be
//! its identity's, and frames are size-limited by family before they are
//! read. Anything outside that closes the session with a logged reason.

use std::collections::HashSet;
use std::time::Duration;

use bytes::BytesMut;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frames::{self, AuthKind, ControlKind, Family, NetworkMessage, NodeKind};
use super::identity::Identity;
use super::limits::Limits;
use super::sessions::Activity;

/// Why the gate closed an authenticated session.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Breach {
    #[error("no frame for {} s", .0.as_secs())]
    Idle(Duration),
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
    #[error("it joined process group {0}, which is not medfed's")]
    Group(String),
    #[error("it made an actor call or reply, which medfed's protocol does not use")]
    Call,
}

impl Breach {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Idle(_) => "idle",
            Self::TooLarge { .. } => "frame_too_large",
            Self::Malformed(_) => "malformed_frame",
            Self::NodeName { .. } => "node_name",
            Self::TooManyActors { .. } => "too_many_actors",
            Self::Group(_) => "foreign_group",
            Self::Call => "actor_call",
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
    activity: Activity,
}

const MAX_GROUP_NAME: usize = 128;

impl Policy {
    pub fn new(peer: Identity, limits: Limits, inbound: bool, activity: Activity) -> Self {
        Self {
            peer,
            limits,
            inbound,
            announced: HashSet::new(),
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

    /// Check one frame's payload; `Some` is the payload to pass on instead.
    pub fn inspect(&mut self, payload: bytes::Bytes) -> Result<Option<Vec<u8>>, Breach> {
        let message = NetworkMessage::decode(payload).map_err(|e| Breach::Malformed(e.to_string()))?;
        match message.message {
            Some(Family::Auth(auth)) => {
                if let (true, Some(AuthKind::Name(name))) = (self.inbound, auth.msg) {
                    let node = name.name.split('@').next().unwrap_or_default();
                    let prefix = self.peer.node_name_prefix();
                    // The prefix, then the 16 hex digits that make it unique.
                    let suffix_ok = node
                        .strip_prefix(&prefix)
                        .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
                    if !suffix_ok {
                        return Err(Breach::NodeName {
                            shown: crate::names::shown(&name.name),
                            identity: self.peer.to_string(),
                            prefix,
                        });
                    }
                }
                Ok(None)
            }
            Some(Family::Control(control)) => {
                match control.msg {
                    Some(ControlKind::Spawn(spawn)) => self.announce(spawn.actors.iter().map(|a| a.pid))?,
                    Some(ControlKind::PgJoin(join)) => {
                        if !join.group.starts_with("medfed.") || join.group.len() > MAX_GROUP_NAME {
                            return Err(Breach::Group(crate::names::shown(&join.group)));
                        }
                        self.announce(join.actors.iter().map(|a| a.pid))?;
                    }
                    Some(ControlKind::Terminate(t)) => {
                        for pid in t.ids {
                            self.announced.remove(&pid);
                        }
                    }
                    Some(ControlKind::PgLeave(_)) | None => {}
                }
                Ok(None)
            }
            Some(Family::Node(node)) => match node.msg {
                Some(NodeKind::Cast(mut cast)) => {
                    cast.metadata = Some(self.peer.stamp());
                    let stamped = NetworkMessage {
                        message: Some(Family::Node(frames::NodeMessage {
                            msg: Some(NodeKind::Cast(cast)),
                        })),
                    };
                    Ok(Some(stamped.encode_to_vec()))
                }
                Some(NodeKind::Call(_) | NodeKind::Reply(_)) => Err(Breach::Call),
                None => Ok(None),
            },
            None => Ok(None),
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
const MIN_RATE: u64 = 64 << 10;

/// Copy checked frames from the peer to ractor_cluster until the peer
/// closes (`Ok`) or breaks a rule (`Err`, the session is then closed).
pub async fn pump<R, W>(mut from: R, mut to: W, mut policy: Policy) -> Result<(), Breach>
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
        let (family, limit) = policy.limit_for(head[8]);
        if len == 0 || len > limit {
            return Err(Breach::TooLarge { family, len, limit });
        }
        let mut payload = BytesMut::zeroed(len as usize);
        payload[0] = head[8];
        let body = idle + Duration::from_secs(len / MIN_RATE);
        match tokio::time::timeout(body, from.read_exact(&mut payload[1..])).await {
            Err(_) => return Err(Breach::Idle(body)),
            Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
        policy.activity.touch();
        let payload = payload.freeze();
        let out = match policy.inspect(payload.clone())? {
            Some(replaced) => replaced,
            None => payload.to_vec(),
        };
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
        let out = policy().inspect(forged.encode_to_vec().into()).unwrap().unwrap();
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
    fn announcements_are_budgeted() {
        let mut p = policy();
        let join = |n| {
            control(ControlKind::PgJoin(PgChange {
                group: "medfed.link.breast_cancer".into(),
                actors: actors(n),
                scope: String::new(),
            }))
        };
        assert_eq!(p.inspect(join(3).encode_to_vec().into()), Ok(None));
        let e = p.inspect(join(200_000).encode_to_vec().into()).unwrap_err();
        assert_eq!(e.label(), "too_many_actors", "{e}");
        let spawn = control(ControlKind::Spawn(Actors { actors: actors(17) }));
        assert_eq!(
            policy()
                .inspect(spawn.encode_to_vec().into())
                .unwrap_err()
                .label(),
            "too_many_actors"
        );
        let foreign = control(ControlKind::PgJoin(PgChange {
            group: "other".into(),
            actors: actors(1),
            scope: String::new(),
        }));
        assert_eq!(
            policy()
                .inspect(foreign.encode_to_vec().into())
                .unwrap_err()
                .label(),
            "foreign_group"
        );
    }

    #[test]
    fn a_node_name_must_be_the_identitys() {
        let name = |n: &str| NetworkMessage {
            message: Some(Family::Auth(frames::AuthenticationMessage {
                msg: Some(AuthKind::Name(frames::NameMessage { name: n.into() })),
            })),
        };
        let mut p = policy();
        assert_eq!(
            p.inspect(
                name("medfed.hospital.h1.00ff00ff00ff00ff@127.0.0.1")
                    .encode_to_vec()
                    .into()
            ),
            Ok(None)
        );
        let e = policy()
            .inspect(
                name("medfed.hospital.h2.00ff00ff00ff00ff@127.0.0.1")
                    .encode_to_vec()
                    .into(),
            )
            .unwrap_err();
        assert_eq!(e.label(), "node_name");
        // "h1" must not take "h10"'s or "h1.x"'s names.
        for other in [
            "medfed.hospital.h10.00ff00ff00ff00ff",
            "medfed.hospital.h1.x.00ff00ff00ff00ff",
        ] {
            let e = policy().inspect(name(other).encode_to_vec().into()).unwrap_err();
            assert_eq!(e.label(), "node_name");
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
        let r = pump(gate_side, ractor_side, policy()).await;
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
        )
        .await;
        assert_eq!(r.unwrap_err().label(), "idle");
    }
}
