//! The set-ups the benchmarks compare, built the way each tool's docs show.
//!
//! Every set-up shares one process-wide `tracing` subscriber whose
//! OpenTelemetry layer records `INFO` spans into a batch pipeline ending in an
//! exporter that discards them, so the cost measured is instrumentation, not
//! the network.

pub mod affinity;
pub mod grpc;
pub mod messaging;
pub mod otlp;
pub mod stage;
pub mod variants;
pub mod windows;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::routing::get;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

/// An exporter that accepts every batch and drops it.
#[derive(Debug, Default)]
pub struct DiscardExporter;

impl SpanExporter for DiscardExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

/// Installs the shared subscriber once; returns paytrace's metrics.
pub fn install_tracing() -> &'static paytrace::Metrics {
    static METRICS: OnceLock<paytrace::Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let metrics = paytrace::Metrics::new();
        // Counting instructions: no export during the run (no timer, a
        // batch larger than any run, a queue that never fills), so that the
        // export thread's work cannot land differently from run to run.
        let counting = |name: &str| match name {
            "OTEL_BSP_MAX_QUEUE_SIZE" | "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" => {
                Some((1 << 20).to_string())
            }
            "OTEL_BSP_SCHEDULE_DELAY" => Some((24 * 3600 * 1000).to_string()),
            _ => None,
        };
        let config = if COUNTING.load(Ordering::Relaxed) {
            paytrace::TelemetryConfig::from_vars("bench", counting)
        } else {
            paytrace::TelemetryConfig::from_vars("bench", |_| None)
        };
        let provider: SdkTracerProvider = config
            .expect("the bench's settings are valid")
            .with_metrics(&metrics)
            .build_provider_with_exporter(DiscardExporter);
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("bench"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
        tracing::subscriber::set_global_default(subscriber).expect("installed once");
        // What `paytrace::init` (and any real deployment of the peers) sets:
        // W3C trace context and baggage. paytrace itself does not depend on it.
        opentelemetry::global::set_text_map_propagator(
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![
                Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
                Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
            ]),
        );
        // Keep the provider (and its export thread) for the whole run.
        std::mem::forget(provider);
        metrics
    })
}

static COUNTING: AtomicBool = AtomicBool::new(false);

/// Makes the next [`install_tracing`] export nothing while the process runs
/// (finished spans wait in a queue that never fills), for instruction
/// counts that repeat run to run: the batch processor's timer and its
/// thread otherwise land at different points of a run under callgrind (a
/// ±3% spread, and more once its queue fills). Call it before anything
/// installs tracing.
pub fn count_instructions() {
    COUNTING.store(true, Ordering::Relaxed);
}

/// Builds one of the compared HTTP set-ups.
pub type MakeRouter = fn() -> Router;

/// The HTTP set-ups compared, by the name the benchmarks report.
pub const SETUPS: [(&str, MakeRouter); 4] = [
    ("bare", bare),
    ("paytrace", with_paytrace),
    (
        "tower_http_trace+axum_prometheus",
        with_tower_http_and_axum_prometheus,
    ),
    (
        "axum_tracing_opentelemetry+axum_prometheus",
        with_axum_tracing_opentelemetry_and_axum_prometheus,
    ),
];

/// The request every set-up answers: a caller's trace context and baggage
/// on a route with a path parameter.
pub fn request() -> axum::http::Request<axum::body::Body> {
    axum::http::Request::builder()
        .uri("/orders/42")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("baggage", "paytrace.flow=checkout,payment.method=alipay")
        .body(axum::body::Body::empty())
        .expect("a valid request")
}

/// The application under test: one route with a path parameter.
pub fn app() -> Router {
    Router::new().route("/orders/{id}", get(|| async { "ok" }))
}

/// `app()` with nothing added.
pub fn bare() -> Router {
    app()
}

/// `app()` with the paytrace layer.
pub fn with_paytrace() -> Router {
    let metrics = install_tracing();
    let svc = paytrace::ServiceTelemetry::with_metrics("bench", "1.0.0", metrics);
    app().layer(svc.http_layer())
}

fn prometheus_layer() -> axum_prometheus::PrometheusMetricLayer<'static> {
    static LAYER: OnceLock<axum_prometheus::PrometheusMetricLayer<'static>> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
            std::mem::forget(handle);
            layer
        })
        .clone()
}

/// `app()` with tower-http's `TraceLayer` (spans at `INFO`, so they are
/// exported like paytrace's) and axum-prometheus.
pub fn with_tower_http_and_axum_prometheus() -> Router {
    install_tracing();
    use tower_http::trace::{DefaultMakeSpan, TraceLayer};
    app()
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO)),
        )
        .layer(prometheus_layer())
}

/// `app()` with axum-tracing-opentelemetry (the closest functional peer:
/// OpenTelemetry HTTP spans with trace context extraction) and axum-prometheus.
pub fn with_axum_tracing_opentelemetry_and_axum_prometheus() -> Router {
    install_tracing();
    app()
        .layer(axum_tracing_opentelemetry::middleware::OtelInResponseLayer)
        .layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default())
        .layer(prometheus_layer())
}
