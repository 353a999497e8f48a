//! Secure aggregation with dropout recovery: SecAgg+ (Bell et al. 2020,
//! "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"),
//! the sparse-graph version of Bonawitz et al. 2017. The coordinator learns
//! the sum of the hospitals' quantised inputs and nothing else about any
//! one of them, as long as it follows the protocol (honest-but-curious) and
//! fewer than `threshold` of each hospital's share holders collude with it.
//!
//! This module is the arithmetic and each side's per-round state, pure and
//! free of I/O; the runtime carries its messages as four stages of a round:
//!
//! | stage        | hospital ([`Client`])                               | coordinator ([`Server`])               |
//! |--------------|-----------------------------------------------------|----------------------------------------|
//! | setup        | two fresh X25519 key pairs, public keys (signed)     | collects the keys of U1                |
//! | share keys   | seed b_u; Shamir shares of b_u and of its mask key,  | routes the ciphertexts, keeps the      |
//! |              | encrypted for each neighbour; commitment to b_u      | commitments (U2)                       |
//! | masked input | decrypts its shares, trains, quantises, adds         | collects masked vectors (U3)           |
//! |              | PRG(b_u) and the pairwise masks                      |                                        |
//! | unmask       | b-shares of survivors, mask-key shares of dropouts   | reconstructs, removes every mask, sums |
//!
//! Dropouts: before setup or share keys a hospital is simply left out (no
//! one masks with it); during masked input its pairwise masks are removed
//! with its reconstructed mask key and its input is lost; during unmask its
//! input still counts. The round aborts, unmasking nothing, when fewer than
//! the required inputs survive or any reconstruction lacks `threshold`
//! shares (`Server::unmask_request`, `Server::finish`).
//!
//! What holds, and what does not:
//! - Against an honest-but-curious coordinator: it sees only masked vectors
//!   (uniform in Z_(2^32) on their own, `tests::a_lone_masked_vector_is_uniform`)
//!   and the sum. A hospital answers one unmask request per round, refuses
//!   one that names a peer both alive and dropped, and needs `threshold`
//!   survivors among its share holders, so the coordinator never holds both
//!   a hospital's seed and its mask key.
//! - Key substitution: every key set passes through the coordinator. With
//!   signatures (`KeySigner`/`KeyVerifier`, the hospitals' mutual-TLS
//!   identities) a peer's keys cannot be replaced; without them only an
//!   honest-but-curious coordinator is covered.
//! - Not detected: a coordinator that tells different hospitals different
//!   survivor sets (Bonawitz et al.'s consistency round is not implemented),
//!   or that picks the neighbour graph adversarially (the graph seed is the
//!   coordinator's).
//! - Corrupted shares are detected (the seed's commitment, the mask key's
//!   public key) and abort the round; they are not corrected.

mod bytes;
mod client;
mod crypto;
mod graph;
mod messages;
mod prg;
mod quantize;
mod server;
mod shamir;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use client::{Client, MaskedInput};
pub use crypto::{KeySigner, KeyVerifier};
pub use graph::Graph;
pub use messages::{
    MaskedInputRequest, PublicKeys, ShareKeysAnswer, ShareKeysRequest, UnmaskAnswer, UnmaskRequest,
};
pub use quantize::{Quantizer, Weighting};
pub use server::{SecureSum, Server};

/// Why a side refused to go on with a round. A refusal ends the round for
/// that side; the message is for people (logs, the coordinator's abort).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecAggError {
    /// A setting that cannot work (ring overflow, threshold above the share count, ...).
    #[error("secure aggregation: {0}")]
    Invalid(String),
    /// A message that does not fit the protocol: wrong stage, unknown
    /// peer, inconsistent lists.
    #[error("secure aggregation: {0}")]
    Protocol(String),
    /// Cryptographic evidence of tampering: a ciphertext that does not
    /// decrypt, a signature that does not verify, a reconstruction that
    /// does not match its commitment.
    #[error("secure aggregation: {0}")]
    Tampered(String),
    /// Too few hospitals or shares left to finish the round safely.
    #[error("secure aggregation aborted: {0}")]
    Abort(String),
}

