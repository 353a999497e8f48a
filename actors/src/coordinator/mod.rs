//! The coordinator. Decisions are pure: `fsm` is one task's round machine
//! over the stages `stage` declares; `core` is the whole federation —
//! admission, run lifecycle, each task's model and collected answers — and
//! returns outputs that carry their data. `actor` is the shell that executes
//! them; `task` is what a task is set up with and its aggregation job;
//! `durable` is what a round commit carries and a resumed run starts from.

pub mod actor;
pub mod core;
pub mod durable;
pub mod fsm;
pub mod stage;
pub mod task;

pub use actor::{Coordinator, CoordinatorArgs};
pub use durable::{ResumePoint, RoundCommit, RoundStore, RunBegin, TaskResume, TaskTotals};
pub use stage::{Asks, Protocol, Stage, StageKind, StageRules};
pub use task::{Scaling, SecureSettings, TaskSetup};

/// The process group a hospital of `task` joins.
pub fn task_group(task: &str) -> String {
    format!("medfed.task.{task}")
}
