//! The aggregator behind TLS, mTLS and bearer tokens, with certificates made
//! here: the real OTLP exporters and a rustls HTTP client get in with the
//! right credentials; without a token, with a wrong one, in plaintext, with
//! no client certificate or an untrusted one they are turned away and
//! counted, and the aggregator keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{Tracer, TracerProvider as _};
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use paytrace_aggregator::auth::Tokens;
use paytrace_aggregator::server::{Running, ServeConfig, start};
use paytrace_aggregator::tls::TlsFiles;
use paytrace_testkit::Pki;

const TOKEN: &str = "otlp-token-31c7";
const API_TOKEN: &str = "api-token-8e2b";

async fn aggregator(pki: &Pki, mtls: bool) -> Running {
    let mut config = ServeConfig::on_free_loopback_ports();
    let files = TlsFiles::new(&pki.server_cert, &pki.server_key);
    config.tls = Some(if mtls {
        files.require_client_certificates(&pki.ca)
    } else {
        files
    });
    let tokens = |name, token: &str| {
        let file = paytrace_testkit::temp_file(name, &format!("{token}\n"));
        Some(Arc::new(Tokens::load(&file).expect("a token file")))
    };
    config.receiver.tokens = tokens("tls-otlp-tokens", TOKEN);
    config.api_tokens = tokens("tls-api-tokens", API_TOKEN);
    start(config).await.expect("the aggregator starts")
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("a PEM file")
}

/// An HTTPS client trusting the test CA, presenting `identity` (certificate,
/// key) when given.
fn client(pki: &Pki, identity: Option<(&std::path::Path, &std::path::Path)>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&read(&pki.ca)).expect("the CA");
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([ca])
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        let mut pem = read(cert);
        pem.extend(read(key));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("an identity"));
    }
    builder.build().expect("a client")
}

/// One value of the aggregator's `/metrics`, read over TLS with a client
/// certificate.
async fn metric(running: &Running, pki: &Pki, series: &str) -> f64 {
    let text = client(pki, Some((&pki.client_cert, &pki.client_key)))
        .get(format!(
            "https://localhost:{}/metrics",
            running.listen.port()
        ))
        .send()
        .await
        .expect("/metrics answers a trusted client")
        .text()
        .await
        .expect("text");
    paytrace_testkit::sample_value(&text, series)
}

/// A one-span OTLP/JSON request for `service`.
fn one_span(service: &str) -> serde_json::Value {
    serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "name": "GET /orders/{id}",
            "kind": 2,
            "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000000120000000"
        }]}]
    }]})
}

