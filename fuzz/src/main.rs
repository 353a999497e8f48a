//! `medfed-fuzz [TARGET ...] [--executions N] [--seconds S] [--seed S]`:
//! run fuzz targets (all by default) and report executions per target and
//! every finding; findings are saved under `fuzz/findings/`. Exit code 1
//! when anything was found.

use std::time::{Duration, Instant};

use medfed_fuzz::{capture_panics, fuzz, targets, CountingAlloc};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

fn main() -> std::process::ExitCode {
    let mut names = Vec::new();
    let mut replay = Vec::new();
    let (mut executions, mut seconds, mut seed) = (u64::MAX, None, 1u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| -> u64 {
            args.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match arg.as_str() {
            "--executions" => executions = value("--executions"),
            "--seconds" => seconds = Some(value("--seconds")),
            "--seed" => seed = value("--seed"),
            "--replay" => replay.push(args.next().expect("--replay needs a file")),
            "--help" | "-h" => {
                println!(
                    "medfed-fuzz [TARGET ...] [--executions N] [--seconds S] [--seed S] [--replay FILE]..."
                );
                let all: Vec<_> = targets::all().iter().map(|t| t.name).collect();
                println!("targets: {}", all.join(", "));
                return std::process::ExitCode::SUCCESS;
            }
            name => names.push(name.to_string()),
        }
    }
    if executions == u64::MAX && seconds.is_none() {
        executions = 100_000;
    }
    let chosen: Vec<_> = targets::all()
        .into_iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.name))
        .collect();
    if chosen.is_empty() {
        eprintln!("no such target: {}", names.join(", "));
        return std::process::ExitCode::from(2);
    }
    capture_panics();
    if !replay.is_empty() {
        return replay_inputs(&chosen, &replay);
    }
    let findings_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("findings");
    let mut found = 0;
    for target in &chosen {
        // Named before it starts: a hang shows which target it is in.
        eprintln!("fuzzing {} ...", target.name);
        let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
        let report = fuzz(target, executions, deadline, seed);
        println!(
            "{:<18} {:>12} executions in {:>8.1} s ({:>9.0}/s); slowest {:?}; largest allocation {} bytes; {} findings",
            report.target,
            report.executions,
            report.seconds,
            report.per_second(),
            report.slowest,
            report.largest_allocation,
            report.findings.len()
        );
        for (i, finding) in report.findings.iter().enumerate() {
            found += 1;
            let _ = std::fs::create_dir_all(&findings_dir);
            let file = findings_dir.join(format!("{}-{}-{i}.bin", report.target, finding.kind));
            let _ = std::fs::write(&file, &finding.input);
            println!(
                "  {}: {} (input: {})",
                finding.kind,
                finding.message,
                file.display()
            );
        }
    }
    if found > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Run saved inputs (findings) through the chosen targets once each and
/// report time, largest allocation and any panic: a finding reproduced.
fn replay_inputs(targets: &[medfed_fuzz::Target], files: &[String]) -> std::process::ExitCode {
    let mut bad = false;
    for file in files {
        let Ok(input) = std::fs::read(file) else {
            eprintln!("cannot read {file}");
            return std::process::ExitCode::from(2);
        };
        for target in targets {
            let run = medfed_fuzz::replay(target, &input);
            println!(
                "{file} {}: {:?}, largest allocation {} bytes{}",
                target.name,
                run.took,
                run.largest_allocation,
                if run.panicked { ", PANIC" } else { "" }
            );
            bad |= run.panicked;
        }
    }
    if bad {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
