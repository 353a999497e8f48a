//! The model registry: every finished task of a run becomes a numbered
//! version (1, 2, ...) of its task, with the run, round, metrics, file and
//! sha256 it came from — and its lineage: who contributed to which round,
//! who was turned away and why, and what it cost each hospital's privacy.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::files;
use super::{Result, Store, StoreError};
use crate::web::state::unix_now;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelVersion {
    pub task: String,
    pub version: i64,
    pub run_id: String,
    pub round: u32,
    pub path: String,
    pub sha256: String,
    /// Held-out metrics of the model (as the run's last round reported them).
    pub metrics: serde_json::Value,
    /// Of the configuration, data and held-out set it was trained under.
    pub fingerprint: String,
    pub created_at: f64,
    /// The version it replaces (trained without a withdrawn hospital).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<i64>,
}

/// One hospital's part in one round of a model's run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Contribution {
    pub hospital: String,
    /// accepted | rejected | declined | late | departed
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<i64>,
}

/// What a hospital's privacy stood at after its last release for the model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PrivacyCost {
    pub mechanism: String,
    pub noise_multiplier: f64,
    /// Lifetime epsilon of its dataset after its releases for this model:
    /// what the model and everything released before it cost (RDP composes;
    /// epsilons do not add, so no per-model difference is shown).
    pub epsilon_after: f64,
    pub budget: f64,
    pub delta: f64,
    /// Rounds of this run in which it released an update.
    pub releases: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lineage {
    pub model: ModelVersion,
    /// Per round, every hospital's part.
    pub rounds: BTreeMap<u32, Vec<Contribution>>,
    /// Per hospital, the samples of its accepted updates, summed over rounds.
    pub contributed_samples: BTreeMap<String, i64>,
    pub privacy: BTreeMap<String, PrivacyCost>,
    /// The task's configuration in the run (strategy, training, data).
    pub task_config: serde_json::Value,
    /// The privacy settings in the run.
    pub privacy_config: serde_json::Value,
    /// Hospitals left out of the run (site withdrawal).
    pub excluded: Vec<String>,
}

fn version_of(r: &Row<'_>) -> rusqlite::Result<ModelVersion> {
    let metrics: String = r.get(6)?;
    Ok(ModelVersion {
        task: r.get(0)?,
        version: r.get(1)?,
        run_id: r.get(2)?,
        round: r.get(3)?,
        path: r.get(4)?,
        sha256: r.get(5)?,
        metrics: serde_json::from_str(&metrics).unwrap_or(serde_json::Value::Null),
        fingerprint: r.get(7)?,
        created_at: r.get(8)?,
        replaces: r.get(9)?,
    })
}

const COLUMNS: &str =
    "task, version, run_id, round, path, sha256, metrics, fingerprint, created_at, replaces";

impl Store {
    /// Register the final model of every task of a finished run (once:
    /// a second call registers nothing new).
    pub fn register_run(&self, run_id: &str, fingerprint: &str) -> Result<Vec<ModelVersion>> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(
                "SELECT c.task, c.round, c.path, c.sha256, r.record, runs.replaces
                 FROM checkpoints c JOIN rounds r ON r.run_id = c.run_id AND r.task = c.task AND r.round = c.round
                 JOIN runs ON runs.id = c.run_id
                 WHERE c.run_id = ?1 AND NOT EXISTS (SELECT 1 FROM models m WHERE m.run_id = c.run_id AND m.task = c.task)
                 ORDER BY c.task",
            )
            .map_err(|e| self.sql(e))?;
        let finals: Vec<(String, u32, String, String, String, Option<String>)> = stmt
            .query_map([run_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        let mut registered = Vec::new();
        let excluded: Vec<String> = {
            let text: String = conn
                .query_row("SELECT excluded FROM runs WHERE id = ?1", [run_id], |r| r.get(0))
                .map_err(|e| self.sql(e))?;
            serde_json::from_str(&text).map_err(|e| {
                StoreError::Refused(format!(
                    "run {run_id}: its list of hospitals left out cannot be read: {e}"
                ))
            })?
        };
        for (task, round, path, sha, record, _) in finals {
            let bytes = files::read_checked(std::path::Path::new(&path), &sha)?;
            // Trained without a withdrawn hospital: it replaces the latest
            // version that hospital contributed to.
            let mut replaces: Option<i64> = None;
            for hospital in &excluded {
                for v in self.affected(hospital)?.into_iter().filter(|v| v.task == task) {
                    replaces = replaces.max(Some(v.version));
                }
            }
            let metrics = serde_json::from_str::<serde_json::Value>(&record)
                .ok()
                .and_then(|r| r.get("metrics").cloned())
                .unwrap_or(serde_json::Value::Null);
            let t = task.clone();
            let version: i64 = self.writer()?.call(move |tx| {
                tx.query_row(
                    "SELECT coalesce(max(version), 0) + 1 FROM models WHERE task = ?1",
                    [t],
                    |r| r.get(0),
                )
            })?;
            let target = files::registry_path(self.files_dir(), &task, version);
            files::write(&target, &bytes)?;
            let model = ModelVersion {
                task: task.clone(),
                version,
                run_id: run_id.to_string(),
                round,
                path: target.display().to_string(),
                sha256: sha.clone(),
                metrics,
                fingerprint: fingerprint.to_string(),
                created_at: unix_now(),
                replaces,
            };
            let row = model.clone();
            self.writer()?.call(move |tx| {
                tx.execute(
                    &format!(
                        "INSERT INTO models ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                    ),
                    params![
                        row.task,
                        row.version,
                        row.run_id,
                        row.round,
                        row.path,
                        row.sha256,
                        row.metrics.to_string(),
                        row.fingerprint,
                        row.created_at,
                        row.replaces
                    ],
                )
            })?;
            registered.push(model);
        }
        Ok(registered)
    }

    /// Register the models of finished runs that have none (the process
    /// that finished them stopped before registering); returns them.
    pub fn register_unregistered(&self) -> Result<Vec<ModelVersion>> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(
                "SELECT id, fingerprint FROM runs r WHERE status = 'finished'
                 AND NOT EXISTS (SELECT 1 FROM models m WHERE m.run_id = r.id) ORDER BY started_at",
            )
            .map_err(|e| self.sql(e))?;
        let runs: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        let mut registered = Vec::new();
        for (run, fingerprint) in runs {
            registered.extend(self.register_run(&run, &fingerprint)?);
        }
        Ok(registered)
    }

    /// Every registered version (of `task`, if given), oldest first.
    pub fn models(&self, task: Option<&str>) -> Result<Vec<ModelVersion>> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM models WHERE ?1 IS NULL OR task = ?1 ORDER BY task, version"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([task], version_of)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e));
        rows
    }

