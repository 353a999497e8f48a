//! Columnar data: labelled tables in Parquet files, on a local disk or in
//! object storage, read as a stream of row groups and never held whole in
//! memory.
//!
//! - `source`: byte-range access to a file (local, in memory; object
//!   storage is implemented by the app, which owns the network);
//! - `file`: one Parquet file's footer and column chunks, checked;
//! - `table`: which columns are features and label, decoded into blocks;
//! - `split`: the row-hash split into training and local test rows.

pub mod file;
pub mod pages;
pub mod progress;
pub mod source;
pub mod split;
pub mod table;
pub mod write;

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use file::ParquetFile;
pub use progress::{ProgressSnapshot, StreamProgress};
pub use source::{ByteSource, InMemory, LocalFile};
pub use split::{HashSplit, RowFilter, Side};
pub use table::{Columns, GroupRead, NullPolicy, RowBlock, TableSpec};

use crate::error::{ModelError, Result};

/// One row group of one file of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRef {
    pub file: usize,
    pub index: usize,
    /// Rows as the file's footer states them (before nulls are dropped).
    pub rows: u64,
}

/// A labelled table over one or more Parquet files with the same features.
pub struct Table {
    files: Vec<ParquetFile>,
    /// Each file's columns (field positions may differ between files).
    columns: Vec<Columns>,
    features: Vec<String>,
    groups: Vec<GroupRef>,
    /// Conditions on the rows this view keeps (none: all).
    filters: Vec<RowFilter>,
    progress: Arc<StreamProgress>,
}

impl Table {
    /// Open every source and resolve `spec` against each; `expected` is the
    /// federation's feature list when it is already known (a mismatch is
    /// refused naming the columns). Files with different features are
    /// refused the same way.
    pub fn open(
        sources: Vec<Arc<dyn ByteSource>>,
        spec: &TableSpec,
        expected: Option<&[String]>,
    ) -> Result<Table> {
        if sources.is_empty() {
            return Err(ModelError::Data("a table needs at least one Parquet file".into()));
        }
        let mut files = Vec::with_capacity(sources.len());
        let mut columns: Vec<Columns> = Vec::with_capacity(sources.len());
        let mut groups = Vec::new();
        for source in sources {
            let file = ParquetFile::open(source)?;
            let known = expected.or_else(|| columns.first().map(|c| c.features.as_slice()));
            let resolved = table::resolve_file(&file, spec, known)?;
            for index in 0..file.row_groups() {
                groups.push(GroupRef {
                    file: files.len(),
                    index,
                    rows: file.row_group_rows(index),
                });
            }
            files.push(file);
            columns.push(resolved);
        }
        let features = columns[0].features.clone();
        Ok(Table {
            files,
            columns,
            features,
            groups,
            filters: Vec::new(),
            progress: Arc::new(StreamProgress::default()),
        })
    }

    pub fn features(&self) -> &[String] {
        &self.features
    }

    pub fn groups(&self) -> &[GroupRef] {
        &self.groups
    }

    pub fn file_names(&self) -> Vec<&str> {
        self.files.iter().map(ParquetFile::name).collect()
    }

    /// Rows in the files' footers, before nulls and the split.
    pub fn stored_rows(&self) -> u64 {
        self.groups.iter().map(|g| g.rows).sum()
    }

    /// The same files restricted to the row groups at `range` of
    /// `groups()` (an in-process hospital's share of a large table).
    pub fn with_group_range(mut self, range: Range<usize>) -> Result<Table> {
        if range.start > range.end || range.end > self.groups.len() {
            return Err(ModelError::Data(format!(
                "row groups {}..{} do not exist: the table has {}",
                range.start,
                range.end,
                self.groups.len()
            )));
        }
        self.groups = self.groups[range].to_vec();
        Ok(self)
    }

    /// The counters every read of this view adds to.
    pub fn progress(&self) -> &Arc<StreamProgress> {
        &self.progress
    }

    /// The same view counting into `progress` (shared with a sibling view).
    pub fn with_progress(mut self, progress: Arc<StreamProgress>) -> Table {
        self.progress = progress;
        self
    }
}

impl Clone for Table {
    /// A second view of the same files (the other side of a split, say)
    /// sharing the opened footers and the progress counters.
    fn clone(&self) -> Table {
        Table {
            files: self.files.clone(),
            columns: self.columns.clone(),
            features: self.features.clone(),
            groups: self.groups.clone(),
            filters: self.filters.clone(),
            progress: self.progress.clone(),
        }
    }
}

impl Table {
    /// The same view keeping only the rows `filter` also keeps.
    pub fn with_filter(mut self, filter: RowFilter) -> Table {
        self.filters.push(filter);
        self
    }

    /// Every value of feature `feature` (after this view's filters), in
    /// the stream's order: one pass, 8 bytes per row.
    pub fn feature_values(&self, feature: usize, threads: usize) -> Result<Vec<f64>> {
        let order: Vec<usize> = (0..self.groups.len()).collect();
        self.progress.pass_started();
        let parts = self.fold_groups(
            &order,
            threads,
            |_| Vec::new(),
            |acc, block| {
                acc.extend(block.rows().map(|(row, _)| row[feature]));
                Ok(())
            },
        )?;
        Ok(parts.into_iter().flat_map(|(values, _)| values).collect())
    }

    /// Decode row group `g` (an index into `groups()`), handing its blocks
    /// (filtered by this view) to `each`.
    pub fn read_group(&self, g: usize, each: impl FnMut(&RowBlock) -> Result<()>) -> Result<GroupRead> {
        let read = self.read_group_uncounted(g, each)?;
        self.progress.group_read(read.rows, read.bytes);
        Ok(read)
    }

