//! The columnar reader against files written here: every value back, the
//! null policies, schema checks, and truncated or corrupt files refused
//! with reasons.

use std::path::Path;
use std::sync::Arc;

use super::write::{Cell, ColumnType, TableWriter};
use super::*;

/// `rows` rows: features `x0..x{d-1}` (`x_j = i * (j + 1) / 10`), label
/// `y = i % 3 == 0` as an Int64; `null_at` puts a null in `x1` of that row.
fn write_table(path: &Path, rows: usize, d: usize, group_rows: usize, null_at: Option<usize>) {
    let mut columns: Vec<(String, ColumnType)> =
        (0..d).map(|j| (format!("x{j}"), ColumnType::Float64)).collect();
    columns.push(("y".into(), ColumnType::Int64));
    let mut w = TableWriter::create(path, &columns, group_rows, vec![]).unwrap();
    for i in 0..rows {
        let mut row: Vec<Cell> = (0..d)
            .map(|j| Cell::Float(i as f64 * (j + 1) as f64 / 10.0))
            .collect();
        if null_at == Some(i) {
            row[1] = Cell::Null;
        }
        row.push(Cell::Int(i64::from(i % 3 == 0)));
        w.push(&row).unwrap();
    }
    assert_eq!(w.finish().unwrap(), rows as u64);
}

fn spec() -> TableSpec {
    TableSpec {
        label_column: "y".into(),
        positive_class: "1".into(),
        features: None,
        nulls: NullPolicy::Error,
    }
}

fn local(path: &Path) -> Arc<dyn ByteSource> {
    Arc::new(LocalFile::open(path).unwrap())
}

fn read_all(table: &Table) -> Result<(RowBlock, GroupRead)> {
    let mut all = RowBlock {
        n_features: table.features().len(),
        ..RowBlock::default()
    };
    let mut total = GroupRead::default();
    for g in 0..table.groups().len() {
        let read = table.read_group(g, |b| {
            all.features.extend_from_slice(&b.features);
            all.labels.extend_from_slice(&b.labels);
            Ok(())
        })?;
        total.rows += read.rows;
        total.dropped += read.dropped;
        total.bytes += read.bytes;
    }
    Ok((all, total))
}

#[test]
fn every_value_comes_back_in_order_across_row_groups_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    // More rows than one decoded batch, in row groups that do not divide it.
    let rows = BATCH_ROWS_FOR_TEST;
    write_table(&path, rows, 3, 7_000, None);
    let table = Table::open(vec![local(&path)], &spec(), None).unwrap();
    assert_eq!(table.features(), ["x0", "x1", "x2"]);
    assert_eq!(table.groups().len(), rows.div_ceil(7_000));
    assert_eq!(table.stored_rows(), rows as u64);
    let (all, read) = read_all(&table).unwrap();
    assert_eq!(read.rows, rows as u64);
    assert!(read.bytes > 0);
    for i in [0, 1, 6_999, 7_000, rows - 1] {
        let expected: Vec<f64> = (0..3).map(|j| i as f64 * (j + 1) as f64 / 10.0).collect();
        assert_eq!(all.row(i), expected);
        assert_eq!(all.labels[i], i % 3 == 0);
    }
    // The same bytes from memory read the same, page by page or with
    // whole chunks fetched first (as from object storage).
    let bytes = std::fs::read(&path).unwrap();
    let memory = Table::open(vec![Arc::new(InMemory::new("m", bytes.clone()))], &spec(), None).unwrap();
    assert_eq!(read_all(&memory).unwrap().0, all);
    let whole = Arc::new(InMemory::new("w", bytes).fetching_whole_chunks());
    let whole = Table::open(vec![whole], &spec(), None).unwrap();
    let (rows, read) = read_all(&whole).unwrap();
    assert_eq!(rows, all);
    assert!(read.bytes > 0);
}

const BATCH_ROWS_FOR_TEST: usize = table::BATCH_ROWS + 5_000;

