//! The primitives, from maintained crates: X25519 key agreement
//! (`x25519-dalek`; non-contributory shared secrets are refused),
//! HKDF-SHA256 for every derived key and seed, ChaCha20-Poly1305 for the
//! shares in transit, SHA-256 for commitments. Every derivation is bound to
//! the round's context and to the ordered pair of hospitals it serves.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::bytes::put;
use super::{RoundContext, SecAggError};

/// Signs a hospital's setup keys with its node identity (its mutual-TLS
/// key), so that peers can tell its keys from ones a coordinator made up.
pub trait KeySigner: Send + Sync {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// Checks a peer's setup-key signature against that peer's identity.
pub trait KeyVerifier: Send + Sync {
    fn verify(&self, hospital: &str, message: &[u8], signature: &[u8]) -> Result<(), String>;
}

/// What a hospital signs: the context, its name and both public keys.
pub fn signed_keys_message(
    ctx: &RoundContext,
    hospital: &str,
    cipher: &[u8; 32],
    mask: &[u8; 32],
) -> Vec<u8> {
    let mut m = ctx.encode();
    put(&mut m, b"setup-keys");
    put(&mut m, hospital.as_bytes());
    put(&mut m, cipher);
    put(&mut m, mask);
    m
}

/// A fresh secret from 32 random bytes.
pub fn secret_from(bytes: [u8; 32]) -> StaticSecret {
    StaticSecret::from(bytes)
}

/// X25519 agreement, refusing a peer key of low order (which would give
/// everyone the same "shared" secret).
pub fn agree(
    secret: &StaticSecret,
    peer: &[u8; 32],
    whose: &str,
) -> Result<Zeroizing<[u8; 32]>, SecAggError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    if !shared.was_contributory() {
        return Err(SecAggError::Tampered(format!(
            "the public key of '{whose}' is of low order (a non-contributory key agreement)"
        )));
    }
    Ok(Zeroizing::new(*shared.as_bytes()))
}

fn derive(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
    if Hkdf::<Sha256>::new(None, ikm).expand(info, okm.as_mut()).is_err() {
        unreachable!("HKDF-SHA256 expands 32 bytes");
    }
    okm
}

/// The seed of the pairwise mask between `a` and `b`: the same from both
/// sides (the pair is ordered before it is bound).
pub fn pairwise_seed(shared: &[u8; 32], ctx: &RoundContext, a: &str, b: &str) -> Zeroizing<[u8; 32]> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut info = ctx.encode();
    put(&mut info, b"pairwise-mask");
    put(&mut info, lo.as_bytes());
    put(&mut info, hi.as_bytes());
    derive(shared, &info)
}

/// The associated data of a share ciphertext: context, sender, recipient.
fn share_ad(ctx: &RoundContext, sender: &str, recipient: &str) -> Vec<u8> {
    let mut ad = ctx.encode();
    put(&mut ad, b"shares");
    put(&mut ad, sender.as_bytes());
    put(&mut ad, recipient.as_bytes());
    ad
}

/// The key of the one ciphertext `sender` sends `recipient` this round:
/// direction-bound, so a fixed nonce is never reused under one key.
fn share_key(shared: &[u8; 32], ad: &[u8]) -> Zeroizing<[u8; 32]> {
    derive(shared, ad)
}

pub fn seal_shares(
    shared: &[u8; 32],
    ctx: &RoundContext,
    sender: &str,
    recipient: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, SecAggError> {
    let ad = share_ad(ctx, sender, recipient);
    let key = share_key(shared, &ad);
    let cipher = ChaCha20Poly1305::new_from_slice(key.as_ref())
        .map_err(|_| SecAggError::Invalid("share key of the wrong length".into()))?;
    cipher
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: plaintext,
                aad: &ad,
            },
        )
        .map_err(|_| SecAggError::Invalid("cannot encrypt a share".into()))
}

pub fn open_shares(
    shared: &[u8; 32],
    ctx: &RoundContext,
    sender: &str,
    recipient: &str,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SecAggError> {
    let ad = share_ad(ctx, sender, recipient);
    let key = share_key(shared, &ad);
    let cipher = ChaCha20Poly1305::new_from_slice(key.as_ref())
        .map_err(|_| SecAggError::Invalid("share key of the wrong length".into()))?;
    cipher
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: ciphertext,
                aad: &ad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| {
            SecAggError::Tampered(format!(
                "the shares from '{sender}' do not decrypt: tampered with, or not from '{sender}'"
            ))
        })
}

/// The commitment to a hospital's self-mask seed, published in share keys
/// so that a seed rebuilt from corrupted shares is detected.
pub fn seed_commitment(ctx: &RoundContext, hospital: &str, seed: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ctx.encode());
    h.update(b"seed-commitment");
    h.update((hospital.len() as u32).to_le_bytes());
    h.update(hospital.as_bytes());
    h.update(seed);
    h.finalize().into()
}

/// The public key of a mask secret: what a rebuilt mask key must match.
pub fn public_of(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RoundContext {
        RoundContext {
            task: "t".into(),
            run: 1,
            round: 2,
            attempt: 0,
        }
    }

    #[test]
    fn shares_open_only_for_their_direction_and_round() {
        let (a, b) = (secret_from([1; 32]), secret_from([2; 32]));
        let ab = agree(&a, &public_of(&b), "b").unwrap();
        let ba = agree(&b, &public_of(&a), "a").unwrap();
        assert_eq!(*ab, *ba);
        let ct = seal_shares(&ab, &ctx(), "a", "b", b"secret").unwrap();
        assert_eq!(
            open_shares(&ba, &ctx(), "a", "b", &ct).unwrap().as_slice(),
            b"secret"
        );
        // The reverse direction, another round, or a flipped bit: refused.
        assert!(open_shares(&ba, &ctx(), "b", "a", &ct).is_err());
        let later = RoundContext { round: 3, ..ctx() };
        assert!(open_shares(&ba, &later, "a", "b", &ct).is_err());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(matches!(
            open_shares(&ba, &ctx(), "a", "b", &bad),
            Err(SecAggError::Tampered(_))
        ));
    }

    #[test]
    fn low_order_keys_and_symmetric_pair_seeds() {
        let a = secret_from([1; 32]);
        assert!(matches!(agree(&a, &[0; 32], "x"), Err(SecAggError::Tampered(_))));
        let shared = [9u8; 32];
        assert_eq!(
            *pairwise_seed(&shared, &ctx(), "a", "b"),
            *pairwise_seed(&shared, &ctx(), "b", "a")
        );
        assert_ne!(
            *pairwise_seed(&shared, &ctx(), "a", "b"),
            *pairwise_seed(&shared, &ctx(), "a", "c")
        );
    }
}
