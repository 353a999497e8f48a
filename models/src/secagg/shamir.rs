//! Shamir t-of-n sharing of 32-byte secrets over GF(256), from `blahaj`
//! (the maintained fork of `sharks`, without RUSTSEC-2024-0398). A share is
//! 33 bytes: its x coordinate, then one y per secret byte.

use std::collections::BTreeMap;

use blahaj::{Share, Sharks};
use zeroize::Zeroizing;

use super::SecAggError;

pub const SHARE_LEN: usize = 33;

/// Split `secret` into one share per holder, `threshold` of which rebuild it.
pub fn split(
    secret: &[u8; 32],
    threshold: usize,
    holders: &[String],
) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, SecAggError> {
    let t = u8::try_from(threshold)
        .ok()
        .filter(|t| *t >= 1 && usize::from(*t) <= holders.len() && holders.len() <= 255)
        .ok_or_else(|| {
            SecAggError::Invalid(format!(
                "cannot share a secret {threshold}-of-{} (at most 255 holders, threshold at most the holders)",
                holders.len()
            ))
        })?;
    // The dealer draws its polynomial coefficients from the OS-seeded
    // thread generator of `rand` (a CSPRNG).
    let shares = Sharks(t).dealer(secret);
    Ok(holders
        .iter()
        .cloned()
        .zip(shares)
        .map(|(holder, share)| (holder, Zeroizing::new(Vec::from(&share))))
        .collect())
}

/// Rebuild a secret from at least `threshold` shares with distinct x.
pub fn recover(shares: &[&[u8]], threshold: usize, whose: &str) -> Result<Zeroizing<[u8; 32]>, SecAggError> {
    let mut by_x: BTreeMap<u8, Share> = BTreeMap::new();
    for bytes in shares {
        if bytes.len() != SHARE_LEN {
            return Err(SecAggError::Tampered(format!(
                "a share of '{whose}' has {} bytes, not {SHARE_LEN}",
                bytes.len()
            )));
        }
        let share = Share::try_from(*bytes)
            .map_err(|e| SecAggError::Tampered(format!("a share of '{whose}' is malformed: {e}")))?;
        match by_x.get(&bytes[0]) {
            Some(seen) if Vec::from(seen) != *bytes => {
                return Err(SecAggError::Tampered(format!(
                    "two different shares of '{whose}' claim the same point"
                )));
            }
            _ => {
                by_x.insert(bytes[0], share);
            }
        }
    }
    if by_x.len() < threshold {
        return Err(SecAggError::Abort(format!(
            "only {} of {threshold} shares of '{whose}' arrived",
            by_x.len()
        )));
    }
    let t = u8::try_from(threshold).map_err(|_| SecAggError::Invalid("threshold above 255".into()))?;
    let secret = Sharks(t)
        .recover(by_x.values())
        .map_err(|e| SecAggError::Abort(format!("cannot rebuild the secret of '{whose}': {e}")))?;
    let secret = Zeroizing::new(secret);
    let mut out = Zeroizing::new([0u8; 32]);
    if secret.len() != 32 {
        return Err(SecAggError::Tampered(format!(
            "the rebuilt secret of '{whose}' is not 32 bytes"
        )));
    }
    out.copy_from_slice(&secret);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("h{i}")).collect()
    }

    #[test]
    fn any_threshold_shares_rebuild_and_fewer_do_not() {
        let secret = [42u8; 32];
        let shares = split(&secret, 3, &holders(5)).unwrap();
        let all: Vec<&[u8]> = shares.values().map(|s| s.as_slice()).collect();
        for pick in [[0, 1, 2], [2, 3, 4], [0, 2, 4]] {
            let some: Vec<&[u8]> = pick.iter().map(|&i| all[i]).collect();
            assert_eq!(*recover(&some, 3, "x").unwrap(), secret);
        }
        assert!(matches!(recover(&all[..2], 3, "x"), Err(SecAggError::Abort(_))));
        // The same share twice is one share.
        assert!(matches!(
            recover(&[all[0], all[0], all[1]], 3, "x"),
            Err(SecAggError::Abort(_))
        ));
        assert!(split(&secret, 6, &holders(5)).is_err());
    }

    #[test]
    fn conflicting_or_malformed_shares_are_refused() {
        let shares = split(&[1u8; 32], 2, &holders(3)).unwrap();
        let all: Vec<Vec<u8>> = shares.values().map(|s| s.to_vec()).collect();
        let mut forged = all[0].clone();
        forged[5] ^= 1;
        assert!(matches!(
            recover(&[&all[0], &forged, &all[1]], 2, "x"),
            Err(SecAggError::Tampered(_))
        ));
        assert!(matches!(
            recover(&[&all[0][..10], &all[1]], 2, "x"),
            Err(SecAggError::Tampered(_))
        ));
        // A corrupted share that is not detected here rebuilds a different secret,
        // which the seed's commitment or the mask key's public key catches.
        assert_ne!(*recover(&[&forged, &all[1]], 2, "x").unwrap(), [1u8; 32]);
    }
}
