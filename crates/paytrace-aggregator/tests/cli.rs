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
