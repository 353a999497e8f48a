//! `medfed run`: one whole federation in this process.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use medfed_actors::FederationEvent;
use medfed_models::checkpoint::Checkpoint;

use crate::cli::RunArgs;
use crate::config::Loaded;
use crate::durability::{open_for, StoreDefault};
use crate::federation::run_to_end;
use crate::hospital_learner::Ledgers;
use crate::output::{print_run, TaskContext};
use crate::shutdown::{shutdown_signal, RunEnd};
use crate::tasks::prepare_task;
use crate::tasks::PreparedTask;

/// Runs the federation; returns how it ended (completed, aborted, stopped).
pub async fn execute(args: &RunArgs) -> Result<RunEnd> {
    let mut shutdown = shutdown_signal()?;
    let (mut loaded, selected) = super::overrides::load_with(&args.config, &args.overrides)?;
    if !args.attacks.is_empty() {
        add_attacks(&mut loaded, &args.attacks)?;
        crate::config::validate(&loaded.config)?;
    }
    if args.baseline {
        PreparedTask::check_baseline_allowed(&loaded)?;
    }
    // Loading, splitting (and the baseline's training) can take minutes: a
    // signal meanwhile ends the command at once.
    let baseline = args.baseline;
    let prepare = loaded.clone();
    let ledgers = Ledgers::for_simulation(&loaded).describe();
    let Some((tasks, contexts)) = shutdown
        .unless_received(move || {
            let loaded = prepare;
            let tasks = selected
                .iter()
                .map(|name| prepare_task(&loaded, name))
                .collect::<Result<Vec<_>>>()?;
            let mut contexts = BTreeMap::new();
            for task in &tasks {
                let centralized = if baseline {
                    Some(task.centralized_baseline(&loaded)?)
                } else {
                    None
                };
                contexts.insert(
                    task.name.clone(),
                    TaskContext::of(task, &loaded, centralized, &ledgers),
                );
            }
            Ok((tasks, contexts))
        })
        .await?
    else {
        return Ok(RunEnd::Stopped);
    };

    let total_rounds: u64 = tasks
        .iter()
        .map(|t| u64::from(t.config.effective_rounds(&loaded.config.run)))
        .sum();
    let targets: BTreeMap<String, u32> = tasks
        .iter()
        .map(|t| (t.name.clone(), t.config.effective_rounds(&loaded.config.run)))
        .collect();
    let progress = Progress::new(total_rounds, args.quiet, targets);
    let persistence = open_for(&loaded, &tasks, &args.durable, StoreDefault::None)?;
    let durable = persistence.as_ref().map(|p| (p, &contexts));
    let known: Vec<String> = tasks
        .iter()
        .flat_map(|t| (0..t.hospital_count()).map(|i| t.hospital_name(i)))
        .collect();
    if let Some(unknown) = args.exclude.iter().find(|h| !known.contains(h)) {
        bail!(
            "--exclude-hospital {unknown}: no such hospital (hospitals: {})",
            known.join(", ")
        );
    }
    let outcome = run_to_end(&loaded, &tasks, &args.exclude, durable, shutdown, |event| {
        progress.observe(event)
    })
    .await?;
    progress.finish();

    print_run(&outcome.report, &contexts, outcome.wall_seconds, args.json, "")?;
    // After the results are printed: a failed write loses nothing already shown.
    if let Some(dir) = &args.save_model {
        save_models(dir, &outcome.models)?;
    }
    Ok(outcome.end)
}

/// `--attack KIND:HOSPITAL[:FACTOR]` into `[tasks.T.attack]` of the task
/// whose hospital that is (validated with the rest of the config).
fn add_attacks(loaded: &mut Loaded, specs: &[String]) -> Result<()> {
    for spec in specs {
        let parts: Vec<&str> = spec.split(':').collect();
        let (kind, hospital, factor) = match parts.as_slice() {
            [kind, hospital] => (*kind, *hospital, None),
            [kind, hospital, factor] => (*kind, *hospital, Some(*factor)),
            _ => bail!("--attack {spec}: expected KIND:HOSPITAL[:FACTOR], e.g. sign_flip:breast_cancer-3:10"),
        };
        let example = loaded
            .config
            .tasks
            .keys()
            .next()
            .cloned()
            .unwrap_or_else(|| "task".into());
        // Hospitals are named TASK-I: the task is what precedes the last '-'.
        let task = hospital
            .rsplit_once('-')
            .and_then(|(task, _)| loaded.config.tasks.get_mut(task))
            .with_context(|| {
                format!("--attack {spec}: no task has a hospital '{hospital}' (hospitals are named TASK-I, e.g. {example}-1)")
            })?;
        let attack = match factor {
            Some(f) => format!("{kind}:{f}"),
            None => kind.to_string(),
        };
        task.attack.insert(hospital.to_string(), attack);
    }
    Ok(())
}

/// `DIR/<task>.safetensors` for every task; loadable with `Checkpoint::load`.
fn save_models(dir: &Path, models: &BTreeMap<String, Checkpoint>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--save-model: creating {}", dir.display()))?;
    for (task, checkpoint) in models {
        let path = dir.join(format!("{task}.safetensors"));
        checkpoint
            .save(&path)
            .with_context(|| format!("--save-model: writing {}", path.display()))?;
        eprintln!("saved {task} (round {}) to {}", checkpoint.round, path.display());
    }
    Ok(())
}

/// Progress on stderr: a bar on a terminal, else one line per round (a
/// log file or CI shows the run is alive), nothing with `-q`.
enum Progress {
    Bar(ProgressBar),
    Lines(BTreeMap<String, u32>),
    Quiet,
}

impl Progress {
    fn new(total: u64, quiet: bool, targets: BTreeMap<String, u32>) -> Self {
        if quiet {
            return Progress::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines(targets);
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} rounds  {msg}") {
            bar.set_style(style);
        }
        Progress::Bar(bar)
    }

    fn say(&self, line: String) {
        match self {
            Progress::Bar(bar) => bar.println(line),
            Progress::Lines(_) => eprintln!("{line}"),
            Progress::Quiet => {}
        }
    }

    fn observe(&self, event: &FederationEvent) {
        match event {
            FederationEvent::RoundAggregated {
                task, round, metrics, ..
            } => match self {
                Progress::Bar(bar) => {
                    bar.inc(1);
                    bar.set_message(format!("{task} round {round}: accuracy {:.4}", metrics.accuracy));
                }
                Progress::Lines(targets) => {
                    let target = targets.get(task).copied().unwrap_or(0);
                    eprintln!(
                        "{task} round {round}/{target}: held-out accuracy {:.4}, loss {:.4}",
                        metrics.accuracy, metrics.loss
                    );
                }
                Progress::Quiet => {}
            },
            FederationEvent::RoundBelowQuorum { task, round, .. } => {
                self.say(format!("{task} round {round}: below quorum, retrying"))
            }
            FederationEvent::TaskAborted { task, reason } => self.say(format!("{task}: aborted: {reason}")),
            _ => {}
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
