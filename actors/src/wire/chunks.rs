//! Payloads larger than a transport's frame limit travel as numbered
//! chunks and are put back together, whatever order they arrive in.
//!
//! ```text
//! chunk payload: message id u64 | index u32 | count u32 | total length u64 | bytes
//! ```

use std::collections::BTreeMap;

use super::{Reader, WireError};

pub const CHUNK_HEADER: usize = 8 + 4 + 4 + 8;

/// Split `payload` into chunk payloads of at most `max_chunk` bytes each
/// (header included).
pub fn split(message_id: u64, payload: &[u8], max_chunk: usize) -> Result<Vec<Vec<u8>>, WireError> {
    Ok(plan(message_id, payload.len(), max_chunk)?
        .into_iter()
        .map(|(header, range)| [&header[..], &payload[range]].concat())
        .collect())
}

/// One chunk's header and the payload range it carries.
pub type ChunkPlan = ([u8; CHUNK_HEADER], std::ops::Range<usize>);

/// The chunks of a payload of `len` bytes: each chunk's header and the
/// range of the payload it carries (so a sender can frame them without
/// copying the payload first).
pub fn plan(message_id: u64, len: usize, max_chunk: usize) -> Result<Vec<ChunkPlan>, WireError> {
    let body = max_chunk
        .checked_sub(CHUNK_HEADER)
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            WireError::TooLarge(format!(
                "a chunk limit of {max_chunk} bytes leaves no room for data"
            ))
        })?;
    let count = len.div_ceil(body).max(1);
    let count32 = u32::try_from(count).map_err(|_| WireError::TooLarge("too many chunks".into()))?;
    Ok((0..count)
        .map(|i| {
            let range = (i * body).min(len)..((i + 1) * body).min(len);
            let mut header = [0u8; CHUNK_HEADER];
            header[..8].copy_from_slice(&message_id.to_le_bytes());
            header[8..12].copy_from_slice(&(i as u32).to_le_bytes());
            header[12..16].copy_from_slice(&count32.to_le_bytes());
            header[16..24].copy_from_slice(&(len as u64).to_le_bytes());
            (header, range)
        })
        .collect())
}

struct Partial {
    count: u32,
    total: u64,
    /// The chunks 0..next, in order: over one connection chunks arrive in
    /// order, so the message is assembled in place, copied once.
    whole: Vec<u8>,
    next: u32,
    /// Chunks that arrived ahead of their turn.
    ahead: BTreeMap<u32, Vec<u8>>,
    received: u64,
}

/// Collects chunks per message id; bounded in memory.
pub struct Reassembler {
    max_message: u64,
    max_in_flight: usize,
    partial: BTreeMap<u64, Partial>,
}

impl Reassembler {
    /// `max_message`: the largest payload accepted; `max_in_flight`: how many
    /// messages may be incomplete at once (the oldest is dropped beyond it).
    pub fn new(max_message: u64, max_in_flight: usize) -> Self {
        Self {
            max_message,
            max_in_flight: max_in_flight.max(1),
            partial: BTreeMap::new(),
        }
    }

