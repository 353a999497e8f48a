//! The protocol end to end, in one process: a coordinator (`Server`) and K
//! hospitals (`Client`), with hospitals dropping out at each stage.

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Setup,
    ShareKeys,
    MaskedInput,
    Unmask,
}

const DIMS: usize = 257;

fn names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("hospital-{i:03}")).collect()
}

fn ctx() -> RoundContext {
    RoundContext {
        task: "breast_cancer".into(),
        run: 3,
        round: 7,
        attempt: 0,
    }
}

fn plan(k: usize) -> RoundPlan {
    let num_shares = RoundPlan::default_num_shares(k);
    RoundPlan {
        num_shares,
        threshold: RoundPlan::default_threshold(num_shares),
        clipping_range: 4.0,
        quantization_bits: 22,
        min_inputs: 3,
        graph_seed: 11,
    }
}

/// Each hospital's update (values within the range) and sample count.
fn inputs(k: usize) -> BTreeMap<String, (Vec<f32>, u64)> {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    names(k)
        .into_iter()
        .map(|name| {
            let values = (0..DIMS)
                .map(|_| rand::Rng::random_range(&mut rng, -3.0f32..3.0))
                .collect();
            let count = rand::Rng::random_range(&mut rng, 20u64..200);
            (name, (values, count))
        })
        .collect()
}

/// The exact weighted FedAvg of `who`'s inputs.
fn fedavg(inputs: &BTreeMap<String, (Vec<f32>, u64)>, who: &[String]) -> Vec<f64> {
    let total: u64 = who.iter().map(|h| inputs[h].1).sum();
    (0..DIMS)
        .map(|i| {
            who.iter()
                .map(|h| f64::from(inputs[h].0[i]) * inputs[h].1 as f64)
                .sum::<f64>()
                / total as f64
        })
        .collect()
}

fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    diff / norm
}

const MAX_WEIGHT: u64 = 256;

type Edit<M> = Option<Box<dyn Fn(&str, &mut M)>>;

/// Messages in flight, so that tests can tamper with them.
#[derive(Default)]
struct Tamper {
    /// Change what one hospital receives in masked input.
    masked_request: Edit<MaskedInputRequest>,
    /// Change one unmask answer.
    unmask_answer: Edit<UnmaskAnswer>,
}

/// One round over `k` hospitals where `drops` stop answering at the given
/// stage. Returns the sum, or the first refusal (hospital refusals are
/// turned into errors naming the hospital).
fn round(k: usize, plan: RoundPlan, drops: &[(usize, Stage)], tamper: &Tamper) -> Result<SecureSum> {
    let inputs = inputs(k);
    let counted = |name: &str| {
        let (values, count) = &inputs[name];
        let weighting = Weighting::Counted {
            count: *count,
            max_weight: MAX_WEIGHT,
        };
        (values.clone(), weighting)
    };
    round_of(k, plan, drops, tamper, DIMS, true, &counted)
}

/// `round` with each hospital's input (and weighting) from `input_of`.
fn round_of(
    k: usize,
    plan: RoundPlan,
    drops: &[(usize, Stage)],
    tamper: &Tamper,
    dims: usize,
    counted: bool,
    input_of: &dyn Fn(&str) -> (Vec<f32>, Weighting),
) -> Result<SecureSum> {
    let names = names(k);
    let dropped_at = |name: &str, stage: Stage| drops.iter().any(|(i, s)| names[*i] == name && *s == stage);
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let mut server = Server::new(ctx(), plan, dims, counted)?;
    let mut clients = BTreeMap::new();
    for name in &names {
        if dropped_at(name, Stage::Setup) {
            continue;
        }
        let (client, keys) = Client::setup(name, ctx(), plan, &mut rng, None)?;
        server.add_keys(name, keys)?;
        clients.insert(name.clone(), client);
    }
    let request = server.close_setup()?;
    for (name, client) in clients.iter_mut() {
        if dropped_at(name, Stage::ShareKeys) {
            continue;
        }
        let answer = client.share_keys(&request, None, &mut rng)?;
        server.add_shares(name, answer)?;
    }
    let requests = server.close_share_keys()?;
    for (name, mut request) in requests {
        if dropped_at(&name, Stage::MaskedInput) {
            continue;
        }
        if let Some(f) = &tamper.masked_request {
            f(&name, &mut request);
        }
        let client = clients.get_mut(&name).expect("asked hospitals exist");
        client.accept_shares(&request)?;
        let (values, weighting) = input_of(&name);
        let masked = client.mask(&values, weighting, &mut rng)?;
        server.add_masked(&name, masked.vector)?;
    }
    let unmask = server.close_masked_input()?;
    for name in &unmask.survivors {
        if dropped_at(name, Stage::Unmask) {
            continue;
        }
        let client = clients.get_mut(name).expect("survivors exist");
        let mut answer = client.unmask(&unmask)?;
        if let Some(f) = &tamper.unmask_answer {
            f(name, &mut answer);
        }
        server.add_unmask(name, answer)?;
    }
    server.finish()
}

