//! What a round is made of. A task's protocol declares its stages — a
//! preparation before round 1 (federated scaling: `[Stats]`) and the stages
//! of every round (`[Train, Evaluate]`; secure aggregation will add its own)
//! — and each stage's rules: its deadline, its quorum and its retries.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One kind of request to the hospitals and the answers it collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Feature statistics for federated scaling.
    Stats,
    /// Local training: the updates, aggregated once the stage closes.
    Train,
    /// Federated evaluation of the round's model on local test splits.
    Evaluate,
}

impl StageKind {
    /// The phase a task is in while this stage collects (panel, metrics).
    pub fn phase_name(self) -> &'static str {
        match self {
            StageKind::Stats => "preparing",
            StageKind::Train => "training",
            StageKind::Evaluate => "evaluating",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StageKind::Stats => "stats",
            StageKind::Train => "train",
            StageKind::Evaluate => "evaluate",
        }
    }
}

/// How one stage collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageRules {
    /// How long an attempt waits for answers.
    pub deadline: Duration,
    /// Usable answers needed to close the stage (0: whatever arrives).
    pub quorum: usize,
    /// Extra attempts when an attempt ends below quorum; then the run aborts.
    pub retries: u32,
}

/// A stage and its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub kind: StageKind,
    pub rules: StageRules,
}

/// The stages of a task's runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// Once per run, as round 0, before round 1.
    pub preparation: Vec<Stage>,
    /// Every round, in order.
    pub round: Vec<Stage>,
}

impl Protocol {
    /// Federated averaging: statistics first when features are scaled
    /// federatedly, then train and federated evaluation every round.
    /// Training and statistics need `quorum` answers; evaluation is
    /// best-effort (no quorum, no retry) within the same deadline.
    pub fn federated(federated_scaling: bool, quorum: usize, retries: u32, deadline: Duration) -> Self {
        let collect = |kind| Stage {
            kind,
            rules: StageRules {
                deadline,
                quorum,
                retries,
            },
        };
        Protocol {
            preparation: if federated_scaling {
                vec![collect(StageKind::Stats)]
            } else {
                Vec::new()
            },
            round: vec![
                collect(StageKind::Train),
                Stage {
                    kind: StageKind::Evaluate,
                    rules: StageRules {
                        deadline,
                        quorum: 0,
                        retries: 0,
                    },
                },
            ],
        }
    }

    /// The stages of `round` (0: the preparation).
    pub fn stages(&self, round: u32) -> &[Stage] {
        if round == 0 {
            &self.preparation
        } else {
            &self.round
        }
    }

    /// The quorum a run needs to start: the largest of its stages'.
    pub fn quorum(&self) -> usize {
        self.preparation
            .iter()
            .chain(&self.round)
            .map(|s| s.rules.quorum)
            .max()
            .unwrap_or(0)
    }
}
