//! One module per CLI command.

pub mod audit;
pub mod cluster_node;
pub mod config_check;
pub mod coordinator;
pub mod data;
pub mod gen_certs;
pub mod hospital;
pub mod models;
pub mod overrides;
pub mod predict;
pub mod privacy;
pub mod run;
pub mod serve;
