//! Shared by the broker tests (`redis_streams.rs`, `rabbitmq.rs`): the
//! spans of the test binary, the two services, a checkout's flow, and
//! metric look-ups.
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use paytrace::{Flow, Metrics, ServiceTelemetry};
use tracing_subscriber::layer::SubscriberExt;

/// Spans of this test binary, exported as they end.
pub fn spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("messaging")));
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per binary");
        exporter
    })
}

/// The finished spans of `kind` about `destination` (the tests of a binary
/// run at once and share the exporter).
pub fn spans_of(kind: SpanKind, destination: &str) -> Vec<SpanData> {
    spans()
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|s| {
            s.span_kind == kind
                && s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "messaging.destination.name"
                        && kv.value.as_str() == destination
                })
        })
        .collect()
}

/// The producing `payment` and the consuming `order`, on metrics of their
/// own.
pub fn services() -> (Metrics, ServiceTelemetry, ServiceTelemetry) {
    let metrics = Metrics::new();
    let payment = ServiceTelemetry::with_metrics("payment", "1.0.0", &metrics);
    let order = ServiceTelemetry::with_metrics("order", "1.0.0", &metrics);
    (metrics, payment, order)
}

/// A checkout of `order` paid by `method` through `channel`.
pub fn checkout(order: &str, method: &str, channel: &str) -> Flow {
    Flow {
        flow: Some("checkout".into()),
        flow_id: Some(order.into()),
        payment_method: Some(method.into()),
        payment_channel: Some(channel.into()),
    }
}

/// One value of `name` with `labels` (a counter's or gauge's value, a
/// histogram's count); 0 when the series does not exist.
pub fn value(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    paytrace_testkit::sample_value(
        &metrics.render(),
        &format!("{name}{{{}}} ", wanted.join(",")),
    )
}

/// The labels of `order`'s broker series of `queue` in `group` (empty for
/// RabbitMQ) on `system`.
pub fn broker_labels<'a>(
    system: &'a str,
    queue: &'a str,
    group: &'a str,
) -> [(&'static str, &'a str); 4] {
    [
        ("messaging_consumer_group_name", group),
        ("messaging_system", system),
        ("queue", queue),
        ("service_name", "order"),
    ]
}

/// `messaging_process_duration_seconds_count` of `order` on `destination`
/// with `error_type` (`""` for successes).
pub fn processed(
    metrics: &Metrics,
    system: &str,
    destination: &str,
    group: &str,
    error_type: &str,
) -> f64 {
    value(
        metrics,
        "messaging_process_duration_seconds_count",
        &[
            ("error_type", error_type),
            ("messaging_consumer_group_name", group),
            ("messaging_destination_name", destination),
            ("messaging_system", system),
            ("service_name", "order"),
        ],
    )
}
