//! `medfed models ...` and `medfed store backup`: the registry read back —
//! versions, lineage, exports, reports, the versions a hospital is in.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cli::{ModelRefArgs, ModelsCommand, StoreBackupArgs, StoreLocation};
use crate::config;
use crate::durability::{store_path, StoreDefault};
use crate::store::{ModelVersion, Store};

pub fn execute(command: &ModelsCommand) -> Result<()> {
    match command {
        ModelsCommand::List(a) => {
            let store = open_existing(&a.at)?;
            let models = store.models(a.task.as_deref())?;
            if a.json {
                println!("{}", json!({ "models": models }));
            } else if models.is_empty() {
                println!("no registered models in {}", store.path().display());
            } else {
                for m in &models {
                    println!("{}", summary(m));
                }
            }
            Ok(())
        }
        ModelsCommand::Show(a) => show(a),
        ModelsCommand::Export(a) => {
            let store = open_existing(&a.at)?;
            let model = resolve(&store, &a.model)?;
            let bytes = store.model_bytes(&model)?;
            write_new(&a.to, &bytes)?;
            eprintln!(
                "exported {}:{} (sha256 {}) to {}",
                model.task,
                model.version,
                model.sha256,
                a.to.display()
            );
            Ok(())
        }
        ModelsCommand::Report(a) => {
            let store = open_existing(&a.at)?;
            let model = store.model(&a.task, Some(a.version))?;
            let text = crate::report::render(&store, &model, a.format)?;
            match &a.out {
                Some(path) => {
                    write_new(path, text.as_bytes())?;
                    eprintln!(
                        "wrote the report of {}:{} to {}",
                        model.task,
                        model.version,
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        ModelsCommand::Affected(a) => {
            let store = open_existing(&a.at)?;
            let models = store.affected(&a.hospital)?;
            if a.json {
                println!("{}", json!({ "hospital": a.hospital, "models": models }));
            } else if models.is_empty() {
                println!("hospital '{}' contributed to no registered model", a.hospital);
            } else {
                println!("hospital '{}' contributed accepted updates to:", a.hospital);
                for m in &models {
                    println!("  {}", summary(m));
                }
                println!(
                    "train a replacement without it: medfed run --exclude-hospital {} (or POST /api/runs with \"exclude\")",
                    a.hospital
                );
            }
            Ok(())
        }
    }
}

fn show(a: &ModelRefArgs) -> Result<()> {
    let store = open_existing(&a.at)?;
    let model = resolve(&store, &a.model)?;
    let lineage = store.lineage(&model)?;
    if a.json {
        println!("{}", serde_json::to_string(&lineage)?);
        return Ok(());
    }
    println!("{}", summary(&model));
    println!("file: {} (sha256 {})", model.path, model.sha256);
    if let Some(v) = model.replaces {
        println!(
            "replaces version {v} (trained without: {})",
            lineage.excluded.join(", ")
        );
    }
    for (round, contributions) in &lineage.rounds {
        let parts: Vec<String> = contributions
            .iter()
            .map(|c| match (&c.samples, &c.reason) {
                (Some(n), _) => format!("{} {} ({n} samples)", c.hospital, c.outcome),
                (None, Some(reason)) => format!("{} {} ({reason})", c.hospital, c.outcome),
                (None, None) => format!("{} {}", c.hospital, c.outcome),
            })
            .collect();
        println!("round {round}: {}", parts.join("; "));
    }
    for (hospital, p) in &lineage.privacy {
        println!(
            "privacy {hospital}: epsilon {:.4} of {} spent on its data after its {} releases for this model \
             ({}, sigma {:.3}, delta {:e})",
            p.epsilon_after, p.budget, p.releases, p.mechanism, p.noise_multiplier, p.delta
        );
    }
    Ok(())
}

pub fn backup(a: &StoreBackupArgs) -> Result<()> {
    let store = open_existing(&a.at)?;
    store.backup(&a.to)?;
    eprintln!("backed up {} to {}", store.path().display(), a.to.display());
    Ok(())
}

fn summary(m: &ModelVersion) -> String {
    let metric = |k: &str| {
        m.metrics
            .get(k)
            .and_then(|v| v.as_f64())
            .map_or("-".into(), |v| format!("{v:.4}"))
    };
    format!(
        "{}:{}  run {} round {}  accuracy {}  auc {}  sha256 {}",
        m.task,
        m.version,
        m.run_id,
        m.round,
        metric("accuracy"),
        metric("auc"),
        m.sha256.chars().take(16).collect::<String>()
    )
}

/// `TASK` (latest) or `TASK:VERSION`.
pub fn resolve(store: &Store, reference: &str) -> Result<ModelVersion> {
    let (task, version) = match reference.rsplit_once(':') {
        Some((task, v)) => {
            let v: i64 =
                v.parse().ok().filter(|v| *v >= 1).with_context(|| {
                    format!("'{reference}': the version after ':' must be a number from 1")
                })?;
            (task, Some(v))
        }
        None => (reference, None),
    };
    Ok(store.model(task, version)?)
}

/// The store a registry command reads; it must exist (reading never creates one).
pub fn open_existing(at: &StoreLocation) -> Result<Store> {
    let loaded = config::load_unvalidated(&at.config, std::env::vars())?;
    let path: PathBuf =
        store_path(&loaded, at.store.as_deref(), StoreDefault::DataDir)?.context("no store configured")?;
    if !path.exists() {
        bail!(
            "no store at {}: nothing has been recorded there yet (serve and coordinator record into \
             <run.data_dir>/medfed.sqlite; run records with --store PATH)",
            path.display()
        );
    }
    Ok(Store::open_read_only(&path)?)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("{} (an existing file is never overwritten)", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
