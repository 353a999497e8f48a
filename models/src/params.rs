//! `Params`: an ordered list of named f32 tensors stored in one contiguous
//! buffer, so aggregation streams over a flat slice while checkpoints and the
//! wire format still see names and shapes (the same shape as a safetensors file).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::buffers;
use crate::error::{ModelError, Result};

/// Name and shape of one tensor inside a [`Params`] buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The ordered tensor specs of a model; shared (`Arc`) between all `Params`
/// of one model so copies of a model move only their values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    specs: Vec<TensorSpec>,
    offsets: Vec<usize>,
    len: usize,
}

impl Layout {
    pub fn new(specs: Vec<TensorSpec>) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        let mut offsets = Vec::with_capacity(specs.len());
        let mut len = 0usize;
        for spec in &specs {
            if spec.name.is_empty() {
                return Err(ModelError::Params("a tensor has an empty name".into()));
            }
            if !seen.insert(spec.name.clone()) {
                return Err(ModelError::Params(format!(
                    "tensor name '{}' appears twice",
                    spec.name
                )));
            }
            offsets.push(len);
            len = len
                .checked_add(spec.numel())
                .ok_or_else(|| ModelError::Params("layout size overflows usize".into()))?;
        }
        Ok(Self { specs, offsets, len })
    }

    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Range of tensor `index` inside the flat buffer.
    pub fn range(&self, index: usize) -> std::ops::Range<usize> {
        let start = self.offsets[index];
        start..start + self.specs[index].numel()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }
}

/// Model parameters: a layout and one flat f32 buffer. Large buffers are
/// recycled (`buffers`): a clone takes one from the pool, a drop returns it.
#[derive(Debug, PartialEq)]
pub struct Params {
    layout: Arc<Layout>,
    values: Vec<f32>,
}

impl Clone for Params {
    fn clone(&self) -> Self {
        let values = if self.values.len() >= buffers::MIN_LEN {
            let mut values = buffers::take(self.values.len());
            values.copy_from_slice(&self.values);
            values
        } else {
            self.values.clone()
        };
        Self {
            layout: self.layout.clone(),
            values,
        }
    }
}

impl Drop for Params {
    fn drop(&mut self) {
        buffers::give(std::mem::take(&mut self.values));
    }
}

impl Params {
    pub fn new(layout: Arc<Layout>, values: Vec<f32>) -> Result<Self> {
        if values.len() != layout.len() {
            return Err(ModelError::Params(format!(
                "layout holds {} values but {} were given",
                layout.len(),
                values.len()
            )));
        }
        Ok(Self { layout, values })
    }

    /// One tensor named `name` holding `values` as a vector.
    pub fn single(name: &str, values: Vec<f32>) -> Result<Self> {
        let layout = Layout::new(vec![TensorSpec::new(name, &[values.len()])])?;
        Params::new(Arc::new(layout), values)
    }

    /// No tensors at all: an empty slot until a model's values arrive.
    pub fn empty() -> Self {
        let layout = Layout {
            specs: Vec::new(),
            offsets: Vec::new(),
            len: 0,
        };
        Self {
            layout: Arc::new(layout),
            values: Vec::new(),
        }
    }

    pub fn zeros(layout: Arc<Layout>) -> Self {
        let values = vec![0.0; layout.len()];
        Self { layout, values }
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.values
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.values
    }