pub type Result<T, E = SecAggError> = std::result::Result<T, E>;

/// What every key, ciphertext and commitment of one round is bound to, so
/// that nothing from another task, run, round or attempt can be replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundContext {
    pub task: String,
    /// The coordinator's run generation.
    pub run: u64,
    pub round: u32,
    pub attempt: u32,
}

impl RoundContext {
    /// A canonical, length-prefixed encoding (domain-separated and versioned).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.task.len());
        bytes::put(&mut out, b"medfed/secagg/v1");
        bytes::put(&mut out, self.task.as_bytes());
        out.extend_from_slice(&self.run.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.attempt.to_le_bytes());
        out
    }
}

/// One round's protocol parameters, the same for every participant: the
/// coordinator sends them with the setup request and each hospital checks
/// them against its own policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundPlan {
    /// Share holders per hospital, itself included (the full graph when it
    /// is at least the number of participants).
    pub num_shares: usize,
    /// Shares needed to reconstruct a seed or a mask key.
    pub threshold: usize,
    /// Inputs are clipped to [-range, range] per coordinate before quantisation.
    pub clipping_range: f64,
    /// Quantisation levels 2^bits per coordinate, in the ring Z_(2^32).
    pub quantization_bits: u32,
    /// The sum is unmasked only with at least this many inputs.
    pub min_inputs: usize,
    /// Public randomness for the neighbour graph (large federations).
    pub graph_seed: u64,
}

impl RoundPlan {
    /// The default threshold for `num_shares` holders: a strict majority.
    pub fn default_threshold(num_shares: usize) -> usize {
        num_shares / 2 + 1
    }

    /// The default share count for `participants`: the full graph up to
    /// 20 hospitals, then 2*ceil(log2 K)+1 holders (Bell et al.: a
    /// logarithmic degree keeps the graph connected and each hospital's
    /// holders honest-majority with high probability; this constant is a
    /// default, not a proof for every corruption rate).
    pub fn default_num_shares(participants: usize) -> usize {
        if participants <= 20 {
            participants
        } else {
            let log2 = usize::BITS - (participants - 1).leading_zeros();
            (2 * log2 as usize + 1).min(participants)
        }
    }

    /// Refuse parameters no round could run with, for `participants` hospitals.
    pub fn validate(&self, participants: usize) -> Result<()> {
        let quantizer = Quantizer::new(self.clipping_range, self.quantization_bits)?;
        if participants > quantizer.capacity() {
            return Err(SecAggError::Invalid(format!(
                "{participants} hospitals would overflow the ring: with {} quantization bits at most {} inputs \
                 fit in Z_(2^32); lower quantization_bits",
                self.quantization_bits,
                quantizer.capacity()
            )));
        }
        if self.num_shares < 2 {
            return Err(SecAggError::Invalid(format!(
                "num_shares must be at least 2 (got {})",
                self.num_shares
            )));
        }
        if self.num_shares > 255 {
            return Err(SecAggError::Invalid(format!(
                "num_shares must be at most 255, the share count Shamir sharing over GF(256) allows (got {})",
                self.num_shares
            )));
        }
        let holders = self.num_shares.min(participants.max(1));
        if self.threshold < 2 || self.threshold > holders {
            return Err(SecAggError::Invalid(format!(
                "threshold must be between 2 and the number of share holders ({holders}), got {}",
                self.threshold
            )));
        }
        if self.min_inputs < 3 {
            return Err(SecAggError::Invalid(format!(
                "a secure sum needs at least 3 inputs (min_inputs is {}): with 2, each hospital could \
                 subtract its own input and learn the other's",
                self.min_inputs
            )));
        }
        Ok(())
    }
}
