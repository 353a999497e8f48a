//! Mutations of a valid input: bit flips, byte edits, inserted and deleted
//! runs, duplicated and spliced ranges, boundary integers, and tokens of
//! the input's own syntax (JSON, TOML, CSV), a few at a time.

use rand::{Rng, RngCore};

/// Largest input a mutation may grow to.
pub const MAX_INPUT: usize = 1 << 20;

const INTERESTING_U32: [u32; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

/// Mutate `input` in place with 1 to 4 operations, using `dictionary`
/// tokens and `others` (the rest of the corpus) for splices.
pub fn mutate(input: &mut Vec<u8>, rng: &mut impl RngCore, dictionary: &[&[u8]], others: &[Vec<u8>]) {
    let operations = rng.random_range(1..=4);
    for _ in 0..operations {
        let len = input.len();
        match rng.random_range(0..10) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = rng.random();
            }
            2 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let from = rng.random_range(0..len);
                let to = (from + rng.random_range(1..=64)).min(len);
                input.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.random_range(0..len);
                let to = (from + rng.random_range(1..=64)).min(len);
                let copy = input[from..to].to_vec();
                let at = rng.random_range(0..=input.len());
                input.splice(at..at, copy);
            }
            5 if len >= 4 => {
                let at = rng.random_range(0..=len - 4);
                let v = INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())];
                input[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            6 | 7 if !dictionary.is_empty() => {
                let token = dictionary[rng.random_range(0..dictionary.len())];
                let at = rng.random_range(0..=len);
                if rng.random_bool(0.5) || len == 0 {
                    input.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    input.splice(at..end, token.iter().copied());
                }
            }
            8 if !others.is_empty() => {
                let other = &others[rng.random_range(0..others.len())];
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let to = (from + rng.random_range(1..=256)).min(other.len());
                    let at = rng.random_range(0..=len);
                    input.splice(at..at, other[from..to].iter().copied());
                }
            }
            _ if len > 0 => input.truncate(rng.random_range(0..len)),
            _ => input.push(rng.random()),
        }
        input.truncate(MAX_INPUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mutations_change_inputs_and_stay_bounded() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let seed = b"{\"rounds\": 3}".to_vec();
        let mut changed = 0;
        for _ in 0..1000 {
            let mut input = seed.clone();
            mutate(&mut input, &mut rng, &[b"null"], std::slice::from_ref(&seed));
            changed += usize::from(input != seed);
            assert!(input.len() <= MAX_INPUT);
        }
        assert!(changed > 900, "{changed}");
    }
}