    pub fn into_values(mut self) -> Vec<f32> {
        std::mem::take(&mut self.values)
    }

    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        let index = self.layout.index_of(name)?;
        Some(&self.values[self.layout.range(index)])
    }

    /// The same tensors in `layout`'s order (a file read without an
    /// expected layout has its tensors sorted by name); an error if a
    /// tensor is missing, extra or shaped differently.
    pub fn in_layout(&self, layout: &Arc<Layout>) -> Result<Params> {
        let mine: std::collections::HashMap<&str, (&TensorSpec, &[f32])> = self
            .tensors()
            .map(|(spec, values)| (spec.name.as_str(), (spec, values)))
            .collect();
        if mine.len() != layout.specs().len() {
            return Err(ModelError::Params(format!(
                "{} tensors where the model has {}",
                mine.len(),
                layout.specs().len()
            )));
        }
        let mut values = Vec::with_capacity(layout.len());
        for spec in layout.specs() {
            match mine.get(spec.name.as_str()) {
                Some((have, v)) if have.shape == spec.shape => values.extend_from_slice(v),
                Some((have, _)) => {
                    return Err(ModelError::Params(format!(
                        "tensor '{}' has shape {:?} where the model has {:?}",
                        spec.name, have.shape, spec.shape
                    )))
                }
                None => return Err(ModelError::Params(format!("no tensor '{}'", spec.name))),
            }
        }
        Params::new(layout.clone(), values)
    }

    /// Iterate `(spec, values)` in layout order.
    pub fn tensors(&self) -> impl Iterator<Item = (&TensorSpec, &[f32])> {
        self.layout
            .specs()
            .iter()
            .enumerate()
            .map(move |(i, spec)| (spec, &self.values[self.layout.range(i)]))
    }

    /// True when `other` has the same names and shapes in the same order.
    pub fn same_layout(&self, other: &Params) -> bool {
        Arc::ptr_eq(&self.layout, &other.layout) || *self.layout == *other.layout
    }

    /// L2 norm of the flat vector, accumulated in f64.
    pub fn l2_norm(&self) -> f64 {
        l2_norm(&self.values)
    }

    /// `self - other`, element-wise (the model delta of a local update).
    pub fn sub(&self, other: &Params) -> Result<Params> {
        self.check_same_layout(other)?;
        let values = self
            .values
            .iter()
            .zip(&other.values)
            .map(|(a, b)| a - b)
            .collect();
        Ok(Params {
            layout: self.layout.clone(),
            values,
        })
    }

    /// `self += other`, element-wise.
    pub fn add_assign(&mut self, other: &Params) -> Result<()> {
        self.check_same_layout(other)?;
        for (a, b) in self.values.iter_mut().zip(&other.values) {
            *a += b;
        }
        Ok(())
    }

    fn check_same_layout(&self, other: &Params) -> Result<()> {
        if self.same_layout(other) {
            Ok(())
        } else {
            Err(ModelError::Params(
                "the two parameter sets have different tensor names or shapes".into(),
            ))
        }
    }

    /// Serialise as a safetensors file (F32, little-endian) with optional
    /// metadata. Byte-deterministic: the same tensors and metadata give the
    /// same file (metadata keys sorted, tensors in layout order), so a
    /// model's sha256 identifies it. The safetensors crate writes its
    /// metadata from a `HashMap`, whose order changes from process to process.
    pub fn to_safetensors(&self, metadata: Option<BTreeMap<String, String>>) -> Result<Vec<u8>> {
        use serde_json::{json, Value};
        let mut fields: Vec<(String, Value)> = Vec::new();
        if let Some(meta) = metadata {
            fields.push(("__metadata__".into(), json!(meta)));
        }
        let mut offset = 0usize;
        for (spec, _) in self.tensors() {
            let bytes = spec.numel() * 4;
            fields.push((
                spec.name.clone(),
                json!({"dtype": "F32", "shape": spec.shape, "data_offsets": [offset, offset + bytes]}),
            ));
            offset += bytes;
        }
        // Written by hand so that the key order is the order above, whatever
        // serde_json's map ordering feature says.
        let mut header = String::from("{");
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&Value::String(key.clone()).to_string());
            header.push(':');
            header.push_str(&value.to_string());
        }
        header.push('}');
        // The data starts 8-byte aligned, as the format recommends.
        while (8 + header.len()) % 8 != 0 {
            header.push(' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + offset);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for (_, values) in self.tensors() {
            out.extend_from_slice(&f32_bytes(values));
        }
        Ok(out)
    }

    /// Parse a safetensors file. Tensors keep the order of `expected` when it
    /// is given (and must match it exactly); otherwise they are sorted by name,
    /// since safetensors itself does not preserve order.
    pub fn from_safetensors(bytes: &[u8], expected: Option<&Arc<Layout>>) -> Result<Params> {
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::Safetensors(e.to_string()))?;
        let layout = match expected {
            Some(layout) => layout.clone(),
            None => {
                let mut specs: Vec<TensorSpec> = file
                    .iter()
                    .map(|(name, view)| TensorSpec::new(name, view.shape()))
                    .collect();
                specs.sort_by(|a, b| a.name.cmp(&b.name));
                Arc::new(Layout::new(specs)?)
            }
        };
        if file.len() != layout.specs().len() {
            return Err(ModelError::Safetensors(format!(
                "file holds {} tensors, the model has {}",
                file.len(),
                layout.specs().len()
            )));
        }
        let mut values = Vec::with_capacity(layout.len());
        for spec in layout.specs() {
            let view = file
                .tensor(&spec.name)
                .map_err(|_| ModelError::Safetensors(format!("tensor '{}' is missing", spec.name)))?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(ModelError::Safetensors(format!(
                    "tensor '{}' has dtype {:?}, expected F32",
                    spec.name,
                    view.dtype()
                )));
            }
            if view.shape() != spec.shape.as_slice() {
                return Err(ModelError::Safetensors(format!(
                    "tensor '{}' has shape {:?}, expected {:?}",
                    spec.name,
                    view.shape(),
                    spec.shape
                )));
            }
            values.extend(
                view.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        Params::new(layout, values)
    }
}

