//! `pipeline-telemetry`: the command-line tool of the pipeline-telemetry library.
//!
//! `pipeline-telemetry demo` runs a simulated pipeline (worker threads running named events,
//! some failing, some retried, some making real TCP calls to a loopback echo server) and prints
//! the telemetry report, as text or with `--json` as one JSON object.
//!
//! Usage errors exit with code 2 (from clap), failures while running with code 1; both print
//! the reason on standard error.

mod demo;
mod echo;
#[cfg(feature = "elasticsearch")]
mod elasticsearch_args;
mod error;
#[cfg(feature = "grafana")]
mod grafana_args;
mod plan;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;

/// Telemetry for event pipelines: event and network metrics, reports and publishers.
#[derive(Debug, Parser)]
#[command(name = "pipeline-telemetry", version, about, long_about = None)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a simulated pipeline against a loopback echo server and print its telemetry report
    ///
    /// Worker threads run named events with short simulated work; some fail, some are
    /// retried, and some make real TCP calls: prompt echoes, slow echoes (answered after
    /// 120 ms) and connections to a closed port that are refused. The same --seed gives the
    /// same events, failures and retries.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Nothing more can be done if standard error is gone too.
            let _ = writeln!(std::io::stderr(), "pipeline-telemetry: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen subcommand, writing its output to standard output.
fn run(cli: &Cli) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match &cli.command {
        Command::Demo(args) => demo::run(args, &mut stdout)?,
    }
    // Flushed here rather than at exit, where a failed write would go unnoticed.
    stdout
        .flush()
        .map_err(|e| CliError::io("write to standard output", e))
}
