//! Masks: a ChaCha20 stream keyed with a full 32-byte seed (never folded to
//! fewer bits: Flower's generator folds its seed to 32 bits, issue #7522),
//! read as little-endian u32 words and added to or subtracted from a ring
//! vector.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Whether a mask is added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    Add,
    Subtract,
}

/// `vector += sign * PRG(seed)` in Z_(2^32), word by word.
pub fn apply_mask(vector: &mut [u32], seed: &[u8; 32], sign: Sign) {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    let mut block = [0u8; 4096];
    for chunk in vector.chunks_mut(block.len() / 4) {
        let bytes = &mut block[..chunk.len() * 4];
        rng.fill_bytes(bytes);
        for (v, word) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            let m = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            *v = match sign {
                Sign::Add => v.wrapping_add(m),
                Sign::Subtract => v.wrapping_sub(m),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cancel_and_depend_on_every_seed_byte() {
        let original: Vec<u32> = (0..5000).collect();
        let mut v = original.clone();
        let seed = [7u8; 32];
        apply_mask(&mut v, &seed, Sign::Add);
        assert_ne!(v, original);
        apply_mask(&mut v, &seed, Sign::Subtract);
        assert_eq!(v, original);
        // Seeds differing only in their last byte give different masks.
        let (mut a, mut b) = (vec![0u32; 8], vec![0u32; 8]);
        let mut other = seed;
        other[31] ^= 1;
        apply_mask(&mut a, &seed, Sign::Add);
        apply_mask(&mut b, &other, Sign::Add);
        assert_ne!(a, b);
    }
}
