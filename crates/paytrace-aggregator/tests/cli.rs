//! The command line: `slo generate` writes, checks and refuses bad specs;
//! `serve` refuses a trace URL template it cannot fill.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_generate_command_checks_and_writes() {
    let exe = env!("CARGO_BIN_EXE_paytrace-aggregator");
    let spec = repo().join("alerts/slos.yaml");
    let out = Command::new(exe)
        .args(["slo", "generate"])
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
        .args(["slo", "generate"])
        .arg(&spec)
        .args(["--check", "--output"])
        .arg(&stale)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of date"));

    let out = Command::new(exe)
        .args(["slo", "generate"])
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
        .args(["slo", "generate"])
        .arg(&bad)
        .output()
        .expect("runs");
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing field"), "{err}");
}

#[test]
fn serve_refuses_a_trace_url_template_without_a_trace_id() {
    let out = Command::new(env!("CARGO_BIN_EXE_paytrace-aggregator"))
        .args([
            "serve",
            "--trace-url-template",
            "http://jaeger:16686/trace/",
        ])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--otlp-grpc-listen",
            "127.0.0.1:0",
        ])
        .args(["--otlp-http-listen", "127.0.0.1:0"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("{trace_id}"), "{err}");
}