    /// Add one chunk; returns the whole payload when its last chunk arrives.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<(u64, Vec<u8>)>, WireError> {
        let bad = |m: String| WireError::Malformed(m);
        let mut r = Reader::new(chunk);
        let id = r.u64()?;
        let index = r.u32()?;
        let count = r.u32()?;
        let total = r.u64()?;
        let data = r.take(r.remaining())?;
        if total > self.max_message {
            return Err(WireError::TooLarge(format!(
                "message {id}: {total} bytes (at most {})",
                self.max_message
            )));
        }
        if count == 0 || index >= count {
            return Err(bad(format!("message {id}: chunk {index} of {count}")));
        }
        if !self.partial.contains_key(&id) && self.partial.len() >= self.max_in_flight {
            let oldest = *self.partial.keys().next().expect("non-empty");
            self.partial.remove(&oldest);
            tracing::warn!(
                message = oldest,
                "dropped an incomplete message: too many in flight"
            );
        }
        let p = self.partial.entry(id).or_insert_with(|| Partial {
            count,
            total,
            whole: Vec::new(),
            next: 0,
            ahead: BTreeMap::new(),
            received: 0,
        });
        if p.count != count || p.total != total {
            self.partial.remove(&id);
            return Err(bad(format!("message {id}: chunks disagree on its size")));
        }
        if index < p.next || p.ahead.contains_key(&index) {
            return Err(bad(format!("message {id}: chunk {index} arrived twice")));
        }
        p.received += data.len() as u64;
        if p.received > total {
            self.partial.remove(&id);
            return Err(bad(format!("message {id}: more bytes than announced")));
        }
        if index == p.next {
            if p.whole.capacity() == 0 {
                // Capped: a peer's announced size alone must not reserve gigabytes.
                p.whole.reserve_exact(total.min(256 << 20) as usize);
            }
            p.whole.extend_from_slice(data);
            p.next += 1;
            while let Some(part) = p.ahead.remove(&p.next) {
                p.whole.extend_from_slice(&part);
                p.next += 1;
            }
        } else {
            p.ahead.insert(index, data.to_vec());
        }
        if p.next < count {
            return Ok(None);
        }
        let p = self.partial.remove(&id).expect("present");
        if p.received != p.total {
            return Err(bad(format!("message {id}: {} of {} bytes", p.received, p.total)));
        }
        Ok(Some((id, p.whole)))
    }

    pub fn in_flight(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A model above a 16 MiB frame limit (ractor_cluster's default) arrives
    /// whole, in any chunk order.
    #[test]
    fn a_payload_larger_than_the_frame_limit_is_reassembled_in_any_order() {
        let payload: Vec<u8> = (0..40_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let limit = 16 * 1024 * 1024;
        let mut chunks = split(9, &payload, limit).unwrap();
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.len() <= limit));
        chunks.shuffle(&mut ChaCha8Rng::seed_from_u64(4));
        let mut r = Reassembler::new(64 << 20, 4);
        let mut done = None;
        for c in &chunks {
            if let Some(whole) = r.push(c).unwrap() {
                done = Some(whole);
            }
        }
        assert_eq!(done, Some((9, payload)));
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn inconsistent_duplicate_or_oversized_chunks_are_refused() {
        let chunks = split(1, &[1, 2, 3, 4, 5], CHUNK_HEADER + 2).unwrap();
        assert_eq!(chunks.len(), 3);
        let mut r = Reassembler::new(1024, 2);
        assert_eq!(r.push(&chunks[0]).unwrap(), None);
        assert!(r.push(&chunks[0]).unwrap_err().to_string().contains("twice"));
        let mut liar = chunks[1].clone();
        liar[16..24].copy_from_slice(&99u64.to_le_bytes());
        assert!(r.push(&liar).unwrap_err().to_string().contains("disagree"));
        let big = split(2, &[0u8; 2048], 4096).unwrap();
        assert_eq!(r.push(&big[0]).unwrap_err().label(), "too_large");
        assert!(r.push(&[1, 2, 3]).is_err());
        assert!(split(3, &[1], CHUNK_HEADER).is_err());
        // An empty payload is one chunk.
        let empty = split(4, &[], 64).unwrap();
        assert_eq!(
            Reassembler::new(10, 1).push(&empty[0]).unwrap(),
            Some((4, vec![]))
        );
    }

    #[test]
    fn incomplete_messages_are_bounded() {
        let mut r = Reassembler::new(1 << 20, 2);
        for id in 0..5u64 {
            let chunks = split(id, &[0u8; 100], CHUNK_HEADER + 10).unwrap();
            r.push(&chunks[0]).unwrap();
        }
        assert_eq!(r.in_flight(), 2);
    }
}
