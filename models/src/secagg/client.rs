//! A hospital's side of one secure-aggregation round. Each call is one
//! stage and may be made once, in order; anything else is refused. Secrets
//! (both key pairs' secret halves, the seed, the shares it holds) are
//! zeroised as soon as they are no longer needed and when the round ends.

use std::collections::{BTreeMap, BTreeSet};

use rand::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::bytes::{put, take};
use super::crypto::{
    agree, open_shares, pairwise_seed, public_of, seal_shares, secret_from, seed_commitment,
    signed_keys_message, KeySigner, KeyVerifier,
};
use super::graph::Graph;
use super::messages::{
    MaskedInputRequest, PublicKeys, ShareKeysAnswer, ShareKeysRequest, UnmaskAnswer, UnmaskRequest,
};
use super::prg::{apply_mask, Sign};
use super::quantize::{Quantizer, Weighting};
use super::shamir::{self, SHARE_LEN};
use super::{Result, RoundContext, RoundPlan, SecAggError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    KeysSent,
    SharesSent,
    SharesAccepted,
    InputSent,
    Done,
}

/// The shares a hospital holds of one peer's secrets.
struct Held {
    seed: Zeroizing<Vec<u8>>,
    key: Zeroizing<Vec<u8>>,
}

/// A hospital's masked input and what quantising it clipped.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedInput {
    /// Element 0 is the weight (see `Weighting`), then one word per value.
    pub vector: Vec<u32>,
    /// Coordinates outside the clipping range (reported locally).
    pub clipped: usize,
}

pub struct Client {
    me: String,
    ctx: RoundContext,
    plan: RoundPlan,
    stage: Stage,
    cipher_secret: Option<StaticSecret>,
    mask_secret: Option<StaticSecret>,
    public: PublicKeys,
    seed: Option<Zeroizing<[u8; 32]>>,
    graph: Option<Graph>,
    peer_keys: BTreeMap<String, PublicKeys>,
    /// Shares held, by whose secret they are (this hospital's own included).
    held: BTreeMap<String, Held>,
    /// Neighbours whose shares arrived: the ones it masks with.
    masking_peers: BTreeSet<String>,
}

fn random_bytes(rng: &mut impl CryptoRng) -> Zeroizing<[u8; 32]> {
    let mut b = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(b.as_mut());
    b
}

fn encode_bundle(sender: &str, recipient: &str, seed: &[u8], key: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(
        16 + sender.len() + recipient.len() + 2 * SHARE_LEN,
    ));
    put(&mut out, sender.as_bytes());
    put(&mut out, recipient.as_bytes());
    put(&mut out, seed);
    put(&mut out, key);
    out
}

impl Client {
    /// Setup: fresh key pairs for this round; the public keys to send.
    pub fn setup(
        me: &str,
        ctx: RoundContext,
        plan: RoundPlan,
        rng: &mut impl CryptoRng,
        signer: Option<&dyn KeySigner>,
    ) -> Result<(Self, PublicKeys)> {
        let cipher_secret = secret_from(*random_bytes(rng));
        let mask_secret = secret_from(*random_bytes(rng));
        let (cipher, mask) = (public_of(&cipher_secret), public_of(&mask_secret));
        let signature = match signer {
            Some(s) => s
                .sign(&signed_keys_message(&ctx, me, &cipher, &mask))
                .map_err(|e| SecAggError::Invalid(format!("cannot sign this hospital's keys: {e}")))?,
            None => Vec::new(),
        };
        let public = PublicKeys {
            cipher,
            mask,
            signature,
        };
        let client = Self {
            me: me.to_string(),
            ctx,
            plan,
            stage: Stage::KeysSent,
            cipher_secret: Some(cipher_secret),
            mask_secret: Some(mask_secret),
            public: public.clone(),
            seed: None,
            graph: None,
            peer_keys: BTreeMap::new(),
            held: BTreeMap::new(),
            masking_peers: BTreeSet::new(),
        };
        Ok((client, public))
    }

