//! A model (`Params`) as bytes: names and shapes, then one raw
//! little-endian f32 block.
//!
//! ```text
//! count u32 | count x (name length u16 | name UTF-8 | rank u8 | rank x dim u64) | values f32 LE
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use medfed_models::{Layout, Params, TensorSpec};

use super::{Reader, WireError};

const MAX_TENSORS: usize = 65_536;
const MAX_NAME: usize = 1024;
const MAX_RANK: usize = 8;

pub fn encode(params: &Params) -> Vec<u8> {
    let mut out = header(params);
    out.extend_from_slice(&values_le(params));
    out
}

/// Names and shapes: the part of `encode` in front of the values.
pub fn header(params: &Params) -> Vec<u8> {
    let specs = params.layout().specs();
    let size: usize = specs
        .iter()
        .map(|s| 2 + s.name.len() + 1 + 8 * s.shape.len())
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(specs.len() as u32).to_le_bytes());
    for spec in specs {
        out.extend_from_slice(&(spec.name.len() as u16).to_le_bytes());
        out.extend_from_slice(spec.name.as_bytes());
        out.push(spec.shape.len() as u8);
        for &d in &spec.shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
    }
    out
}

/// The values as little-endian bytes: borrowed as they are in memory on
/// little-endian machines (no copy), converted on others.
pub fn values_le(params: &Params) -> Cow<'_, [u8]> {
    let values = params.as_slice();
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// Decode, and with `expected` require exactly that layout (names, shapes, order).
pub fn decode(bytes: &[u8], expected: Option<&Arc<Layout>>) -> Result<Params, WireError> {
    let mut r = Reader::new(bytes);
    let (specs, total) = specs(&mut r)?;
    let data_len = byte_len(total)?;
    if r.remaining() != data_len {
        return Err(WireError::Truncated {
            needed: bytes.len() - r.remaining() + data_len,
            got: bytes.len(),
        });
    }
    let data = r.take(data_len)?;
    let values: Vec<f32> = if cfg!(target_endian = "little") {
        let mut values = vec![0f32; total];
        bytemuck::cast_slice_mut::<f32, u8>(&mut values).copy_from_slice(data);
        values
    } else {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    params(specs, values, expected)
}

/// Decode names and shapes (`header`) whose values arrived apart, already
/// in memory order (the direct stream reads them straight into `values`).
pub fn decode_apart(
    header: &[u8],
    values: Vec<f32>,
    expected: Option<&Arc<Layout>>,
) -> Result<Params, WireError> {
    let mut r = Reader::new(header);
    let (specs, total) = specs(&mut r)?;
    if !r.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} bytes after the tensor names",
            r.remaining()
        )));
    }
    if values.len() != total {
        return Err(WireError::Malformed(format!(
            "the tensor names describe {total} values but {} arrived",
            values.len()
        )));
    }
    params(specs, values, expected)
}

/// The names and shapes in front of the values, and how many values they describe.
fn specs(r: &mut Reader<'_>) -> Result<(Vec<TensorSpec>, usize), WireError> {
    let bad = |m: String| WireError::Malformed(m);
    let count = r.u32()? as usize;
    if count > MAX_TENSORS {
        return Err(bad(format!("{count} tensors (at most {MAX_TENSORS})")));
    }
    let mut specs = Vec::with_capacity(count.min(1024));
    let mut total: usize = 0;
    for i in 0..count {
        let name_len = r.u16()? as usize;
        if name_len > MAX_NAME {
            return Err(bad(format!("tensor {i}: a name of {name_len} bytes")));
        }
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| bad(format!("tensor {i}: its name is not UTF-8")))?
            .to_string();
        let rank = r.u8()? as usize;
        if rank > MAX_RANK {
            return Err(bad(format!("tensor '{name}': rank {rank} (at most {MAX_RANK})")));
        }
        let mut shape = Vec::with_capacity(rank);
        let mut numel: usize = 1;
        for _ in 0..rank {
            let d = usize::try_from(r.u64()?)
                .map_err(|_| bad(format!("tensor '{name}': dimension too large")))?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| bad(format!("tensor '{name}': element count overflows")))?;
            shape.push(d);
        }
        total = total
            .checked_add(numel)
            .ok_or_else(|| bad("element count overflows".into()))?;
        specs.push(TensorSpec::new(name, &shape));
    }
    byte_len(total)?;
    Ok((specs, total))
}

fn byte_len(values: usize) -> Result<usize, WireError> {
    values
        .checked_mul(4)
        .ok_or_else(|| WireError::Malformed("element count overflows".into()))
}

fn params(
    specs: Vec<TensorSpec>,
    values: Vec<f32>,
    expected: Option<&Arc<Layout>>,
) -> Result<Params, WireError> {
    let bad = |m: String| WireError::Malformed(m);
    let layout = match expected {
        Some(layout) => {
            if layout.specs() != specs.as_slice() {
                return Err(bad("the tensors are not those of this task's model".into()));
            }
            layout.clone()
        }
        None => Arc::new(Layout::new(specs).map_err(|e| bad(e.to_string()))?),
    };
    Params::new(layout, values).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn params() -> Params {
        let layout = Arc::new(
            Layout::new(vec![
                TensorSpec::new("conv1.weight", &[8, 1, 3, 3]),
                TensorSpec::new("fc.bias", &[1]),
                TensorSpec::new("scalar", &[]),
            ])
            .unwrap(),
        );
        let mut values: Vec<f32> = (0..74).map(|i| i as f32 * -0.37).collect();
        values[3] = f32::NAN;
        values[4] = -0.0;
        values[5] = f32::MIN_POSITIVE / 2.0; // subnormal
        Params::new(layout, values).unwrap()
    }

    #[test]
    fn round_trip_is_bit_exact_with_names_and_shapes() {
        let p = params();
        let bytes = encode(&p);
        for expected in [None, Some(p.layout())] {
            let q = decode(&bytes, expected).unwrap();
            assert_eq!(q.layout().specs(), p.layout().specs());
            let bits = |x: &Params| x.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&q), bits(&p));
        }
    }

    #[test]
    fn wrong_layouts_truncations_and_garbage_are_errors_not_panics() {
        let p = params();
        let bytes = encode(&p);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], None).is_err(), "prefix {cut}");
        }
        let other = Arc::new(Layout::new(vec![TensorSpec::new("w", &[74])]).unwrap());
        assert!(decode(&bytes, Some(&other))
            .unwrap_err()
            .to_string()
            .contains("not those of this task"));
        // A header claiming an absurd shape is refused before any allocation.
        let mut huge = 1u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&1u16.to_le_bytes());
        huge.push(b'w');
        huge.push(2);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge, None).is_err());
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20_000 {
            let len = rng.random_range(0..48);
            let b: Vec<u8> = (0..len).map(|_| rng.random_range(0..4u8)).collect();
            let _ = decode(&b, None);
        }
    }
}
