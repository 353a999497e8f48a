//! Payloads larger than a transport's frame limit travel as numbered
//! chunks and are put back together, whatever order they arrive in.
//!
//! ```text
//! chunk payload: message id u64 | index u32 | count u32 | total length u64 | bytes
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
    /// Bytes in every chunk but the last, once a non-last chunk arrived.
    body: Option<u64>,
    /// What it counts against the budget (bytes plus a cost per chunk).
    charged: u64,
    /// The chunks 0..next, in order: over one connection chunks arrive in
    /// order, so the message is assembled in place, copied once.
    whole: Vec<u8>,
    next: u32,
    /// Chunks that arrived ahead of their turn.
    ahead: BTreeMap<u32, Vec<u8>>,
    received: u64,
    /// Arrival order of its first chunk: the oldest is evicted first.
    seq: u64,
    started: Instant,
}

/// Collects chunks per message id; bounded in count, bytes and age.
pub struct Reassembler {
    max_message: u64,
    max_in_flight: usize,
    max_buffered: u64,
    ttl: Duration,
    partial: BTreeMap<u64, Partial>,
    next_seq: u64,
    buffered: u64,
    evicted: u64,
    expired: u64,
}

/// How long an incomplete message is kept by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// What each buffered chunk costs beyond its bytes (its bookkeeping), so
/// that many tiny chunks cannot hold memory the byte budget does not see.
const CHUNK_COST: u64 = 64;
/// The most reserved ahead for a message before its bytes arrive.
const MAX_RESERVE: u64 = 16 << 20;

/// Chunks as `plan` makes them: every one but the last carries the same
/// number of bytes (`body`, learnt from the first such chunk), the count is
/// what that size implies, the last carries the rest, and none is empty
/// unless the whole message is. Returns the body size, once known.
fn check_layout(
    id: u64,
    index: u32,
    count: u32,
    total: u64,
    len: u64,
    body: Option<u64>,
) -> Result<Option<u64>, WireError> {
    let bad = |why: &str| Err(WireError::Malformed(format!("message {id}: chunk {index} {why}")));
    if count == 1 {
        return if len == total {
            Ok(None)
        } else {
            bad("does not hold the whole message")
        };
    }
    if len == 0 {
        return bad("is empty");
    }
    let last = index == count - 1;
    match (last, body) {
        (false, Some(b)) if len != b => bad("differs in size from the others"),
        (false, None) if total.div_ceil(len) != u64::from(count) => bad("does not match the chunk count"),
        (false, _) => Ok(Some(len)),
        (true, Some(b)) if len != total - (u64::from(count) - 1) * b => bad("is not the rest of the message"),
        (true, _) if len > total => bad("is larger than the message"),
        (true, body) => Ok(body),
    }
}

impl Reassembler {
    /// `max_message`: the largest payload accepted; `max_in_flight`: how many
    /// messages may be incomplete at once (the oldest is dropped beyond it).
    /// Buffered bytes are bounded by twice `max_message` until
    /// `with_budget` says otherwise.
    pub fn new(max_message: u64, max_in_flight: usize) -> Self {
        Self {
            max_message,
            max_in_flight: max_in_flight.max(1),
            max_buffered: max_message.saturating_mul(2),
            ttl: DEFAULT_TTL,
            partial: BTreeMap::new(),
            next_seq: 0,
            buffered: 0,
            evicted: 0,
            expired: 0,
        }
    }

    /// At most `max_buffered` bytes of incomplete messages, each kept at
    /// most `ttl`.
    pub fn with_budget(mut self, max_buffered: u64, ttl: Duration) -> Self {
        self.max_buffered = max_buffered.max(self.max_message);
        self.ttl = ttl;
        self
    }

    /// Incomplete messages dropped since the last call: (evicted for room, expired).
    pub fn take_dropped(&mut self) -> (u64, u64) {
        let dropped = (self.evicted, self.expired);
        (self.evicted, self.expired) = (0, 0);
        dropped
    }

