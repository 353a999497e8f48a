//! A tabular dataset together with its standardised copy, recomputed only
//! when the federated standardizer changes.

use std::sync::Arc;

use ndarray::Array2;

use crate::data::{Dataset, MomentSums, Standardizer};
use crate::error::Result;

pub struct StandardizedData {
    raw: Dataset,
    cached: Option<(Option<Arc<Standardizer>>, Array2<f64>)>,
}

impl StandardizedData {
    pub fn new(raw: Dataset) -> Self {
        Self { raw, cached: None }
    }

    pub fn raw(&self) -> &Dataset {
        &self.raw
    }

    pub fn moment_sums(&self) -> MomentSums {
        MomentSums::of(&self.raw.features)
    }

    /// Features scaled by `standardizer` (raw features when there is none).
    pub fn features(&mut self, standardizer: Option<&Arc<Standardizer>>) -> Result<&Array2<f64>> {
        let fresh = match &self.cached {
            Some((cached, _)) => cached.as_deref() != standardizer.map(|s| s.as_ref()),
            None => true,
        };
        if fresh {
            let matrix = match standardizer {
                Some(s) => s.apply(&self.raw.features)?,
                None => self.raw.features.clone(),
            };
            self.cached = Some((standardizer.cloned(), matrix));
        }
        Ok(&self.cached.as_ref().expect("filled above").1)
    }
}
