//! A check of a column chunk's page headers before the decoder sees them.
//! The decoder trusts the sizes and value counts a page header states
//! (fuzzing found a 2-kilobyte file whose dictionary page claimed two
//! billion values: 8 GB reserved, and pages whose counts made decoding run
//! for minutes), so every header is read here first, with a minimal reader
//! of Thrift's compact protocol, and refused when its counts exceed the
//! row group's rows or its sizes the chunk or `MAX_PAGE_BYTES`.

/// The largest uncompressed page accepted. Writers default to 1 MiB pages
/// (parquet-mr, arrow-rs, pyarrow); 256 MiB leaves room for any real one.
pub const MAX_PAGE_BYTES: i64 = 256 << 20;
/// The largest page header read (statistics included).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// What one page header says (the fields the check needs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct PageHeader {
    kind: i32,
    uncompressed: i64,
    compressed: i64,
    /// `num_values` of a data page (v1 or v2) or a dictionary page.
    values: Option<i64>,
    dictionary: bool,
}

/// Check the pages of one column chunk (`bytes`, starting with its first
/// page header) of a row group of `rows` rows: every header readable, each
/// page inside the chunk, sizes within bounds, no page with more values
/// than the group has rows, and the data pages' values adding up to at
/// most... exactly the rows for a flat column. Returns a reason to refuse.
pub fn check_chunk(bytes: &[u8], rows: i64) -> Result<(), String> {
    check_pages(bytes.len(), rows, |at, want| {
        Ok(bytes[at..bytes.len().min(at.saturating_add(want))]
            .to_vec()
            .into())
    })
}

/// `check_chunk` for a chunk of `len` bytes read through `window(at, want)`
/// (up to `want` bytes from `at`): only the page headers are read, so that
/// a chunk on a local disk is checked without holding it in memory.
pub fn check_pages(
    len: usize,
    rows: i64,
    mut window: impl FnMut(usize, usize) -> Result<bytes::Bytes, String>,
) -> Result<(), String> {
    let bytes_len = len;
    let mut at = 0usize;
    let mut values = 0i64;
    let mut pages = 0usize;
    while at < bytes_len {
        // Headers are tens of bytes; statistics can make them kilobytes.
        let mut want = 4096usize;
        let (header, header_len) = loop {
            let bytes = window(at, want)?;
            let mut reader = Compact::new(&bytes);
            if let Some(header) = reader.page_header() {
                break (header, reader.pos);
            }
            if bytes.len() < want || want >= MAX_HEADER_BYTES {
                return Err(format!("page {pages} has an unreadable header"));
            }
            want *= 8;
        };
        if !(0..=MAX_PAGE_BYTES).contains(&header.uncompressed) {
            return Err(format!(
                "page {pages} claims {} bytes uncompressed (at most {MAX_PAGE_BYTES} are accepted)",
                header.uncompressed
            ));
        }
        let end = usize::try_from(header.compressed)
            .ok()
            .and_then(|c| at.checked_add(header_len)?.checked_add(c))
            .filter(|&e| e <= bytes_len)
            .ok_or_else(|| {
                format!(
                    "page {pages} claims {} bytes, past the end of its column chunk",
                    header.compressed
                )
            })?;
        if let Some(n) = header.values {
            if !(0..=rows).contains(&n) {
                return Err(format!(
                    "page {pages} claims {n} values in a row group of {rows} rows"
                ));
            }
            if !header.dictionary {
                values += n;
            }
        }
        at = end;
        pages += 1;
        let _ = header.kind;
    }
    if values > rows {
        return Err(format!(
            "its pages hold {values} values in a row group of {rows} rows"
        ));
    }
    Ok(())
}

/// Thrift's compact protocol, as much as page headers need: structs of
/// integers and nested structs read, every other field type skipped.
struct Compact<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

const STOP: u8 = 0;
const TRUE: u8 = 1;
const FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;
/// Nesting beyond this is not a page header.
const MAX_DEPTH: usize = 16;

