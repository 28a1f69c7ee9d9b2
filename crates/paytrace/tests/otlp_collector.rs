//! Spans reach a real OTLP receiver, over gRPC and over HTTP/protobuf, with the
//! trace id and parent the caller sent in `traceparent`.
//!
//! The receivers are the generated OTLP `TraceService` (tonic) and an HTTP
//! `POST /v1/traces` endpoint decoding the protobuf body: the same wire
//! formats an OpenTelemetry Collector accepts.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use paytrace::{Metrics, Protocol, ServiceTelemetry, TelemetryConfig};
use prost::Message;
use tokio::sync::mpsc;

type Received = mpsc::UnboundedSender<ExportTraceServiceRequest>;

struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn grpc_collector() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("bound");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcReceiver(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

async fn http_collector() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    async fn receive(State(tx): State<Received>, body: Bytes) -> Result<Vec<u8>, String> {
        let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
        let _ = tx.send(request);
        Ok(ExportTraceServiceResponse {
            partial_success: None,
        }
        .encode_to_vec())
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = common::serve(
        Router::new()
            .route("/v1/traces", post(receive))
            .with_state(tx),
    )
    .await;
    (addr, rx)
}

async fn spans_arrive_with_the_callers_trace_id(
    protocol: Protocol,
    endpoint: String,
    mut received: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let metrics = Metrics::new();
    let vars = |k: &str| {
        (k == "OTEL_RESOURCE_ATTRIBUTES")
            .then(|| "deployment.environment.name=staging,team=pay%20ments".to_owned())
    };
    let provider = TelemetryConfig::from_vars("checkout-test", vars)
        .expect("valid defaults")
        .with_service_version("1.4.2")
        .with_endpoint(protocol, endpoint)
        .with_export_timeout(Duration::from_secs(10))
        .with_metrics(&metrics)
        .build_provider()
        .expect("the exporter builds");
    let _guard = tracing::subscriber::set_default(common::otel_subscriber(&provider));

    let svc = ServiceTelemetry::with_metrics("checkout-test", "1.0.0", &metrics);
    let addr = common::serve(
        Router::new()
            .route("/orders/{id}", get(|| async { "ok" }))
            .layer(svc.http_layer()),
    )
    .await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent_id = "b7ad6b7169203331";
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/orders/7"))
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .send()
        .await
        .expect("the service answers");
    assert_eq!(response.status(), reqwest::StatusCode::OK);

    let flushed = tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("no panic");
    assert!(flushed.is_ok(), "export succeeded: {flushed:?}");
    let request = received
        .recv()
        .await
        .expect("the collector received an export");

    let resource_spans = &request.resource_spans[0];
    let resource = |key: &str| {
        resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == key))
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.clone())
    };
    let text = |v: &str| Some(Value::StringValue(v.into()));
    assert_eq!(resource("service.name"), text("checkout-test"));
    assert_eq!(resource("service.version"), text("1.4.2"));
    assert_eq!(resource("deployment.environment.name"), text("staging"));
    assert_eq!(resource("team"), text("pay ments"));
    assert!(
        matches!(resource("service.instance.id"), Some(Value::StringValue(id)) if id.len() == 36),
        "a UUID names the process"
    );

    let spans: Vec<_> = resource_spans
        .scope_spans
        .iter()
        .flat_map(|s| &s.spans)
        .collect();
    assert_eq!(spans.len(), 1, "one server span: {spans:#?}");
    let span = spans[0];
    assert_eq!(span.name, "GET /orders/{id}");
    assert_eq!(to_hex(&span.trace_id), trace_id);
    assert_eq!(to_hex(&span.parent_span_id), parent_id);
    assert_eq!(
        metrics
            .registry()
            .gather()
            .iter()
            .find(|f| f.name() == "paytrace_spans_exported_total")
            .map(|f| f.get_metric()[0].get_counter().get_value()),
        Some(1.0)
    );
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn spans_reach_an_otlp_grpc_collector() {
    let (addr, received) = grpc_collector().await;
    spans_arrive_with_the_callers_trace_id(Protocol::Grpc, format!("http://{addr}"), received)
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn spans_reach_an_otlp_http_protobuf_collector() {
    let (addr, received) = http_collector().await;
    spans_arrive_with_the_callers_trace_id(
        Protocol::HttpProtobuf,
        format!("http://{addr}/v1/traces"),
        received,
    )
    .await;
}

/// An application with a `tracing` subscriber of its own adds paytrace's
/// OpenTelemetry layer to it, and its stages reach the collector.
#[tokio::test(flavor = "current_thread")]
async fn the_layer_joins_an_application_subscriber() {
    use tracing_subscriber::layer::SubscriberExt;

    let (addr, mut received) = http_collector().await;
    let metrics = Metrics::new();
    let (otel, guard) = TelemetryConfig::from_vars("own-subscriber", |_| None)
        .expect("valid defaults")
        .with_endpoint(Protocol::HttpProtobuf, format!("http://{addr}/v1/traces"))
        .with_metrics(&metrics)
        .layer()
        .expect("the layer builds");
    // The application's own subscriber: its own formatting layer, and ours.
    let subscriber = tracing_subscriber::registry()
        .with(otel)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
    let _default = tracing::subscriber::set_default(subscriber);

    let svc = ServiceTelemetry::with_metrics("order", "1.0.0", &metrics);
    let created: Result<&str, std::io::Error> =
        svc.stage("order.create").run(async { Ok("created") }).await;
    assert_eq!(created.expect("ran"), "created");

    let flushed = tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .expect("no panic");
    assert!(flushed.is_ok(), "export succeeded: {flushed:?}");
    let request = received.recv().await.expect("an export arrived");
    let names: Vec<&str> = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["order.create"]);
}

