//! The command line: `paytrace-slo generate` writes, checks and refuses bad
//! specs; `paytrace-slo render --check` finds the shipped rule set current.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_generate_command_checks_and_writes() {
    let exe = env!("CARGO_BIN_EXE_paytrace-slo");
    let spec = repo().join("alerts/slos.yaml");
    let out = Command::new(exe)
        .arg("generate")
        .arg(&spec)
        .args(["--check", "--output"])
        .arg(repo().join("alerts/slo.rules.yml"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stale = std::env::temp_dir().join(format!("paytrace-stale-{}.yml", std::process::id()));
    std::fs::write(&stale, "groups: []\n").expect("temp file");
    let out = Command::new(exe)
        .arg("generate")
        .arg(&spec)
        .args(["--check", "--output"])
        .arg(&stale)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of date"));

    let out = Command::new(exe)
        .arg("generate")
        .arg(&spec)
        .args(["--output"])
        .arg(&stale)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let written = std::fs::read_to_string(&stale).expect("written");
    let _ = std::fs::remove_file(&stale);
    assert!(written.contains("alert: PaymentSuccessBurnRateFast"));

    let bad = std::env::temp_dir().join(format!("paytrace-bad-slo-{}.yaml", std::process::id()));
    std::fs::write(&bad, "slos:\n  - name: Bad Name\n").expect("temp file");
    let out = Command::new(exe)
        .arg("generate")
        .arg(&bad)
        .output()
        .expect("runs");
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing field"), "{err}");
}

#[test]
fn the_render_command_finds_the_shipped_rule_set_current() {
    let out = Command::new(env!("CARGO_BIN_EXE_paytrace-slo"))
        .arg("render")
        .arg(repo().join("alerts/slos.yaml"))
        .arg("--templates")
        .arg(repo().join("alerts/src"))
        .arg("--out-dir")
        .arg(repo().join("alerts"))
        .arg("--prometheus-rule")
        .arg(repo().join("alerts/prometheusrule.yaml"))
        .arg("--check")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A missing template directory is an error that names it.
    let out = Command::new(env!("CARGO_BIN_EXE_paytrace-slo"))
        .arg("render")
        .arg(repo().join("alerts/slos.yaml"))
        .args(["--templates", "/nonexistent/templates", "--out-dir", "/tmp"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/templates"));
}