#[test]
fn folding_row_groups_in_parallel_returns_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    write_table(&path, 5_000, 2, 600, None);
    let table = Table::open(vec![local(&path)], &spec(), None).unwrap();
    let order: Vec<usize> = (0..table.groups().len()).rev().collect();
    let sums = |threads| {
        table
            .fold_groups(
                &order,
                threads,
                |_| 0.0f64,
                |acc, b| {
                    *acc += b.features.iter().sum::<f64>();
                    Ok(())
                },
            )
            .unwrap()
    };
    let one = sums(1);
    let four = sums(4);
    assert_eq!(one.len(), order.len());
    for ((a, ra), (b, rb)) in one.iter().zip(&four) {
        assert_eq!(a.to_bits(), b.to_bits());
        assert_eq!(ra, rb);
    }
    // The first slot is the last row group (200 rows: 4800..5000).
    assert_eq!(one[0].1.rows, 200);
}

#[test]
fn a_null_is_refused_naming_file_row_group_row_and_column_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nulls.parquet");
    write_table(&path, 300, 3, 100, Some(142));
    let table = Table::open(vec![local(&path)], &spec(), None).unwrap();
    let e = read_all(&table).unwrap_err().to_string();
    assert!(
        e.contains("nulls.parquet, row group 1, column 'x1'") && e.contains("row 42 is null"),
        "{e}"
    );
    assert!(e.contains("drop_row"), "{e}");
    let drop = TableSpec {
        nulls: NullPolicy::DropRow,
        ..spec()
    };
    let table = Table::open(vec![local(&path)], &drop, None).unwrap();
    let (all, read) = read_all(&table).unwrap();
    assert_eq!((read.rows, read.dropped), (299, 1));
    assert_eq!(all.row(142)[0], 14.3);
}

#[test]
fn schema_mismatches_are_refused_with_the_column_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    write_table(&path, 10, 3, 10, None);
    let open = |spec: TableSpec, expected: Option<&[String]>| {
        Table::open(vec![local(&path)], &spec, expected)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = open(
        TableSpec {
            label_column: "diagnosis".into(),
            ..spec()
        },
        None,
    );
    assert!(
        e.contains("no label column 'diagnosis'") && e.contains("x0 Float64"),
        "{e}"
    );
    let e = open(
        TableSpec {
            positive_class: "M".into(),
            ..spec()
        },
        None,
    );
    assert!(
        e.contains("label column 'y' (Int64)") && e.contains("'M' is not an integer"),
        "{e}"
    );
    let e = open(
        TableSpec {
            features: Some(vec!["x0".into(), "age".into()]),
            ..spec()
        },
        None,
    );
    assert!(e.contains("no feature column 'age'"), "{e}");
    let expected: Vec<String> = ["x0", "x1", "x3"].iter().map(|s| s.to_string()).collect();
    let e = open(spec(), Some(&expected));
    assert!(
        e.contains("lacks the feature columns x3") && e.contains("does not use: x2"),
        "{e}"
    );
    // The same columns in another order are read in the expected order.
    let reordered: Vec<String> = ["x2", "x0", "x1"].iter().map(|s| s.to_string()).collect();
    let table = Table::open(vec![local(&path)], &spec(), Some(&reordered)).unwrap();
    let (all, _) = read_all(&table).unwrap();
    assert_eq!(all.row(5), [5.0 * 3.0 / 10.0, 5.0 / 10.0, 5.0 * 2.0 / 10.0]);
}

#[test]
fn a_text_label_column_is_matched_against_the_positive_class() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.parquet");
    let columns = vec![
        ("radius".to_string(), ColumnType::Float64),
        ("diagnosis".to_string(), ColumnType::Text),
        ("site".to_string(), ColumnType::Text),
    ];
    let mut w = TableWriter::create(&path, &columns, 4, vec![]).unwrap();
    for (r, d) in [(1.0, "M"), (2.0, "B"), (3.0, "M")] {
        w.push(&[Cell::Float(r), Cell::Text(d), Cell::Text("north")])
            .unwrap();
    }
    w.finish().unwrap();
    let spec = TableSpec {
        label_column: "diagnosis".into(),
        positive_class: "M".into(),
        features: None,
        nulls: NullPolicy::Error,
    };
    let table = Table::open(vec![local(&path)], &spec, None).unwrap();
    // The text column 'site' is not numeric: not a default feature.
    assert_eq!(table.features(), ["radius"]);
    assert_eq!(read_all(&table).unwrap().0.labels, [true, false, true]);
    let named = TableSpec {
        features: Some(vec!["radius".into(), "site".into()]),
        ..spec
    };
    let e = Table::open(vec![local(&path)], &named, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("feature column 'site' is Utf8, not a number"), "{e}");
}