/// L2 norm of a slice, accumulated in f64 for stability on large models.
pub fn l2_norm(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// The little-endian bytes of an f32 slice, copied once.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Arc<Layout> {
        Arc::new(
            Layout::new(vec![
                TensorSpec::new("weight", &[2, 3]),
                TensorSpec::new("bias", &[1]),
            ])
            .unwrap(),
        )
    }

    #[test]
    fn tensors_are_views_into_the_flat_buffer() {
        let p = Params::new(layout(), vec![1., 2., 3., 4., 5., 6., 7.]).unwrap();
        assert_eq!(p.tensor("weight").unwrap(), &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(p.tensor("bias").unwrap(), &[7.]);
        assert!(p.tensor("nope").is_none());
    }

    #[test]
    fn wrong_length_and_duplicate_names_are_refused() {
        assert!(Params::new(layout(), vec![1.0; 6]).is_err());
        let dup = Layout::new(vec![TensorSpec::new("a", &[1]), TensorSpec::new("a", &[2])]);
        assert!(dup.unwrap_err().to_string().contains("'a' appears twice"));
    }

    #[test]
    fn safetensors_round_trip_is_exact() {
        let values = vec![1.5, -2.25, f32::MIN_POSITIVE, 1e-30, 3.0e30, -0.0, 7.125];
        let p = Params::new(layout(), values).unwrap();
        let bytes = p.to_safetensors(None).unwrap();
        let q = Params::from_safetensors(&bytes, Some(p.layout())).unwrap();
        assert_eq!(p.as_slice(), q.as_slice());
        let unordered = Params::from_safetensors(&bytes, None).unwrap();
        assert_eq!(unordered.tensor("bias").unwrap(), &[7.125]);
    }

    #[test]
    fn safetensors_with_wrong_shape_is_refused() {
        let other = Arc::new(
            Layout::new(vec![
                TensorSpec::new("weight", &[3, 2]),
                TensorSpec::new("bias", &[1]),
            ])
            .unwrap(),
        );
        let p = Params::zeros(layout());
        let bytes = p.to_safetensors(None).unwrap();
        let err = Params::from_safetensors(&bytes, Some(&other)).unwrap_err();
        assert!(err.to_string().contains("'weight' has shape [2, 3]"), "{err}");
        assert!(Params::from_safetensors(b"garbage", None).is_err());
    }

    #[test]
    fn delta_and_norm() {
        let a = Params::new(layout(), vec![3., 4., 0., 0., 0., 0., 0.]).unwrap();
        let b = Params::zeros(layout());
        let d = a.sub(&b).unwrap();
        assert_eq!(d.l2_norm(), 5.0);
        let mut c = b.clone();
        c.add_assign(&d).unwrap();
        assert_eq!(c, a);
    }
}