fn check_mean(sum: &SecureSum, k: usize, expected_inputs: &[String]) {
    assert_eq!(sum.inputs, expected_inputs);
    let inputs = inputs(k);
    let total: u64 = expected_inputs.iter().map(|h| inputs[h].1).sum();
    assert_eq!(sum.weight, total);
    let got = sum.weighted_mean(MAX_WEIGHT).unwrap();
    let error = relative_error(&got, &fedavg(&inputs, expected_inputs));
    assert!(error <= 1e-4, "relative error {error:e}");
}

#[test]
fn five_hospitals_without_dropouts_sum_to_weighted_fedavg() {
    let sum = round(5, plan(5), &[], &Tamper::default()).unwrap();
    check_mean(&sum, 5, &names(5));
}

#[test]
fn one_dropout_at_each_stage_completes_over_the_survivors() {
    for stage in [Stage::Setup, Stage::ShareKeys, Stage::MaskedInput, Stage::Unmask] {
        let sum = round(5, plan(5), &[(2, stage)], &Tamper::default())
            .unwrap_or_else(|e| panic!("dropout at {stage:?}: {e}"));
        let mut counted = names(5);
        if stage != Stage::Unmask {
            // Its input is lost; during unmask it still counts.
            counted.remove(2);
        }
        check_mean(&sum, 5, &counted);
    }
}

#[test]
fn a_hundred_hospitals_use_a_sparse_graph_and_survive_dropouts() {
    let p = plan(100);
    assert_eq!(p.num_shares, 15);
    let drops = [
        (3, Stage::ShareKeys),
        (40, Stage::MaskedInput),
        (77, Stage::Unmask),
    ];
    let sum = round(100, p, &drops, &Tamper::default()).unwrap();
    let counted: Vec<String> = names(100)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 40)
        .map(|(_, n)| n)
        .collect();
    check_mean(&sum, 100, &counted);
}

#[test]
fn too_many_dropouts_abort_before_anything_is_unmasked() {
    // Three of five gone before their inputs: below the three inputs a sum needs.
    let drops = [
        (0, Stage::MaskedInput),
        (1, Stage::MaskedInput),
        (2, Stage::MaskedInput),
    ];
    let err = round(5, plan(5), &drops, &Tamper::default()).unwrap_err();
    assert!(matches!(err, SecAggError::Abort(_)), "{err}");
    // Three of five gone during unmask: two answers, below the threshold of 3.
    let drops = [(0, Stage::Unmask), (1, Stage::Unmask), (2, Stage::Unmask)];
    let err = round(5, plan(5), &drops, &Tamper::default()).unwrap_err();
    assert!(matches!(err, SecAggError::Abort(_)), "{err}");
    assert!(err.to_string().contains("shares of the seed"), "{err}");
}

/// Every one of `names` through setup and share keys, unsigned: the
/// coordinator ready to close share keys.
fn through_share_keys(
    names: &[String],
    p: RoundPlan,
    dims: usize,
    rng: &mut ChaCha20Rng,
) -> (Server, BTreeMap<String, Client>) {
    let mut server = Server::new(ctx(), p, dims, true).unwrap();
    let mut clients = BTreeMap::new();
    for name in names {
        let (client, keys) = Client::setup(name, ctx(), p, rng, None).unwrap();
        server.add_keys(name, keys).unwrap();
        clients.insert(name.clone(), client);
    }
    let request = server.close_setup().unwrap();
    for (name, client) in clients.iter_mut() {
        server
            .add_shares(name, client.share_keys(&request, None, rng).unwrap())
            .unwrap();
    }
    (server, clients)
}

