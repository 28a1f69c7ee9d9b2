//! Checks the hot paths' instruction counts against their budgets
//! (`bench/budgets.txt`): each measure is counted by callgrind over two run
//! lengths of a counting binary (less, where the line names one, the same
//! count of a baseline argument: the harness's own work), and one more than
//! 3% over its budget fails.
//! Instruction counts do not depend on the machine's load, so this is not a
//! timed test.
//!
//! ```sh
//! cargo build --release -p paytrace-bench --bin overhead_instructions \
//!   --bin pipeline_instructions --bin instruction_budgets
//! target/release/instruction_budgets bench/budgets.txt
//! ```
//!
//! Needs valgrind (`apt-get install valgrind`). The counting binaries are
//! looked for beside this one.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// How far over its budget a measure may be.
const TOLERANCE: f64 = 0.03;

/// How far under its budget a measure is reported as room to lower it.
const ROOM: f64 = 0.10;

/// One line of the budget file.
#[derive(Debug)]
struct Budget {
    name: String,
    binary: String,
    argument: String,
    runs: (u64, u64),
    units: u64,
    budget: u64,
    /// An argument of the same binary whose count per unit is subtracted:
    /// the harness's own work (building the requests) left out.
    minus: Option<String>,
}

fn parse(text: &str) -> Result<Vec<Budget>, String> {
    let mut budgets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, binary, argument, n1, n2, units, budget, minus) = match fields.as_slice() {
            [a, b, c, d, e, f, g] => (a, b, c, d, e, f, g, None),
            [a, b, c, d, e, f, g, h] => (a, b, c, d, e, f, g, Some((*h).to_owned())),
            _ => {
                return Err(format!(
                    "line {}: expected 7 or 8 fields (name binary argument N1 N2 units budget \
                     [minus]), got {}",
                    i + 1,
                    fields.len()
                ));
            }
        };
        let number = |what: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|e| format!("line {}: {what} {v:?}: {e}", i + 1))
        };
        let runs = (number("N1", n1)?, number("N2", n2)?);
        if runs.1 <= runs.0 {
            return Err(format!("line {}: N2 must be larger than N1", i + 1));
        }
        budgets.push(Budget {
            name: (*name).to_owned(),
            binary: (*binary).to_owned(),
            argument: (*argument).to_owned(),
            runs,
            units: number("units", units)?.max(1),
            budget: number("budget", budget)?,
            minus,
        });
    }
    Ok(budgets)
}

/// Instructions callgrind counted over one run of `binary argument n`.
fn count(binary: &Path, argument: &str, n: u64) -> Result<u64, String> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(binary)
        .arg(argument)
        .arg(n.to_string())
        .output()
        .map_err(|e| {
            format!("cannot run valgrind ({e}): install it with `apt-get install valgrind`")
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{} {argument} {n} failed under valgrind:\n{stderr}",
            binary.display()
        ));
    }
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no `Collected` line from callgrind:\n{stderr}"))
}

fn main() -> ExitCode {
    let file = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "bench/budgets.txt".to_owned()),
    );
    let budgets = match std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|text| parse(&text))
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut failed = Vec::new();
    for b in &budgets {
        let binary = here.join(&b.binary);
        let per_unit_of = |argument: &str| {
            count(&binary, argument, b.runs.0).and_then(|first| {
                count(&binary, argument, b.runs.1).map(|second| {
                    second.saturating_sub(first) as f64 / ((b.runs.1 - b.runs.0) * b.units) as f64
                })
            })
        };
        let measured = per_unit_of(&b.argument).and_then(|v| match &b.minus {
            Some(baseline) => per_unit_of(baseline).map(|base| v - base),
            None => Ok(v),
        });
        let per_unit = match measured {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {}: {e}", b.name);
                failed.push(b.name.clone());
                continue;
            }
        };
        let ratio = per_unit / b.budget as f64 - 1.0;
        let line = format!(
            "{:<26} {:>9.0} instructions per unit, budget {:>7} ({:+.1}%)",
            b.name,
            per_unit,
            b.budget,
            ratio * 100.0
        );
        if ratio > TOLERANCE {
            println!(
                "FAIL {line}: more than {:.0}% over. A change made this path slower; if it is \
                 worth it, raise the budget in {} in a commit that says why.",
                TOLERANCE * 100.0,
                file.display()
            );
            failed.push(b.name.clone());
        } else if ratio < -ROOM {
            println!(
                "ok   {line}: well under; lower the budget in {} so that the next slowdown shows.",
                file.display()
            );
        } else {
            println!("ok   {line}");
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("over budget or not measured: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_file_is_read_and_bad_lines_say_where() {
        let ok =
            parse("# a comment\n\nhttp overhead_instructions request/paytrace 1000 2000 1 46250\n")
                .expect("a valid file");
        assert_eq!(ok.len(), 1);
        assert_eq!((ok[0].runs, ok[0].budget), ((1000, 2000), 46250));
        let short = parse("http overhead_instructions 1000 2000 1 46250").expect_err("6 fields");
        assert!(short.contains("line 1: expected 7 or 8 fields"), "{short}");
        let minus = parse("d pipeline_instructions wire 20 40 1000 3770 setup").expect("8 fields");
        assert_eq!(minus[0].minus.as_deref(), Some("setup"));
        let backwards = parse("http b a 2000 1000 1 5").expect_err("N2 below N1");
        assert!(backwards.contains("N2 must be larger"), "{backwards}");
    }

    #[test]
    fn the_shipped_budgets_parse() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("budgets.txt");
        let text = std::fs::read_to_string(&path).expect("bench/budgets.txt");
        let budgets = parse(&text).expect("valid");
        assert!(budgets.len() >= 8);
    }
}
