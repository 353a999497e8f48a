//! The fuzz targets: each parser of outside input with a corpus of valid
//! inputs built from the real formats (the shipped configs and data, every
//! wire message sample, generated images and `.npz` files).

use std::io::Cursor;
use std::path::Path;

use medfed_actors::messages::samples::{every_to_coordinator, every_to_hospital};
use medfed_actors::messages::wire::{Uplinked, WireMessage, KIND_MESSAGE};
use medfed_actors::wire::{chunks, encode_frame, Frame};
use medfed_actors::ToHospital;
use medfed_models::data::csv::{read_csv, CsvSpec};
use medfed_models::data::images::{folder, npy, npz, synth};

use super::Target;

const JSON: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"-0.0",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"{\"type\":\"train\"}",
    b"NaN",
];
const TOML: &[&[u8]] = &[
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"=",
    b"\"",
    b"'''",
    b"\n",
    b"#",
    b"inf",
    b"nan",
    b"-0",
    b"1e400",
    b"9223372036854775808",
    b"[tasks.x]\n",
    b"kind = \"imaging\"\n",
    b"hospitals = 0\n",
    b"epsilon = -1\n",
    b"{}",
    b"true",
];
const CSV: &[&[u8]] = &[
    b",", b"\n", b"\r\n", b"\"", b"\"\"", b"NaN", b"inf", b"-", b"1e308", b"M", b"B", b"",
];

/// Every target, by name.
pub fn all() -> Vec<Target> {
    vec![
        wire_frame(),
        wire_message(),
        session_stream(),
        chunk_reassembler(),
        config(),
        csv(),
        npy(),
        npz(),
        image(),
        rest_bodies(),
        parquet(),
    ]
}

fn encoded_messages() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = every_to_hospital()
        .iter()
        .map(|m| m.encode().expect("a sample encodes"))
        .collect();
    // Hospital to coordinator, messages travel with the link they came from.
    out.extend(every_to_coordinator().into_iter().map(|message| {
        Uplinked {
            link: "medfed.hospital.h1.00000000deadbeef".into(),
            message,
        }
        .encode()
        .expect("a sample encodes")
    }));
    out
}

fn decode_both(payload: &[u8]) {
    let _ = ToHospital::decode(payload);
    let _ = Uplinked::decode(payload);
}

/// Whole frames as they arrive: magic, version, length, checksum, payload.
pub fn wire_frame() -> Target {
    Target {
        name: "wire_frame",
        corpus: encoded_messages(),
        dictionary: Vec::new(),
        run: Box::new(|bytes| {
            if let Ok(frame) = Frame::decode(bytes) {
                decode_both(&frame.payload);
            }
        }),
    }
}

/// Message payloads, framed with a recomputed checksum so that every
/// mutation reaches the message decoder (JSON header, tensor block).
pub fn wire_message() -> Target {
    let payloads = encoded_messages()
        .iter()
        .map(|f| Frame::decode(f).expect("a sample frame").payload)
        .collect();
    Target {
        name: "wire_message",
        corpus: payloads,
        dictionary: JSON.to_vec(),
        run: Box::new(|payload| {
            if let Ok(frame) = encode_frame(KIND_MESSAGE, &[payload]) {
                if let Ok(decoded) = Frame::decode(&frame) {
                    decode_both(&decoded.payload);
                }
            }
        }),
    }
}

