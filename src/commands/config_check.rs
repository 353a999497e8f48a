//! `medfed config check`: validate and print the effective configuration.

use anyhow::Result;

use crate::cli::ConfigCheckArgs;

pub fn execute(args: &ConfigCheckArgs) -> Result<()> {
    let (loaded, selected) = super::overrides::load_with(&args.file, &args.overrides)?;
    println!(
        "# effective configuration of {} (tasks selected: {})",
        loaded.source,
        selected.join(", ")
    );
    print!("{}", crate::config::to_toml(&loaded.config));
    Ok(())
}