    fn expect(&mut self, stage: Stage, what: &str) -> Result<()> {
        if self.stage != stage {
            self.end();
            return Err(SecAggError::Protocol(format!(
                "{what} arrived out of order (this hospital is past that stage or not there yet)"
            )));
        }
        Ok(())
    }

    /// The round is over for this hospital: drop every secret.
    pub fn end(&mut self) {
        self.stage = Stage::Done;
        self.cipher_secret = None;
        self.mask_secret = None;
        self.seed = None;
        self.held.clear();
    }

    /// The fewest inputs any sum this hospital's input is in will be
    /// unmasked with, as far as it can check: the plan's minimum, and no
    /// more than the hospitals it saw complete setup. It refuses to unmask
    /// with fewer survivors, so its noise share assumes no more than this.
    pub fn summed_with(&self) -> usize {
        let seen = self.graph.as_ref().map_or(0, |g| g.len());
        self.plan.min_inputs.min(seen)
    }

    /// Share holders of this hospital's secrets (itself included), once
    /// share keys built the graph: the k of its privacy policy.
    pub fn holders(&self) -> usize {
        self.graph.as_ref().map_or(0, |g| g.holders(&self.me).len())
    }

    /// Share keys: check the peers' keys, draw the seed, share it and the
    /// mask key among the neighbours, encrypt each neighbour's shares.
    pub fn share_keys(
        &mut self,
        request: &ShareKeysRequest,
        verifier: Option<&dyn KeyVerifier>,
        rng: &mut impl CryptoRng,
    ) -> Result<ShareKeysAnswer> {
        self.expect(Stage::KeysSent, "a share-keys request")?;
        let answer = self.try_share_keys(request, verifier, rng);
        if answer.is_err() {
            self.end();
        }
        answer
    }

    fn try_share_keys(
        &mut self,
        request: &ShareKeysRequest,
        verifier: Option<&dyn KeyVerifier>,
        rng: &mut impl CryptoRng,
    ) -> Result<ShareKeysAnswer> {
        match request.keys.get(&self.me) {
            Some(k) if k.cipher == self.public.cipher && k.mask == self.public.mask => {}
            _ => {
                return Err(SecAggError::Tampered(
                    "the share-keys request does not carry this hospital's own public keys".into(),
                ))
            }
        }
        let participants = request.keys.len();
        self.plan.validate(participants)?;
        if participants < self.plan.min_inputs {
            return Err(SecAggError::Abort(format!(
                "{participants} hospitals completed setup, fewer than the {} a secure sum needs",
                self.plan.min_inputs
            )));
        }
        let graph = Graph::build(request.keys.keys(), self.plan.num_shares, self.plan.graph_seed);
        let holders = graph.holders(&self.me);
        if holders.len() < self.plan.threshold {
            return Err(SecAggError::Abort(format!(
                "{} share holders, fewer than the threshold {}",
                holders.len(),
                self.plan.threshold
            )));
        }
        for peer in graph.neighbours(&self.me) {
            let keys = &request.keys[peer];
            if let Some(verifier) = verifier {
                if keys.signature.is_empty() {
                    return Err(SecAggError::Tampered(format!(
                        "the keys of '{peer}' are not signed, and this federation requires signed keys"
                    )));
                }
                let message = signed_keys_message(&self.ctx, peer, &keys.cipher, &keys.mask);
                verifier.verify(peer, &message, &keys.signature).map_err(|e| {
                    SecAggError::Tampered(format!("the keys of '{peer}' are not its own: {e}"))
                })?;
            }
            self.peer_keys.insert(peer.clone(), keys.clone());
        }
        let seed = random_bytes(rng);
        let mask_secret = self
            .mask_secret
            .as_ref()
            .ok_or_else(|| SecAggError::Protocol("the mask key is gone".into()))?;
        let mask_bytes = Zeroizing::new(mask_secret.to_bytes());
        let seed_shares = shamir::split(&seed, self.plan.threshold, &holders)?;
        let key_shares = shamir::split(&mask_bytes, self.plan.threshold, &holders)?;
        let cipher_secret = self
            .cipher_secret
            .as_ref()
            .ok_or_else(|| SecAggError::Protocol("the cipher key is gone".into()))?;
        let mut ciphertexts = BTreeMap::new();
        for holder in &holders {
            let (s, k) = (&seed_shares[holder], &key_shares[holder]);
            if *holder == self.me {
                self.held.insert(
                    holder.clone(),
                    Held {
                        seed: s.clone(),
                        key: k.clone(),
                    },
                );
                continue;
            }
            let shared = agree(cipher_secret, &self.peer_keys[holder].cipher, holder)?;
            let bundle = encode_bundle(&self.me, holder, s, k);
            ciphertexts.insert(
                holder.clone(),
                seal_shares(&shared, &self.ctx, &self.me, holder, &bundle)?,
            );
        }
        let seed_commitment = seed_commitment(&self.ctx, &self.me, &seed);
        self.seed = Some(seed);
        self.graph = Some(graph);
        self.stage = Stage::SharesSent;
        Ok(ShareKeysAnswer {
            ciphertexts,
            seed_commitment,
        })
    }

