use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use medfed::cli::{AuditCommand, Cli, ClusterCommand, Command, ConfigCommand, StoreCommand};
use medfed::shutdown::{EXIT_COMPLETED, EXIT_ERROR};
use medfed::{commands, logging};

/// After a command returns, threads still busy (a hospital in the middle of
/// a local epoch) get this long before the process exits without them.
const BLOCKING_GRACE: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    medfed::allocator::keep_freed_memory();
    // Test builds only: crash points armed by FAILPOINTS (the resume tests).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        // An aborted or stopped run printed what it had; the exit code says
        // how it ended (see `medfed::shutdown`).
        Command::Run(args) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "warn");
            let end = on_runtime(commands::run::execute(&args))?;
            Ok(ExitCode::from(end.exit_code()))
        }
        Command::Serve(args) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "info");
            on_runtime(commands::serve::execute(&args))?;
            Ok(ExitCode::from(EXIT_COMPLETED))
        }
        Command::Coordinator(args) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "info");
            let end = on_runtime(commands::coordinator::execute(&args))?;
            Ok(ExitCode::from(end.exit_code()))
        }
        Command::Hospital(args) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "info");
            on_runtime(commands::hospital::execute(&args))?;
            Ok(ExitCode::from(EXIT_COMPLETED))
        }
        Command::Cluster(ClusterCommand::GenCerts(args)) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "warn");
            commands::gen_certs::execute(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Data(command) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "warn");
            commands::data::execute(&command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Privacy(command) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "warn");
            commands::privacy::execute(&command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(command) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "warn");
            commands::models::execute(&command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict(args) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "warn");
            commands::predict::execute(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(StoreCommand::Backup(args)) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "warn");
            commands::models::backup(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify(args)) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "warn");
            commands::audit::verify(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check(args)) => {
            logging::init(cli.log_format, cli.log_wire_payloads, "warn");
            commands::config_check::execute(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Run an async command on a fresh runtime, then shut the runtime down
/// without waiting past `BLOCKING_GRACE` for blocking threads.
fn on_runtime<T>(command: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(command);
    runtime.shutdown_timeout(BLOCKING_GRACE);
    result
}
