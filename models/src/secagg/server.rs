//! The coordinator's side of one secure-aggregation round: it routes the
//! encrypted shares, collects masked vectors, and unmasks only the sum.
//! Each `close_*` ends a stage with the hospitals that answered it, and
//! refuses to go on (an `Abort`) when the round could no longer finish
//! safely; `finish` checks that every reconstruction has its threshold of
//! shares before it rebuilds any secret, so an aborted round unmasks nothing.

use std::collections::{BTreeMap, BTreeSet};

use super::crypto::{agree, pairwise_seed, public_of, secret_from, seed_commitment};
use super::graph::Graph;
use super::messages::{
    MaskedInputRequest, PublicKeys, ShareKeysAnswer, ShareKeysRequest, UnmaskAnswer, UnmaskRequest,
};
use super::prg::{apply_mask, Sign};
use super::quantize::Quantizer;
use super::shamir;
use super::{Result, RoundContext, RoundPlan, SecAggError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Setup,
    ShareKeys,
    MaskedInput,
    Unmask,
    Done,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Setup => "setup",
            Stage::ShareKeys => "share keys",
            Stage::MaskedInput => "masked input",
            Stage::Unmask => "unmask",
            Stage::Done => "done",
        }
    }
}

/// The unmasked result of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct SecureSum {
    /// The hospitals whose inputs are in the sum.
    pub inputs: Vec<String>,
    /// The sum of element 0: the total count (counted inputs) or the number of inputs.
    pub weight: u64,
    /// The dequantised sum of the (weight-scaled, clipped) inputs.
    pub values: Vec<f64>,
}

impl SecureSum {
    /// The FedAvg mean of counted inputs: sum(count_u * x_u) / sum(count_u).
    pub fn weighted_mean(&self, max_weight: u64) -> Result<Vec<f64>> {
        if self.weight == 0 {
            return Err(SecAggError::Abort("the inputs' total weight is 0".into()));
        }
        let factor = max_weight as f64 / self.weight as f64;
        Ok(self.values.iter().map(|v| v * factor).collect())
    }
}

pub struct Server {
    ctx: RoundContext,
    plan: RoundPlan,
    quantizer: Quantizer,
    /// Length of the inputs (element 0 excluded).
    dims: usize,
    counted: bool,
    stage: Stage,
    keys: BTreeMap<String, PublicKeys>,
    graph: Option<Graph>,
    /// Ciphertexts by recipient, then sender.
    inbox: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    commitments: BTreeMap<String, [u8; 32]>,
    /// Hospitals asked for a masked input (U2).
    share_holders: BTreeSet<String>,
    masked: BTreeMap<String, Vec<u32>>,
    survivors: BTreeSet<String>,
    dropped: BTreeSet<String>,
    seed_shares: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    key_shares: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    unmasked_by: BTreeSet<String>,
}

impl Server {
    /// A round over inputs of `dims` values; `counted` when inputs carry
    /// their sample counts (FedAvg), else each input weighs 1.
    pub fn new(ctx: RoundContext, plan: RoundPlan, dims: usize, counted: bool) -> Result<Self> {
        let quantizer = Quantizer::new(plan.clipping_range, plan.quantization_bits)?;
        Ok(Self {
            ctx,
            plan,
            quantizer,
            dims,
            counted,
            stage: Stage::Setup,
            keys: BTreeMap::new(),
            graph: None,
            inbox: BTreeMap::new(),
            commitments: BTreeMap::new(),
            share_holders: BTreeSet::new(),
            masked: BTreeMap::new(),
            survivors: BTreeSet::new(),
            dropped: BTreeSet::new(),
            seed_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
            unmasked_by: BTreeSet::new(),
        })
    }

    pub fn plan(&self) -> &RoundPlan {
        &self.plan
    }

    pub fn context(&self) -> &RoundContext {
        &self.ctx
    }

    /// Hospitals that shared keys but sent no masked input (known once
    /// masked input closed): their masks are removed, their inputs lost.
    pub fn dropped(&self) -> usize {
        self.dropped.len()
    }

    fn expect(&self, stage: Stage, from: &str) -> Result<()> {
        if self.stage != stage {
            return Err(SecAggError::Protocol(format!(
                "a {} answer from '{from}' arrived during {}",
                stage.name(),
                self.stage.name()
            )));
        }
        Ok(())
    }

    fn enough(&self, have: usize, stage: &str) -> Result<()> {
        if have < self.plan.min_inputs {
            return Err(SecAggError::Abort(format!(
                "{have} hospitals completed {stage}, fewer than the {} a secure sum needs",
                self.plan.min_inputs
            )));
        }
        Ok(())
    }

    pub fn add_keys(&mut self, from: &str, keys: PublicKeys) -> Result<()> {
        self.expect(Stage::Setup, from)?;
        if self.keys.contains_key(from) {
            return Err(SecAggError::Protocol(format!(
                "a second setup answer from '{from}'"
            )));
        }
        if self
            .keys
            .values()
            .any(|k| k.cipher == keys.cipher || k.mask == keys.mask)
        {
            return Err(SecAggError::Tampered(format!(
                "'{from}' sent public keys another hospital already uses"
            )));
        }
        self.keys.insert(from.to_string(), keys);
        Ok(())
    }