#[test]
fn a_lone_masked_vector_is_uniform() {
    // The coordinator's view of one hospital: its masked vector. Its input
    // here is all zeros (the most structured input there is); what arrives
    // must be indistinguishable from uniform words. Chi-square over the top
    // byte and over the bottom byte, 255 degrees of freedom each: the
    // 99.9th percentile is 330.5.
    let k = 5;
    let p = plan(k);
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let names = names(k);
    let (mut server, mut clients) = through_share_keys(&names, p, 200_000, &mut rng);
    let requests = server.close_share_keys().unwrap();
    let first = &names[0];
    let client = clients.get_mut(first).unwrap();
    client.accept_shares(&requests[first]).unwrap();
    let zeros = vec![0.0f32; 200_000];
    let masked = client.mask(&zeros, Weighting::Unweighted, &mut rng).unwrap();
    let chi_square = |bucket: &dyn Fn(u32) -> usize| {
        let mut counts = [0f64; 256];
        for &w in &masked.vector {
            counts[bucket(w)] += 1.0;
        }
        let expected = masked.vector.len() as f64 / 256.0;
        counts
            .iter()
            .map(|c| (c - expected).powi(2) / expected)
            .sum::<f64>()
    };
    let top = chi_square(&|w| (w >> 24) as usize);
    let bottom = chi_square(&|w| (w & 0xff) as usize);
    assert!(
        top < 330.5 && bottom < 330.5,
        "chi-square top {top:.1}, bottom {bottom:.1}"
    );
    // The same statistic on the unmasked quantised zeros is enormous.
    let (plain, _) = Quantizer::new(p.clipping_range, p.quantization_bits)
        .unwrap()
        .quantize(&zeros, Weighting::Unweighted, &mut rng)
        .unwrap();
    let mut counts = [0f64; 256];
    for &w in &plain {
        counts[(w >> 24) as usize] += 1.0;
    }
    assert!(counts.iter().filter(|c| **c > 0.0).count() <= 2);
}

#[test]
fn a_request_naming_a_peer_alive_and_dropped_is_refused() {
    let k = 5;
    let p = plan(k);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let names = names(k);
    let (mut server, mut clients) = through_share_keys(&names, p, 4, &mut rng);
    for (name, request) in server.close_share_keys().unwrap() {
        let client = clients.get_mut(&name).unwrap();
        client.accept_shares(&request).unwrap();
        let w = Weighting::Counted {
            count: 10,
            max_weight: 100,
        };
        server
            .add_masked(&name, client.mask(&[0.5; 4], w, &mut rng).unwrap().vector)
            .unwrap();
    }
    let honest = server.close_masked_input().unwrap();
    // Naming hospital-001 both alive and dropped would get both its seed
    // and its mask key: refused.
    let mut lying = honest.clone();
    lying.dropped.insert(names[1].clone());
    let err = clients.get_mut(&names[0]).unwrap().unmask(&lying).unwrap_err();
    assert!(
        matches!(err, SecAggError::Tampered(_)) && err.to_string().contains("both alive and dropped"),
        "{err}"
    );
    // A hospital answers once per round: after a refusal, even an honest request is refused.
    let err = clients.get_mut(&names[0]).unwrap().unmask(&honest).unwrap_err();
    assert!(err.to_string().contains("second unmask request"), "{err}");
    // A second request after an honest answer is refused too.
    let client = clients.get_mut(&names[1]).unwrap();
    client.unmask(&honest).unwrap();
    assert!(client
        .unmask(&honest)
        .unwrap_err()
        .to_string()
        .contains("second unmask request"));
    // Naming the hospital itself dropped, or leaving fewer than t survivors: refused.
    let mut without_me = honest.clone();
    without_me.survivors.remove(&names[2]);
    without_me.dropped.insert(names[2].clone());
    assert!(clients.get_mut(&names[2]).unwrap().unmask(&without_me).is_err());
    let few = UnmaskRequest {
        survivors: BTreeSet::from([names[3].clone(), names[4].clone()]),
        dropped: BTreeSet::new(),
    };
    let err = clients.get_mut(&names[3]).unwrap().unmask(&few).unwrap_err();
    assert!(matches!(err, SecAggError::Abort(_)), "{err}");
}

/// The round with `tamper` applied is refused as tampered, saying `why`.
fn assert_tampered(tamper: &Tamper, drops: &[(usize, Stage)], why: &str) {
    let err = round(5, plan(5), drops, tamper).unwrap_err();
    assert!(
        matches!(err, SecAggError::Tampered(_)) && err.to_string().contains(why),
        "{err}"
    );
}

