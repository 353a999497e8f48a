//! Global-model checkpoints: a safetensors file holding the model's tensors
//! (names and shapes of its `Params`) and, in the metadata, the task, the
//! round and the feature scaler a tabular model needs to predict. The same
//! file loads back into the learner bit for bit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::data::Standardizer;
use crate::error::{ModelError, Result};
use crate::learner::GlobalModel;
use crate::params::{Layout, Params};

const TASK: &str = "medfed.task";
const ROUND: &str = "medfed.round";
const SCALER: &str = "medfed.standardizer";

/// A global model with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub task: String,
    pub round: u32,
    pub model: GlobalModel,
}

impl Checkpoint {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut meta = BTreeMap::from([
            (TASK.to_string(), self.task.clone()),
            (ROUND.to_string(), self.round.to_string()),
        ]);
        if let Some(s) = &self.model.standardizer {
            let json = serde_json::to_string(s.as_ref())
                .map_err(|e| ModelError::Safetensors(format!("scaler metadata: {e}")))?;
            meta.insert(SCALER.to_string(), json);
        }
        self.model.params.to_safetensors(Some(meta))
    }

    /// Parse a checkpoint; with `expected`, its tensors must match that layout.
    pub fn from_bytes(bytes: &[u8], expected: Option<&Arc<Layout>>) -> Result<Self> {
        let params = Params::from_safetensors(bytes, expected)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::Safetensors(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let missing =
            |k: &str| ModelError::Safetensors(format!("not a medfed checkpoint: no `{k}` metadata"));
        let task = meta.get(TASK).ok_or_else(|| missing(TASK))?.clone();
        let round = meta
            .get(ROUND)
            .ok_or_else(|| missing(ROUND))?
            .parse()
            .map_err(|e| ModelError::Safetensors(format!("`{ROUND}` metadata: {e}")))?;
        let standardizer = match meta.get(SCALER) {
            Some(json) => Some(Arc::new(
                serde_json::from_str::<Standardizer>(json)
                    .map_err(|e| ModelError::Safetensors(format!("`{SCALER}` metadata: {e}")))?,
            )),
            None => None,
        };
        Ok(Self {
            task,
            round,
            model: GlobalModel {
                params: Arc::new(params),
                standardizer,
            },
        })
    }

    /// Write atomically and durably: a reader, or a restart after a crash,
    /// never sees half a file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        };
        write_atomically(path, &self.to_bytes()?).map_err(io)
    }

    pub fn load(path: &Path, expected: Option<&Arc<Layout>>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, expected)
            .map_err(|e| ModelError::Safetensors(format!("{}: {e}", path.display())))
    }

    /// `<dir>/round-0007.safetensors`: names sort in round order.
    pub fn file_name(round: u32) -> String {
        format!("round-{round:04}.safetensors")
    }
}

/// Temp file, fsync, rename, fsync of the directory: after a crash the
/// path holds either the old file or the whole new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&partial, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::TensorSpec;

    fn model(scaler: bool) -> GlobalModel {
        let layout =
            Arc::new(Layout::new(vec![TensorSpec::new("w", &[2, 3]), TensorSpec::new("b", &[1])]).unwrap());
        GlobalModel {
            params: Arc::new(
                Params::new(layout, vec![0.1, -2.5, 3.0, f32::MIN_POSITIVE, 7.0, -0.0, 1e-7]).unwrap(),
            ),
            standardizer: scaler.then(|| {
                Arc::new(Standardizer {
                    mean: vec![1.0 / 3.0, 2.0],
                    std: vec![0.1, 1e-300],
                })
            }),
        }
    }

    #[test]
    fn round_trip_is_exact_with_and_without_a_scaler() {
        let dir = tempfile::tempdir().unwrap();
        for scaler in [true, false] {
            let c = Checkpoint {
                task: "breast_cancer".into(),
                round: 7,
                model: model(scaler),
            };
            let path = dir.path().join(Checkpoint::file_name(7));
            c.save(&path).unwrap();
            let back = Checkpoint::load(&path, Some(c.model.params.layout())).unwrap();
            assert_eq!(back, c);
            // Bit-exact, including -0.0 and subnormal-adjacent values.
            let bits = |m: &GlobalModel| {
                m.params
                    .as_slice()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&back.model), bits(&c.model));
        }
        assert_eq!(Checkpoint::file_name(7), "round-0007.safetensors");
    }

    /// Six seeded runs of `--save-model` once gave five different files: the
    /// metadata came out in a `HashMap`'s per-instance order.
    #[test]
    fn the_same_model_always_gives_the_same_bytes() {
        let c = Checkpoint {
            task: "breast_cancer".into(),
            round: 7,
            model: model(true),
        };
        let first = c.to_bytes().unwrap();
        for _ in 0..20 {
            assert_eq!(c.to_bytes().unwrap(), first);
        }
        let header_len = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&first[8..8 + header_len]).unwrap();
        assert!(
            header.starts_with(r#"{"__metadata__":{"medfed.round":"7","medfed.standardizer":"#),
            "{header}"
        );
        assert_eq!((8 + header_len) % 8, 0, "data is 8-byte aligned");
        // Tensors in layout order, contiguous.
        assert!(
            header.find(r#""w":"#).unwrap() < header.find(r#""b":"#).unwrap(),
            "{header}"
        );
    }

    #[test]
    fn foreign_or_mismatched_files_are_refused() {
        let plain = model(false).params.to_safetensors(None).unwrap();
        let e = Checkpoint::from_bytes(&plain, None).unwrap_err();
        assert!(e.to_string().contains("not a medfed checkpoint"), "{e}");
        let c = Checkpoint {
            task: "t".into(),
            round: 1,
            model: model(false),
        };
        let other = Arc::new(Layout::new(vec![TensorSpec::new("w", &[3, 2])]).unwrap());
        assert!(Checkpoint::from_bytes(&c.to_bytes().unwrap(), Some(&other)).is_err());
        let e = Checkpoint::load(Path::new("/nonexistent/x.safetensors"), None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.safetensors"), "{e}");
    }
}
