//! Helpers shared by the integration tests: real loopback servers, metric
//! look-ups, and a process-wide tracing pipeline that captures spans.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Router;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use paytrace::{Metrics, TelemetryConfig};
use prometheus::proto::MetricType;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

/// Serves `router` on an ephemeral loopback port; returns its address.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    addr
}

/// The value of one series: a counter's or gauge's value, a histogram's
/// observation count. `None` when no series has exactly these labels.
pub fn value(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = metrics
        .registry()
        .gather()
        .into_iter()
        .find(|f| f.name() == name)?;
    family
        .get_metric()
        .iter()
        .find(|m| {
            let pairs = m.get_label();
            pairs.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| pairs.iter().any(|p| p.name() == *k && p.value() == *v))
        })
        .map(|m| match family.get_field_type() {
            MetricType::COUNTER => m.get_counter().get_value(),
            MetricType::GAUGE => m.get_gauge().get_value(),
            MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
            other => panic!("unexpected metric type {other:?} for {name}"),
        })
}

/// The label sets of every series of `name`.
pub fn series(metrics: &Metrics, name: &str) -> Vec<Vec<(String, String)>> {
    metrics
        .registry()
        .gather()
        .into_iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| {
                    m.get_label()
                        .iter()
                        .map(|p| (p.name().to_owned(), p.value().to_owned()))
                        .collect()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A process-wide tracing pipeline: `tracing` → tracing-opentelemetry →
/// paytrace's bounded batch processor → an in-memory exporter.
pub struct Capture {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
    pub metrics: Metrics,
}

/// The `tracing` subscriber every test uses: the OpenTelemetry layer on
/// `provider`, at `INFO` and above (the gRPC transport's own `DEBUG` spans
/// must not be exported).
pub fn otel_subscriber(provider: &SdkTracerProvider) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    )
}

/// Installs the capture pipeline once per test binary and returns it.
pub fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let metrics = Metrics::new();
        let exporter = InMemorySpanExporter::default();
        let provider = TelemetryConfig::from_vars("test", |_| None)
            .expect("the default configuration is valid")
            .with_metrics(&metrics)
            .with_schedule_delay(Duration::from_millis(50))
            .build_provider_with_exporter(exporter.clone());
        tracing::subscriber::set_global_default(otel_subscriber(&provider))
            .expect("no other global subscriber in this test binary");
        Capture {
            exporter,
            provider,
            metrics,
        }
    })
}

impl Capture {
    /// Flushes until `done` holds for the spans of `trace_id` (the server
    /// side may end its span just after the client got the response), or
    /// panics after ten seconds.
    pub fn spans_of_trace(
        &self,
        trace_id: opentelemetry::trace::TraceId,
        done: impl Fn(&[SpanData]) -> bool,
    ) -> Vec<SpanData> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.provider
                .force_flush()
                .expect("flush the in-memory exporter");
            let spans: Vec<SpanData> = self
                .exporter
                .get_finished_spans()
                .expect("read finished spans")
                .into_iter()
                .filter(|s| s.span_context.trace_id() == trace_id)
                .collect();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "spans of trace {trace_id} never satisfied the condition; got {:#?}",
                spans.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>()
            );
            std::thread::yield_now();
        }
    }
}

/// The string value of a span attribute.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

pub mod fence;
pub mod grpc;