    /// Masked input, first half: decrypt and keep the shares the
    /// neighbours sent. Called before training, so that a round that cannot
    /// complete spends no privacy budget.
    pub fn accept_shares(&mut self, request: &MaskedInputRequest) -> Result<()> {
        self.expect(Stage::SharesSent, "a masked-input request")?;
        let accepted = self.try_accept_shares(request);
        if accepted.is_err() {
            self.end();
        }
        accepted
    }

    fn try_accept_shares(&mut self, request: &MaskedInputRequest) -> Result<()> {
        let cipher_secret = self
            .cipher_secret
            .take()
            .ok_or_else(|| SecAggError::Protocol("the cipher key is gone".into()))?;
        for (sender, ciphertext) in &request.ciphertexts {
            let Some(keys) = self.peer_keys.get(sender) else {
                return Err(SecAggError::Protocol(format!(
                    "shares from '{sender}', which is not a neighbour of this hospital this round"
                )));
            };
            let shared = agree(&cipher_secret, &keys.cipher, sender)?;
            let plain = open_shares(&shared, &self.ctx, sender, &self.me, ciphertext)?;
            let mut input = plain.as_slice();
            let fields = (
                take(&mut input),
                take(&mut input),
                take(&mut input),
                take(&mut input),
            );
            let (Some(from), Some(to), Some(seed), Some(key)) = fields else {
                return Err(SecAggError::Tampered(format!(
                    "the shares from '{sender}' are malformed"
                )));
            };
            if from != sender.as_bytes() || to != self.me.as_bytes() || !input.is_empty() {
                return Err(SecAggError::Tampered(format!(
                    "the shares from '{sender}' name another sender or recipient"
                )));
            }
            if seed.len() != SHARE_LEN || key.len() != SHARE_LEN {
                return Err(SecAggError::Tampered(format!(
                    "the shares from '{sender}' are malformed"
                )));
            }
            self.held.insert(
                sender.clone(),
                Held {
                    seed: Zeroizing::new(seed.to_vec()),
                    key: Zeroizing::new(key.to_vec()),
                },
            );
            self.masking_peers.insert(sender.clone());
        }
        if self.held.len() < self.plan.threshold {
            return Err(SecAggError::Abort(format!(
                "shares from {} of this hospital's holders (itself included), fewer than the threshold {}",
                self.held.len(),
                self.plan.threshold
            )));
        }
        self.stage = Stage::SharesAccepted;
        Ok(())
    }

    /// Masked input, second half: quantise `values`, add the self mask and
    /// the pairwise masks (+ towards peers that sort below this hospital,
    /// - towards those above), and forget the seed and the mask key.
    pub fn mask(
        &mut self,
        values: &[f32],
        weighting: Weighting,
        rng: &mut impl rand::Rng,
    ) -> Result<MaskedInput> {
        self.expect(Stage::SharesAccepted, "a masked input")?;
        let masked = self.try_mask(values, weighting, rng);
        match &masked {
            Ok(_) => {
                self.seed = None;
                self.mask_secret = None;
                self.stage = Stage::InputSent;
            }
            Err(_) => self.end(),
        }
        masked
    }

