//! The medfed application: CLI, configuration, the in-process federation
//! builder and result output. The runtime lives in `medfed-actors`, the
//! math in `medfed-models`.

// A dependency no code uses fails the lint (with -D warnings); not in unit-test
// builds, which also see the dev-dependencies of the integration tests.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

// The binary arms the crash points; the library only carries the dependency.
#[cfg(feature = "failpoints")]
use fail as _;

pub mod allocator;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod durability;
pub mod federation;
pub mod hospital_learner;
pub mod lockfile;
pub mod logging;
pub mod mlflow;
pub mod output;
pub mod report;
pub mod shutdown;
pub mod store;
pub mod tasks;
pub mod web;
