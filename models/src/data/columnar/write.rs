//! Writing tables as Parquet (`medfed data synth-table`, `medfed data
//! convert`, tests): typed columns appended row by row, flushed to the file
//! in batches, row groups of a set number of rows, snappy-compressed as
//! Spark and pyarrow write by default.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::file::parquet_message;
use super::table::BATCH_ROWS;
use crate::error::{ModelError, Result};

/// A column's type in a written table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Float64,
    Int64,
    Text,
}

/// One value of a row being written; `Null` in any column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Float(f64),
    Int(i64),
    Text(&'a str),
    Null,
}

enum Builder {
    Float(Float64Builder),
    Int(Int64Builder),
    Text(StringBuilder),
}

pub struct TableWriter {
    path: PathBuf,
    schema: SchemaRef,
    builders: Vec<Builder>,
    pending: usize,
    rows: u64,
    writer: ArrowWriter<BufWriter<File>>,
}

impl TableWriter {
    /// Create `path` (which must not exist) with `columns`, row groups of
    /// `row_group_rows` rows and `metadata` as the file's key-value
    /// metadata.
    pub fn create(
        path: &Path,
        columns: &[(String, ColumnType)],
        row_group_rows: usize,
        metadata: Vec<(String, String)>,
    ) -> Result<Self> {
        if columns.is_empty() {
            return Err(ModelError::Invalid("a table needs at least one column".into()));
        }
        if row_group_rows == 0 {
            return Err(ModelError::Invalid("row groups need at least one row".into()));
        }
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, t)| {
                let t = match t {
                    ColumnType::Float64 => DataType::Float64,
                    ColumnType::Int64 => DataType::Int64,
                    ColumnType::Text => DataType::Utf8,
                };
                Field::new(name, t, true)
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let file = File::create_new(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(row_group_rows))
            .set_key_value_metadata(Some(
                metadata.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect(),
            ))
            .build();
        let writer = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(properties))
            .map_err(|e| write_error(path, e))?;
        let builders = columns
            .iter()
            .map(|(_, t)| match t {
                ColumnType::Float64 => Builder::Float(Float64Builder::with_capacity(BATCH_ROWS)),
                ColumnType::Int64 => Builder::Int(Int64Builder::with_capacity(BATCH_ROWS)),
                ColumnType::Text => Builder::Text(StringBuilder::new()),
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            schema,
            builders,
            pending: 0,
            rows: 0,
            writer,
        })
    }

    /// Append one row; a cell of the wrong type for its column is refused.
    pub fn push(&mut self, row: &[Cell<'_>]) -> Result<()> {
        if row.len() != self.builders.len() {
            return Err(ModelError::Invalid(format!(
                "a row of {} values for a table of {} columns",
                row.len(),
                self.builders.len()
            )));
        }
        for (j, (builder, cell)) in self.builders.iter_mut().zip(row).enumerate() {
            match (builder, cell) {
                (Builder::Float(b), Cell::Float(v)) => b.append_value(*v),
                (Builder::Float(b), Cell::Null) => b.append_null(),
                (Builder::Int(b), Cell::Int(v)) => b.append_value(*v),
                (Builder::Int(b), Cell::Null) => b.append_null(),
                (Builder::Text(b), Cell::Text(v)) => b.append_value(v),
                (Builder::Text(b), Cell::Null) => b.append_null(),
                (_, cell) => {
                    return Err(ModelError::Invalid(format!(
                        "column '{}' cannot hold {cell:?}",
                        self.schema.field(j).name()
                    )))
                }
            }
        }
        self.pending += 1;
        if self.pending == BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Float(b) => Arc::new(b.finish()),
                    Builder::Int(b) => Arc::new(b.finish()),
                    Builder::Text(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| ModelError::Invalid(format!("building a batch for {}: {e}", self.path.display())))?;
        self.writer
            .write(&batch)
            .map_err(|e| write_error(&self.path, e))?;
        self.rows += self.pending as u64;
        self.pending = 0;
        Ok(())
    }

    /// Write what is pending and the footer; returns the rows written.
    pub fn finish(mut self) -> Result<u64> {
        self.flush()?;
        let path = self.path.clone();
        self.writer.close().map_err(|e| write_error(&path, e))?;
        Ok(self.rows)
    }
}

fn write_error(path: &Path, e: parquet::errors::ParquetError) -> ModelError {
    ModelError::Parquet {
        origin: path.display().to_string(),
        message: format!("cannot be written: {}", parquet_message(e)),
    }
}

/// Write a dataset as a table: its features as Float64 columns and the
/// label as an Int64 column (1 positive, 0 negative) named `label_column`.
pub fn write_dataset(
    path: &Path,
    data: &crate::data::Dataset,
    label_column: &str,
    row_group_rows: usize,
    metadata: Vec<(String, String)>,
) -> Result<u64> {
    let mut columns: Vec<(String, ColumnType)> = data
        .feature_names
        .iter()
        .map(|n| (n.clone(), ColumnType::Float64))
        .collect();
    columns.push((label_column.to_string(), ColumnType::Int64));
    let mut writer = TableWriter::create(path, &columns, row_group_rows, metadata)?;
    let mut row = Vec::with_capacity(columns.len());
    for (features, &label) in data.features.rows().into_iter().zip(&data.labels) {
        row.clear();
        row.extend(features.iter().map(|&v| Cell::Float(v)));
        row.push(Cell::Int(i64::from(label)));
        writer.push(&row)?;
    }
    writer.finish()
}
