//! The bytes that cross between nodes (DESIGN §3), independent of transport.
//!
//! A frame is a versioned, checksummed envelope:
//!
//! ```text
//! magic "MDFW" | version u16 | kind u8 | reserved u8 | payload length u32 | CRC-32 of payload u32 | payload
//! ```
//!
//! all little-endian. Tensors travel as one raw little-endian f32 block with
//! their names and shapes in front (`tensors`), so a model is a single copy
//! on little-endian machines, not a value-by-value conversion. Payloads
//! larger than the transport's frame limit are split into chunks and
//! reassembled (`chunks`). Every decoding step returns a `WireError` naming
//! what was wrong; nothing here panics on input.

pub mod chunks;
pub mod tensors;

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"MDFW";
/// Bumped whenever a frame or payload layout changes.
pub const VERSION: u16 = 7;
const HEADER: usize = 4 + 2 + 1 + 1 + 4 + 4;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("not a medfed frame (bad magic)")]
    BadMagic,
    #[error("wire version {got} is not supported (this node speaks {supported})")]
    UnsupportedVersion { got: u16, supported: u16 },
    #[error("truncated: {needed} bytes needed, {got} present")]
    Truncated { needed: usize, got: usize },
    #[error("checksum mismatch: the payload was corrupted")]
    BadChecksum,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("too large: {0}")]
    TooLarge(String),
}

impl WireError {
    /// A short label for counting dropped frames by reason.
    pub fn label(&self) -> &'static str {
        match self {
            WireError::BadMagic => "bad_magic",
            WireError::UnsupportedVersion { .. } => "bad_version",
            WireError::Truncated { .. } => "truncated",
            WireError::BadChecksum => "bad_checksum",
            WireError::Malformed(_) => "malformed",
            WireError::TooLarge(_) => "too_large",
        }
    }
}

/// A decoded frame: what it carries and the payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Encode one frame whose payload is the concatenation of `parts`, in a
/// single allocation and with one copy of each part.
pub fn encode_frame(kind: u8, parts: &[&[u8]]) -> Result<Vec<u8>, WireError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total).map_err(|_| WireError::TooLarge(format!("a payload of {total} bytes")))?;
    let mut crc = crc32fast::Hasher::new();
    parts.iter().for_each(|p| crc.update(p));
    let mut out = Vec::with_capacity(HEADER + total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    parts.iter().for_each(|p| out.extend_from_slice(p));
    Ok(out)
}

/// A checked frame borrowing its payload from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub kind: u8,
    pub payload: &'a [u8],
}

/// Check exactly one frame (magic, version, length, checksum); trailing
/// bytes are an error.
pub fn parse(bytes: &[u8]) -> Result<FrameRef<'_>, WireError> {
    let mut r = Reader::new(bytes);
    if r.take(4)? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(WireError::UnsupportedVersion {
            got: version,
            supported: VERSION,
        });
    }
    let kind = r.u8()?;
    let _reserved = r.u8()?;
    let len = r.u32()? as usize;
    let crc = r.u32()?;
    let payload = r.take(len)?;
    if !r.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} bytes after the frame",
            r.remaining()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(WireError::BadChecksum);
    }
    Ok(FrameRef { kind, payload })
}

impl Frame {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_frame(self.kind, &[&self.payload])
    }

    /// Decode exactly one frame; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        let f = parse(bytes)?;
        Ok(Frame {
            kind: f.kind,
            payload: f.payload.to_vec(),
        })
    }
}

/// A bounds-checked little-endian reader over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(WireError::Truncated {
                needed: self.at.saturating_add(n),
                got: self.bytes.len(),
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn frame() -> Frame {
        Frame {
            kind: 7,
            payload: (0..1000u32).flat_map(|i| i.to_le_bytes()).collect(),
        }
    }

    #[test]
    fn round_trip_and_every_corruption_is_named() {
        let bytes = frame().encode().unwrap();
        assert_eq!(Frame::decode(&bytes).unwrap(), frame());
        // Every truncation is refused.
        for cut in 0..bytes.len() {
            assert!(Frame::decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes");
        }
        // Any single flipped bit in the payload is caught by the checksum.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let mut b = bytes.clone();
            let i = rng.random_range(HEADER..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
            assert_eq!(Frame::decode(&b), Err(WireError::BadChecksum));
        }
        let mut wrong_version = bytes.clone();
        wrong_version[4] = 9;
        assert_eq!(
            Frame::decode(&wrong_version),
            Err(WireError::UnsupportedVersion {
                got: 9,
                supported: VERSION
            })
        );
        assert_eq!(
            Frame::decode(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(WireError::BadMagic)
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(Frame::decode(&trailing).unwrap_err().label(), "malformed");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && b.len() >= 6 {
                b[..4].copy_from_slice(&MAGIC);
                b[4..6].copy_from_slice(&VERSION.to_le_bytes());
            }
            let _ = Frame::decode(&b);
        }
    }
}
