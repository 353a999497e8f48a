//! Round commits and resumption: `Durable` is the coordinator's
//! `RoundStore` over this store; `interrupted` and `resume_point` give a
//! restarted coordinator the run to carry on, exactly as it was committed.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{params, OptionalExtension};

use medfed_actors::coordinator::{ResumePoint, RoundCommit, RoundStore, RunBegin, TaskResume, TaskTotals};
use medfed_actors::{RoundRecord, TaskRunSettings};
use medfed_models::aggregate::StrategyState;
use medfed_models::checkpoint::Checkpoint;
use medfed_models::learner::PrivacySpent;

use super::files;
use super::{Result, Store, StoreError};
use crate::web::state::unix_now;

/// Commits rounds of runs started under one configuration (`fingerprint`).
pub struct Durable {
    store: Arc<Store>,
    fingerprint: String,
    config: String,
    /// Per task, the model's input columns (tables): what `predict` matches.
    features: BTreeMap<String, Vec<String>>,
}

impl Durable {
    pub fn new(store: Arc<Store>, fingerprint: String, config: String) -> Self {
        Self {
            store,
            fingerprint,
            config,
            features: BTreeMap::new(),
        }
    }

    pub fn with_features(mut self, features: BTreeMap<String, Vec<String>>) -> Self {
        self.features = features;
        self
    }

    /// The run, every task with its planned rounds, and the hospitals left
    /// out, before the run asks anything of anyone.
    fn begin_run(&self, run: &RunBegin) -> Result<()> {
        let (id, fingerprint, config) = (run.run_id.clone(), self.fingerprint.clone(), self.config.clone());
        let excluded = to_json(&run.excluded)?;
        let tasks = run.tasks.clone();
        let settings: BTreeMap<String, String> = run
            .settings
            .iter()
            .map(|(task, s)| Ok((task.clone(), to_json(s)?)))
            .collect::<Result<_>>()?;
        let features: BTreeMap<String, String> = self
            .features
            .iter()
            .map(|(task, names)| Ok((task.clone(), to_json(names)?)))
            .collect::<Result<_>>()?;
        self.store.writer()?.call(move |tx| {
            tx.execute(
                "INSERT INTO runs (id, started_at, status, fingerprint, config, excluded) VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
                params![id, unix_now(), fingerprint, config, excluded],
            )?;
            for (task, rounds) in &tasks {
                tx.execute(
                    "INSERT INTO run_tasks (run_id, task, target_rounds, features, settings) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, task, rounds, features.get(task), settings.get(task)],
                )?;
            }
            Ok(())
        })
    }

    fn commit_round(&self, c: &RoundCommit) -> Result<()> {
        let round = c.checkpoint.round;
        let bytes = c
            .checkpoint
            .to_bytes()
            .map_err(|e| StoreError::Refused(format!("cannot encode the round's model: {e}")))?;
        let path = files::checkpoint_path(self.store.files_dir(), &c.run_id, &c.task, round);
        // The model is durable before the row that points at it.
        let sha = files::write(&path, &bytes)?;
        let record = to_json(&c.record)?;
        let strategy = to_json(&c.strategy)?;
        let totals = to_json(&c.totals)?;
        let privacy = to_json(&c.privacy)?;
        let (run, task) = (c.run_id.clone(), c.task.clone());
        let metrics = c.record.metrics.clone();
        let participants = c.record.participants as i64;
        let seconds = c.record.seconds;
        let participation = c.record.participation.clone();
        let spent = c.privacy.clone();
        let path_text = path.display().to_string();
        self.store.writer()?.call(move |tx| {
            let now = unix_now();
            tx.execute(
                "INSERT INTO rounds (run_id, task, round, participants, accuracy, loss, f1, auc, seconds, record, committed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    run,
                    task,
                    round,
                    participants,
                    metrics.accuracy,
                    metrics.loss,
                    metrics.f1,
                    metrics.auc,
                    seconds,
                    record,
                    now
                ],
            )?;
            for (hospital, p) in &participation {
                tx.execute(
                    "INSERT INTO participation (run_id, task, round, hospital, outcome, reason, samples)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![run, task, round, hospital, p.outcome.name(), p.reason, p.samples.map(|s| s as i64)],
                )?;
            }
            for (hospital, p) in &spent {
                tx.execute(
                    "INSERT INTO privacy (run_id, task, round, hospital, mechanism, noise_multiplier, epsilon, budget, delta)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![run, task, round, hospital, p.mechanism, p.noise_multiplier, p.epsilon, p.budget, p.delta],
                )?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, task, round, path, sha256, strategy, totals, privacy)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![run, task, round, path_text, sha, strategy, totals, privacy],
            )?;
            Ok(())
        })?;
        // Two rounds' files are kept; older ones are never resumed from.
        if round > 2 {
            let old = files::checkpoint_path(self.store.files_dir(), &c.run_id, &c.task, round - 2);
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Refused(format!("cannot encode the round commit: {e}")))
}

impl RoundStore for Durable {
    fn begin(&self, run: &RunBegin) -> std::result::Result<(), String> {
        self.begin_run(run).map_err(|e| e.to_string())
    }

    fn commit(&self, commit: &RoundCommit) -> std::result::Result<(), String> {
        self.commit_round(commit).map_err(|e| e.to_string())
    }
}