    /// Close setup: everyone who sent keys (U1) gets all of U1's keys.
    pub fn close_setup(&mut self) -> Result<ShareKeysRequest> {
        self.expect(Stage::Setup, "the coordinator")?;
        self.enough(self.keys.len(), "setup")?;
        self.plan.validate(self.keys.len())?;
        self.graph = Some(Graph::build(
            self.keys.keys(),
            self.plan.num_shares,
            self.plan.graph_seed,
        ));
        self.stage = Stage::ShareKeys;
        Ok(ShareKeysRequest {
            keys: self.keys.clone(),
        })
    }

    fn graph(&self) -> Result<&Graph> {
        self.graph
            .as_ref()
            .ok_or_else(|| SecAggError::Protocol("the neighbour graph is not built yet".into()))
    }

    pub fn add_shares(&mut self, from: &str, answer: ShareKeysAnswer) -> Result<()> {
        self.expect(Stage::ShareKeys, from)?;
        let graph = self.graph()?;
        if !graph.contains(from) {
            return Err(SecAggError::Protocol(format!(
                "shares from '{from}', which did not complete setup"
            )));
        }
        if self.commitments.contains_key(from) {
            return Err(SecAggError::Protocol(format!(
                "a second share-keys answer from '{from}'"
            )));
        }
        let expected: BTreeSet<&String> = graph.neighbours(from).collect();
        let got: BTreeSet<&String> = answer.ciphertexts.keys().collect();
        if expected != got {
            return Err(SecAggError::Protocol(format!(
                "'{from}' sent shares to other hospitals than its neighbours"
            )));
        }
        for (to, ciphertext) in answer.ciphertexts {
            self.inbox
                .entry(to)
                .or_default()
                .insert(from.to_string(), ciphertext);
        }
        self.commitments.insert(from.to_string(), answer.seed_commitment);
        Ok(())
    }

    /// Close share keys: the hospitals that shared (U2), less any whose
    /// secrets too few of U2 hold (they could not be unmasked if they
    /// dropped later), each with the ciphertexts U2 sent it.
    pub fn close_share_keys(&mut self) -> Result<BTreeMap<String, MaskedInputRequest>> {
        self.expect(Stage::ShareKeys, "the coordinator")?;
        let graph = self.graph()?.clone();
        let mut holders: BTreeSet<String> = self.commitments.keys().cloned().collect();
        loop {
            let short: Vec<String> = holders
                .iter()
                .filter(|h| {
                    graph.holders(h).iter().filter(|x| holders.contains(*x)).count() < self.plan.threshold
                })
                .cloned()
                .collect();
            if short.is_empty() {
                break;
            }
            for h in short {
                holders.remove(&h);
            }
        }
        self.enough(holders.len(), "share keys")?;
        let requests = holders
            .iter()
            .map(|to| {
                let ciphertexts = self
                    .inbox
                    .get(to)
                    .into_iter()
                    .flatten()
                    .filter(|(from, _)| holders.contains(*from))
                    .map(|(from, ct)| (from.clone(), ct.clone()))
                    .collect();
                (to.clone(), MaskedInputRequest { ciphertexts })
            })
            .collect();
        self.inbox.clear();
        self.share_holders = holders;
        self.stage = Stage::MaskedInput;
        Ok(requests)
    }

    pub fn add_masked(&mut self, from: &str, vector: Vec<u32>) -> Result<()> {
        self.expect(Stage::MaskedInput, from)?;
        if !self.share_holders.contains(from) {
            return Err(SecAggError::Protocol(format!(
                "a masked input from '{from}', which was not asked for one"
            )));
        }
        if vector.len() != self.dims + 1 {
            return Err(SecAggError::Protocol(format!(
                "the masked input from '{from}' has {} values, not {}",
                vector.len(),
                self.dims + 1
            )));
        }
        if self.masked.contains_key(from) {
            return Err(SecAggError::Protocol(format!(
                "a second masked input from '{from}'"
            )));
        }
        self.masked.insert(from.to_string(), vector);
        Ok(())
    }

    /// Close masked input: survivors (U3) and dropouts (U2 less U3).
    /// Aborts, before any share is asked for, when too few inputs arrived
    /// or a secret it will need could not get `threshold` shares from the
    /// survivors.
    pub fn close_masked_input(&mut self) -> Result<UnmaskRequest> {
        self.expect(Stage::MaskedInput, "the coordinator")?;
        self.enough(self.masked.len(), "masked input")?;
        let survivors: BTreeSet<String> = self.masked.keys().cloned().collect();
        let dropped: BTreeSet<String> = self.share_holders.difference(&survivors).cloned().collect();
        let graph = self.graph()?;
        for whose in survivors.iter().chain(&dropped) {
            let alive = graph
                .holders(whose)
                .iter()
                .filter(|h| survivors.contains(*h))
                .count();
            if alive < self.plan.threshold {
                return Err(SecAggError::Abort(format!(
                    "only {alive} holders of the secrets of '{whose}' survive, fewer than the threshold {}",
                    self.plan.threshold
                )));
            }
        }
        self.survivors = survivors.clone();
        self.dropped = dropped.clone();
        self.stage = Stage::Unmask;
        Ok(UnmaskRequest { survivors, dropped })
    }

