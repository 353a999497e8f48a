//! The medfed application: CLI, configuration, the in-process federation
//! builder and result output. The runtime lives in `medfed-actors`, the
//! math in `medfed-models`.

pub mod cli;
pub mod commands;
pub mod config;
pub mod federation;
pub mod hospital_learner;
pub mod logging;
pub mod output;
pub mod tasks;
pub mod web;
