//! `medfed audit verify`: check the audit logs' hash chains, and against
//! the store's copy of their entries.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::audit::{self, AuditLog};
use crate::cli::AuditVerifyArgs;
use crate::config;
use crate::durability::{store_path, StoreDefault};
use crate::store::Store;

pub fn verify(args: &AuditVerifyArgs) -> Result<()> {
    let loaded = config::load_unvalidated(&args.at.config, std::env::vars())?;
    let files: Vec<PathBuf> = match &args.file {
        Some(file) => vec![std::env::current_dir()?.join(file)],
        None => {
            let dir = loaded.data_dir()?;
            let mut found: Vec<PathBuf> = ["serve", "coordinator"]
                .iter()
                .map(|c| AuditLog::path_for(&dir, c))
                .filter(|p| p.exists())
                .collect();
            found.sort();
            if found.is_empty() {
                bail!(
                    "no audit log in {} (serve and coordinator write audit-<command>.jsonl there); name one",
                    dir.display()
                );
            }
            found
        }
    };
    let store = match store_path(&loaded, args.at.store.as_deref(), StoreDefault::DataDir)? {
        Some(path) if path.exists() => {
            Some(Store::open_read_only(&path).with_context(|| format!("the store {}", path.display()))?)
        }
        _ => None,
    };
    let mut broken = 0;
    for file in &files {
        match audit::verify(file, store.as_ref()) {
            Ok(v) => {
                let kept = match v.in_store {
                    Some(n) => format!("; the store kept {n} of them"),
                    None => "; no store to compare with".into(),
                };
                println!("{}: {} entries, chain intact{kept}", file.display(), v.entries);
            }
            Err(e) => {
                broken += 1;
                println!("BROKEN: {e:#}");
            }
        }
    }
    if broken > 0 {
        bail!("{broken} of {} audit logs failed verification", files.len());
    }
    Ok(())
}