#[test]
fn a_corrupted_share_is_detected() {
    let tamper = Tamper {
        unmask_answer: Some(Box::new(|from, answer| {
            if from == "hospital-001" {
                if let Some(share) = answer.seed_shares.get_mut("hospital-000") {
                    share[10] ^= 0x40;
                }
            }
        })),
        ..Tamper::default()
    };
    assert_tampered(&tamper, &[], "commitment");
}

#[test]
fn a_corrupted_mask_key_share_is_detected() {
    let tamper = Tamper {
        unmask_answer: Some(Box::new(|from, answer| {
            if from == "hospital-001" {
                if let Some(share) = answer.key_shares.get_mut("hospital-004") {
                    share[3] ^= 1;
                }
            }
        })),
        ..Tamper::default()
    };
    assert_tampered(&tamper, &[(4, Stage::MaskedInput)], "public key");
}

#[test]
fn a_tampered_ciphertext_is_refused() {
    let tamper = Tamper {
        masked_request: Some(Box::new(|to, request| {
            if to == "hospital-002" {
                if let Some(ct) = request.ciphertexts.get_mut("hospital-000") {
                    ct[0] ^= 1;
                }
            }
        })),
        ..Tamper::default()
    };
    assert_tampered(&tamper, &[], "do not decrypt");
}

#[test]
fn shares_relabelled_with_another_sender_are_refused() {
    let tamper = Tamper {
        masked_request: Some(Box::new(|to, request| {
            if to == "hospital-002" {
                // hospital-000's ciphertext delivered as if from hospital-001.
                let ct = request.ciphertexts["hospital-000"].clone();
                request.ciphertexts.insert("hospital-001".into(), ct);
            }
        })),
        ..Tamper::default()
    };
    assert_tampered(&tamper, &[], "not from 'hospital-001'");
}

/// A stand-in for node identities: hospital `h` signs with sha256(h || m).
struct TestIdentity {
    me: String,
}

impl KeySigner for TestIdentity {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, String> {
        Ok(Sha256::new()
            .chain_update(self.me.as_bytes())
            .chain_update(message)
            .finalize()
            .to_vec())
    }
}

struct TestVerifier;

impl KeyVerifier for TestVerifier {
    fn verify(&self, hospital: &str, message: &[u8], signature: &[u8]) -> std::result::Result<(), String> {
        let expected = TestIdentity { me: hospital.into() }.sign(message)?;
        if expected == signature {
            Ok(())
        } else {
            Err("signature does not verify".into())
        }
    }
}

#[test]
fn substituted_keys_are_refused_when_keys_are_signed() {
    let k = 4;
    let p = plan(k);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let names = names(k);
    let mut server = Server::new(ctx(), p, 4, true).unwrap();
    let mut clients = BTreeMap::new();
    for name in &names {
        let signer = TestIdentity { me: name.clone() };
        let (client, keys) = Client::setup(name, ctx(), p, &mut rng, Some(&signer)).unwrap();
        server.add_keys(name, keys).unwrap();
        clients.insert(name.clone(), client);
    }
    let request = server.close_setup().unwrap();
    // Honest relay: signatures verify.
    clients
        .get_mut(&names[0])
        .unwrap()
        .share_keys(&request, Some(&TestVerifier), &mut rng)
        .unwrap();
    // A coordinator that swaps hospital-002's mask key for its own is caught.
    let (_, forged) = Client::setup("coordinator", ctx(), p, &mut rng, None).unwrap();
    let mut swapped = request.clone();
    swapped.keys.get_mut(&names[2]).unwrap().mask = forged.mask;
    let err = clients
        .get_mut(&names[1])
        .unwrap()
        .share_keys(&swapped, Some(&TestVerifier), &mut rng)
        .unwrap_err();
    assert!(
        matches!(err, SecAggError::Tampered(_)) && err.to_string().contains("hospital-002"),
        "{err}"
    );
    // Unsigned keys are refused where signatures are required.
    let mut unsigned = request.clone();
    unsigned.keys.get_mut(&names[3]).unwrap().signature.clear();
    let err = clients
        .get_mut(&names[2])
        .unwrap()
        .share_keys(&unsigned, Some(&TestVerifier), &mut rng)
        .unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    // A request without this hospital's own keys is refused.
    let mut missing = request;
    missing.keys.remove(&names[3]);
    assert!(clients
        .get_mut(&names[3])
        .unwrap()
        .share_keys(&missing, None, &mut rng)
        .is_err());
}

