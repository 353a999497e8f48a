//! `Envelope`: the one message type that crosses nodes. It carries an
//! encoded wire frame as opaque bytes, so ractor_cluster moves it without
//! a value-by-value conversion and every decoding step is ours.

use ractor::message::{BoxedDowncastErr, SerializedMessage};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope(pub Vec<u8>);

const VARIANT: &str = "medfed.frame";

impl ractor::Message for Envelope {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        Ok(SerializedMessage::Cast {
            variant: VARIANT.to_string(),
            args: self.0,
            metadata: None,
        })
    }

    fn deserialize(bytes: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match bytes {
            // The variant is not trusted either: the frame's own magic,
            // version and checksum decide whether the bytes are used.
            SerializedMessage::Cast { args, .. } => Ok(Envelope(args)),
            _ => Err(BoxedDowncastErr),
        }
    }
}
