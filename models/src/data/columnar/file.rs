//! One Parquet file: its footer read and checked by hand (so that a
//! truncated or corrupt file is refused with a reason before any decoding),
//! and the byte ranges of a row group's projected column chunks fetched and
//! checked against the file's size before the decoder sees them.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::{ChunkReader, Length};

use super::source::ByteSource;
use crate::error::{ModelError, Result};

const MAGIC: &[u8; 4] = b"PAR1";
const ENCRYPTED_MAGIC: &[u8; 4] = b"PARE";
/// The largest footer accepted. Real footers are kilobytes to a few
/// megabytes (thousands of row groups x columns); a corrupt length must not
/// make us allocate gigabytes.
const MAX_FOOTER: u64 = 64 << 20;

/// A row group may claim at most this many rows per byte of the columns
/// read (plus `MIN_ROWS_BOUND`): one bit per row across all of them. A
/// footer claiming more is corrupt (or a decompression bomb), and decoding
/// it would run for as long as its row count says.
const ROWS_PER_BYTE: i64 = 8;
const MIN_ROWS_BOUND: i64 = 1 << 16;

/// An opened Parquet file: its source and decoded footer.
#[derive(Clone)]
pub struct ParquetFile {
    source: Arc<dyn ByteSource>,
    metadata: ArrowReaderMetadata,
    /// Where column data may lie: after the leading magic, before the footer.
    data: Range<u64>,
}

impl ParquetFile {
    pub fn open(source: Arc<dyn ByteSource>) -> Result<Self> {
        let corrupt = |why: String| ModelError::Parquet {
            origin: source.name().to_string(),
            message: why,
        };
        let len = source.len();
        if len < 12 {
            return Err(corrupt(format!(
                "is not a Parquet file: {len} bytes, shorter than the smallest Parquet file (12 bytes)"
            )));
        }
        let read = |start: u64, n: usize| {
            source
                .read_range(start, n)
                .map_err(|e| corrupt(format!("cannot read bytes {start}..{}: {e}", start + n as u64)))
        };
        let head = read(0, 4)?;
        let tail = read(len - 8, 8)?;
        if &tail[4..] == ENCRYPTED_MAGIC {
            return Err(corrupt(
                "is an encrypted Parquet file, which medfed cannot read".into(),
            ));
        }
        if &head[..] != MAGIC || &tail[4..] != MAGIC {
            return Err(corrupt(
                "is not a Parquet file or is truncated: it does not start and end with the 'PAR1' marker"
                    .into(),
            ));
        }
        let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        if footer_len > len - 12 || footer_len > MAX_FOOTER {
            return Err(corrupt(format!(
                "is truncated or corrupt: its footer claims {footer_len} bytes in a {len}-byte file"
            )));
        }
        let footer_start = len - 8 - footer_len;
        let footer = read(footer_start, footer_len as usize)?;
        let name = || source.name().to_string();
        let metadata = contained(name, || ParquetMetaDataReader::decode_metadata(&footer))?
            .map_err(|e| corrupt(format!("has a corrupt footer: {}", parquet_message(e))))?;
        check_row_counts(&metadata).map_err(corrupt)?;
        // The schema from the Parquet types alone: an embedded Arrow schema
        // may ask for dictionary or view arrays, which change nothing here.
        let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
        let metadata = contained(name, || ArrowReaderMetadata::try_new(Arc::new(metadata), options))?
            .map_err(|e| corrupt(format!("has a schema medfed cannot read: {}", parquet_message(e))))?;
        Ok(Self {
            source,
            metadata,
            data: 4..footer_start,
        })
    }

    pub fn name(&self) -> &str {
        self.source.name()
    }

    pub fn metadata(&self) -> &ArrowReaderMetadata {
        &self.metadata
    }

    pub fn parquet(&self) -> &Arc<ParquetMetaData> {
        self.metadata.metadata()
    }

    pub fn row_groups(&self) -> usize {
        self.parquet().num_row_groups()
    }

    /// Rows of row group `index` as the footer states them (checked
    /// non-negative at open).
    pub fn row_group_rows(&self, index: usize) -> u64 {
        self.parquet().row_group(index).num_rows() as u64
    }

    pub fn rows(&self) -> u64 {
        (0..self.row_groups()).map(|i| self.row_group_rows(i)).sum()
    }

