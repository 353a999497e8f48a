//! What a round is made of. A task's protocol declares its stages — a
//! preparation before round 1 (federated scaling: `[Stats]`) and the stages
//! of every round (`[Train, Evaluate]`, or with secure aggregation
//! `[Setup, ShareKeys, Train, Unmask, Evaluate]`) — each stage's rules (its
//! deadline, its quorum and its retries), whom it asks, and after which
//! stage the round's result is aggregated.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One kind of request to the hospitals and the answers it collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Feature statistics for federated scaling.
    Stats,
    /// Secure aggregation: each hospital's public keys for the round.
    Setup,
    /// Secure aggregation: encrypted shares of each hospital's secrets.
    ShareKeys,
    /// Local training: the updates (masked, under secure aggregation).
    Train,
    /// Secure aggregation: the shares that remove the masks from the sum.
    Unmask,
    /// Federated evaluation of the round's model on local test splits.
    Evaluate,
}

impl StageKind {
    /// The phase a task is in while this stage collects (panel, metrics).
    pub fn phase_name(self) -> &'static str {
        match self {
            StageKind::Stats => "preparing",
            StageKind::Setup | StageKind::ShareKeys => "securing",
            StageKind::Train => "training",
            StageKind::Unmask => "unmasking",
            StageKind::Evaluate => "evaluating",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StageKind::Stats => "stats",
            StageKind::Setup => "setup",
            StageKind::ShareKeys => "share_keys",
            StageKind::Train => "train",
            StageKind::Unmask => "unmask",
            StageKind::Evaluate => "evaluate",
        }
    }
}

/// Whom a stage asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asks {
    /// Every member of the federation.
    Members,
    /// Those whose answers the previous stage kept: the stage continues the
    /// previous one, in the same attempt, and when it cannot close the
    /// attempt restarts from the first stage of the chain.
    PreviousStage,
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

/// A stage, its rules and whom it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub kind: StageKind,
    pub rules: StageRules,
    pub asks: Asks,
}

/// The stages of a task's runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// Once per run, as round 0, before round 1.
    pub preparation: Vec<Stage>,
    /// Every round, in order.
    pub round: Vec<Stage>,
    /// The stage whose close aggregates the round (its updates, or the
    /// unmasked secure sum).
    pub aggregate_after: StageKind,
}

impl Protocol {
    /// Federated averaging: statistics first when features are scaled
    /// federatedly, then train and federated evaluation every round.
    /// Training and statistics need `quorum` answers; evaluation is
    /// best-effort (no quorum, no retry) within the same deadline.
    pub fn federated(federated_scaling: bool, quorum: usize, retries: u32, deadline: Duration) -> Self {
        let rules = StageRules {
            deadline,
            quorum,
            retries,
        };
        Protocol {
            preparation: Self::preparation(federated_scaling, rules),
            round: vec![
                Stage {
                    kind: StageKind::Train,
                    rules,
                    asks: Asks::Members,
                },
                Self::evaluation(deadline),
            ],
            aggregate_after: StageKind::Train,
        }
    }

    /// Federated averaging over a secure sum (SecAgg+): setup asks every
    /// member; share keys, the masked training and unmask each ask those
    /// the previous stage kept, in the same attempt; an attempt that cannot
    /// go on (too few answers, or the secure sum aborted) restarts from
    /// setup. Unmask collects from every survivor it can within the
    /// deadline (no quorum of its own: each secret needs its threshold of
    /// shares, which the secure sum checks).
    pub fn secure(federated_scaling: bool, quorum: usize, retries: u32, deadline: Duration) -> Self {
        let rules = StageRules {
            deadline,
            quorum,
            retries,
        };
        let chained = |kind, rules| Stage {
            kind,
            rules,
            asks: Asks::PreviousStage,
        };
        Protocol {
            preparation: Self::preparation(federated_scaling, rules),
            round: vec![
                Stage {
                    kind: StageKind::Setup,
                    rules,
                    asks: Asks::Members,
                },
                chained(StageKind::ShareKeys, rules),
                chained(StageKind::Train, rules),
                chained(
                    StageKind::Unmask,
                    StageRules {
                        deadline,
                        quorum: 0,
                        retries: 0,
                    },
                ),
                Self::evaluation(deadline),
            ],
            aggregate_after: StageKind::Unmask,
        }
    }

    fn preparation(federated_scaling: bool, rules: StageRules) -> Vec<Stage> {
        if federated_scaling {
            vec![Stage {
                kind: StageKind::Stats,
                rules,
                asks: Asks::Members,
            }]
        } else {
            Vec::new()
        }
    }

    fn evaluation(deadline: Duration) -> Stage {
        Stage {
            kind: StageKind::Evaluate,
            rules: StageRules {
                deadline,
                quorum: 0,
                retries: 0,
            },
            asks: Asks::Members,
        }
    }

    /// Whether the rounds run over a secure sum.
    pub fn is_secure(&self) -> bool {
        self.aggregate_after == StageKind::Unmask
    }

    /// The first stage of the chain stage `index` of `round` belongs to:
    /// where an attempt restarts.
    pub fn chain_head(&self, round: u32, index: usize) -> usize {
        let stages = self.stages(round);
        let mut head = index.min(stages.len().saturating_sub(1));
        while head > 0 && stages[head].asks == Asks::PreviousStage {
            head -= 1;
        }
        head
    }

    /// Stages that need the training quorum (their answers are the inputs).
    pub fn counts_inputs(kind: StageKind) -> bool {
        matches!(kind, StageKind::Setup | StageKind::ShareKeys | StageKind::Train)
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
