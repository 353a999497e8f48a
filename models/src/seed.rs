//! Deterministic seed derivation: one run seed fans out into independent
//! per-hospital, per-round streams that do not depend on scheduling.

/// SplitMix64 finaliser: a bijective mix of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derive a seed from a base seed and a label (e.g. a hospital name) and a counter.
pub fn derive(base: u64, label: &str, counter: u64) -> u64 {
    // FNV-1a over the label: stable across platforms and Rust versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(mix64(base ^ h).wrapping_add(counter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_are_stable_and_distinct() {
        assert_eq!(derive(42, "h1", 1), derive(42, "h1", 1));
        assert_ne!(derive(42, "h1", 1), derive(42, "h2", 1));
        assert_ne!(derive(42, "h1", 1), derive(42, "h1", 2));
        assert_ne!(derive(42, "h1", 1), derive(43, "h1", 1));
        // Known value pins the function: changing it changes every result.
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
    }
}