#[test]
fn truncated_and_corrupt_files_are_refused_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    write_table(&path, 2_000, 3, 500, None);
    let good = std::fs::read(&path).unwrap();
    let open = |bytes: Vec<u8>| -> String {
        let mut errors = Vec::new();
        for whole in [false, true] {
            let mut memory = InMemory::new("bad.parquet", bytes.clone());
            if whole {
                memory = memory.fetching_whole_chunks();
            }
            let source: Arc<dyn ByteSource> = Arc::new(memory);
            errors.push(match Table::open(vec![source], &spec(), None) {
                Err(e) => e.to_string(),
                Ok(table) => read_all(&table).err().map(|e| e.to_string()).unwrap_or_default(),
            });
        }
        // Both ways of reading refuse the same files.
        assert_eq!(errors[0].is_empty(), errors[1].is_empty(), "{errors:?}");
        errors.swap_remove(0)
    };
    let e = open(good[..good.len() / 2].to_vec());
    assert!(
        e.contains("bad.parquet: is not a Parquet file or is truncated"),
        "{e}"
    );
    let e = open(b"PAR1".to_vec());
    assert!(e.contains("shorter than the smallest Parquet file"), "{e}");
    // A footer length larger than the file.
    let mut long_footer = good.clone();
    let n = long_footer.len();
    long_footer[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = open(long_footer);
    assert!(e.contains("its footer claims 4294967295 bytes"), "{e}");
    // The middle of the data overwritten: decoding fails with a reason.
    let mut scrambled = good.clone();
    for b in &mut scrambled[100..2_000] {
        *b = 0xA5;
    }
    let e = open(scrambled);
    assert!(e.starts_with("bad.parquet"), "{e}");
    // Every single-byte truncation point in the footer is refused too.
    for cut in (good.len() - 200..good.len()).step_by(7) {
        let e = open(good[..cut].to_vec());
        assert!(e.contains("bad.parquet"), "cut at {cut}: {e}");
    }
    // The original still reads.
    assert_eq!(open(good), "");
}

#[test]
fn files_of_a_table_must_agree_on_their_features() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
    write_table(&a, 10, 3, 10, None);
    write_table(&b, 10, 2, 10, None);
    let e = Table::open(vec![local(&a), local(&b)], &spec(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("b.parquet") && e.contains("lacks the feature columns x2"),
        "{e}"
    );
    let c = dir.path().join("c.parquet");
    write_table(&c, 25, 3, 10, None);
    let table = Table::open(vec![local(&a), local(&c)], &spec(), None).unwrap();
    assert_eq!(table.groups().len(), 1 + 3);
    assert_eq!(read_all(&table).unwrap().1.rows, 35);
    let tail = table.with_group_range(1..4).unwrap();
    assert_eq!(read_all(&tail).unwrap().1.rows, 25);
}

#[test]
fn streaming_in_order_survives_a_failing_consumer_and_a_failing_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    write_table(&path, 3_000, 2, 100, None);
    let table = Table::open(vec![local(&path)], &spec(), None).unwrap();
    let order: Vec<usize> = (0..30).rev().collect();
    let mut firsts = Vec::new();
    let read = table
        .stream_groups(&order, 3, |b| {
            firsts.push(b.row(0)[0]);
            Ok(())
        })
        .unwrap();
    assert_eq!(read.rows, 3_000);
    let expected: Vec<f64> = order.iter().map(|&g| (g * 100) as f64 / 10.0).collect();
    assert_eq!(firsts, expected, "groups arrive in the order asked");
    let mut seen = 0;
    let e = table
        .stream_groups(&order, 3, |_| {
            seen += 1;
            if seen == 4 {
                Err(crate::error::ModelError::Training("stop here".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(e.to_string().contains("stop here"));
    // A corrupt group fails the stream with its reason, whichever thread read it.
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[2_000..2_600] {
        *b = 0x5A;
    }
    let corrupt = Table::open(vec![Arc::new(InMemory::new("c.parquet", bytes))], &spec(), None).unwrap();
    let e = corrupt
        .stream_groups(&order, 3, |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("c.parquet, row group"), "{e}");
}