#[test]
fn stages_out_of_order_are_refused() {
    let p = plan(5);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (mut client, _) = Client::setup("a", ctx(), p, &mut rng, None).unwrap();
    let err = client
        .accept_shares(&MaskedInputRequest {
            ciphertexts: BTreeMap::new(),
        })
        .unwrap_err();
    assert!(matches!(err, SecAggError::Protocol(_)), "{err}");
    let mut server = Server::new(ctx(), p, 3, true).unwrap();
    assert!(server.add_masked("a", vec![0; 4]).is_err());
    assert!(matches!(server.close_setup(), Err(SecAggError::Abort(_))));
}

#[test]
fn plans_that_cannot_work_are_refused_by_name() {
    let ok = plan(5);
    ok.validate(5).unwrap();
    let overflow = RoundPlan {
        quantization_bits: 30,
        ..ok
    };
    assert!(overflow
        .validate(5)
        .unwrap_err()
        .to_string()
        .contains("overflow the ring"));
    let threshold = RoundPlan { threshold: 6, ..ok };
    assert!(threshold
        .validate(5)
        .unwrap_err()
        .to_string()
        .contains("threshold"));
    let two = RoundPlan { min_inputs: 2, ..ok };
    assert!(two
        .validate(5)
        .unwrap_err()
        .to_string()
        .contains("at least 3 inputs"));
    let range = RoundPlan {
        clipping_range: -1.0,
        ..ok
    };
    assert!(range
        .validate(5)
        .unwrap_err()
        .to_string()
        .contains("clipping_range"));
}

#[test]
fn messages_round_trip_through_json_with_hex_bytes() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (_, keys) = Client::setup("a", ctx(), plan(5), &mut rng, None).unwrap();
    let json = serde_json::to_string(&keys).unwrap();
    assert!(
        json.contains("\"cipher\":\"") && !json.contains("signature"),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<PublicKeys>(&json).unwrap(), keys);
    assert!(serde_json::from_str::<PublicKeys>(r#"{"cipher":"zz","mask":"00"}"#).is_err());
}

/// Distributed DP's invariant: each input carries a noise share of
/// standard deviation sigma * C / sqrt(k) and a sum is only ever unmasked
/// with at least k = min_inputs inputs, so every revealed sum carries at
/// least sigma * C. Over random dropout patterns: whatever is unmasked has
/// at least k inputs and (measured) at least that noise.
#[test]
fn every_revealed_sum_carries_at_least_the_full_noise() {
    use rand_distr::{Distribution, Normal};
    let (hospitals, k, dims) = (6, 4, 4000);
    let full_std = 1.0; // sigma * C
    let share = Normal::new(0.0, full_std / (k as f64).sqrt()).unwrap();
    let plan = RoundPlan {
        min_inputs: k,
        clipping_range: 8.0,
        ..plan(hospitals)
    };
    let stages = [Stage::Setup, Stage::ShareKeys, Stage::MaskedInput, Stage::Unmask];
    let mut pattern_rng = ChaCha20Rng::seed_from_u64(12);
    let (mut revealed, mut refused) = (0, 0);
    for _ in 0..12 {
        let mut drops: Vec<(usize, Stage)> = Vec::new();
        for h in 0..hospitals {
            if rand::Rng::random_bool(&mut pattern_rng, 0.3) {
                drops.push((h, stages[rand::Rng::random_range(&mut pattern_rng, 0..4)]));
            }
        }
        let noise_seed = rand::Rng::random::<u64>(&mut pattern_rng);
        let input_of = |name: &str| {
            let mut rng = ChaCha20Rng::seed_from_u64(noise_seed ^ crate::seed::derive(0, name, 0));
            let values = (0..dims).map(|_| share.sample(&mut rng) as f32).collect();
            (values, Weighting::Unweighted)
        };
        match round_of(
            hospitals,
            plan,
            &drops,
            &Tamper::default(),
            dims,
            false,
            &input_of,
        ) {
            Ok(sum) => {
                revealed += 1;
                assert!(sum.inputs.len() >= k, "unmasked with {} inputs", sum.inputs.len());
                let variance = sum.values.iter().map(|v| v * v).sum::<f64>() / dims as f64;
                let expected = sum.inputs.len() as f64 / k as f64 * full_std * full_std;
                assert!(variance >= 0.9 * full_std * full_std, "variance {variance}");
                assert!(
                    (variance / expected - 1.0).abs() < 0.1,
                    "variance {variance}, expected {expected}"
                );
            }
            Err(SecAggError::Abort(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // Both outcomes occurred.
    assert!(
        revealed > 0 && refused > 0,
        "revealed {revealed}, refused {refused}"
    );
}