/// The spans of one export, by the `service.name` of their resource: each
/// span's name, with the resource's `service.version` and
/// `service.instance.id` per service.
#[derive(Debug, Default)]
struct ByService {
    spans: std::collections::BTreeMap<String, Vec<String>>,
    versions: std::collections::BTreeMap<String, String>,
    instances: std::collections::BTreeSet<String>,
    trace_ids: std::collections::BTreeSet<String>,
    attribute_keys: std::collections::BTreeSet<String>,
}

fn by_service(requests: &[ExportTraceServiceRequest]) -> ByService {
    let mut out = ByService::default();
    for rs in requests.iter().flat_map(|r| &r.resource_spans) {
        let resource = |key: &str| {
            rs.resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == key))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default()
        };
        let name = resource("service.name");
        out.versions
            .insert(name.clone(), resource("service.version"));
        out.instances.insert(resource("service.instance.id"));
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            out.spans
                .entry(name.clone())
                .or_default()
                .push(span.name.clone());
            out.trace_ids.insert(to_hex(&span.trace_id));
            out.attribute_keys
                .extend(span.attributes.iter().map(|kv| kv.key.clone()));
        }
    }
    for names in out.spans.values_mut() {
        names.sort();
    }
    out
}

/// Two services in one process, `order` (the process's, given to the
/// provider) calling `inventory` over real HTTP: each one's spans reach the
/// collector under a resource of its own name and version, a span the
/// handler opens itself included; one trace, one process instance.
async fn two_services_in_one_process_keep_their_names(
    protocol: Protocol,
    endpoint: String,
    mut received: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let metrics = Metrics::new();
    let provider = TelemetryConfig::from_vars("order", |_| None)
        .expect("valid defaults")
        .with_service_version("1.0.0")
        .with_endpoint(protocol, endpoint)
        .with_export_timeout(Duration::from_secs(10))
        .with_metrics(&metrics)
        .build_provider()
        .expect("the exporter builds");
    let _guard = tracing::subscriber::set_default(common::otel_subscriber(&provider));

    let inventory = ServiceTelemetry::with_metrics("inventory", "2.0.0", &metrics);
    let inventory_addr = common::serve(
        Router::new()
            .route(
                "/reserve",
                get(|State(svc): State<ServiceTelemetry>| async move {
                    use tracing::Instrument as _;
                    // A span of the handler's own, with the stage inside.
                    svc.stage("inventory.try")
                        .run(async { Ok::<_, std::io::Error>("reserved") })
                        .instrument(tracing::info_span!("reserve stock"))
                        .await
                        .unwrap_or("failed")
                }),
            )
            .layer(inventory.http_layer())
            .with_state(inventory.clone()),
    )
    .await;
    let order = ServiceTelemetry::with_metrics("order", "1.0.0", &metrics);
    let http = order.client(reqwest::Client::new());
    let order_addr = common::serve(
        Router::new()
            .route(
                "/checkout",
                get(move || async move {
                    let url = format!("http://{inventory_addr}/reserve");
                    match http.get(&url).send().await {
                        Ok(r) => r.text().await.unwrap_or_default(),
                        Err(e) => e.to_string(),
                    }
                }),
            )
            .layer(order.http_layer()),
    )
    .await;
    let body = reqwest::get(format!("http://{order_addr}/checkout"))
        .await
        .expect("order answers")
        .text()
        .await
        .expect("a body");
    assert_eq!(body, "reserved");

    let flushed = tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("no panic");
    assert!(flushed.is_ok(), "export succeeded: {flushed:?}");
    let mut requests = Vec::new();
    while let Ok(request) = received.try_recv() {
        requests.push(request);
    }
    let seen = by_service(&requests);
    let expected: std::collections::BTreeMap<String, Vec<String>> = [
        ("order", vec!["GET", "GET /checkout"]),
        (
            "inventory",
            vec!["GET /reserve", "inventory.try", "reserve stock"],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(seen.spans, expected, "{seen:#?}");
    assert_eq!(
        seen.versions.get("inventory").map(String::as_str),
        Some("2.0.0")
    );
    assert_eq!(
        seen.versions.get("order").map(String::as_str),
        Some("1.0.0")
    );
    assert_eq!(seen.instances.len(), 1, "one process: {seen:#?}");
    assert_eq!(seen.trace_ids.len(), 1, "one trace: {seen:#?}");
    assert!(
        !seen
            .attribute_keys
            .iter()
            .any(|k| k.starts_with("paytrace.internal")),
        "the carrying attributes never leave the process: {:?}",
        seen.attribute_keys
    );
}

#[tokio::test(flavor = "current_thread")]
async fn two_services_in_one_process_reach_a_grpc_collector_apart() {
    let (addr, received) = grpc_collector().await;
    two_services_in_one_process_keep_their_names(
        Protocol::Grpc,
        format!("http://{addr}"),
        received,
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn two_services_in_one_process_reach_an_http_collector_apart() {
    let (addr, received) = http_collector().await;
    two_services_in_one_process_keep_their_names(
        Protocol::HttpProtobuf,
        format!("http://{addr}/v1/traces"),
        received,
    )
    .await;
}
