//! What the stages carry. The runtime wraps these in its own message set;
//! byte strings travel as hex in JSON, masked vectors as raw tensors.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::bytes::{hex, hex32, hex_map};

/// A hospital's setup answer: its two public keys for this round, signed
/// with its node identity when the federation has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeys {
    /// For encrypting the shares sent to it.
    #[serde(with = "hex32")]
    pub cipher: [u8; 32],
    /// For the pairwise masks.
    #[serde(with = "hex32")]
    pub mask: [u8; 32],
    /// Over `crypto::signed_keys_message`; empty when unsigned.
    #[serde(default, with = "hex", skip_serializing_if = "Vec::is_empty")]
    pub signature: Vec<u8>,
}

/// Share keys: the public keys of every hospital that completed setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareKeysRequest {
    pub keys: BTreeMap<String, PublicKeys>,
}

/// A hospital's encrypted shares, one per neighbour, and its seed commitment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareKeysAnswer {
    #[serde(with = "hex_map")]
    pub ciphertexts: BTreeMap<String, Vec<u8>>,
    #[serde(with = "hex32")]
    pub seed_commitment: [u8; 32],
}

/// Masked input: the ciphertexts addressed to this hospital, by sender
/// (every neighbour that completed share keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskedInputRequest {
    #[serde(with = "hex_map")]
    pub ciphertexts: BTreeMap<String, Vec<u8>>,
}

/// Unmask: who sent a masked input, and who completed share keys but did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmaskRequest {
    pub survivors: BTreeSet<String>,
    pub dropped: BTreeSet<String>,
}

/// A hospital's shares for unmasking: seed shares of survivors, mask-key
/// shares of dropouts, each by whose secret it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmaskAnswer {
    #[serde(with = "hex_map")]
    pub seed_shares: BTreeMap<String, Vec<u8>>,
    #[serde(with = "hex_map")]
    pub key_shares: BTreeMap<String, Vec<u8>>,
}
