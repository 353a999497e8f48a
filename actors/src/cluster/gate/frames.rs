//! The parts of ractor_cluster's wire protocol the gate inspects, modelled
//! after its .proto files (ractor_cluster 0.16, `src/protocol/*.proto`).
//! Fields not modelled are skipped when decoding; only actor messages are
//! re-encoded, and those are modelled whole.

use prost::Message;

/// The first byte of a frame's payload says which family it is (the
/// field key of `NetworkMessage`'s oneof): known before reading the rest.
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
    #[prost(oneof = "AuthKind", tags = "1")]
    pub msg: Option<AuthKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AuthKind {
    /// The connecting node's name (the first thing a client says).
    #[prost(message, tag = "1")]
    Name(NameMessage),
}

#[derive(Clone, PartialEq, Message)]
pub struct NameMessage {
    #[prost(string, tag = "1")]
    pub name: String,
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
    Call(Opaque),
    #[prost(message, tag = "3")]
    Reply(Opaque),
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

/// A message whose content the gate does not read.
#[derive(Clone, PartialEq, Message)]
pub struct Opaque {}

#[derive(Clone, PartialEq, Message)]
pub struct ControlMessage {
    #[prost(oneof = "ControlKind", tags = "1, 2, 5, 6")]
    pub msg: Option<ControlKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ControlKind {
    #[prost(message, tag = "1")]
    Spawn(Actors),
    #[prost(message, tag = "2")]
    Terminate(Terminate),
    #[prost(message, tag = "5")]
    PgJoin(PgChange),
    #[prost(message, tag = "6")]
    PgLeave(PgChange),
}

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