    fn read_group_uncounted(
        &self,
        g: usize,
        mut each: impl FnMut(&RowBlock) -> Result<()>,
    ) -> Result<GroupRead> {
        let group = self.groups[g];
        let file = &self.files[group.file];
        let columns = &self.columns[group.file];
        match &self.filters[..] {
            [] => file.read_row_group(group.index, columns, each),
            filters => {
                let mut kept = RowBlock::default();
                let mut filtered = 0u64;
                let mut read = file.read_row_group(group.index, columns, |block| {
                    split::select(filters, block, &mut kept);
                    filtered += (block.len() - kept.len()) as u64;
                    if kept.is_empty() {
                        Ok(())
                    } else {
                        each(&kept)
                    }
                })?;
                read.rows -= filtered;
                Ok(read)
            }
        }
    }

    /// Fold every row group listed in `order` (indices into `groups()`)
    /// on `threads` threads: each group is folded into its own accumulator
    /// from `init` (given the group's position in `order`), and the
    /// accumulators come back in `order`, so that a
    /// caller combining them in order gets the same floating-point result
    /// whatever the thread count.
    pub fn fold_groups<A: Send>(
        &self,
        order: &[usize],
        threads: usize,
        init: impl Fn(usize) -> A + Sync,
        fold: impl Fn(&mut A, &RowBlock) -> Result<()> + Sync,
    ) -> Result<Vec<(A, GroupRead)>> {
        let slots: Vec<Slot<A>> = order.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= order.len() || failed.load(Ordering::Relaxed) {
                break;
            }
            let mut acc = init(i);
            let result = self
                .read_group(order[i], |block| fold(&mut acc, block))
                .map(|read| (acc, read));
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        };
        let threads = threads.clamp(1, order.len().max(1));
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(work);
            }
            work();
        });
        let mut out = Vec::with_capacity(order.len());
        for slot in slots {
            match slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
                Some(result) => out.push(result?),
                // Not reached: a group is skipped only after another failed.
                None => continue,
            }
        }
        if out.len() != order.len() {
            return Err(ModelError::Data("reading the table stopped early".into()));
        }
        Ok(out)
    }

    /// Hand every block of the row groups listed in `order` to `consume`,
    /// in that order, while up to `threads` threads decode the groups ahead.
    /// At most `QUEUED_BLOCKS` decoded blocks wait (the group being consumed
    /// always proceeds), so memory stays at a few blocks whatever the row
    /// groups' size. Returns the totals read.
    pub fn stream_groups(
        &self,
        order: &[usize],
        threads: usize,
        mut consume: impl FnMut(&RowBlock) -> Result<()>,
    ) -> Result<GroupRead> {
        let mut total = GroupRead::default();
        let mut add = |read: GroupRead| {
            total.rows += read.rows;
            total.dropped += read.dropped;
            total.bytes += read.bytes;
        };
        if threads <= 1 || order.len() <= 1 {
            for &g in order {
                add(self.read_group(g, &mut consume)?);
            }
            return Ok(total);
        }
        let state = Mutex::new(Pipeline {
            blocks: std::collections::BTreeMap::new(),
            finished: std::collections::BTreeMap::new(),
            queued: 0,
            current: 0,
            stop: false,
        });
        let changed = std::sync::Condvar::new();
        let next = AtomicUsize::new(0);
        let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
        let wait = |guard| changed.wait(guard).unwrap_or_else(|p| p.into_inner());
        let decode = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= order.len() || lock().stop {
                return;
            }
            let result = self.read_group(order[i], |block| {
                let mut s = lock();
                while !s.stop && s.queued >= QUEUED_BLOCKS && i != s.current {
                    s = wait(s);
                }
                if s.stop {
                    return Err(ModelError::Data("stopped".into()));
                }
                s.blocks.entry(i).or_default().push_back(block.clone());
                s.queued += 1;
                drop(s);
                changed.notify_all();
                Ok(())
            });
            lock().finished.insert(i, result);
            changed.notify_all();
        };
        let result = std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(decode);
            }
            let mut outcome = Ok(());
            'groups: for i in 0..order.len() {
                {
                    let mut s = lock();
                    s.current = i;
                }
                changed.notify_all();
                loop {
                    let mut s = lock();
                    let block = s.blocks.get_mut(&i).and_then(|q| q.pop_front());
                    match block {
                        Some(block) => {
                            s.queued -= 1;
                            drop(s);
                            changed.notify_all();
                            if let Err(e) = consume(&block) {
                                outcome = Err(e);
                                break 'groups;
                            }
                        }
                        None => match s.finished.remove(&i) {
                            Some(Ok(read)) => {
                                add(read);
                                break;
                            }
                            Some(Err(e)) => {
                                outcome = Err(e);
                                break 'groups;
                            }
                            None => drop(wait(s)),
                        },
                    }
                }
            }
            lock().stop = true;
            changed.notify_all();
            outcome
        });
        result.map(|()| total)
    }
}

/// Decoded blocks a consumer of `stream_groups` has not taken yet, at most
/// (4,096 rows each: 1 MB of 30 features).
const QUEUED_BLOCKS: usize = 4;

/// Where one row group's fold lands (empty until a thread has done it).
type Slot<A> = Mutex<Option<Result<(A, GroupRead)>>>;

/// Decoded blocks waiting for the consumer of `stream_groups`.
struct Pipeline {
    blocks: std::collections::BTreeMap<usize, std::collections::VecDeque<RowBlock>>,
    /// Groups whose decoding ended, and how.
    finished: std::collections::BTreeMap<usize, Result<GroupRead>>,
    queued: usize,
    /// The position in `order` being consumed: its decoder never waits.
    current: usize,
    /// The consumer finished or failed: decoders stop.
    stop: bool,
}

/// Threads for decoding: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests;
