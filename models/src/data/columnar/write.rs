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
pub use parquet::basic::Compression;
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
        Self::create_compressed(path, columns, row_group_rows, metadata, Compression::SNAPPY)
    }

    /// `create` with another codec (tests and fuzz corpora cover each).
    pub fn create_compressed(
        path: &Path,
        columns: &[(String, ColumnType)],
        row_group_rows: usize,
        metadata: Vec<(String, String)>,
        compression: Compression,
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
            .set_compression(compression)
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

/// A SYNTHETIC labelled table with a known linear rule (not patient data):
/// feature `x_j = mean_j + scale_j * z_j` with `z ~ N(0, 1)`, and the label
/// `w . z + bias + logistic noise > 0`. The rule is written into the file's
/// metadata (`medfed.synthetic.rule`), so that a model can be checked
/// against it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LinearRule {
    pub weights: Vec<f64>,
    pub bias: f64,
    pub means: Vec<f64>,
    pub scales: Vec<f64>,
    pub seed: u64,
}

impl LinearRule {
    /// A rule over `features` features drawn from `seed`.
    pub fn draw(features: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        use rand_distr::StandardNormal;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let weights = (0..features)
            .map(|_| rng.sample::<f64, _>(StandardNormal) * 2.0 / (features as f64).sqrt())
            .collect();
        let means = (0..features).map(|_| rng.random_range(-50.0..50.0)).collect();
        let scales = (0..features).map(|_| rng.random_range(0.1..20.0)).collect();
        Self {
            weights,
            bias: rng.random_range(-0.5..0.5),
            means,
            scales,
            seed,
        }
    }

    /// Write `rows` rows to `path` (refused if it exists) as columns
    /// `x0..x{d-1}` and `label` (1 or 0), rows drawn from the rule's seed.
    pub fn write(&self, path: &Path, rows: u64, row_group_rows: usize) -> Result<u64> {
        use rand::{Rng, SeedableRng};
        use rand_distr::StandardNormal;
        let d = self.weights.len();
        let mut columns: Vec<(String, ColumnType)> =
            (0..d).map(|j| (format!("x{j}"), ColumnType::Float64)).collect();
        columns.push(("label".into(), ColumnType::Int64));
        let rule = serde_json::to_string(self).map_err(|e| ModelError::Invalid(e.to_string()))?;
        let metadata = vec![
            (
                "medfed.synthetic".to_string(),
                "SYNTHETIC data from `medfed data synth-table`: labelled by a known linear rule plus \
                 logistic noise; not patient data"
                    .to_string(),
            ),
            ("medfed.synthetic.rule".to_string(), rule),
        ];
        let mut writer = TableWriter::create(path, &columns, row_group_rows, metadata)?;
        // The rows' stream differs from the rule's (which drew the weights).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ 0x05EE_D0F7_AB1E);
        let mut row = Vec::with_capacity(d + 1);
        for _ in 0..rows {
            row.clear();
            let mut logit = self.bias;
            for j in 0..d {
                let z: f64 = rng.sample(StandardNormal);
                logit += self.weights[j] * z;
                row.push(Cell::Float(self.means[j] + self.scales[j] * z));
            }
            // Logistic noise: the label is Bernoulli(sigmoid(logit)).
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            let noise = (u / (1.0 - u)).ln();
            row.push(Cell::Int(i64::from(logit + noise > 0.0)));
            writer.push(&row)?;
        }
        writer.finish()
    }
}

/// What `convert_csv` wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Converted {
    pub rows: u64,
    /// Each column and the type it was written as.
    pub columns: Vec<(String, String)>,
}

/// CSV to Parquet in two streaming passes: the first finds each column's
/// type (Int64 when every value is an integer, Float64 when every value is
/// a number, text otherwise; empty cells are nulls), the second writes.
pub fn convert_csv(input: &Path, output: &Path, row_group_rows: usize) -> Result<Converted> {
    let shown = input.display().to_string();
    let csv_err = |message: String| ModelError::Csv {
        path: shown.clone(),
        message,
    };
    let open = || -> Result<csv::Reader<std::fs::File>> {
        let file = File::open(input).map_err(|source| ModelError::Io {
            path: shown.clone(),
            source,
        })?;
        Ok(csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(file))
    };
    let mut reader = open()?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| csv_err(format!("cannot read the header row: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    if headers.is_empty() || headers.iter().any(String::is_empty) {
        return Err(csv_err("every column needs a name in the header row".into()));
    }
    let mut types = vec![ColumnType::Int64; headers.len()];
    let mut record = csv::StringRecord::new();
    let mut line = 1u64;
    while reader
        .read_record(&mut record)
        .map_err(|e| csv_err(format!("line {}: {e}", line + 1)))?
    {
        line += 1;
        if record.len() != headers.len() {
            return Err(csv_err(format!(
                "line {line} has {} fields, the header has {}",
                record.len(),
                headers.len()
            )));
        }
        for (t, value) in types.iter_mut().zip(record.iter()) {
            if value.is_empty() {
                continue;
            }
            if *t == ColumnType::Int64 && value.parse::<i64>().is_err() {
                *t = ColumnType::Float64;
            }
            if *t == ColumnType::Float64 && value.parse::<f64>().is_err() {
                *t = ColumnType::Text;
            }
        }
    }
    let columns: Vec<(String, ColumnType)> = headers.iter().cloned().zip(types.iter().copied()).collect();
    let mut writer = TableWriter::create(
        output,
        &columns,
        row_group_rows,
        vec![("medfed.converted_from".into(), shown.clone())],
    )?;
    let mut reader = open()?;
    let mut line = 1u64;
    while reader
        .read_record(&mut record)
        .map_err(|e| csv_err(format!("line {}: {e}", line + 1)))?
    {
        line += 1;
        let mut row: Vec<Cell> = Vec::with_capacity(headers.len());
        for (t, value) in types.iter().zip(record.iter()) {
            row.push(match (t, value) {
                (_, "") => Cell::Null,
                (ColumnType::Int64, v) => {
                    Cell::Int(v.parse().map_err(|_| csv_err(format!("line {line} changed")))?)
                }
                (ColumnType::Float64, v) => {
                    Cell::Float(v.parse().map_err(|_| csv_err(format!("line {line} changed")))?)
                }
                (ColumnType::Text, v) => Cell::Text(v),
            });
        }
        writer.push(&row)?;
    }
    let rows = writer.finish()?;
    Ok(Converted {
        rows,
        columns: columns
            .into_iter()
            .map(|(name, t)| {
                let t = match t {
                    ColumnType::Float64 => "float64",
                    ColumnType::Int64 => "int64",
                    ColumnType::Text => "text",
                };
                (name, t.to_string())
            })
            .collect(),
    })
}
