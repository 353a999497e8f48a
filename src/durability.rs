//! Which store a command records into, the fingerprint runs are recorded
//! under, and how a restarted coordinator takes up an interrupted run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

use crate::config::Loaded;
use crate::federation::CoordinatorClient;
use crate::store::{sha256_hex, Durable, Store};
use crate::tasks::PreparedTask;

/// An open store and what runs are recorded under.
pub struct Persistence {
    pub store: Arc<Store>,
    /// Per task, the model's input columns (tables).
    pub features: std::collections::BTreeMap<String, Vec<String>>,
    /// Of the configuration that shapes training, and of each task's
    /// held-out set: a run is resumed only under the same one.
    pub fingerprint: String,
    /// The effective configuration, kept with every run.
    pub config: String,
}

/// Whether a command keeps a store when none is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDefault {
    /// `serve`, `coordinator`: `<data_dir>/medfed.sqlite`.
    DataDir,
    /// `run`: in memory unless `--store` or `[store] path` says otherwise.
    None,
}

/// The store path a command uses: `--store`, else `[store] path`, else the
/// command's default.
pub fn store_path(loaded: &Loaded, flag: Option<&Path>, default: StoreDefault) -> Result<Option<PathBuf>> {
    if let Some(path) = flag {
        return Ok(Some(std::env::current_dir()?.join(path)));
    }
    if let Some(path) = &loaded.config.store.path {
        return Ok(Some(loaded.resolve(path)));
    }
    Ok(match default {
        StoreDefault::DataDir => Some(loaded.data_dir()?.join("medfed.sqlite")),
        StoreDefault::None => None,
    })
}

impl Persistence {
    pub fn open(loaded: &Loaded, tasks: &[PreparedTask], path: &Path) -> Result<Persistence> {
        let store = Store::open(path)?;
        info!(store = %path.display(), "store open");
        for late in store.register_unregistered()? {
            info!(task = %late.task, version = late.version, run = %late.run_id, "model of a finished run registered");
        }
        Ok(Persistence {
            features: tasks
                .iter()
                .filter_map(|t| Some((t.name.clone(), t.data.feature_names()?)))
                .collect(),
            store: Arc::new(store),
            fingerprint: fingerprint(loaded, tasks),
            config: crate::config::to_toml(&loaded.config),
        })
    }

    /// The coordinator's round commits into this store.
    pub fn round_store(&self) -> Arc<Durable> {
        Arc::new(
            Durable::new(self.store.clone(), self.fingerprint.clone(), self.config.clone())
                .with_features(self.features.clone()),
        )
    }

    /// Take up the store's interrupted run, if there is one: refused (with
    /// the reason) when the configuration or data changed since it started.
    /// Returns the resumed run's id. `exclude`: the hospitals this command
    /// was asked to leave out (`medfed run`), which must be the run's.
    pub async fn resume(
        &self,
        client: &CoordinatorClient,
        exclude: Option<&[String]>,
    ) -> Result<Option<String>> {
        let Some(run) = self.store.interrupted()? else {
            return Ok(None);
        };
        if run.fingerprint != self.fingerprint {
            bail!(
                "run {} in {} was interrupted, and the configuration, data or held-out set changed since it \
                 started (fingerprint {} then, {} now): restart with the configuration it started with, or \
                 give it up with --abandon-run {}",
                run.run_id,
                self.store.path().display(),
                short(&run.fingerprint),
                short(&self.fingerprint),
                run.run_id
            );
        }
        if run.tasks.is_empty() {
            warn!(run = %run.run_id, "the interrupted run had committed no round: marked abandoned");
            self.store.abandon(&run.run_id)?;
            return Ok(None);
        }
        let point = self.store.resume_point(&run.run_id)?;
        if let Some(asked) = exclude {
            let mut asked = asked.to_vec();
            asked.sort();
            let mut stored = point.excluded.clone();
            stored.sort();
            if asked != stored {
                bail!(
                    "run {} in {} was interrupted and left out [{}], not the [{}] asked for now: run it \
                     again as it was started, or give it up with --abandon-run {}",
                    run.run_id,
                    self.store.path().display(),
                    stored.join(", "),
                    asked.join(", "),
                    run.run_id
                );
            }
        }
        let id = client
            .resume(point)
            .await?
            .with_context(|| format!("resuming run {}", run.run_id))?;
        for (task, (planned, committed)) in &run.tasks {
            info!(
                run = %id,
                task = %task,
                committed,
                planned,
                "resuming the interrupted run at round {} (rounds 1-{committed} were committed before the restart)",
                committed + 1
            );
        }
        Ok(Some(id))
    }
}

fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(12).collect()
}

/// What a resumed run must share with the run it continues: the settings
/// that shape training (run seed and rounds, federation, privacy, tasks
/// with their data paths — not where the store, caches, ports or
/// certificates are) and each task's held-out set.
pub fn fingerprint(loaded: &Loaded, tasks: &[PreparedTask]) -> String {
    let c = &loaded.config;
    let shaping = serde_json::json!({
        "seed": c.run.seed,
        "rounds": c.run.rounds,
        "federation": c.federation,
        "privacy": c.privacy,
        "tasks": c.tasks,
        "held_out": tasks.iter().map(|t| (t.name.clone(), t.held_out_fingerprint())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    sha256_hex(shaping.to_string().as_bytes())
}

/// Open the store a command uses (if any) and carry out `--abandon-run`.
pub fn open_for(
    loaded: &Loaded,
    tasks: &[PreparedTask],
    args: &crate::cli::StoreArgs,
    default: StoreDefault,
) -> Result<Option<Persistence>> {
    let Some(path) = store_path(loaded, args.store.as_deref(), default)? else {
        if args.abandon_run.is_some() {
            bail!("--abandon-run needs a store: give --store PATH");
        }
        return Ok(None);
    };
    let persistence = Persistence::open(loaded, tasks, &path)?;
    if let Some(id) = &args.abandon_run {
        persistence.store.abandon(id)?;
        info!(run = %id, "run marked abandoned: it will not be resumed");
    }
    Ok(Some(persistence))
}
