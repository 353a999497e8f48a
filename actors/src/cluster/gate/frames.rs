//! ractor_cluster's wire protocol, modelled whole after its .proto files
//! (ractor_cluster 0.16, `src/protocol/*.proto`; private in that crate).
//! Whole, because the gate forwards its own re-encoding of what it checked:
//! ractor_cluster never decodes bytes the gate read differently.

use prost::Message;

/// The first byte of a frame's payload announces its family (the field key
/// of `NetworkMessage`'s oneof): the size limit to read it under. The
/// decoded family's limit is checked again.
pub const KEY_AUTH: u8 = (1 << 3) | 2;
pub const KEY_NODE: u8 = (2 << 3) | 2;
pub const KEY_CONTROL: u8 = (3 << 3) | 2;

#[derive(Clone, PartialEq, Message)]
pub struct NetworkMessage {
    #[prost(oneof = "Family", tags = "1, 2, 3")]
    pub message: Option<Family>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Family {
    #[prost(message, tag = "1")]
    Auth(AuthenticationMessage),
    #[prost(message, tag = "2")]
    Node(NodeMessage),
    #[prost(message, tag = "3")]
    Control(ControlMessage),
}

#[derive(Clone, PartialEq, Message)]
pub struct AuthenticationMessage {
    #[prost(oneof = "AuthKind", tags = "1, 2, 3, 4, 5, 6")]
    pub msg: Option<AuthKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AuthKind {
    /// The connecting node's name (the first thing a client says).
    #[prost(message, tag = "1")]
    Name(NameMessage),
    #[prost(message, tag = "2")]
    ServerStatus(ServerStatus),
    #[prost(message, tag = "3")]
    ClientStatus(ClientStatus),
    #[prost(message, tag = "4")]
    ServerChallenge(Challenge),
    #[prost(message, tag = "5")]
    ClientChallenge(ChallengeReply),
    #[prost(message, tag = "6")]
    ServerAck(ChallengeAck),
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeFlags {
    #[prost(uint32, tag = "1")]
    pub version: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct NameMessage {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub flags: Option<NodeFlags>,
    #[prost(string, tag = "3")]
    pub connection_string: String,
    #[prost(uint64, tag = "4")]
    pub connection_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServerStatus {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ClientStatus {
    #[prost(bool, tag = "1")]
    pub status: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Challenge {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub flags: Option<NodeFlags>,
    #[prost(uint32, tag = "3")]
    pub challenge: u32,
    #[prost(string, tag = "4")]
    pub connection_string: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChallengeReply {
    #[prost(uint32, tag = "1")]
    pub challenge: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub digest: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChallengeAck {
    #[prost(bytes = "vec", tag = "1")]
    pub digest: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeMessage {
    #[prost(oneof = "NodeKind", tags = "1, 2, 3")]
    pub msg: Option<NodeKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum NodeKind {
    #[prost(message, tag = "1")]
    Cast(Cast),
    #[prost(message, tag = "2")]
    Call(Call),
    #[prost(message, tag = "3")]
    Reply(CallReply),
}

#[derive(Clone, PartialEq, Message)]
pub struct Cast {
    #[prost(uint64, tag = "1")]
    pub to: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub what: bytes::Bytes,
    #[prost(string, tag = "3")]
    pub variant: String,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub metadata: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Call {
    #[prost(uint64, tag = "1")]
    pub to: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub what: bytes::Bytes,
    #[prost(uint64, tag = "3")]
    pub tag: u64,
    #[prost(uint64, optional, tag = "4")]
    pub timeout_ms: Option<u64>,
    #[prost(string, tag = "5")]
    pub variant: String,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub metadata: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CallReply {
    #[prost(uint64, tag = "1")]
    pub to: u64,
    #[prost(uint64, tag = "2")]
    pub tag: u64,
    #[prost(bytes = "bytes", tag = "3")]
    pub what: bytes::Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct ControlMessage {
    #[prost(oneof = "ControlKind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub msg: Option<ControlKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ControlKind {
    #[prost(message, tag = "1")]
    Spawn(Actors),
    #[prost(message, tag = "2")]
    Terminate(Terminate),
    #[prost(message, tag = "3")]
    Ping(Ping),
    #[prost(message, tag = "4")]
    Pong(Ping),
    #[prost(message, tag = "5")]
    PgJoin(PgChange),
    #[prost(message, tag = "6")]
    PgLeave(PgChange),
    /// Asks for every session's name and address (Transitive mode only).
    #[prost(message, tag = "7")]
    EnumerateNodeSessions(NameMessage),
    #[prost(message, tag = "8")]
    NodeSessions(NodeSessions),
    #[prost(message, tag = "9")]
    Ready(Ready),
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A ping or pong.
#[derive(Clone, PartialEq, Message)]
pub struct Ping {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeSessions {
    #[prost(message, repeated, tag = "1")]
    pub sessions: Vec<NameMessage>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Ready {}

#[derive(Clone, PartialEq, Message)]
pub struct Actor {
    #[prost(uint64, tag = "1")]
    pub pid: u64,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Actors {
    #[prost(message, repeated, tag = "1")]
    pub actors: Vec<Actor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Terminate {
    #[prost(uint64, repeated, tag = "1")]
    pub ids: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PgChange {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(message, repeated, tag = "2")]
    pub actors: Vec<Actor>,
    #[prost(string, tag = "3")]
    pub scope: String,
}

/// One frame as ractor_cluster writes it: u64 big-endian length, payload.
pub fn frame(message: &NetworkMessage) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(8 + len);
    out.extend_from_slice(&(len as u64).to_be_bytes());
    message.encode(&mut out).expect("a Vec grows as needed");
    out
}
