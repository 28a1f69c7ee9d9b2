//! The client layer around a tower HTTP client nobody here wrote
//! (hyper-util's legacy client), calling real loopback servers: the span,
//! the context the server continues, the histogram, and the three ways a
//! call ends without an answer. Spans are captured behind paytrace's own
//! batch pipeline; each call runs under a caller context of its own trace.

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::get;
use common::{attribute, capture, serve, value};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::trace::SpanData;
use paytrace::{ClientService, Flow, ServiceTelemetry};
use paytrace_semconv::metric;
use tower::{Service, ServiceExt};

const CALLER_SPAN: u64 = 0x00f0_67aa_0ba9_02b7;

/// A context whose span is a remote caller's in trace `trace`.
fn caller(trace: u128) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(trace),
        SpanId::from(CALLER_SPAN),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

type Traced = ClientService<HyperClient<HttpConnector, Full<Bytes>>>;

fn traced(svc: &ServiceTelemetry) -> Traced {
    tower::ServiceBuilder::new()
        .layer(svc.client_layer())
        .service(HyperClient::builder(TokioExecutor::new()).build_http())
}

fn get_request(url: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url)
        .body(Full::default())
        .expect("a valid request")
}

async fn spans(trace: u128, done: impl Fn(&[SpanData]) -> bool + Send + 'static) -> Vec<SpanData> {
    tokio::task::spawn_blocking(move || capture().spans_of_trace(TraceId::from(trace), done))
        .await
        .expect("no panic")
}

fn of_kind(spans: &[SpanData], kind: SpanKind) -> &SpanData {
    spans
        .iter()
        .find(|s| s.span_kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} span among {spans:#?}"))
}

fn has(kind: SpanKind) -> impl Fn(&[SpanData]) -> bool {
    move |spans| spans.iter().any(|s| s.span_kind == kind)
}

fn calls(svc: &str, server_address: &str, status: &str) -> f64 {
    value(
        &capture().metrics,
        metric::HTTP_CLIENT_REQUEST_DURATION_SECONDS,
        &[
            ("service_name", svc),
            ("http_request_method", "GET"),
            ("server_address", server_address),
            ("http_response_status_code", status),
        ],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_a_hyper_client_is_traced_and_continued_by_the_server() {
    let metrics = &capture().metrics;
    let inventory = ServiceTelemetry::with_metrics("cl-inventory", "1.0.0", metrics);
    let addr = serve(
        Router::new()
            .route(
                "/items/{id}",
                get(|| async { (StatusCode::CONFLICT, "held") }),
            )
            .layer(inventory.http_layer()),
    )
    .await;
    let order = ServiceTelemetry::with_metrics("cl-order", "1.0.0", metrics);
    let mut client = traced(&order);

    let trace = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    let url = format!("http://{addr}/items/7?card=4111111111111111");
    let response = async {
        Flow::default()
            .payment_method("alipay")
            .scope(async {
                let request = get_request(&url);
                client.ready().await?.call(request).await
            })
            .await
    }
    .with_context(caller(trace))
    .await
    .expect("the server answers");
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    assert_eq!(&body[..], b"held");

    let spans = spans(trace, |s| {
        has(SpanKind::Client)(s) && has(SpanKind::Server)(s)
    })
    .await;
    let client_span = of_kind(&spans, SpanKind::Client);
    let server_span = of_kind(&spans, SpanKind::Server);
    assert_eq!(client_span.name, "GET");
    assert_eq!(client_span.parent_span_id, SpanId::from(CALLER_SPAN));
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id(),
        "the server continues the client span's context"
    );
    assert_eq!(
        attribute(client_span, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        attribute(client_span, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        attribute(client_span, "server.port"),
        Some(addr.port().to_string())
    );
    assert_eq!(
        attribute(client_span, "url.full"),
        Some(format!("http://{addr}/items/7")),
        "no query string (card numbers travel there)"
    );
    let status = client_span
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "http.response.status_code")
        .map(|kv| kv.value.clone());
    assert_eq!(status, Some(opentelemetry::Value::I64(409)));
    assert_eq!(attribute(client_span, "error.type").as_deref(), Some("409"));
    assert!(matches!(client_span.status, Status::Error { .. }));
    assert_eq!(
        attribute(server_span, "payment.method").as_deref(),
        Some("alipay"),
        "the caller's baggage reached the server"
    );
    assert_eq!(calls("cl-order", "127.0.0.1", "409"), 1.0);
}

/// A port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    listener.local_addr().expect("bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_connect_error() {
    let order = ServiceTelemetry::with_metrics("cl-refused", "1.0.0", &capture().metrics);
    let mut client = traced(&order);
    let addr = closed_port().await;
    let trace = 0x5bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    let url = format!("http://{addr}/items/7");
    let result = async { client.ready().await?.call(get_request(&url)).await }
        .with_context(caller(trace))
        .await;
    assert!(result.is_err(), "nothing listens on {addr}");

    let spans = spans(trace, has(SpanKind::Client)).await;
    let client_span = of_kind(&spans, SpanKind::Client);
    assert_eq!(
        attribute(client_span, "error.type").as_deref(),
        Some("connect")
    );
    assert_eq!(attribute(client_span, "http.response.status_code"), None);
    assert!(matches!(client_span.status, Status::Error { .. }));
    assert_eq!(calls("cl-refused", "127.0.0.1", ""), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_before_its_answer_is_cancelled() {
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel::<()>();
    let arrived_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(arrived_tx)));
    // A server that takes the request and never answers.
    let addr = serve(Router::new().route(
        "/slow",
        get(move || {
            if let Some(tx) = arrived_tx.lock().ok().and_then(|mut tx| tx.take()) {
                let _ = tx.send(());
            }
            std::future::pending::<&'static str>()
        }),
    ))
    .await;
    let order = ServiceTelemetry::with_metrics("cl-dropped", "1.0.0", &capture().metrics);
    let mut client = traced(&order);
    let trace = 0x6bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    let url = format!("http://{addr}/slow");
    let call =
        async { client.ready().await?.call(get_request(&url)).await }.with_context(caller(trace));
    // The call is dropped once the server has it: what a caller's timeout does.
    tokio::select! {
        _ = call => panic!("the server never answers"),
        arrived = arrived => arrived.expect("the server took the request"),
    }

    let spans = spans(trace, has(SpanKind::Client)).await;
    let client_span = of_kind(&spans, SpanKind::Client);
    assert_eq!(
        attribute(client_span, "error.type").as_deref(),
        Some("cancelled")
    );
    assert!(matches!(client_span.status, Status::Error { .. }));
    assert_eq!(calls("cl-dropped", "127.0.0.1", ""), 1.0);
}