/// Exports one span with the real gRPC exporter over TLS, trusting the test
/// CA, presenting `identity` and `token` when given. What became of it is
/// read from the aggregator's counters: the SDK logs export errors rather
/// than returning them.
async fn export_over_grpc(
    running: &Running,
    pki: &Pki,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    token: Option<&str>,
) {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca)))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    let mut metadata = MetadataMap::new();
    if let Some(token) = token {
        metadata.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ASCII"),
        );
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("https://localhost:{}", running.otlp_grpc.port()))
        .with_tls_config(tls)
        .with_metadata(metadata)
        .with_timeout(Duration::from_secs(5))
        .build()
        .expect("an exporter");
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("tls-grpc").build())
        .build();
    tokio::task::spawn_blocking(move || {
        provider.tracer("tls").in_span("GET /orders/{id}", |_| {});
        // Shutting down exports what is queued, whatever the answer.
        let _ = provider.shutdown();
    })
    .await
    .expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_and_tokens_admit_the_right_clients_and_count_the_rest() {
    let pki = Pki::new("mtls");
    let running = aggregator(&pki, true).await;
    let http = format!("https://localhost:{}/v1/traces", running.otlp_http.port());
    let trusted = client(&pki, Some((&pki.client_cert, &pki.client_key)));
    let post = |client: &reqwest::Client, token: Option<&str>| {
        let mut request = client.post(&http).json(&one_span("tls-http"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    // The right certificate and token: accepted.
    let response = post(&trusted, Some(TOKEN)).await.expect("answers");
    assert_eq!(response.status(), 200);
    let received = r#"paytrace_aggregator_spans_received_total{protocol="http_json"}"#;
    assert_eq!(metric(&running, &pki, received).await, 1.0);

    // The right certificate, no token or a wrong one: 401, counted.
    for token in [None, Some("guess")] {
        let response = post(&trusted, token).await.expect("answers");
        assert_eq!(response.status(), 401, "{token:?}");
        assert!(response.headers().contains_key("www-authenticate"));
    }
    let unauthenticated = r#"paytrace_aggregator_requests_refused_total{protocol="http_json",reason="unauthenticated"}"#;
    assert_eq!(metric(&running, &pki, unauthenticated).await, 2.0);

    // No client certificate, one from a CA nobody trusts, plaintext: the
    // connection is refused before any request, and counted by reason.
    let anonymous = client(&pki, None);
    let stranger = client(&pki, Some((&pki.stranger_cert, &pki.stranger_key)));
    assert!(post(&anonymous, Some(TOKEN)).await.is_err());
    assert!(post(&stranger, Some(TOKEN)).await.is_err());
    let plaintext = reqwest::Client::new()
        .post(format!(
            "http://localhost:{}/v1/traces",
            running.otlp_http.port()
        ))
        .json(&one_span("plain"))
        .send()
        .await;
    assert!(
        plaintext
            .as_ref()
            .map_or(true, |r| !r.status().is_success()),
        "{plaintext:?}"
    );
    let refused = |reason: &str| {
        format!(
            r#"paytrace_aggregator_connections_refused_total{{listener="otlp_http",reason="{reason}"}}"#
        )
    };
    // Counting happens when the server's side of the handshake ends, which
    // may be a moment after the client gave up: wait for it, boundedly.
    let deadline = Instant::now() + Duration::from_secs(10);
    for reason in [
        "client_certificate_missing",
        "client_certificate_invalid",
        "not_tls",
    ] {
        while metric(&running, &pki, &refused(reason)).await < 1.0 {
            assert!(Instant::now() < deadline, "{reason} never counted");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            metric(&running, &pki, &refused(reason)).await,
            1.0,
            "{reason}"
        );
    }

    // gRPC: certificate and token get in; no token is UNAUTHENTICATED,
    // counted; a stranger's certificate gets no connection.
    let trusted_identity = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    export_over_grpc(&running, &pki, trusted_identity, Some(TOKEN)).await;
    export_over_grpc(&running, &pki, trusted_identity, None).await;
    let stranger_identity = Some((pki.stranger_cert.as_path(), pki.stranger_key.as_path()));
    export_over_grpc(&running, &pki, stranger_identity, Some(TOKEN)).await;
    let grpc_received = r#"paytrace_aggregator_spans_received_total{protocol="grpc"}"#;
    assert_eq!(metric(&running, &pki, grpc_received).await, 1.0);
    let grpc_unauthenticated =
        r#"paytrace_aggregator_requests_refused_total{protocol="grpc",reason="unauthenticated"}"#;
    assert_eq!(metric(&running, &pki, grpc_unauthenticated).await, 1.0);
    let grpc_stranger = r#"paytrace_aggregator_connections_refused_total{listener="otlp_grpc",reason="client_certificate_invalid"}"#;
    while metric(&running, &pki, grpc_stranger).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stranger's gRPC connection never counted"
        );
        tokio::task::yield_now().await;
    }

    // The API wants its own token; the page and /metrics need only TLS.
    let api = format!("https://localhost:{}/api/v1/flows", running.listen.port());
    assert_eq!(
        trusted.get(&api).send().await.expect("answers").status(),
        401
    );
    let flows = trusted
        .get(&api)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(flows.status(), 200);

    // And after all of that it still takes spans.
    let response = post(&trusted, Some(TOKEN)).await.expect("answers");
    assert_eq!(response.status(), 200);
    assert_eq!(metric(&running, &pki, received).await, 2.0);
    running.shutdown().await;
}

/// The DER of the certificate the aggregator's API presents now, on a new
/// connection.
async fn served_certificate(running: &Running, ca_pem: &[u8]) -> Vec<u8> {
    let ca = reqwest::Certificate::from_pem(ca_pem).expect("the CA");
    let response = reqwest::Client::builder()
        .tls_certs_only([ca])
        .tls_info(true)
        .build()
        .expect("a client")
        .get(format!(
            "https://localhost:{}/healthz",
            running.listen.port()
        ))
        .send()
        .await
        .expect("answers");
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the peer's certificate")
        .to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let pki = Pki::new("renewal");
    let running = aggregator(&pki, false).await;
    let ca = read(&pki.ca);
    let first = std::fs::read_to_string(&pki.server_cert).expect("the certificate");
    assert_eq!(served_certificate(&running, &ca).await, der_of(&first));

    let renewed = pki.renew_server_certificate();
    // The files are looked at again at most once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_certificate(&running, &ca).await != der_of(&renewed) {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    running.shutdown().await;
}

#[tokio::test]
async fn a_certificate_file_that_is_not_one_stops_the_start_with_its_path() {
    let pki = Pki::new("bad-files");
    std::fs::write(&pki.server_cert, "this is not PEM\n").expect("write");
    let mut config = ServeConfig::on_free_loopback_ports();
    config.tls = Some(TlsFiles::new(&pki.server_cert, &pki.server_key));
    let e = start(config).await.expect_err("no certificate").to_string();
    assert!(e.contains(&pki.server_cert.display().to_string()), "{e}");
}