impl<'a> Compact<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            depth: 0,
        }
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn zigzag(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// The next field's (id, type), or `None` at the struct's end.
    fn field(&mut self, last: &mut i16) -> Option<Option<(i16, u8)>> {
        let b = self.byte()?;
        let kind = b & 0x0f;
        if kind == STOP {
            return Some(None);
        }
        let delta = (b >> 4) as i16;
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).ok()?
        } else {
            last.checked_add(delta)?
        };
        *last = id;
        Some(Some((id, kind)))
    }

    fn skip(&mut self, kind: u8) -> Option<()> {
        match kind {
            TRUE | FALSE => Some(()),
            BYTE => self.byte().map(drop),
            I16 | I32 | I64 => self.varint().map(drop),
            DOUBLE => {
                self.pos = self.pos.checked_add(8).filter(|&p| p <= self.bytes.len())?;
                Some(())
            }
            BINARY => {
                let n = usize::try_from(self.varint()?).ok()?;
                self.pos = self.pos.checked_add(n).filter(|&p| p <= self.bytes.len())?;
                Some(())
            }
            LIST | SET => {
                let b = self.byte()?;
                let element = b & 0x0f;
                let n = if b >> 4 == 0x0f {
                    usize::try_from(self.varint()?).ok()?
                } else {
                    usize::from(b >> 4)
                };
                // Each element takes at least one byte: a count past the
                // end is corrupt, not a loop to run.
                if n > self.bytes.len() - self.pos.min(self.bytes.len()) {
                    return None;
                }
                for _ in 0..n {
                    self.skip_value(element)?;
                }
                Some(())
            }
            MAP => {
                let n = usize::try_from(self.varint()?).ok()?;
                if n == 0 {
                    return Some(());
                }
                if n > self.bytes.len() - self.pos.min(self.bytes.len()) {
                    return None;
                }
                let kinds = self.byte()?;
                for _ in 0..n {
                    self.skip_value(kinds >> 4)?;
                    self.skip_value(kinds & 0x0f)?;
                }
                Some(())
            }
            STRUCT => self.skip_struct(),
            _ => None,
        }
    }

    /// A list element or map entry: booleans take a byte there.
    fn skip_value(&mut self, kind: u8) -> Option<()> {
        match kind {
            TRUE | FALSE => self.byte().map(drop),
            other => self.skip(other),
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn skip_struct(&mut self) -> Option<()> {
        self.enter()?;
        let mut last = 0i16;
        while let Some((_, kind)) = self.field(&mut last)? {
            self.skip(kind)?;
        }
        self.depth -= 1;
        Some(())
    }

    fn int(&mut self, kind: u8) -> Option<i64> {
        matches!(kind, I16 | I32 | I64).then_some(())?;
        self.zigzag()
    }

    /// `num_values` (field 1) of a data, dictionary or v2 data page header.
    fn num_values(&mut self) -> Option<Option<i64>> {
        self.enter()?;
        let mut last = 0i16;
        let mut values = None;
        while let Some((id, kind)) = self.field(&mut last)? {
            if id == 1 && kind == I32 {
                values = Some(self.int(kind)?);
            } else {
                self.skip(kind)?;
            }
        }
        self.depth -= 1;
        Some(values)
    }

    fn page_header(&mut self) -> Option<PageHeader> {
        let mut header = PageHeader {
            uncompressed: -1,
            compressed: -1,
            ..PageHeader::default()
        };
        let mut last = 0i16;
        while let Some((id, kind)) = self.field(&mut last)? {
            match (id, kind) {
                (1, I32) => header.kind = i32::try_from(self.int(kind)?).ok()?,
                (2, I32) => header.uncompressed = self.int(kind)?,
                (3, I32) => header.compressed = self.int(kind)?,
                // data_page_header, index_page_header (skipped),
                // dictionary_page_header, data_page_header_v2.
                (5 | 8, STRUCT) => header.values = self.num_values()?,
                (7, STRUCT) => {
                    header.values = self.num_values()?;
                    header.dictionary = true;
                }
                (_, other) => self.skip(other)?,
            }
        }
        (header.uncompressed >= 0 && header.compressed >= 0).then_some(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact-protocol page header: type, sizes and a data page header
    /// with `num_values` (field ids as deltas, i32s as zigzag varints).
    fn header(uncompressed: i32, compressed: i32, values: i32, dictionary: bool) -> Vec<u8> {
        fn zigzag(v: i32) -> Vec<u8> {
            let mut z = ((v << 1) ^ (v >> 31)) as u32;
            let mut out = Vec::new();
            loop {
                let b = (z & 0x7f) as u8;
                z >>= 7;
                if z == 0 {
                    out.push(b);
                    return out;
                }
                out.push(b | 0x80);
            }
        }
        let mut h = vec![0x15];
        h.extend(zigzag(if dictionary { 2 } else { 0 }));
        h.push(0x15);
        h.extend(zigzag(uncompressed));
        h.push(0x15);
        h.extend(zigzag(compressed));
        // Field 5 (data page) or 7 (dictionary page), delta 2 or 4 from 3.
        h.push(if dictionary { 0x4c } else { 0x2c });
        h.push(0x15);
        h.extend(zigzag(values));
        h.push(0x15); // encoding (field 2), PLAIN
        h.extend(zigzag(0));
        h.push(0x00); // end of the page's struct
        h.push(0x00); // end of the header
        h
    }

    fn chunk(pages: &[(i32, i32, i32, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(u, c, v, d) in pages {
            out.extend(header(u, c, v, d));
            out.extend(std::iter::repeat_n(0u8, c as usize));
        }
        out
    }

    #[test]
    fn honest_pages_pass_and_lying_ones_are_refused_with_the_reason() {
        assert_eq!(
            check_chunk(&chunk(&[(40, 10, 3, true), (80, 20, 100, false)]), 100),
            Ok(())
        );
        assert_eq!(
            check_chunk(&chunk(&[(80, 20, 60, false), (80, 20, 40, false)]), 100),
            Ok(())
        );
        let e = check_chunk(&chunk(&[(40, 10, i32::MAX, true)]), 100).unwrap_err();
        assert!(
            e.contains("claims 2147483647 values in a row group of 100 rows"),
            "{e}"
        );
        let e = check_chunk(&chunk(&[(80, 20, 60, false), (80, 20, 60, false)]), 100).unwrap_err();
        assert!(e.contains("hold 120 values"), "{e}");
        let e = check_chunk(&chunk(&[(i32::MAX, 20, 60, false)]), 100).unwrap_err();
        assert!(e.contains("uncompressed"), "{e}");
        let mut past = chunk(&[(80, 20, 60, false)]);
        past.truncate(past.len() - 1);
        assert!(check_chunk(&past, 100).unwrap_err().contains("past the end"));
        assert!(check_chunk(&[0xff, 0xff, 0xff], 100)
            .unwrap_err()
            .contains("unreadable"));
    }
}
