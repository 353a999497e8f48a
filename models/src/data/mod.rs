//! Datasets: loading, the held-out split, partitioning into hospitals,
//! federated feature scaling and labelled synthetic generators.

pub mod columnar;
pub mod csv;
pub mod dataset;
pub mod images;
pub mod partition;
pub mod scaling;
pub mod split;
pub mod synthetic;

pub use dataset::Dataset;
pub use partition::Partition;
pub use scaling::{MomentSums, Standardizer};
pub use split::stratified_split;
