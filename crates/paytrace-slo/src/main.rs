//! `paytrace-slo`: SLOs and the whole Prometheus rule set as code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "paytrace-slo",
    version,
    about = "SLOs and the Prometheus rule set as code: burn-rate rules from an SLO spec, templates rendered with one selector and runbook URL, a PrometheusRule"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Render every template in --templates (`*.rules.yml`, metric selectors
    /// marked `{${selector}}`, runbooks `${runbook_base}`) with the SPEC's
    /// `selector` and `runbook_base`, generate the SLO rules of SPEC
    /// (`slo.rules.yml`), write them all to --out-dir, and all of them as
    /// one Prometheus Operator PrometheusRule to --prometheus-rule.
    Render {
        /// The SLO spec, which also holds `selector` and `runbook_base`.
        spec: PathBuf,
        /// The directory of rule templates.
        #[arg(long)]
        templates: PathBuf,
        /// Where the rule files go.
        #[arg(long)]
        out_dir: PathBuf,
        /// Where the PrometheusRule manifest goes.
        #[arg(long)]
        prometheus_rule: Option<PathBuf>,
        /// Write nothing; fail if any output differs from what would be written.
        #[arg(long)]
        check: bool,
    },
    /// Generate multi-window multi-burn-rate recording and alerting rules
    /// from SPEC (YAML, see alerts/slos.yaml) and write them to --output, or
    /// to standard output.
    Generate {
        /// The SLO spec.
        spec: PathBuf,
        /// The rule file to write.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Write nothing; fail if --output differs from what SPEC generates.
        #[arg(long, requires = "output")]
        check: bool,
    },
}

fn rules_render(
    spec: &Path,
    templates: &Path,
    out_dir: &Path,
    prometheus_rule: Option<&Path>,
    check: bool,
) -> ExitCode {
    let outputs = match paytrace_slo::render::render_set(spec, templates, out_dir, prometheus_rule)
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = Vec::new();
    for (path, text) in &outputs {
        if check {
            if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        } else if let Err(e) = std::fs::write(path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "error: out of date: {}; run `paytrace-slo render {} --templates {} --out-dir {}{}`",
            stale.join(", "),
            spec.display(),
            templates.display(),
            out_dir.display(),
            prometheus_rule
                .map(|p| format!(" --prometheus-rule {}", p.display()))
                .unwrap_or_default()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn slo_generate(spec: &Path, output: Option<&Path>, check: bool) -> ExitCode {
    use paytrace_slo as slo;
    let text = match std::fs::read_to_string(spec) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", spec.display());
            return ExitCode::FAILURE;
        }
    };
    let rules = match slo::parse(&text).and_then(|s| slo::generate(&s)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", spec.display());
            return ExitCode::FAILURE;
        }
    };
    match (output, check) {
        (None, _) => {
            print!("{rules}");
            ExitCode::SUCCESS
        }
        (Some(out), true) => match std::fs::read_to_string(out) {
            Ok(existing) if existing == rules => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!(
                    "error: {} is out of date: run `paytrace-slo generate {} --output {}`",
                    out.display(),
                    spec.display(),
                    out.display()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", out.display());
                ExitCode::FAILURE
            }
        },
        (Some(out), false) => match std::fs::write(out, rules) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", out.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Render {
            spec,
            templates,
            out_dir,
            prometheus_rule,
            check,
        } => rules_render(
            &spec,
            &templates,
            &out_dir,
            prometheus_rule.as_deref(),
            check,
        ),
        Command::Generate {
            spec,
            output,
            check,
        } => slo_generate(&spec, output.as_deref(), check),
    }
}
