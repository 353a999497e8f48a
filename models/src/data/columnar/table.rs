//! A labelled table in Parquet files: which columns are the features and
//! the label, checked against each file's schema, and row groups decoded
//! into row-major blocks of features and labels.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type,
    UInt8Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

use super::file::{contained, parquet_message, ParquetFile};
use crate::error::{ModelError, Result};

/// What to do with a row that has a null (or a non-finite number) in a
/// column that is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NullPolicy {
    /// Refuse the data, naming the file, row group, row and column.
    #[default]
    Error,
    /// Skip the row (counted and reported).
    DropRow,
}

/// How to read a labelled table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    pub label_column: String,
    /// The label value of the positive class, as text (`"1"`, `"true"`,
    /// `"M"`); every other value is negative.
    pub positive_class: String,
    /// The feature columns, in the model's order; `None`: every numeric
    /// column but the label, in the file's order.
    pub features: Option<Vec<String>>,
    pub nulls: NullPolicy,
}

/// Rows read per decoded batch: large enough to amortise decoding, small
/// enough that a row-major block of 30 features (1 MB) is still in cache
/// when the gradient reads it (16,384 rows measured 10% slower).
pub const BATCH_ROWS: usize = 4_096;

/// The columns of a table, resolved against a file's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub features: Vec<String>,
    /// Root field index of each feature, in `features` order.
    feature_fields: Vec<usize>,
    label_field: usize,
    label: LabelMatch,
    nulls: NullPolicy,
}

/// How a label value is compared with the positive class.
#[derive(Debug, Clone, PartialEq)]
enum LabelMatch {
    Bool(bool),
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Text(String),
}

fn is_numeric(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
    )
}

impl Columns {
    /// Resolve `spec` against `schema` (of file `origin`): the label must
    /// exist with a type the positive class can be compared with, and every
    /// feature must be a top-level numeric column.
    pub fn resolve(schema: &Schema, spec: &TableSpec, origin: &str) -> Result<Columns> {
        let err = |message: String| ModelError::Parquet {
            origin: origin.to_string(),
            message,
        };
        let field_index = |name: &str| -> Vec<usize> {
            schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name() == name)
                .map(|(i, _)| i)
                .collect()
        };
        let unique = |name: &str, role: &str| -> Result<usize> {
            match field_index(name)[..] {
                [i] => Ok(i),
                [] => Err(err(format!(
                    "has no {role} column '{name}' (columns: {})",
                    column_list(schema)
                ))),
                _ => Err(err(format!("has more than one column named '{name}'"))),
            }
        };
        let label_field = unique(&spec.label_column, "label")?;
        let label_type = schema.field(label_field).data_type();
        let label = label_match(label_type, &spec.positive_class).map_err(|why| {
            err(format!(
                "label column '{}' ({label_type}): {why}",
                spec.label_column
            ))
        })?;
        let features: Vec<String> = match &spec.features {
            Some(names) => names.clone(),
            None => schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, f)| *i != label_field && is_numeric(f.data_type()))
                .map(|(_, f)| f.name().clone())
                .collect(),
        };
        if features.is_empty() {
            return Err(err(format!(
                "has no numeric feature columns besides the label '{}' (columns: {})",
                spec.label_column,
                column_list(schema)
            )));
        }
        let mut feature_fields = Vec::with_capacity(features.len());
        for name in &features {
            if name == &spec.label_column {
                return Err(err(format!("'{name}' is both the label and a feature")));
            }
            let i = unique(name, "feature")?;
            let t = schema.field(i).data_type();
            if !is_numeric(t) {
                return Err(err(format!(
                    "feature column '{name}' is {t}, not a number (integer or floating point)"
                )));
            }
            if feature_fields.contains(&i) {
                return Err(err(format!("feature '{name}' is listed twice")));
            }
            feature_fields.push(i);
        }
        Ok(Columns {
            features,
            feature_fields,
            label_field,
            label,
            nulls: spec.nulls,
        })
    }

    pub fn n_features(&self) -> usize {
        self.features.len()
    }

    /// Root fields read, ascending (the order the decoder returns them in).
    fn roots(&self) -> Vec<usize> {
        let mut roots = self.feature_fields.clone();
        roots.push(self.label_field);
        roots.sort_unstable();
        roots
    }
}

