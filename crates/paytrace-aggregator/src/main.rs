//! `paytrace-aggregator`: per-stage latency breakdowns from OpenTelemetry traces.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use paytrace_aggregator::analyze::{analyze_files, render_table};

#[derive(Parser, Debug)]
#[command(
    name = "paytrace-aggregator",
    version,
    about = "Per-stage latency breakdowns (critical path, self time, end to end) from OpenTelemetry traces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Analyse OTLP JSON files (the OpenTelemetry Collector file exporter's
    /// format: one ExportTraceServiceRequest per line) and print where each
    /// flow's time goes, per stage.
    Analyze {
        /// Files to read.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Aligned text tables, one per flow and per (flow, payment method).
    Table,
    /// `{"flows": [BREAKDOWN, ...]}`.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze { files, format } => match analyze_files(&files) {
            Ok(report) => {
                let breakdowns = report.breakdowns();
                match format {
                    Format::Table => {
                        print!("{}", render_table(&breakdowns));
                        eprintln!(
                            "{} spans in {} traces, {} flows; {} spans rejected{}",
                            report.spans,
                            report.traces,
                            report.flows,
                            report.rejected,
                            report
                                .first_rejection
                                .as_deref()
                                .map(|r| format!(" (first: {r})"))
                                .unwrap_or_default()
                        );
                    }
                    Format::Json => {
                        let doc = serde_json::json!({ "flows": breakdowns });
                        println!("{doc:#}");
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
