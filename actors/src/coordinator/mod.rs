//! The coordinator: a pure per-task state machine (`fsm`), the per-task
//! runtime data it drives (`task`), and the thin actor that executes its
//! effects (`actor`).

pub mod actor;
pub mod fsm;
pub mod task;

pub use actor::{Coordinator, CoordinatorArgs};
pub use task::{Scaling, TaskSetup};

/// The process group a hospital of `task` joins.
pub fn task_group(task: &str) -> String {
    format!("medfed.task.{task}")
}