    /// Bytes held by incomplete messages.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    fn remove(&mut self, id: u64) -> Option<Partial> {
        let p = self.partial.remove(&id)?;
        self.buffered -= p.charged;
        Some(p)
    }

    /// Drop the oldest incomplete message other than `keep`; false if none.
    fn evict_oldest(&mut self, keep: u64) -> bool {
        let oldest = self
            .partial
            .iter()
            .filter(|(id, _)| **id != keep)
            .min_by_key(|(_, p)| p.seq)
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                self.remove(id);
                self.evicted += 1;
                true
            }
            None => false,
        }
    }

    fn expire(&mut self) {
        let ttl = self.ttl;
        let stale: Vec<u64> = self
            .partial
            .iter()
            .filter(|(_, p)| p.started.elapsed() > ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.remove(id);
            self.expired += 1;
        }
    }

    /// Add one chunk; returns the whole payload when its last chunk arrives.
    /// A chunk that is inconsistent with its message is refused before it
    /// can cost any other message its place.
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
        let len = data.len() as u64;
        self.expire();
        let known = self.partial.get(&id);
        if let Some(p) = known {
            if p.count != count || p.total != total {
                self.remove(id);
                return Err(bad(format!("message {id}: chunks disagree on its size")));
            }
            if index < p.next || p.ahead.contains_key(&index) {
                return Err(bad(format!("message {id}: chunk {index} arrived twice")));
            }
            if p.received + len > total {
                self.remove(id);
                return Err(bad(format!("message {id}: more bytes than announced")));
            }
        }
        let body = known.and_then(|p| p.body);
        let body = match check_layout(id, index, count, total, len, body) {
            Ok(body) => body,
            Err(e) => {
                self.remove(id);
                return Err(e);
            }
        };
        if count == 1 && known.is_none() {
            // Whole in one chunk: nothing to buffer.
            return Ok(Some((id, data.to_vec())));
        }
        if known.is_none() && self.partial.len() >= self.max_in_flight {
            self.evict_oldest(id);
        }
        let cost = len + CHUNK_COST;
        while self.buffered + cost > self.max_buffered {
            if !self.evict_oldest(id) {
                self.remove(id);
                return Err(WireError::TooLarge(format!(
                    "message {id}: more than {} bytes of incomplete messages from one sender",
                    self.max_buffered
                )));
            }
        }
        let seq = self.next_seq;
        let p = self.partial.entry(id).or_insert_with(|| Partial {
            count,
            total,
            body: None,
            whole: Vec::new(),
            next: 0,
            ahead: BTreeMap::new(),
            received: 0,
            charged: 0,
            seq,
            started: Instant::now(),
        });
        if p.seq == seq {
            self.next_seq += 1;
        }
        p.body = body;
        p.received += len;
        p.charged += cost;
        self.buffered += cost;
        if index == p.next {
            if p.whole.capacity() == 0 {
                // Capped: a peer's announced size alone must not reserve much.
                p.whole.reserve_exact(total.min(MAX_RESERVE) as usize);
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
        let Some(p) = self.remove(id) else {
            return Err(bad(format!("message {id}: lost while assembling")));
        };
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

    /// The oldest incomplete message goes first, not the smallest id (a
    /// high id must not evict an honest upload that started earlier).
    #[test]
    fn eviction_takes_the_oldest_and_bytes_and_age_are_bounded() {
        let chunks = |id: u64| split(id, &[7u8; 100], CHUNK_HEADER + 10).unwrap();
        let mut r = Reassembler::new(1 << 20, 2);
        let honest = chunks(5);
        r.push(&honest[0]).unwrap();
        r.push(&chunks(1)[0]).unwrap();
        r.push(&chunks(u64::MAX)[0]).unwrap();
        assert_eq!(r.take_dropped(), (1, 0));
        // id 5 was the oldest: evicted; the two later ones remain.
        assert!(r.push(&honest[1]).unwrap().is_none());
        assert_eq!(r.in_flight(), 2);

        // Bytes: a budget of 250 holds two messages of 100, not three.
        let mut r = Reassembler::new(100, 10).with_budget(350, DEFAULT_TTL);
        let whole = |id: u64| split(id, &[1u8; 100], CHUNK_HEADER + 90).unwrap();
        for id in 0..3 {
            let c = whole(id);
            r.push(&c[0]).unwrap();
        }
        assert!(r.buffered() <= 350, "{}", r.buffered());
        assert_eq!(r.take_dropped().0, 1);

        // Age: an abandoned message expires at the next push.
        let mut r = Reassembler::new(1 << 20, 4).with_budget(1 << 20, Duration::from_millis(10));
        r.push(&chunks(1)[0]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        r.push(&chunks(2)[0]).unwrap();
        assert_eq!(r.take_dropped(), (0, 1));
        assert_eq!(r.in_flight(), 1);
        assert_eq!(r.buffered(), 10 + CHUNK_COST);
    }

    /// Chunks must be laid out as `plan` lays them out: no empty chunks, a
    /// count that matches their size, a last chunk that is the rest.
    #[test]
    fn chunks_that_are_not_laid_out_as_planned_are_refused() {
        let header = |id: u64, index: u32, count: u32, total: u64| {
            let mut h = Vec::new();
            h.extend_from_slice(&id.to_le_bytes());
            h.extend_from_slice(&index.to_le_bytes());
            h.extend_from_slice(&count.to_le_bytes());
            h.extend_from_slice(&total.to_le_bytes());
            h
        };
        let mut r = Reassembler::new(1 << 30, 4);
        // Empty chunks announcing a huge message: no free buffering.
        let e = r.push(&header(1, 0, u32::MAX, 1 << 30)).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        // 1-byte chunks of a message announced as 1 GiB in 16 chunks.
        let mut tiny = header(2, 0, 16, 1 << 30);
        tiny.push(0);
        assert!(r.push(&tiny).unwrap_err().to_string().contains("chunk count"));
        // A second chunk of another size than the first.
        let mut first = header(3, 0, 3, 25);
        first.extend_from_slice(&[1; 10]);
        r.push(&first).unwrap();
        let mut second = header(3, 1, 3, 25);
        second.extend_from_slice(&[1; 9]);
        assert!(r
            .push(&second)
            .unwrap_err()
            .to_string()
            .contains("differs in size"));
        assert_eq!(r.in_flight(), 0, "the inconsistent message is dropped");
        assert_eq!(r.buffered(), 0);
    }
}
