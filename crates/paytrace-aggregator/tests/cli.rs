//! The command line: `serve` refuses a trace URL template it cannot fill.

use std::process::Command;

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

/// Every flag of `serve` and `analyze` can be set from a `PAYTRACE_…`
/// variable, and `--help` names it (containers are configured that way).
#[test]
fn every_flag_names_its_environment_variable() {
    for command in ["serve", "analyze"] {
        let out = Command::new(env!("CARGO_BIN_EXE_paytrace-aggregator"))
            .args([command, "--help"])
            .output()
            .expect("runs");
        let help = String::from_utf8_lossy(&out.stdout);
        let (missing, seen) = paytrace_testkit::options_without_env(&help, "PAYTRACE_");
        assert!(seen >= 4, "{command}: {help}");
        assert!(missing.is_empty(), "{command}: no variable for {missing:?}");
    }
}

/// `serve` configured from the environment alone listens where it is told,
/// and `SIGTERM` (what Kubernetes and `docker stop` send) stops it cleanly:
/// exit status 0, the signal named, not killed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_configured_by_the_environment_and_stops_cleanly_on_sigterm() {
    let (api, grpc, http) = (
        paytrace_testkit::free_port(),
        paytrace_testkit::free_port(),
        paytrace_testkit::free_port(),
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_paytrace-aggregator"))
        .arg("serve")
        .env("PAYTRACE_LISTEN", format!("127.0.0.1:{api}"))
        .env("PAYTRACE_OTLP_GRPC_LISTEN", format!("127.0.0.1:{grpc}"))
        .env("PAYTRACE_OTLP_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env("PAYTRACE_TRACE_IDLE", "1s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the aggregator starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ready = reqwest::get(format!("http://127.0.0.1:{api}/readyz")).await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not listening on PAYTRACE_LISTEN"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("joined")
        .expect("waits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("SIGTERM"), "{err}");
}
