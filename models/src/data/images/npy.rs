//! The `.npy` format (NumPy 1.0-3.0 headers), for uint8 arrays only: what
//! MedMNIST stores.

use crate::error::{ModelError, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// A C-ordered uint8 array.
#[derive(Debug, Clone, PartialEq)]
pub struct U8Array {
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn parse(bytes: &[u8], name: &str) -> Result<U8Array> {
    let err = |m: String| ModelError::Data(format!("array '{name}': {m}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err("not a .npy array (bad magic)".into()));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(err(format!("unsupported .npy version {major}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| err("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| err("header is not text".into()))?;
    let descr = field(header, "descr").ok_or_else(|| err("header has no 'descr'".into()))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if !matches!(descr, "|u1" | "<u1" | ">u1" | "u1") {
        return Err(err(format!("dtype {descr} is not uint8")));
    }
    if field(header, "fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(err("Fortran-ordered arrays are not supported".into()));
    }
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err("header has no 'shape'".into()))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| err(format!("bad shape entry '{s}'")))
        })
        .collect::<Result<Vec<_>>>()?;
    // Untrusted dimensions: their product must not overflow.
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| err(format!("shape {shape:?} is too large")))?;
    let data = bytes
        .get(start + header_len..)
        .filter(|d| d.len() == count)
        .ok_or_else(|| {
            err(format!(
                "holds {} bytes, shape {shape:?} needs {count}",
                bytes.len() - start - header_len
            ))
        })?
        .to_vec();
    Ok(U8Array { shape, data })
}

fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let rest = header.split(&format!("'{key}':")).nth(1)?;
    Some(rest.trim_start().split(',').next()?.trim())
}

/// Serialise as a version 1.0 `.npy` file.
pub fn write(array: &U8Array) -> Vec<u8> {
    let shape = match array.shape.len() {
        1 => format!("({},)", array.shape[0]),
        _ => format!(
            "({})",
            array
                .shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending in a newline.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + array.data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&array.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_whose_size_overflows_is_an_error_not_a_panic() {
        // Read while writing the fuzz targets: the product of untrusted
        // dimensions overflowed (a panic in debug builds, a wrapped size in
        // release).
        let a = U8Array {
            shape: vec![usize::MAX, 2],
            data: Vec::new(),
        };
        let e = parse(&write(&a), "huge").unwrap_err().to_string();
        assert!(e.contains("is too large"), "{e}");
    }

    #[test]
    fn round_trip_and_numpy_header() {
        let a = U8Array {
            shape: vec![2, 3],
            data: vec![1, 2, 3, 4, 5, 6],
        };
        let bytes = write(&a);
        assert_eq!(
            (10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]]))) % 64,
            0
        );
        assert_eq!(parse(&bytes, "a").unwrap(), a);
        let v = U8Array {
            shape: vec![3],
            data: vec![0, 1, 1],
        };
        assert_eq!(parse(&write(&v), "v").unwrap(), v);
    }

    #[test]
    fn numpy_written_header_parses() {
        // Byte-for-byte what numpy 1.26 writes for np.zeros((1, 2, 2), np.uint8).
        let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2, 2), }";
        let mut h = header.to_string();
        h.push_str(&" ".repeat((64 - (10 + header.len() + 1) % 64) % 64));
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse(&bytes, "z").unwrap().shape, vec![1, 2, 2]);
    }

    #[test]
    fn wrong_dtype_truncation_and_garbage_are_errors() {
        let mut bytes = write(&U8Array {
            shape: vec![4],
            data: vec![0; 4],
        });
        let e = parse(&bytes[..bytes.len() - 1], "t").unwrap_err();
        assert!(e.to_string().contains("needs 4"), "{e}");
        let at = bytes.windows(3).position(|w| w == b"|u1").unwrap();
        bytes[at..at + 3].copy_from_slice(b"<f4");
        assert!(parse(&bytes, "t").unwrap_err().to_string().contains("not uint8"));
        assert!(parse(b"garbage", "g").is_err());
    }
}
