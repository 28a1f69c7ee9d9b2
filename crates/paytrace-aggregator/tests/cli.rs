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

/// `paytrace-aggregator serve`, set up by `setup` with its three ports.
async fn serve(setup: impl FnMut(&mut Command, [u16; 3])) -> (paytrace_testkit::Process, [u16; 3]) {
    paytrace_testkit::serve_aggregator(env!("CARGO_BIN_EXE_paytrace-aggregator"), setup).await
}

/// `serve` configured from the environment alone listens where it is told,
/// and `SIGTERM` (what Kubernetes and `docker stop` send) stops it cleanly:
/// exit status 0, the signal named, not killed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_configured_by_the_environment_and_stops_cleanly_on_sigterm() {
    let (child, _) = serve(|cmd, [api, grpc, http]| {
        cmd.env("PAYTRACE_LISTEN", format!("127.0.0.1:{api}"))
            .env("PAYTRACE_OTLP_GRPC_LISTEN", format!("127.0.0.1:{grpc}"))
            .env("PAYTRACE_OTLP_HTTP_LISTEN", format!("127.0.0.1:{http}"))
            .env("PAYTRACE_TRACE_IDLE", "1s")
            .stdout(std::process::Stdio::null());
    })
    .await;
    let out = child.stop("TERM").await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("SIGTERM"), "{err}");
}

/// `serve --otlp-token-file`: refused senders are answered and counted, and
/// no token, right or wrong, reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_log() {
    let file = paytrace_testkit::temp_file("cli-tokens", "right-token-7f3a\n");
    let (child, [api, _, http]) = serve(|cmd, [api, grpc, http]| {
        cmd.arg("--otlp-token-file")
            .arg(&file)
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--otlp-grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-listen", &format!("127.0.0.1:{http}")])
            .env("RUST_LOG", "trace")
            .stdout(std::process::Stdio::piped());
    })
    .await;
    for token in ["right-token-7f3a", "wrong-token-9c1d"] {
        let status = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{http}/v1/traces"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(r#"{"resourceSpans":[]}"#)
            .send()
            .await
            .expect("answers")
            .status();
        let expected = if token.starts_with("right") { 200 } else { 401 };
        assert_eq!(status, expected, "{token}");
    }
    let refused = paytrace_testkit::scrape_value(
        &format!("http://127.0.0.1:{api}/metrics"),
        r#"paytrace_aggregator_requests_refused_total{protocol="http_json",reason="unauthenticated"}"#,
    )
    .await;
    assert_eq!(refused, 1.0);
    let out = child.stop("TERM").await;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("SIGTERM"), "the log was captured: {log}");
    for token in ["right-token-7f3a", "wrong-token-9c1d"] {
        assert!(!log.contains(token), "{token} in the log:\n{log}");
    }
}