    /// The leaf columns of row group `row_group` listed in `leaves`: a
    /// reader the decoder can use for exactly those chunks, fetched whole
    /// or read on demand (`ByteSource::fetch_whole_chunks`). Every range is
    /// checked to lie within the file's data and every page header first.
    pub fn fetch_chunks(&self, row_group: usize, leaves: &[usize]) -> Result<Chunks> {
        let group = self.parquet().row_group(row_group);
        let stored: i64 = leaves
            .iter()
            .map(|&l| group.column(l).compressed_size().max(0))
            .sum();
        let rows = group.num_rows();
        if rows
            > ROWS_PER_BYTE
                .saturating_mul(stored)
                .saturating_add(MIN_ROWS_BOUND)
        {
            return Err(ModelError::Parquet {
                origin: format!("{}, row group {row_group}", self.name()),
                message: format!(
                    "claims {rows} rows in {stored} bytes of columns: corrupt, or so compressible \
                     (under one bit per row for every column read) that it holds nothing to learn from"
                ),
            });
        }
        let whole = self.source.fetch_whole_chunks();
        let mut chunks = Vec::with_capacity(leaves.len());
        let mut ranges = Vec::with_capacity(leaves.len());
        for &leaf in leaves {
            let column = group.column(leaf);
            // Where the decoder will read it from (`ColumnChunkMetaData::byte_range`).
            let start = column
                .dictionary_page_offset()
                .unwrap_or_else(|| column.data_page_offset());
            let length = column.compressed_size();
            let range = u64::try_from(start)
                .ok()
                .zip(u64::try_from(length).ok())
                .and_then(|(s, l)| Some(s..s.checked_add(l)?))
                .filter(|r| r.start >= self.data.start && r.end <= self.data.end);
            let at_column = || {
                format!(
                    "{}, row group {row_group}, column '{}'",
                    self.name(),
                    column.column_path()
                )
            };
            let Some(range) = range else {
                return Err(ModelError::Parquet {
                    origin: at_column(),
                    message: format!(
                        "is truncated or corrupt: the column's data is said to lie at bytes {start}..{} \
                         but the file's data spans {}..{}",
                        start.saturating_add(length),
                        self.data.start,
                        self.data.end
                    ),
                });
            };
            let len = (range.end - range.start) as usize;
            let corrupt = |why: String| ModelError::Parquet {
                origin: at_column(),
                message: format!("is corrupt: {why}"),
            };
            if whole {
                let bytes = self
                    .source
                    .read_range(range.start, len)
                    .map_err(|e| ModelError::Parquet {
                        origin: format!("{}, row group {row_group}", self.name()),
                        message: format!("cannot read bytes {}..{}: {e}", range.start, range.end),
                    })?;
                super::pages::check_chunk(&bytes, rows).map_err(corrupt)?;
                chunks.push((range.start, bytes));
            } else {
                super::pages::check_pages(len, rows, |at, want| {
                    let want = want.min(len - at);
                    self.source
                        .read_range(range.start + at as u64, want)
                        .map_err(|e| format!("cannot read its page headers: {e}"))
                })
                .map_err(corrupt)?;
            }
            ranges.push(range);
        }
        if whole {
            chunks.sort_by_key(|(start, _)| *start);
            return Ok(Chunks::Fetched(FetchedChunks {
                file_len: self.source.len(),
                chunks: Arc::new(chunks),
            }));
        }
        ranges.sort_by_key(|r| r.start);
        Ok(Chunks::Direct(DirectChunks {
            source: self.source.clone(),
            ranges: Arc::new(ranges),
            read: Arc::default(),
        }))
    }
}

/// How a row group's column chunks reach the decoder: fetched whole into
/// memory (object storage), or read page by page from the source as the
/// decoder asks (local files).
#[derive(Clone)]
pub enum Chunks {
    Fetched(FetchedChunks),
    Direct(DirectChunks),
}

impl Chunks {
    /// A handle on the bytes this reader has read (all of them when
    /// fetched whole; growing as the decoder reads otherwise).
    pub fn bytes_read(&self) -> BytesRead {
        match self {
            Chunks::Fetched(f) => BytesRead::Fixed(f.bytes()),
            Chunks::Direct(d) => BytesRead::Counting(d.read.clone()),
        }
    }
}

/// See `Chunks::bytes_read`.
pub enum BytesRead {
    Fixed(u64),
    Counting(Arc<std::sync::atomic::AtomicU64>),
}

