//! The message set as wire frames (DESIGN §3): a JSON header — the message
//! itself, serialised with its tensors left out — followed by at most one
//! raw little-endian tensor block.
//!
//! ```text
//! message payload: header length u32 | header JSON | tensor block (may be empty)
//! ```
//!
//! A message that carries a model says so through `CarriesTensors`; the
//! header and the block must agree (a model without tensors, or tensors on a
//! message that has none, is malformed).
//!
//! On a session's direct stream (`cluster::gate::direct`) the values travel
//! apart from the frame, straight from the model's memory into the socket
//! and from the socket into the receiver's buffer:
//!
//! ```text
//! apart payload: header length u32 | header JSON | tensor names and shapes (values follow the frame)
//! ```

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use medfed_models::Params;

use super::{ToCoordinator, ToHospital};
use crate::wire::{encode_frame, tensors, Reader, WireError};

/// Frame kinds.
pub const KIND_MESSAGE: u8 = 1;
pub const KIND_CHUNK: u8 = 2;
/// A message whose tensor values travel apart from the frame.
pub const KIND_APART: u8 = 3;

/// Headers larger than this are refused before parsing.
const MAX_HEADER: usize = 1 << 20;

/// The tensors a message carries outside its JSON header.
pub trait CarriesTensors {
    fn tensors(&self) -> Option<&Params>;
    /// Put the decoded tensor block where `tensors()` reads it from.
    fn attach_tensors(&mut self, params: Params) -> Result<(), String>;
    /// Move the tensors out, leaving an empty slot (shared, not copied, when
    /// the message held them shared).
    fn take_tensors(&mut self) -> Option<Arc<Params>>;
}

/// What crosses the wire towards the coordinator: a hospital's message and
/// the link it came from, so the gateway can bind it to that hospital.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplinked {
    pub link: String,
    pub message: ToCoordinator,
}

impl CarriesTensors for Uplinked {
    fn tensors(&self) -> Option<&Params> {
        self.message.tensors()
    }

    fn attach_tensors(&mut self, params: Params) -> Result<(), String> {
        self.message.attach_tensors(params)
    }

    fn take_tensors(&mut self) -> Option<Arc<Params>> {
        self.message.take_tensors()
    }
}

/// One message family: encoded and decoded here, and only here.
pub trait WireMessage: Sized + Serialize + DeserializeOwned + CarriesTensors {
    /// A short name for logs.
    fn label(&self) -> &'static str;

    /// The message as one frame: header and tensors copied once, into it.
    fn encode(&self) -> Result<Vec<u8>, WireError> {
        let json = serde_json::to_vec(self).map_err(|e| WireError::Malformed(format!("header: {e}")))?;
        let len = (json.len() as u32).to_le_bytes();
        match self.tensors() {
            Some(params) => {
                let (names, values) = (tensors::header(params), tensors::values_le(params));
                encode_frame(KIND_MESSAGE, &[&len, &json, &names, &values])
            }
            None => encode_frame(KIND_MESSAGE, &[&len, &json]),
        }
    }

    /// The message as a frame without its tensor values, and the values
    /// (for the direct stream, which writes them from where they are).
    fn encode_apart(mut self) -> Result<(Vec<u8>, Option<Arc<Params>>), WireError> {
        let json = serde_json::to_vec(&self).map_err(|e| WireError::Malformed(format!("header: {e}")))?;
        let len = (json.len() as u32).to_le_bytes();
        let names = self.tensors().map(tensors::header);
        match (names, self.take_tensors()) {
            (Some(names), Some(values)) => {
                Ok((encode_frame(KIND_APART, &[&len, &json, &names])?, Some(values)))
            }
            _ => Ok((encode_frame(KIND_MESSAGE, &[&len, &json])?, None)),
        }
    }

    /// Decode the payload of a `KIND_APART` frame with the values that
    /// arrived apart from it.
    fn decode_apart(payload: &[u8], values: Vec<f32>) -> Result<Self, WireError> {
        let (mut message, names) = Self::header(payload)?;
        if message.tensors().is_none() {
            return Err(WireError::Malformed(format!(
                "a {} message carries no tensors",
                message.label()
            )));
        }
        let params = tensors::decode_apart(names, values, None)?;
        message.attach_tensors(params).map_err(WireError::Malformed)?;
        Ok(message)
    }

    /// The JSON header, decoded, and the bytes after it.
    fn header(payload: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let mut r = Reader::new(payload);
        let len = r.u32()? as usize;
        if len > MAX_HEADER {
            return Err(WireError::TooLarge(format!("a header of {len} bytes")));
        }
        let message: Self =
            serde_json::from_slice(r.take(len)?).map_err(|e| WireError::Malformed(format!("header: {e}")))?;
        Ok((message, r.take(r.remaining())?))
    }

    /// Decode the payload of a `KIND_MESSAGE` frame.
    fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let (mut message, block) = Self::header(payload)?;
        // An empty slot stands where the header left the tensors out.
        let wants = message.tensors().is_some();
        match (wants, block.is_empty()) {
            (true, true) => Err(WireError::Malformed(format!(
                "the {} message's tensors are missing",
                message.label()
            ))),
            (false, false) => Err(WireError::Malformed(format!(
                "a {} message carries no tensors",
                message.label()
            ))),
            (false, true) => Ok(message),
            (true, false) => {
                let params = tensors::decode(block, None)?;
                message.attach_tensors(params).map_err(WireError::Malformed)?;
                Ok(message)
            }
        }
    }
}

impl WireMessage for ToHospital {
    fn label(&self) -> &'static str {
        self.name()
    }
}

impl WireMessage for Uplinked {
    fn label(&self) -> &'static str {
        self.message.name()
    }
}

/// The empty tensor slot a decoded header holds until the tensor block fills it.
fn tensor_slot() -> Params {
    Params::empty()
}

/// `tensor_slot` for fields the header skips.
pub fn empty_tensors() -> Params {
    tensor_slot()
}

/// `GlobalModel` in a header: its scaler; the parameters travel raw.
pub mod model_without_params {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use medfed_models::data::Standardizer;
    use medfed_models::learner::GlobalModel;

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Header {
        standardizer: Option<Standardizer>,
    }

    pub fn serialize<S: Serializer>(model: &GlobalModel, s: S) -> Result<S::Ok, S::Error> {
        Header {
            standardizer: model.standardizer.as_deref().cloned(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<GlobalModel, D::Error> {
        let h = Header::deserialize(d)?;
        Ok(GlobalModel {
            params: Arc::new(super::tensor_slot()),
            standardizer: h.standardizer.map(Arc::new),
        })
    }
}

/// `LocalUpdate` in a header: everything but the delta, which travels raw.
pub mod update_without_delta {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use medfed_models::learner::{LocalUpdate, PrivacySpent, Release};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Header {
        num_examples: usize,
        train_loss: Option<f64>,
        release: Release,
        privacy: Option<PrivacySpent>,
    }

    pub fn serialize<S: Serializer>(u: &LocalUpdate, s: S) -> Result<S::Ok, S::Error> {
        Header {
            num_examples: u.num_examples,
            train_loss: u.train_loss,
            release: u.release.clone(),
            privacy: u.privacy.clone(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LocalUpdate, D::Error> {
        let h = Header::deserialize(d)?;
        // The release label is the sender's word; the coordinator checks the update itself.
        Ok(LocalUpdate {
            delta: super::tensor_slot(),
            num_examples: h.num_examples,
            train_loss: h.train_loss,
            release: h.release,
            privacy: h.privacy,
        })
    }
}
