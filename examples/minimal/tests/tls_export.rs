//! The minimal example, configured by the standard OpenTelemetry variables
//! alone, exports over TLS with a client certificate, a bearer token in
//! `OTEL_EXPORTER_OTLP_HEADERS` and gzip into an aggregator that requires
//! all three, over gRPC and over HTTP; the aggregator analyses its spans.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use paytrace_aggregator::auth::Tokens;
use paytrace_aggregator::pipeline::Now;
use paytrace_aggregator::server::{Running, ServeConfig, start};
use paytrace_aggregator::tls::TlsFiles;
use paytrace_testkit::{Pki, Process};
use serde_json::Value;

const TOKEN: &str = "minimal-export-token-5d21";

async fn aggregator(pki: &Pki) -> Running {
    let mut config = ServeConfig::on_free_loopback_ports();
    config.tls =
        Some(TlsFiles::new(&pki.server_cert, &pki.server_key).require_client_certificates(&pki.ca));
    let tokens = paytrace_testkit::temp_file("minimal-otlp-tokens", &format!("{TOKEN}\n"));
    config.receiver.tokens = Some(Arc::new(Tokens::load(&tokens).expect("tokens")));
    start(config).await.expect("the aggregator starts")
}

/// A client of the aggregator's API with the test's certificates.
fn api_client(pki: &Pki) -> reqwest::Client {
    let read = |p: &std::path::Path| std::fs::read(p).expect("a PEM file");
    let mut identity = read(&pki.client_cert);
    identity.extend(read(&pki.client_key));
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&read(&pki.ca)).expect("the CA")])
        .identity(reqwest::Identity::from_pem(&identity).expect("an identity"))
        .build()
        .expect("a client")
}

/// `paytrace-minimal` exporting to `endpoint` with `protocol`, everything
/// set by the standard variables; returned once it answers.
async fn minimal(pki: &Pki, protocol: &str, endpoint: &str) -> (Process, u16) {
    let port = paytrace_testkit::free_port();
    let child = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_paytrace-minimal"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.ca)
            .env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &pki.client_cert)
            .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", &pki.client_key)
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                format!("authorization=Bearer%20{TOKEN}"),
            )
            .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
            .env("OTEL_SERVICE_NAME", "minimal-tls")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped()),
        "cargo build -p paytrace-minimal",
    );
    paytrace_testkit::wait_until_ok(
        &format!("http://127.0.0.1:{port}/metrics"),
        Duration::from_secs(20),
        "paytrace-minimal",
    )
    .await;
    (child, port)
}

/// One checkout through the minimal example, which is then stopped with
/// SIGINT (its telemetry guard flushes the spans); returns its stderr.
async fn one_checkout_then_stop(child: Process, port: u16) -> String {
    let order = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/orders/42"))
        .header("baggage", "paytrace.flow=checkout,payment.method=alipay")
        .send()
        .await
        .expect("the order is served");
    assert_eq!(order.status(), 200);
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"service_name="minimal-tls""#),
        "OTEL_SERVICE_NAME names the metrics' service:\n{metrics}"
    );
    let out = child.stop("INT").await;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}: {log}", out.status);
    assert!(!log.contains(TOKEN), "the token reached the log:\n{log}");
    log
}

async fn exported_and_analysed(protocol: &str, endpoint: impl Fn(&Running) -> String) {
    let pki = Pki::new(&format!("minimal-{}", protocol.replace('/', "-")));
    let running = aggregator(&pki).await;
    let (child, port) = minimal(&pki, protocol, &endpoint(&running)).await;
    let log = one_checkout_then_stop(child, port).await;

    let pipeline = running.pipeline.clone();
    tokio::task::spawn_blocking(move || pipeline.flush(Now::current()))
        .await
        .expect("no panic");
    let api = format!("https://localhost:{}", running.listen.port());
    let client = api_client(&pki);
    let breakdown: Value = client
        .get(format!("{api}/api/v1/breakdown?flow=checkout&window=5m"))
        .send()
        .await
        .expect("the API answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(breakdown["traces"], 1, "{protocol}: {breakdown:#}\n{log}");
    let stages = paytrace_testkit::stage_names(&breakdown);
    assert!(stages.contains(&"order.create"), "{stages:?}");
    let metrics = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    assert!(
        !metrics.lines().any(
            |l| l.starts_with("paytrace_aggregator_requests_refused_total") && !l.ends_with(" 0")
        ),
        "nothing was refused:\n{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_grpc_with_mtls_a_token_and_gzip() {
    exported_and_analysed("grpc", |r| {
        format!("https://localhost:{}", r.otlp_grpc.port())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_http_with_mtls_a_token_and_gzip() {
    exported_and_analysed("http/protobuf", |r| {
        format!("https://localhost:{}", r.otlp_http.port())
    })
    .await;
}