impl BytesRead {
    pub fn get(&self) -> u64 {
        match self {
            BytesRead::Fixed(n) => *n,
            BytesRead::Counting(n) => n.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Length for Chunks {
    fn len(&self) -> u64 {
        match self {
            Chunks::Fetched(f) => f.len(),
            Chunks::Direct(d) => d.source.len(),
        }
    }
}

impl ChunkReader for Chunks {
    type T = ChunkRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<ChunkRead> {
        match self {
            Chunks::Fetched(f) => Ok(ChunkRead::Memory(f.get_read(start)?)),
            Chunks::Direct(d) => {
                let end = d.range_end(start, 0)?;
                Ok(ChunkRead::Source {
                    chunks: d.clone(),
                    at: start,
                    end,
                    buffer: Bytes::new(),
                })
            }
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Chunks::Fetched(f) => f.get_bytes(start, length),
            Chunks::Direct(d) => d.get_bytes(start, length),
        }
    }
}

/// Column chunks read from their source on demand, only within the ranges
/// the footer gave (checked at fetch).
#[derive(Clone)]
pub struct DirectChunks {
    source: Arc<dyn ByteSource>,
    ranges: Arc<Vec<Range<u64>>>,
    read: Arc<std::sync::atomic::AtomicU64>,
}

impl DirectChunks {
    /// The end of the chunk holding `start..start + length`.
    fn range_end(&self, start: u64, length: usize) -> parquet::errors::Result<u64> {
        let end = start.saturating_add(length as u64);
        self.ranges
            .iter()
            .find(|r| start >= r.start && start < r.end && end <= r.end)
            .map(|r| r.end)
            .ok_or_else(|| {
                ParquetError::General(format!(
                    "a page refers to bytes {start}..{end} outside its column chunk"
                ))
            })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        if length == 0 {
            return Ok(Bytes::new());
        }
        self.range_end(start, length)?;
        let bytes = self
            .source
            .read_range(start, length)
            .map_err(|e| ParquetError::General(format!("cannot read bytes {start}..: {e}")))?;
        self.read
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(bytes)
    }
}

/// A `Read` over a column chunk (page headers): from memory, or from the
/// source 8 KiB at a time.
pub enum ChunkRead {
    Memory(bytes::buf::Reader<Bytes>),
    Source {
        chunks: DirectChunks,
        at: u64,
        end: u64,
        buffer: Bytes,
    },
}

impl std::io::Read for ChunkRead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ChunkRead::Memory(r) => r.read(out),
            ChunkRead::Source {
                chunks,
                at,
                end,
                buffer,
            } => {
                if buffer.is_empty() {
                    let n = (*end - *at).min(8192) as usize;
                    if n == 0 {
                        return Ok(0);
                    }
                    *buffer = chunks.get_bytes(*at, n).map_err(std::io::Error::other)?;
                    *at += n as u64;
                }
                let n = out.len().min(buffer.len());
                out[..n].copy_from_slice(&buffer[..n]);
                buffer.advance(n);
                Ok(n)
            }
        }
    }
}

/// Run a call into the Parquet decoder, turning a panic into an error: the
/// decoder is a dependency that has panicked on some corrupt files (found
/// by our fuzzing, e.g. a dictionary-encoded page without its dictionary),
/// and a hospital must refuse such a file, not crash.
pub fn contained<T>(origin: impl FnOnce() -> String, call: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).map_err(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no reason given".into());
        ModelError::Parquet {
            origin: origin(),
            message: format!("is corrupt: the Parquet decoder failed on it ({why})"),
        }
    })
}

/// A negative row count in the footer would wrap to billions of rows.
fn check_row_counts(metadata: &ParquetMetaData) -> std::result::Result<(), String> {
    for (i, group) in metadata.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Err(format!(
                "has a corrupt footer: row group {i} claims {} rows",
                group.num_rows()
            ));
        }
        for column in group.columns() {
            if column.compressed_size() < 0
                || column.data_page_offset() < 0
                || column.dictionary_page_offset().is_some_and(|o| o < 0)
            {
                return Err(format!(
                    "has a corrupt footer: row group {i}, column '{}' has a negative offset or size",
                    column.column_path()
                ));
            }
        }
    }
    Ok(())
}

/// A Parquet error worded for people: the decoder's message without its
/// "Parquet error:" prefix.
pub fn parquet_message(e: ParquetError) -> String {
    match e {
        ParquetError::General(m) | ParquetError::ArrowError(m) => m,
        ParquetError::NYI(m) => format!("not supported by this build: {m}"),
        ParquetError::EOF(m) => format!("unexpected end of data: {m}"),
        ParquetError::IndexOutOfBound(i, n) => format!("index {i} out of bounds (of {n})"),
        ParquetError::NeedMoreData(n) => format!("needs {n} bytes, more than there are"),
        ParquetError::NeedMoreDataRange(r) => {
            format!("needs bytes {}..{}, which are not there", r.start, r.end)
        }
        other => other.to_string(),
    }
}

/// Column chunks of one row group, in memory: the `ChunkReader` the
/// decoder reads them through. A read outside them is an error (a corrupt
/// page header pointing elsewhere), never a fetch.
#[derive(Clone)]
pub struct FetchedChunks {
    file_len: u64,
    chunks: Arc<Vec<(u64, Bytes)>>,
}

impl FetchedChunks {
    /// Bytes held: what was read for this row group.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|(_, b)| b.len() as u64).sum()
    }

    fn slice(&self, start: u64, length: Option<usize>) -> parquet::errors::Result<Bytes> {
        for (chunk_start, bytes) in self.chunks.iter() {
            let chunk_end = chunk_start + bytes.len() as u64;
            // A read at a chunk's end belongs to the next chunk (chunks of
            // adjacent columns touch), unless it reads nothing.
            let inside = start < chunk_end || (length == Some(0) && start == chunk_end);
            if start >= *chunk_start && inside {
                let from = (start - chunk_start) as usize;
                let to = match length {
                    Some(n) => from.checked_add(n).filter(|&t| t <= bytes.len()),
                    None => Some(bytes.len()),
                };
                if let Some(to) = to {
                    return Ok(bytes.slice(from..to));
                }
            }
        }
        Err(ParquetError::General(format!(
            "a page refers to bytes {start}..{} outside its column chunk",
            start.saturating_add(length.unwrap_or(0) as u64)
        )))
    }
}

impl Length for FetchedChunks {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for FetchedChunks {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(self.slice(start, None)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, Some(length))
    }
}
