//! `Envelope`: the one message type that crosses nodes. It carries an
//! encoded wire frame as opaque bytes, so ractor_cluster moves it without
//! a value-by-value conversion and every decoding step is ours, and the
//! identity of the session it arrived on, which the receiving node's gate
//! stamped into ractor's metadata (whatever the sender put there).
//! Envelopes that came on a session's direct stream (`gate::direct`) hold
//! their tensor values apart, already in memory order; they are delivered
//! on the receiving node only and never serialised again.

use ractor::message::{BoxedDowncastErr, SerializedMessage};

use super::gate::Identity;

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub frame: Vec<u8>,
    /// The values of a `KIND_APART` frame, read from the direct stream.
    pub values: Option<Vec<f32>>,
    /// Who sent it: the authenticated peer of the session it came in on;
    /// `None` for an envelope that never crossed a node.
    pub from: Option<Identity>,
}

impl Envelope {
    /// An envelope to send (the receiving gate says who sent it).
    pub fn new(frame: Vec<u8>) -> Self {
        Self {
            frame,
            values: None,
            from: None,
        }
    }

    /// An envelope as it arrives from `from` (for tests of the receivers).
    pub fn arrived(frame: Vec<u8>, from: Identity) -> Self {
        Self {
            frame,
            values: None,
            from: Some(from),
        }
    }
}

const VARIANT: &str = "medfed.frame";

impl ractor::Message for Envelope {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        if self.values.is_some() {
            // Only the direct stream carries values apart, and it delivers
            // them where they arrived.
            return Err(BoxedDowncastErr);
        }
        Ok(SerializedMessage::Cast {
            variant: VARIANT.to_string(),
            args: self.frame,
            metadata: None,
        })
    }

    fn deserialize(bytes: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match bytes {
            // The variant is not trusted either: the frame's own magic,
            // version and checksum decide whether the bytes are used.
            SerializedMessage::Cast { args, metadata, .. } => Ok(Envelope {
                frame: args,
                values: None,
                from: metadata.as_deref().and_then(Identity::from_stamp),
            }),
            _ => Err(BoxedDowncastErr),
        }
    }
}