fn column_list(schema: &Schema) -> String {
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    names.join(", ")
}

fn label_match(t: &DataType, positive: &str) -> std::result::Result<LabelMatch, String> {
    let not_a = |kind: &str| format!("the positive class '{positive}' is not {kind}");
    Ok(match t {
        DataType::Boolean => match positive {
            "true" | "1" => LabelMatch::Bool(true),
            "false" | "0" => LabelMatch::Bool(false),
            _ => return Err(not_a("true or false")),
        },
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            LabelMatch::Signed(positive.parse().map_err(|_| not_a("an integer"))?)
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            LabelMatch::Unsigned(positive.parse().map_err(|_| not_a("a non-negative integer"))?)
        }
        DataType::Float32 | DataType::Float64 => {
            let v: f64 = positive.parse().map_err(|_| not_a("a number"))?;
            if !v.is_finite() {
                return Err(not_a("a finite number"));
            }
            LabelMatch::Float(v)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => LabelMatch::Text(positive.to_string()),
        other => {
            return Err(format!(
                "labels of type {other} are not supported (use text, integers or booleans)"
            ))
        }
    })
}

/// Decoded rows: features row-major (`n_features` per row) and labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowBlock {
    pub n_features: usize,
    pub features: Vec<f64>,
    pub labels: Vec<bool>,
}

impl RowBlock {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.features[i * self.n_features..(i + 1) * self.n_features]
    }

    pub fn rows(&self) -> impl Iterator<Item = (&[f64], bool)> + '_ {
        self.features
            .chunks_exact(self.n_features.max(1))
            .zip(self.labels.iter().copied())
    }

    fn clear(&mut self, n_features: usize) {
        self.n_features = n_features;
        self.features.clear();
        self.labels.clear();
    }
}

/// What reading one row group found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupRead {
    /// Rows delivered.
    pub rows: u64,
    /// Rows skipped under `NullPolicy::DropRow`.
    pub dropped: u64,
    /// Bytes fetched from the source.
    pub bytes: u64,
}

impl ParquetFile {
    /// Decode row group `index` in blocks of at most `BATCH_ROWS` rows,
    /// handing each to `each` (one buffer reused: no allocation per row or
    /// per block once it has grown).
    pub fn read_row_group(
        &self,
        index: usize,
        columns: &Columns,
        mut each: impl FnMut(&RowBlock) -> Result<()>,
    ) -> Result<GroupRead> {
        let at = |column: Option<&str>| match column {
            Some(c) => format!("{}, row group {index}, column '{c}'", self.name()),
            None => format!("{}, row group {index}", self.name()),
        };
        let schema = self.metadata().parquet_schema();
        let roots = columns.roots();
        let leaves: Vec<usize> = (0..schema.num_columns())
            .filter(|&leaf| roots.contains(&schema.get_column_root_idx(leaf)))
            .collect();
        let chunks = self.fetch_chunks(index, &leaves)?;
        let bytes = chunks.bytes_read();
        let expected = self.row_group_rows(index);
        let mut reader = contained(
            || at(None),
            || {
                ParquetRecordBatchReaderBuilder::new_with_metadata(chunks, self.metadata().clone())
                    .with_row_groups(vec![index])
                    .with_projection(ProjectionMask::roots(schema, roots.iter().copied()))
                    .with_batch_size(BATCH_ROWS)
                    .build()
            },
        )?
        .map_err(|e| ModelError::Parquet {
            origin: at(None),
            message: parquet_message(e),
        })?;
        // Position of each read root in the decoded batches.
        let position = |field: usize| roots.iter().position(|&r| r == field).expect("a read root");
        let feature_at: Vec<usize> = columns.feature_fields.iter().map(|&f| position(f)).collect();
        let label_at = position(columns.label_field);
        let mut block = RowBlock::default();
        let mut keep = Vec::new();
        let mut read = GroupRead::default();
        let mut seen = 0u64;
        while let Some(batch) = contained(|| at(None), || reader.next())? {
            let batch = batch.map_err(|e| ModelError::Parquet {
                origin: at(None),
                message: format!("cannot be decoded: {e}"),
            })?;
            let n = batch.num_rows();
            let d = columns.n_features();
            block.clear(d);
            block.features.resize(n * d, 0.0);
            block.labels.resize(n, false);
            keep.clear();
            keep.resize(n, true);
            for (j, &p) in feature_at.iter().enumerate() {
                fill_feature(batch.column(p), j, d, &mut block.features, &mut keep);
            }
            fill_labels(
                batch.column(label_at),
                &columns.label,
                &mut block.labels,
                &mut keep,
            );
            if let Some(row) = keep.iter().position(|k| !k) {
                if columns.nulls == NullPolicy::Error {
                    let column = first_bad_column(&batch, &feature_at, label_at, columns, row);
                    return Err(ModelError::Parquet {
                        origin: at(Some(&column)),
                        message: format!(
                            "row {} is null or not a finite number (set nulls = \"drop_row\" to skip such rows)",
                            seen + row as u64
                        ),
                    });
                }
                let dropped = compact(&mut block, &keep);
                read.dropped += dropped as u64;
            }
            seen += n as u64;
            read.rows += block.len() as u64;
            if !block.is_empty() {
                each(&block)?;
            }
        }
        read.bytes = bytes.get();
        if seen != expected {
            return Err(ModelError::Parquet {
                origin: at(None),
                message: format!("is corrupt: the footer says {expected} rows, the data holds {seen}"),
            });
        }
        Ok(read)
    }
}

