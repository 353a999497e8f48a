//! What the panel, the REST API and the reports read back: runs with their
//! tasks' results, and a run's committed rounds.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Result, Store};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub status: String,
    pub started_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<f64>,
    pub tasks: Vec<String>,
    /// Per task, what `medfed run --json` shows (once the run ended).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub report: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    /// Per task, the settings the run set instead of the configured ones.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// A hospital's lifetime epsilon after one of its accepted rounds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EpsilonRow {
    pub hospital: String,
    pub run: String,
    pub task: String,
    pub round: u32,
    pub epsilon: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoundRow {
    pub task: String,
    pub round: u32,
    /// The round as the coordinator recorded it (metrics, participation...).
    pub record: serde_json::Value,
}

impl Store {
    /// The most recent runs first, at most `limit`.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT id FROM runs ORDER BY started_at DESC, id DESC LIMIT ?1")
            .map_err(|e| self.sql(e))?;
        let ids: Vec<String> = stmt
            .query_map([limit as i64], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        let mut runs = Vec::new();
        for id in ids {
            if let Some(run) = self.run(&id)? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRow>> {
        let conn = self.reader()?;
        let row: Option<(String, f64, Option<f64>, String)> = conn
            .query_row(
                "SELECT status, started_at, ended_at, excluded FROM runs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some((status, started_at, ended_at, excluded)) = row else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare("SELECT task, report, settings FROM run_tasks WHERE run_id = ?1 ORDER BY task")
            .map_err(|e| self.sql(e))?;
        let rows: Vec<(String, Option<String>, Option<String>)> = stmt
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        let settings = rows
            .iter()
            .filter_map(|(t, _, s)| Some((t.clone(), serde_json::from_str(s.as_ref()?).ok()?)))
            .collect();
        let tasks: Vec<(String, Option<String>)> = rows.into_iter().map(|(t, r, _)| (t, r)).collect();
        Ok(Some(RunRow {
            id: id.to_string(),
            status,
            started_at,
            ended_at,
            tasks: tasks.iter().map(|(t, _)| t.clone()).collect(),
            report: tasks
                .into_iter()
                .filter_map(|(t, r)| Some((t, serde_json::from_str(&r?).ok()?)))
                .collect(),
            excluded: serde_json::from_str(&excluded).unwrap_or_default(),
            settings,
        }))
    }

    /// The latest `limit` accepted rounds of DP hospitals with the epsilon
    /// each had spent after it, oldest first (the panel's privacy chart,
    /// across restarts).
    pub fn epsilon_history(&self, limit: usize) -> Result<Vec<EpsilonRow>> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(
                "SELECT p.hospital, p.run_id, p.task, p.round, p.epsilon
                 FROM privacy p
                 JOIN participation q ON q.run_id = p.run_id AND q.task = p.task
                      AND q.round = p.round AND q.hospital = p.hospital
                 JOIN rounds r ON r.run_id = p.run_id AND r.task = p.task AND r.round = p.round
                 WHERE q.outcome = 'accepted'
                 ORDER BY r.committed_at DESC, p.round DESC
                 LIMIT ?1",
            )
            .map_err(|e| self.sql(e))?;
        let mut rows: Vec<EpsilonRow> = stmt
            .query_map([limit as i64], |r| {
                Ok(EpsilonRow {
                    hospital: r.get(0)?,
                    run: r.get(1)?,
                    task: r.get(2)?,
                    round: r.get(3)?,
                    epsilon: r.get(4)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        rows.reverse();
        Ok(rows)
    }

    /// The configuration a run was started with (TOML), if the run is known.
    pub fn run_config(&self, id: &str) -> Result<Option<String>> {
        let conn = self.reader()?;
        conn.query_row("SELECT config FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// The input columns a task's model was trained on, in order (tables).
    pub fn features(&self, run: &str, task: &str) -> Result<Option<Vec<String>>> {
        let conn = self.reader()?;
        let text: Option<Option<String>> = conn
            .query_row(
                "SELECT features FROM run_tasks WHERE run_id = ?1 AND task = ?2",
                params![run, task],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        match text.flatten() {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json).map(Some).map_err(|e| {
                super::StoreError::Refused(format!(
                    "run {run}, task {task}: its feature list cannot be read: {e}"
                ))
            }),
        }
    }

    /// The committed rounds of a run's task, in order.
    pub fn rounds(&self, run: &str, task: &str) -> Result<Vec<RoundRow>> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT round, record FROM rounds WHERE run_id = ?1 AND task = ?2 ORDER BY round")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![run, task], |r| {
                let record: String = r.get(1)?;
                Ok(RoundRow {
                    task: task.to_string(),
                    round: r.get(0)?,
                    record: serde_json::from_str(&record).unwrap_or(serde_json::Value::Null),
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e));
        rows
    }
}
