//! Which data a privacy budget belongs to: a content hash of the records a
//! learner trains on, independent of their order, of the hospital's name
//! and of how the records were sharded or shuffled into files.

use sha2::{Digest, Sha256};

use crate::data::images::ImageSet;
use crate::data::Dataset;

/// One table record's digest: SHA-256 of its features as little-endian
/// f64 followed by its label byte.
pub fn table_record_digest(features: impl Iterator<Item = f64>, label: bool) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in features {
        h.update(v.to_le_bytes());
    }
    h.update([u8::from(label)]);
    h.finalize().into()
}

/// SHA-256 over the sorted per-record digests, as 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataFingerprint(String);

impl DataFingerprint {
    /// Hash every record's canonical bytes, sort the digests, and hash them
    /// with their count: the same multiset of records gives the same print.
    pub fn of_records(records: impl Iterator<Item = Vec<u8>>) -> Self {
        Self::of_digests(records.map(|r| Sha256::digest(&r).into()).collect())
    }

    /// The print of records given as their digests (`table_record_digest`).
    pub fn of_digests(mut digests: Vec<[u8; 32]>) -> Self {
        digests.sort_unstable();
        let mut h = Sha256::new();
        h.update(b"medfed-records-v1");
        h.update((digests.len() as u64).to_le_bytes());
        for d in &digests {
            h.update(d);
        }
        let out: [u8; 32] = h.finalize().into();
        Self(out.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A table's records: the same print whether they were loaded from a
    /// CSV file (tabular) or streamed from Parquet (columnar).
    pub fn of_dataset(data: &Dataset) -> Self {
        Self::of_digests(
            data.features
                .rows()
                .into_iter()
                .zip(&data.labels)
                .map(|(row, &label)| table_record_digest(row.iter().copied(), label))
                .collect(),
        )
    }

    pub fn of_images(images: &ImageSet) -> Self {
        Self::of_records((0..images.len()).map(|i| {
            let pixels = images.image(i);
            let mut bytes = Vec::with_capacity(pixels.len() * 4 + 9);
            bytes.extend_from_slice(&(images.size as u64).to_le_bytes());
            for v in pixels {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes.push(u8::from(images.labels[i]));
            bytes
        }))
    }

    /// Read back a fingerprint stored in a ledger.
    pub fn parse(hex: &str) -> Option<Self> {
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| Self(hex.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 16 hex digits: enough to tell ledgers apart in file names.
    pub fn short(&self) -> &str {
        &self.0[..16]
    }
}

impl std::fmt::Display for DataFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::gaussian_blobs;

    #[test]
    fn same_records_in_any_order_share_a_print_and_any_change_moves_it() {
        let data = gaussian_blobs(50, 4, 0.5, 2.0, 1);
        let print = DataFingerprint::of_dataset(&data);
        let reversed: Vec<usize> = (0..data.len()).rev().collect();
        assert_eq!(DataFingerprint::of_dataset(&data.select(&reversed)), print);
        // Split into two shards and rejoined: the same records.
        let (a, b): (Vec<usize>, Vec<usize>) = (0..data.len()).partition(|i| i % 3 == 0);
        let rejoined: Vec<usize> = b.iter().chain(&a).copied().collect();
        assert_eq!(DataFingerprint::of_dataset(&data.select(&rejoined)), print);
        // One record fewer, one label flipped, one value nudged: another print.
        let fewer: Vec<usize> = (1..data.len()).collect();
        assert_ne!(DataFingerprint::of_dataset(&data.select(&fewer)), print);
        let mut flipped = data.clone();
        flipped.labels[7] = !flipped.labels[7];
        assert_ne!(DataFingerprint::of_dataset(&flipped), print);
        let mut nudged = data.clone();
        nudged.features[[3, 2]] += 1e-12;
        assert_ne!(DataFingerprint::of_dataset(&nudged), print);
        assert_eq!(print.as_str().len(), 64);
        assert_eq!(DataFingerprint::parse(print.as_str()), Some(print.clone()));
        assert_eq!(DataFingerprint::parse("xyz"), None);
    }

    #[test]
    fn images_hash_pixels_size_and_labels() {
        let set = ImageSet::new(2, vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], vec![true, false]).unwrap();
        let print = DataFingerprint::of_images(&set);
        assert_eq!(DataFingerprint::of_images(&set.select(&[1, 0])), print);
        let other = ImageSet::new(2, vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], vec![true, true]).unwrap();
        assert_ne!(DataFingerprint::of_images(&other), print);
    }
}