/// Write column `j` of the batch into the row-major `out`, marking rows
/// with a null or a non-finite value in `keep`.
fn fill_feature(array: &ArrayRef, j: usize, d: usize, out: &mut [f64], keep: &mut [bool]) {
    macro_rules! fill {
        ($t:ty) => {{
            let values = array.as_primitive::<$t>().values();
            for (i, v) in values.iter().enumerate() {
                let v = *v as f64;
                out[i * d + j] = v;
                if !v.is_finite() {
                    keep[i] = false;
                }
            }
        }};
    }
    match array.data_type() {
        DataType::Float64 => fill!(Float64Type),
        DataType::Float32 => fill!(Float32Type),
        DataType::Int8 => fill!(Int8Type),
        DataType::Int16 => fill!(Int16Type),
        DataType::Int32 => fill!(Int32Type),
        DataType::Int64 => fill!(Int64Type),
        DataType::UInt8 => fill!(UInt8Type),
        DataType::UInt16 => fill!(UInt16Type),
        DataType::UInt32 => fill!(UInt32Type),
        DataType::UInt64 => fill!(UInt64Type),
        // Resolve admits numeric types only; anything else reads as missing.
        _ => keep.iter_mut().for_each(|k| *k = false),
    }
    mark_nulls(array, keep);
}

fn mark_nulls(array: &ArrayRef, keep: &mut [bool]) {
    if let Some(nulls) = array.logical_nulls() {
        for (i, valid) in nulls.iter().enumerate() {
            if !valid {
                keep[i] = false;
            }
        }
    }
}

