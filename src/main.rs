use std::process::ExitCode;

use clap::Parser;

use medfed::cli::{Cli, ClusterCommand, Command, ConfigCommand};
use medfed::{commands, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            logging::init(cli.log_format, "warn");
            let runtime = tokio::runtime::Runtime::new()?;
            let completed = runtime.block_on(commands::run::execute(&args))?;
            // An aborted run printed what it had; the exit code says it did not complete.
            Ok(if completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Serve(args) => {
            logging::init(cli.log_format, "info");
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(commands::serve::execute(&args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Coordinator(args) => {
            logging::init(cli.log_format, "info");
            let runtime = tokio::runtime::Runtime::new()?;
            let completed = runtime.block_on(commands::coordinator::execute(&args))?;
            Ok(if completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Hospital(args) => {
            logging::init(cli.log_format, "info");
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(commands::hospital::execute(&args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster(ClusterCommand::GenCerts(args)) => {
            logging::init(cli.log_format, "warn");
            commands::gen_certs::execute(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Data(command) => {
            logging::init(cli.log_format, "warn");
            commands::data::execute(&command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Privacy(command) => {
            logging::init(cli.log_format, "warn");
            commands::privacy::execute(&command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check(args)) => {
            logging::init(cli.log_format, "warn");
            commands::config_check::execute(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