    pub fn add_unmask(&mut self, from: &str, answer: UnmaskAnswer) -> Result<()> {
        self.expect(Stage::Unmask, from)?;
        if !self.survivors.contains(from) {
            return Err(SecAggError::Protocol(format!(
                "unmask shares from '{from}', which is not a survivor"
            )));
        }
        if !self.unmasked_by.insert(from.to_string()) {
            return Err(SecAggError::Protocol(format!(
                "a second unmask answer from '{from}'"
            )));
        }
        let graph = self.graph()?;
        for (owner, _) in answer.seed_shares.iter().chain(&answer.key_shares) {
            if !graph.holders(owner).contains(&from.to_string()) {
                return Err(SecAggError::Protocol(format!(
                    "'{from}' sent a share of '{owner}', which it does not hold"
                )));
            }
        }
        if let Some(o) = answer.seed_shares.keys().find(|o| !self.survivors.contains(*o)) {
            return Err(SecAggError::Protocol(format!(
                "'{from}' sent a seed share of '{o}', which dropped"
            )));
        }
        if let Some(o) = answer.key_shares.keys().find(|o| !self.dropped.contains(*o)) {
            return Err(SecAggError::Protocol(format!(
                "'{from}' sent a mask-key share of '{o}', which did not drop"
            )));
        }
        for (owner, share) in answer.seed_shares {
            self.seed_shares
                .entry(owner)
                .or_default()
                .insert(from.to_string(), share);
        }
        for (owner, share) in answer.key_shares {
            self.key_shares
                .entry(owner)
                .or_default()
                .insert(from.to_string(), share);
        }
        Ok(())
    }

    /// Unmask the sum, or abort having rebuilt nothing.
    pub fn finish(&mut self) -> Result<SecureSum> {
        self.expect(Stage::Unmask, "the coordinator")?;
        self.stage = Stage::Done;
        let t = self.plan.threshold;
        let count = |m: &BTreeMap<String, BTreeMap<String, Vec<u8>>>, whose: &str| {
            m.get(whose).map_or(0, |s| s.len())
        };
        for u in &self.survivors {
            if count(&self.seed_shares, u) < t {
                return Err(SecAggError::Abort(format!(
                    "{} of {t} shares of the seed of '{u}' arrived",
                    count(&self.seed_shares, u)
                )));
            }
        }
        for v in &self.dropped {
            if count(&self.key_shares, v) < t {
                return Err(SecAggError::Abort(format!(
                    "{} of {t} shares of the mask key of '{v}' arrived",
                    count(&self.key_shares, v)
                )));
            }
        }
        let mut sum = vec![0u32; self.dims + 1];
        for vector in self.masked.values() {
            for (s, v) in sum.iter_mut().zip(vector) {
                *s = s.wrapping_add(*v);
            }
        }
        for u in &self.survivors {
            let shares: Vec<&[u8]> = self.seed_shares[u].values().map(Vec::as_slice).collect();
            let seed = shamir::recover(&shares, t, u)?;
            if seed_commitment(&self.ctx, u, &seed) != self.commitments[u] {
                return Err(SecAggError::Tampered(format!(
                    "the seed rebuilt for '{u}' does not match its commitment: a share was corrupted"
                )));
            }
            apply_mask(&mut sum, &seed, Sign::Subtract);
        }
        let graph = self.graph()?.clone();
        for v in &self.dropped {
            let shares: Vec<&[u8]> = self.key_shares[v].values().map(Vec::as_slice).collect();
            let secret = secret_from(*shamir::recover(&shares, t, v)?);
            if public_of(&secret) != self.keys[v].mask {
                return Err(SecAggError::Tampered(format!(
                    "the mask key rebuilt for '{v}' does not match its public key: a share was corrupted"
                )));
            }
            for u in graph.neighbours(v).filter(|u| self.survivors.contains(*u)) {
                let shared = agree(&secret, &self.keys[u].mask, u)?;
                let pair = pairwise_seed(&shared, &self.ctx, u, v);
                // `u` added this mask if it sorts above `v`: undo what it did.
                let sign = if u.as_str() > v.as_str() {
                    Sign::Subtract
                } else {
                    Sign::Add
                };
                apply_mask(&mut sum, &pair, sign);
            }
        }
        let inputs = self.survivors.len();
        if !self.counted && sum[0] as usize != inputs {
            return Err(SecAggError::Tampered(format!(
                "the unmasked sum counts {} inputs, not {inputs}: a mask was not removed",
                sum[0]
            )));
        }
        self.seed_shares.clear();
        self.key_shares.clear();
        Ok(SecureSum {
            inputs: self.survivors.iter().cloned().collect(),
            weight: u64::from(sum[0]),
            values: sum[1..]
                .iter()
                .map(|&s| self.quantizer.dequantize_sum(s, inputs))
                .collect(),
        })
    }
}
