//! The hospital agent: one actor wrapping one `Learner` over the hospital's
//! own data. Only feature statistics and model updates leave it.

mod actor;
mod learner;
mod observer;
pub mod releases;
mod secure;

pub use actor::{CrashAt, Hospital, HospitalArgs, SecurePolicy};
pub use learner::HospitalLearner;
pub use observer::HospitalObserver;
pub use secure::SecAggIdentity;