/// What an authenticated hospital's session sends the coordinator's gate:
/// direct frames (every message sample, models included) and
/// ractor_cluster frames, read by the gate's inbound pump (size checks,
/// the values' checksum, the frame filter) and delivered or counted.
pub fn session_stream() -> Target {
    use medfed_actors::cluster::gate::direct::{self, Direct};
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let direct = |(frame, values)| {
        direct::encode(&Direct {
            pid: 1,
            frame,
            values,
        })
        .expect("a sample frames")
    };
    for m in every_to_hospital() {
        corpus.push(direct(m.encode_apart().expect("a sample encodes")));
    }
    for message in every_to_coordinator() {
        let up = Uplinked {
            link: "medfed.hospital.h1.00000000deadbeef".into(),
            message,
        };
        corpus.push(direct(up.encode_apart().expect("a sample encodes")));
    }
    // Two frames in a row, as a session carries them.
    corpus.push([corpus[0].clone(), corpus[corpus.len() - 1].clone()].concat());
    Target {
        name: "session_stream",
        corpus,
        dictionary: Vec::new(),
        run: Box::new(|bytes| {
            use medfed_actors::cluster::gate::filter::{pump, Policy};
            use medfed_actors::cluster::gate::sessions::Activity;
            use medfed_actors::cluster::gate::{GateStats, Identity, Limits};
            thread_local! {
                static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a runtime");
            }
            // Within the fuzzer's allocation limit; the sizes are checked the same way.
            let limits = Limits {
                max_direct_values: 16 << 20,
                ..Limits::default()
            };
            let policy = Policy::new(Identity::Hospital("h1".into()), limits, true, Activity::default());
            RUNTIME.with(|runtime| {
                runtime.block_on(async {
                    let _ = pump(bytes, tokio::io::sink(), policy, &GateStats::default()).await;
                })
            });
        }),
    }
}

/// Chunks of split messages, each prefixed by its u16 length, pushed into
/// one reassembler.
pub fn chunk_reassembler() -> Target {
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut corpus = Vec::new();
    for (id, max) in [(1u64, 1000usize), (2, 700), (u64::MAX, 3000)] {
        let mut input = Vec::new();
        for chunk in chunks::split(id, &payload, max).expect("a valid split") {
            input.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
            input.extend_from_slice(&chunk);
        }
        corpus.push(input);
    }
    Target {
        name: "chunk_reassembler",
        corpus,
        dictionary: Vec::new(),
        run: Box::new(|bytes| {
            let mut reassembler = chunks::Reassembler::new(1 << 20, 4);
            let mut rest = bytes;
            while rest.len() >= 2 {
                let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
                let end = (2 + len).min(rest.len());
                let _ = reassembler.push(&rest[2..end]);
                rest = &rest[end..];
            }
        }),
    }
}

fn shipped(path: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Configuration files (TOML, then the schema and the semantic checks).
pub fn config() -> Target {
    Target {
        name: "config",
        corpus: ["config/default.toml", "config/demo.toml", "config/dp.toml"]
            .iter()
            .map(|p| shipped(p))
            .collect(),
        dictionary: TOML.to_vec(),
        run: Box::new(|bytes| {
            let text = String::from_utf8_lossy(bytes);
            let _ = medfed::config::parse(&text, "fuzz.toml", std::iter::empty());
        }),
    }
}

/// A hospital's CSV file (the breast-cancer layout).
pub fn csv() -> Target {
    let data = shipped("data/breast_cancer_wisconsin.csv");
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().collect();
    let corpus = vec![
        (lines[..12].join("\n") + "\n").into_bytes(),
        (lines[..3].join("\r\n")).into_bytes(),
    ];
    let spec = CsvSpec {
        label_column: "diagnosis".into(),
        positive_class: "M".into(),
    };
    Target {
        name: "csv",
        corpus,
        dictionary: CSV.to_vec(),
        run: Box::new(move |bytes| {
            let _ = read_csv(bytes, "fuzz.csv", &spec);
        }),
    }
}

fn small_images() -> medfed_models::data::images::ImageSet {
    synth::generate(&synth::SynthSpec {
        count: 6,
        size: 8,
        seed: 1,
        pneumonia_share: 0.5,
    })
    .expect("synthetic images")
}

/// `.npy` arrays (inside `.npz` files).
pub fn npy() -> Target {
    let array = npy::U8Array {
        shape: vec![2, 3, 4],
        data: (0..24).collect(),
    };
    Target {
        name: "npy",
        corpus: vec![npy::write(&array)],
        dictionary: vec![
            b"'shape': (",
            b"), ",
            b"'descr': '|u1'",
            b"True",
            b"0",
            b"18446744073709551615",
        ],
        run: Box::new(|bytes| {
            let _ = npy::parse(bytes, "fuzz");
        }),
    }
}

/// MedMNIST-style `.npz` archives.
pub fn npz() -> Target {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("small.npz");
    let set = small_images();
    npz::write(&path, &[("train", &set), ("val", &set)], true).expect("writing an npz");
    Target {
        name: "npz",
        corpus: vec![std::fs::read(&path).expect("reading it back")],
        dictionary: vec![
            b"train_images.npy",
            b"train_labels.npy",
            b"PK\x03\x04",
            b"PK\x01\x02",
        ],
        run: Box::new(|bytes| {
            let _ = npz::read(Cursor::new(bytes), Path::new("fuzz.npz"), "train", 8);
        }),
    }
}

/// JPEG and PNG files of the chest-X-ray folder layout.
pub fn image() -> Target {
    let grey = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 16 + y) as u8]));
    let mut corpus = Vec::new();
    for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
        let mut bytes = Cursor::new(Vec::new());
        grey.write_to(&mut bytes, format)
            .expect("encoding a corpus image");
        corpus.push(bytes.into_inner());
    }
    Target {
        name: "image",
        corpus,
        dictionary: vec![
            b"IHDR",
            b"IDAT",
            b"IEND",
            b"\xff\xd8",
            b"\xff\xc0",
            b"\xff\xda",
            b"\xff\xff\xff\xff",
        ],
        run: Box::new(|bytes| {
            let _ = folder::decode_bytes(bytes, 8);
        }),
    }
}

