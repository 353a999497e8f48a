//! medfed-actors: the federation runtime. A coordinator actor drives a pure
//! per-task state machine; hospital actors train on their own data. It knows
//! nothing of HTTP, SQLite or MLflow: observers subscribe to `FederationEvent`s.

// A dependency no code uses fails the lint (with -D warnings); not in unit-test
// builds, which also see the dev-dependencies of the integration tests.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod cluster;
pub mod coordinator;
pub mod events;
pub mod failpoints;
pub mod hospital;
pub mod messages;
pub mod names;
pub mod report;
pub mod wire;

pub use coordinator::{Coordinator, CoordinatorArgs, TaskSetup};
pub use events::{EventBus, FederationEvent, Live, LiveWatch, Recording, RunOutcome};
pub use hospital::{
    CrashAt, Hospital, HospitalArgs, HospitalLearner, HospitalObserver, SecAggIdentity, SecurePolicy,
};
pub use messages::{
    Ask, CoordinatorMsg, RunRequest, StartRefused, TaskRunSettings, ToCoordinator, ToHospital,
    TrainingSettings,
};
pub use report::{RoundRecord, RunReport, TaskReport};