/// A run the store shows as running: its coordinator stopped without
/// ending it.
#[derive(Debug, Clone)]
pub struct Interrupted {
    pub run_id: String,
    pub fingerprint: String,
    /// Per task: (planned rounds, committed rounds).
    pub tasks: BTreeMap<String, (u32, u32)>,
}

impl Store {
    /// The most recent run left running, if any.
    pub fn interrupted(&self) -> Result<Option<Interrupted>> {
        let conn = self.reader()?;
        let run: Option<(String, String)> = conn
            .query_row(
                "SELECT id, fingerprint FROM runs WHERE status = 'running' ORDER BY started_at DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some((run_id, fingerprint)) = run else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare(
                "SELECT t.task, t.target_rounds, (SELECT count(*) FROM rounds r WHERE r.run_id = t.run_id AND r.task = t.task)
                 FROM run_tasks t WHERE t.run_id = ?1 ORDER BY t.task",
            )
            .map_err(|e| self.sql(e))?;
        let tasks = stmt
            .query_map([&run_id], |r| {
                Ok((r.get::<_, String>(0)?, (r.get::<_, u32>(1)?, r.get::<_, u32>(2)?)))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<BTreeMap<_, _>>>())
            .map_err(|e| self.sql(e))?;
        Ok(Some(Interrupted {
            run_id,
            fingerprint,
            tasks,
        }))
    }

    /// Everything the coordinator needs to carry on `run_id`.
    pub fn resume_point(&self, run_id: &str) -> Result<ResumePoint> {
        let conn = self.reader()?;
        let bad = |what: String| StoreError::Refused(format!("run {run_id}: {what}"));
        let mut tasks = BTreeMap::new();
        let mut stmt = conn
            .prepare("SELECT task, target_rounds, settings FROM run_tasks WHERE run_id = ?1 ORDER BY task")
            .map_err(|e| self.sql(e))?;
        let planned: Vec<(String, u32, Option<String>)> = stmt
            .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        let mut settings = BTreeMap::new();
        for (task, target_rounds, set) in planned {
            if let Some(json) = set {
                let parsed: TaskRunSettings = serde_json::from_str(&json)
                    .map_err(|e| bad(format!("task {task}: its run settings cannot be read: {e}")))?;
                settings.insert(task.clone(), parsed);
            }
            let mut stmt = conn
                .prepare("SELECT record FROM rounds WHERE run_id = ?1 AND task = ?2 ORDER BY round")
                .map_err(|e| self.sql(e))?;
            let history: Vec<RoundRecord> = stmt
                .query_map(params![run_id, task], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
                .map_err(|e| self.sql(e))?
                .iter()
                .map(|json| serde_json::from_str(json))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(format!("task {task}: a round record cannot be read: {e}")))?;
            let row: Option<(u32, String, String, String, String, String)> = conn
                .query_row(
                    "SELECT round, path, sha256, strategy, totals, privacy FROM checkpoints WHERE run_id = ?1 AND task = ?2",
                    params![run_id, task],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()
                .map_err(|e| self.sql(e))?;
            let resume = match row {
                None => TaskResume {
                    target_rounds,
                    committed: None,
                    history: Vec::new(),
                    totals: TaskTotals::default(),
                    privacy: BTreeMap::new(),
                },
                Some((round, path, sha, strategy, totals, privacy)) => {
                    if history.last().map(|r| r.round) != Some(round) {
                        return Err(bad(format!(
                            "task {task}: the checkpoint is of round {round} but the last recorded round is {:?}",
                            history.last().map(|r| r.round)
                        )));
                    }
                    let bytes = files::read_checked(std::path::Path::new(&path), &sha)?;
                    let checkpoint = Checkpoint::from_bytes(&bytes, None)
                        .map_err(|e| bad(format!("task {task}: checkpoint {path}: {e}")))?;
                    let strategy: StrategyState = serde_json::from_str(&strategy)
                        .map_err(|e| bad(format!("task {task}: strategy state: {e}")))?;
                    let totals: TaskTotals = serde_json::from_str(&totals)
                        .map_err(|e| bad(format!("task {task}: totals: {e}")))?;
                    let privacy: BTreeMap<String, PrivacySpent> = serde_json::from_str(&privacy)
                        .map_err(|e| bad(format!("task {task}: privacy: {e}")))?;
                    TaskResume {
                        target_rounds,
                        committed: Some((checkpoint.model, strategy)),
                        history,
                        totals,
                        privacy,
                    }
                }
            };
            tasks.insert(task, resume);
        }
        let excluded: String = conn
            .query_row("SELECT excluded FROM runs WHERE id = ?1", [run_id], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        let excluded = serde_json::from_str(&excluded)
            .map_err(|e| bad(format!("its list of hospitals left out cannot be read: {e}")))?;
        Ok(ResumePoint {
            run_id: run_id.to_string(),
            tasks,
            excluded,
            settings,
        })
    }

    /// Mark a run that will never be resumed as abandoned.
    pub fn abandon(&self, run_id: &str) -> Result<()> {
        let id = run_id.to_string();
        let changed = self.writer()?.call(move |tx| {
            tx.execute(
                "UPDATE runs SET status = 'abandoned', ended_at = ?2 WHERE id = ?1 AND status = 'running'",
                params![id, unix_now()],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::Refused(format!(
                "no interrupted run '{run_id}' in {} (see `medfed models list` and the runs of the panel)",
                self.path().display()
            )));
        }
        Ok(())
    }
}
