//! Shaping the HTTP layer: hooks that name and enrich the server span, and
//! a classifier that decides which responses are failures. Spans are
//! captured by an in-memory exporter behind paytrace's own batch pipeline;
//! requests carry a `traceparent` so that each test finds its own spans.

mod common;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use common::{attribute, capture, serve};
use opentelemetry::trace::{SpanKind, Status, TraceId};
use opentelemetry_sdk::trace::SpanData;

/// GETs `path` on `addr` in trace `trace` (a W3C parent), and returns the
/// server span the layer made.
async fn server_span(addr: std::net::SocketAddr, path: &str, trace: u128) -> SpanData {
    let trace_id = TraceId::from(trace);
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("x-tenant", "acme")
        .send()
        .await
        .expect("the server answers");
    drop(response);
    let spans = tokio::task::spawn_blocking(move || {
        capture().spans_of_trace(trace_id, |s| {
            s.iter().any(|s| s.span_kind == SpanKind::Server)
        })
    })
    .await
    .expect("no panic");
    spans
        .into_iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("a server span")
}

fn app() -> Router {
    let svc = paytrace::ServiceTelemetry::with_metrics("hooks", "1.0.0", &capture().metrics);
    Router::new()
        .route("/conflict", get(|| async { StatusCode::CONFLICT }))
        .route(
            "/unavailable",
            get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        )
        .route(
            "/broken",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/ok", get(|| async { "ok" }))
        .layer(
            svc.http_layer()
                .on_request(|request, span| {
                    if let Some(tenant) = request
                        .headers
                        .get("x-tenant")
                        .and_then(|v| v.to_str().ok())
                    {
                        span.set_attribute("tenant.id", tenant.to_owned());
                    }
                    if request.uri.path() == "/ok" {
                        span.set_name("health of the order service");
                    }
                })
                .on_response(|response, span| {
                    span.set_attribute(
                        "response.had_body_type",
                        response.headers.contains_key("content-type"),
                    );
                })
                .classify(|status| {
                    status == StatusCode::CONFLICT
                        || (status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE)
                }),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_name_and_enrich_the_server_span() {
    let addr = serve(app()).await;
    let span = server_span(addr, "/ok", 0x11).await;
    assert_eq!(span.name, "health of the order service");
    assert_eq!(attribute(&span, "tenant.id").as_deref(), Some("acme"));
    assert_eq!(
        attribute(&span, "response.had_body_type").as_deref(),
        Some("true")
    );
    assert_eq!(span.status, Status::Unset);
    // The route template is still the span's route.
    assert_eq!(attribute(&span, "http.route").as_deref(), Some("/ok"));
    // The status is an integer, as on the client span.
    let status = span
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "http.response.status_code")
        .map(|kv| kv.value.clone());
    assert_eq!(status, Some(opentelemetry::Value::I64(200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classifier_decides_which_responses_are_failures() {
    let addr = serve(app()).await;
    let conflict = server_span(addr, "/conflict", 0x21).await;
    assert!(
        matches!(conflict.status, Status::Error { .. }),
        "{:?}",
        conflict.status
    );
    assert_eq!(attribute(&conflict, "error.type").as_deref(), Some("409"));

    let unavailable = server_span(addr, "/unavailable", 0x22).await;
    assert_eq!(
        unavailable.status,
        Status::Unset,
        "a 503 this service expects"
    );
    assert_eq!(attribute(&unavailable, "error.type"), None);

    let broken = server_span(addr, "/broken", 0x23).await;
    assert!(matches!(broken.status, Status::Error { .. }));
    assert_eq!(attribute(&broken, "error.type").as_deref(), Some("500"));
}
