//! medfed-models: the math of federated learning for hospitals — datasets,
//! learners, aggregation strategies, update checks and metrics. It knows
//! nothing of actors, networks or HTTP.

// A dependency no code uses fails the lint (with -D warnings); not in unit-test
// builds, which also see the dev-dependencies of the integration tests.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod aggregate;
pub mod attack;
pub mod buffers;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod learner;
pub mod metrics;
pub mod params;
pub mod privacy;
pub mod secagg;
pub mod seed;

pub use error::{ModelError, Result};
pub use params::{Layout, Params, TensorSpec};
