//! Secure aggregation's messages (the stages of `Protocol::secure`): what
//! the coordinator asks in setup, share keys and unmask, and what the
//! hospitals answer. The masked-input stage is the training request
//! (`ToHospital::Train` with the shares addressed to the hospital) and its
//! answer (`TrainOutcome::Masked`).

use serde::{Deserialize, Serialize};

use medfed_models::secagg::{
    PublicKeys, RoundPlan, ShareKeysAnswer, ShareKeysRequest, UnmaskAnswer, UnmaskRequest,
};
use medfed_models::{Params, TensorSpec};

use crate::coordinator::StageKind;

/// A secure-aggregation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum SecAggStep {
    /// Make this round's keys. `max_weight` scales counted inputs;
    /// `max_update_norm` is the norm bound the hospital itself enforces
    /// (the coordinator cannot see an update to check it).
    Setup {
        plan: RoundPlan,
        max_weight: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_update_norm: Option<f64>,
    },
    ShareKeys {
        request: ShareKeysRequest,
    },
    Unmask {
        request: UnmaskRequest,
    },
}

impl SecAggStep {
    pub fn stage(&self) -> StageKind {
        match self {
            SecAggStep::Setup { .. } => StageKind::Setup,
            SecAggStep::ShareKeys { .. } => StageKind::ShareKeys,
            SecAggStep::Unmask { .. } => StageKind::Unmask,
        }
    }
}

/// A hospital's answer to a secure-aggregation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum SecAggAnswer {
    Keys {
        keys: PublicKeys,
    },
    Shares {
        shares: ShareKeysAnswer,
    },
    Unmask {
        shares: UnmaskAnswer,
    },
    /// The hospital will not go on with this round, and why (its policy, a
    /// refused request, detected tampering).
    Declined {
        stage: StageKind,
        reason: String,
    },
}

impl SecAggAnswer {
    pub fn stage(&self) -> StageKind {
        match self {
            SecAggAnswer::Keys { .. } => StageKind::Setup,
            SecAggAnswer::Shares { .. } => StageKind::ShareKeys,
            SecAggAnswer::Unmask { .. } => StageKind::Unmask,
            SecAggAnswer::Declined { stage, .. } => *stage,
        }
    }
}

/// The name of the one tensor a masked input travels as.
pub const MASKED_TENSOR: &str = "secagg/masked";

/// A masked input's ring words in the tensor block, bit for bit: each u32
/// is stored as the f32 with the same bits and never used as a number.
pub fn masked_to_params(words: &[u32]) -> Params {
    let values: Vec<f32> = words.iter().map(|w| f32::from_bits(*w)).collect();
    Params::single(MASKED_TENSOR, values).unwrap_or_else(|_| Params::empty())
}

/// The ring words of a masked input, or why the tensors are not one.
pub fn masked_words(params: &Params) -> Result<Vec<u32>, String> {
    match params.layout().specs() {
        [TensorSpec { name, shape }] if name == MASKED_TENSOR && shape.len() == 1 => {
            Ok(params.as_slice().iter().map(|v| v.to_bits()).collect())
        }
        _ => Err(format!(
            "a masked input must be one vector named '{MASKED_TENSOR}'"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_words_survive_the_tensor_block_bit_for_bit() {
        // NaN and infinity bit patterns included.
        let words = vec![0, 1, u32::MAX, 0x7fc0_0001, 0x7f80_0000, 0xffc0_1234, 123_456_789];
        let params = masked_to_params(&words);
        let bytes = crate::wire::tensors::encode(&params);
        let back = crate::wire::tensors::decode(&bytes, None).unwrap();
        assert_eq!(masked_words(&back).unwrap(), words);
        assert!(masked_words(&Params::single("w", vec![1.0]).unwrap()).is_err());
    }
}