    fn try_mask(
        &mut self,
        values: &[f32],
        weighting: Weighting,
        rng: &mut impl rand::Rng,
    ) -> Result<MaskedInput> {
        let quantizer = Quantizer::new(self.plan.clipping_range, self.plan.quantization_bits)?;
        let (mut vector, clipped) = quantizer.quantize(values, weighting, rng)?;
        let seed = self
            .seed
            .as_ref()
            .ok_or_else(|| SecAggError::Protocol("the seed is gone".into()))?;
        apply_mask(&mut vector, seed, Sign::Add);
        let mask_secret = self
            .mask_secret
            .as_ref()
            .ok_or_else(|| SecAggError::Protocol("the mask key is gone".into()))?;
        for peer in &self.masking_peers {
            let shared = agree(mask_secret, &self.peer_keys[peer].mask, peer)?;
            let pair = pairwise_seed(&shared, &self.ctx, &self.me, peer);
            let sign = if self.me.as_str() > peer.as_str() {
                Sign::Add
            } else {
                Sign::Subtract
            };
            apply_mask(&mut vector, &pair, sign);
        }
        Ok(MaskedInput { vector, clipped })
    }

    /// Unmask: seed shares of the survivors, mask-key shares of the
    /// dropouts. Answered once per round; a request naming a peer both
    /// alive and dropped, naming this hospital dropped, or leaving fewer
    /// than `threshold` survivors among its holders is refused.
    pub fn unmask(&mut self, request: &UnmaskRequest) -> Result<UnmaskAnswer> {
        if self.stage != Stage::InputSent {
            let second = self.stage == Stage::Done;
            self.end();
            return Err(SecAggError::Protocol(if second {
                "a second unmask request in the same round (or one after this hospital left the round); refused".into()
            } else {
                "an unmask request before this hospital sent its masked input; refused".into()
            }));
        }
        let answer = self.try_unmask(request);
        self.end();
        answer
    }

    fn try_unmask(&self, request: &UnmaskRequest) -> Result<UnmaskAnswer> {
        if let Some(both) = request.survivors.intersection(&request.dropped).next() {
            return Err(SecAggError::Tampered(format!(
                "the unmask request names '{both}' both alive and dropped"
            )));
        }
        if request.survivors.len() < self.summed_with() {
            return Err(SecAggError::Abort(format!(
                "only {} hospitals survive, fewer than the {} this hospital's input may be summed with",
                request.survivors.len(),
                self.summed_with()
            )));
        }
        if !request.survivors.contains(&self.me) {
            return Err(SecAggError::Tampered(
                "the unmask request does not count this hospital's own masked input".into(),
            ));
        }
        // A survivor among its neighbours must be one whose shares it holds.
        if let Some(stranger) = request.survivors.iter().find(|s| {
            !self.held.contains_key(*s) && self.graph.as_ref().is_some_and(|g| g.are_neighbours(&self.me, s))
        }) {
            return Err(SecAggError::Tampered(format!(
                "the unmask request counts '{stranger}' as a survivor, but its shares never reached this hospital"
            )));
        }
        let alive = request
            .survivors
            .iter()
            .filter(|s| self.held.contains_key(*s))
            .count();
        if alive < self.plan.threshold {
            return Err(SecAggError::Abort(format!(
                "only {alive} of this hospital's share holders survive, fewer than the threshold {}",
                self.plan.threshold
            )));
        }
        let mut answer = UnmaskAnswer {
            seed_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
        };
        for (owner, held) in &self.held {
            if request.survivors.contains(owner) {
                answer.seed_shares.insert(owner.clone(), held.seed.to_vec());
            } else if request.dropped.contains(owner) {
                answer.key_shares.insert(owner.clone(), held.key.to_vec());
            }
        }
        Ok(answer)
    }
}