/// The REST API's JSON bodies.
pub fn rest_bodies() -> Target {
    use medfed::web::bodies::{parse, LoginBody, StartBody};
    Target {
        name: "rest_bodies",
        corpus: vec![
            br#"{"rounds": 5, "tasks": ["breast_cancer"], "exclude": ["breast_cancer-2"]}"#.to_vec(),
            br#"{"token": "test-token-0123456789abcdef"}"#.to_vec(),
            b"{}".to_vec(),
        ],
        dictionary: JSON.to_vec(),
        run: Box::new(|bytes| {
            let _ = parse::<StartBody>(bytes);
            let _ = parse::<LoginBody>(bytes);
        }),
    }
}

/// Parquet tables as a columnar hospital reads them: small valid files with
/// several row groups, nulls, a text label, and each codec the build reads.
pub fn parquet() -> Target {
    use medfed_models::data::columnar::write::{Cell, ColumnType, Compression, TableWriter};
    use medfed_models::data::columnar::{ByteSource, InMemory, NullPolicy, Table, TableSpec};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut corpus = Vec::new();
    let codecs = [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::LZ4_RAW,
        Compression::ZSTD(Default::default()),
        Compression::GZIP(Default::default()),
    ];
    for (i, compression) in codecs.iter().enumerate() {
        let path = dir.path().join(format!("t{i}.parquet"));
        let columns = vec![
            ("a".to_string(), ColumnType::Float64),
            ("b".to_string(), ColumnType::Int64),
            ("y".to_string(), ColumnType::Text),
        ];
        let mut w =
            TableWriter::create_compressed(&path, &columns, 4, vec![], *compression).expect("a writer");
        for r in 0..10i64 {
            let a = if r == 3 {
                Cell::Null
            } else {
                Cell::Float(r as f64 * 0.5)
            };
            let y = if r % 3 == 0 { "M" } else { "B" };
            w.push(&[a, Cell::Int(r * 7 - 20), Cell::Text(y)]).expect("a row");
        }
        w.finish().expect("the footer");
        corpus.push(std::fs::read(&path).expect("reading it back"));
    }
    let spec = |nulls| TableSpec {
        label_column: "y".into(),
        positive_class: "M".into(),
        features: None,
        nulls,
    };
    Target {
        name: "parquet",
        corpus,
        dictionary: vec![
            b"PAR1",
            b"\x00\x00\x00\x00",
            b"\xff\xff\xff\x7f",
            b"\x15\x00",
            b"\x19\x1c",
        ],
        run: Box::new(move |bytes| {
            // Page by page (local files) and whole chunks (object storage).
            for (nulls, whole) in [(NullPolicy::DropRow, false), (NullPolicy::Error, true)] {
                let mut memory = InMemory::new("fuzz.parquet", bytes.to_vec());
                if whole {
                    memory = memory.fetching_whole_chunks();
                }
                let source: std::sync::Arc<dyn ByteSource> = std::sync::Arc::new(memory);
                let Ok(table) = Table::open(vec![source], &spec(nulls), None) else {
                    return;
                };
                for g in 0..table.groups().len() {
                    let _ = table.read_group(g, |_| Ok(()));
                }
            }
        }),
    }
}
