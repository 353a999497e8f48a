//! `Envelope`: the one message type that crosses nodes. It carries an
//! encoded wire frame as opaque bytes, so ractor_cluster moves it without
//! a value-by-value conversion and every decoding step is ours, and the
//! identity of the session it arrived on, which the receiving node's gate
//! stamped into ractor's metadata (whatever the sender put there).

use ractor::message::{BoxedDowncastErr, SerializedMessage};

use super::gate::Identity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub frame: Vec<u8>,
    /// Who sent it: the authenticated peer of the session it came in on;
    /// `None` for an envelope that never crossed a node.
    pub from: Option<Identity>,
}

impl Envelope {
    /// An envelope to send (the receiving gate says who sent it).
    pub fn new(frame: Vec<u8>) -> Self {
        Self { frame, from: None }
    }

    /// An envelope as it arrives from `from` (for tests of the receivers).
    pub fn arrived(frame: Vec<u8>, from: Identity) -> Self {
        Self {
            frame,
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
                from: metadata.as_deref().and_then(Identity::from_stamp),
            }),
            _ => Err(BoxedDowncastErr),
        }
    }
}