fn fill_labels(array: &ArrayRef, label: &LabelMatch, out: &mut [bool], keep: &mut [bool]) {
    macro_rules! compare {
        ($t:ty, $positive:expr, $conv:ty) => {{
            let values = array.as_primitive::<$t>().values();
            for (o, v) in out.iter_mut().zip(values.iter()) {
                *o = (*v as $conv) == $positive;
            }
        }};
    }
    match (array.data_type(), label) {
        (DataType::Boolean, LabelMatch::Bool(p)) => {
            for (o, v) in out.iter_mut().zip(array.as_boolean().values().iter()) {
                *o = v == *p;
            }
        }
        (DataType::Int8, LabelMatch::Signed(p)) => compare!(Int8Type, *p, i64),
        (DataType::Int16, LabelMatch::Signed(p)) => compare!(Int16Type, *p, i64),
        (DataType::Int32, LabelMatch::Signed(p)) => compare!(Int32Type, *p, i64),
        (DataType::Int64, LabelMatch::Signed(p)) => compare!(Int64Type, *p, i64),
        (DataType::UInt8, LabelMatch::Unsigned(p)) => compare!(UInt8Type, *p, u64),
        (DataType::UInt16, LabelMatch::Unsigned(p)) => compare!(UInt16Type, *p, u64),
        (DataType::UInt32, LabelMatch::Unsigned(p)) => compare!(UInt32Type, *p, u64),
        (DataType::UInt64, LabelMatch::Unsigned(p)) => compare!(UInt64Type, *p, u64),
        (DataType::Float32, LabelMatch::Float(p)) => {
            let values = array.as_primitive::<Float32Type>().values();
            for (i, (o, v)) in out.iter_mut().zip(values.iter()).enumerate() {
                *o = f64::from(*v) == *p;
                keep[i] &= v.is_finite();
            }
        }
        (DataType::Float64, LabelMatch::Float(p)) => {
            let values = array.as_primitive::<Float64Type>().values();
            for (i, (o, v)) in out.iter_mut().zip(values.iter()).enumerate() {
                *o = *v == *p;
                keep[i] &= v.is_finite();
            }
        }
        (DataType::Utf8, LabelMatch::Text(p)) => {
            for (o, v) in out.iter_mut().zip(array.as_string::<i32>().iter()) {
                *o = v == Some(p.as_str());
            }
        }
        (DataType::LargeUtf8, LabelMatch::Text(p)) => {
            for (o, v) in out.iter_mut().zip(array.as_string::<i64>().iter()) {
                *o = v == Some(p.as_str());
            }
        }
        (DataType::Utf8View, LabelMatch::Text(p)) => {
            for (o, v) in out.iter_mut().zip(array.as_string_view().iter()) {
                *o = v == Some(p.as_str());
            }
        }
        _ => out.iter_mut().for_each(|o| *o = false),
    }
    mark_nulls(array, keep);
}

/// The first column (in the model's order, then the label) that makes row
/// `row` unusable.
fn first_bad_column(
    batch: &arrow_array::RecordBatch,
    feature_at: &[usize],
    label_at: usize,
    columns: &Columns,
    row: usize,
) -> String {
    let d = columns.n_features();
    for (j, &p) in feature_at.iter().enumerate() {
        let mut one = vec![0.0; d];
        let mut keep = [true];
        let array = batch.column(p).slice(row, 1);
        fill_feature(&array, j, d, &mut one, &mut keep);
        if !keep[0] {
            return columns.features[j].clone();
        }
    }
    batch.schema().field(label_at).name().clone()
}

/// Keep the rows marked in `keep`, in order; returns how many were dropped.
fn compact(block: &mut RowBlock, keep: &[bool]) -> usize {
    let d = block.n_features;
    let mut to = 0;
    for (from, &k) in keep.iter().enumerate() {
        if k {
            if to != from {
                block.features.copy_within(from * d..(from + 1) * d, to * d);
                block.labels[to] = block.labels[from];
            }
            to += 1;
        }
    }
    block.features.truncate(to * d);
    block.labels.truncate(to);
    keep.len() - to
}

/// Resolve `spec` against a file and check it against the features the
/// federation expects (its first file's, or the task's): the same set of
/// columns, read in the expected order whatever the file's order.
pub fn resolve_file(file: &ParquetFile, spec: &TableSpec, expected: Option<&[String]>) -> Result<Columns> {
    let schema = file.metadata().schema();
    let columns = Columns::resolve(schema, spec, file.name())?;
    match expected {
        Some(expected) if columns.features != expected => {
            check_features(&columns.features, expected, file.name())?;
            let ordered = TableSpec {
                features: Some(expected.to_vec()),
                ..spec.clone()
            };
            Columns::resolve(schema, &ordered, file.name())
        }
        _ => Ok(columns),
    }
}

/// Refuse a feature set that differs from `expected`, naming the columns
/// missing and unexpected (the order may differ: columns are read by name).
pub fn check_features(found: &[String], expected: &[String], origin: &str) -> Result<()> {
    match crate::data::dataset::feature_mismatch(found, expected, false) {
        None => Ok(()),
        Some(why) => Err(ModelError::Parquet {
            origin: origin.to_string(),
            message: format!("{why}; list them in `features` to read a subset"),
        }),
    }
}
