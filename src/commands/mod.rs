//! One module per CLI command.

pub mod config_check;
pub mod data;
pub mod overrides;
pub mod privacy;
pub mod run;
pub mod serve;