    /// One version; `None`: the latest of the task.
    pub fn model(&self, task: &str, version: Option<i64>) -> Result<ModelVersion> {
        let conn = self.reader()?;
        let found = conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM models WHERE task = ?1 AND (?2 IS NULL OR version = ?2)
                     ORDER BY version DESC LIMIT 1"
                ),
                params![task, version],
                version_of,
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        found.ok_or_else(|| {
            let which = version.map_or("any version".to_string(), |v| format!("version {v}"));
            StoreError::Refused(format!(
                "no registered model '{task}' ({which}) in {}; `medfed models list` shows what there is",
                self.path().display()
            ))
        })
    }

    /// The model file's bytes, checked against the recorded sha256.
    pub fn model_bytes(&self, model: &ModelVersion) -> Result<Vec<u8>> {
        files::read_checked(std::path::Path::new(&model.path), &model.sha256)
    }

    pub fn lineage(&self, model: &ModelVersion) -> Result<Lineage> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(
                "SELECT round, hospital, outcome, reason, samples FROM participation
                 WHERE run_id = ?1 AND task = ?2 AND round <= ?3 ORDER BY round, hospital",
            )
            .map_err(|e| self.sql(e))?;
        let mut rounds: BTreeMap<u32, Vec<Contribution>> = BTreeMap::new();
        let mut contributed_samples: BTreeMap<String, i64> = BTreeMap::new();
        let rows: Vec<(u32, Contribution)> = stmt
            .query_map(params![model.run_id, model.task, model.round], |r| {
                Ok((
                    r.get(0)?,
                    Contribution {
                        hospital: r.get(1)?,
                        outcome: r.get(2)?,
                        reason: r.get(3)?,
                        samples: r.get(4)?,
                    },
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        for (round, c) in rows {
            if c.outcome == "accepted" {
                *contributed_samples.entry(c.hospital.clone()).or_default() += c.samples.unwrap_or(0);
            }
            rounds.entry(round).or_default().push(c);
        }
        let mut stmt = conn
            .prepare(
                "SELECT hospital, mechanism, noise_multiplier, epsilon, budget, delta, round FROM privacy
                 WHERE run_id = ?1 AND task = ?2 AND round <= ?3 ORDER BY round",
            )
            .map_err(|e| self.sql(e))?;
        // A hospital released an update in every round its answer arrived,
        // counted or not.
        let mut releases: BTreeMap<&str, usize> = BTreeMap::new();
        for c in rounds.values().flatten() {
            if matches!(c.outcome.as_str(), "accepted" | "rejected" | "late") {
                *releases.entry(c.hospital.as_str()).or_default() += 1;
            }
        }
        let rows: Vec<(String, String, f64, f64, f64, f64)> = stmt
            .query_map(params![model.run_id, model.task, model.round], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        let mut privacy: BTreeMap<String, PrivacyCost> = BTreeMap::new();
        for (hospital, mechanism, sigma, eps, budget, delta) in rows {
            let released = releases.get(hospital.as_str()).copied().unwrap_or(0);
            privacy.insert(
                hospital,
                PrivacyCost {
                    mechanism,
                    noise_multiplier: sigma,
                    epsilon_after: eps,
                    budget,
                    delta,
                    releases: released,
                },
            );
        }
        let (config, excluded): (String, String) = conn
            .query_row(
                "SELECT config, excluded FROM runs WHERE id = ?1",
                [&model.run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.sql(e))?;
        let config: serde_json::Value = toml::from_str::<toml::Value>(&config)
            .ok()
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(serde_json::Value::Null);
        Ok(Lineage {
            model: model.clone(),
            rounds,
            contributed_samples,
            privacy,
            task_config: config["tasks"][&model.task].clone(),
            privacy_config: config["privacy"].clone(),
            excluded: serde_json::from_str(&excluded).unwrap_or_default(),
        })
    }

    /// The versions `hospital` contributed an accepted update to.
    pub fn affected(&self, hospital: &str) -> Result<Vec<ModelVersion>> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM models m WHERE EXISTS (
                    SELECT 1 FROM participation p WHERE p.run_id = m.run_id AND p.task = m.task
                    AND p.round <= m.round AND p.hospital = ?1 AND p.outcome = 'accepted')
                 ORDER BY m.task, m.version",
                COLUMNS
                    .split(", ")
                    .map(|c| format!("m.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([hospital], version_of)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e));
        rows
    }
}
