//! The producer and consumer instrumentation, and the same telemetry a
//! user would write by hand, as the `message` benchmarks run them: no
//! broker, only what the instrumentation adds around a send and a
//! processing.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{FutureExt as _, TraceContextExt as _};
use paytrace::messaging::{Consumer, Delivery, Producer};
use paytrace_semconv::HTTP_LATENCY_BUCKETS;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::install_tracing;

/// The variants compared, by the name the benchmarks report.
pub const VARIANTS: [&str; 4] = [
    "send/paytrace_producer",
    "send/tracing_span+propagator+prometheus",
    "process/paytrace_consumer",
    "process/tracing_span+propagator+prometheus",
];

/// Everything the variants share, built once.
#[derive(Debug)]
pub struct MessagingBench {
    producer: Producer,
    consumer: Consumer,
    sent: IntCounterVec,
    send_duration: HistogramVec,
    consumed: IntCounterVec,
    process_duration: HistogramVec,
    propagator: opentelemetry::propagation::TextMapCompositePropagator,
    in_checkout: opentelemetry::Context,
    headers: HashMap<String, String>,
}

impl Default for MessagingBench {
    fn default() -> Self {
        Self::new()
    }
}

impl MessagingBench {
    /// Installs the shared subscriber, registers the hand-written families
    /// and makes the headers a consumer receives (a send in a checkout).
    pub fn new() -> Self {
        let metrics = install_tracing();
        let svc = paytrace::ServiceTelemetry::with_metrics("bench", "1.0.0", metrics);
        let producer = svc
            .producer("redis", "payment.notifications")
            .operation("xadd");
        let consumer = svc
            .consumer("redis", "payment.notifications")
            .group("order");
        let registry = prometheus::Registry::new();
        let labels = ["service_name", "system", "destination", "error_type"];
        let sent = IntCounterVec::new(Opts::new("plain_sent_total", "plain"), &labels)
            .expect("valid counter");
        let send_duration = HistogramVec::new(
            HistogramOpts::new("plain_send_seconds", "plain")
                .buckets(HTTP_LATENCY_BUCKETS.to_vec()),
            &labels,
        )
        .expect("valid histogram");
        let consumed = IntCounterVec::new(Opts::new("plain_consumed_total", "plain"), &labels)
            .expect("valid counter");
        let process_duration = HistogramVec::new(
            HistogramOpts::new("plain_process_seconds", "plain")
                .buckets(HTTP_LATENCY_BUCKETS.to_vec()),
            &labels,
        )
        .expect("valid histogram");
        for family in [
            Box::new(sent.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(send_duration.clone()),
            Box::new(consumed.clone()),
            Box::new(process_duration.clone()),
        ] {
            registry.register(family).expect("registered once");
        }
        let in_checkout = paytrace::Flow::new("checkout")
            .id("ord_bench")
            .payment_method("alipay")
            .payment_channel("alipay")
            .merge_into(&opentelemetry::Context::new());
        let propagator = opentelemetry::propagation::TextMapCompositePropagator::new(vec![
            Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
            Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
        ]);
        let mut bench = Self {
            producer,
            consumer,
            sent,
            send_duration,
            consumed,
            process_duration,
            propagator,
            in_checkout,
            headers: HashMap::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        bench.headers = rt
            .block_on(bench.send())
            .expect("the first send gives the headers");
        bench
    }

    /// Runs the variant named `name` (one of [`VARIANTS`]) once.
    pub async fn run(&self, name: &str) -> usize {
        match name {
            "send/paytrace_producer" => self.send().await.map_or(0, |h| h.len()),
            "send/tracing_span+propagator+prometheus" => {
                self.send_by_hand().await.map_or(0, |h| h.len())
            }
            "process/paytrace_consumer" => self.process().await.unwrap_or(0),
            _ => self.process_by_hand().await.unwrap_or(0),
        }
    }

    /// A send in a checkout through [`Producer::send`].
    pub async fn send(&self) -> Result<HashMap<String, String>, ()> {
        self.producer
            .send(Some("ntf_1"), HashMap::new(), |h| async move {
                Ok(black_box(h))
            })
            .with_context(self.in_checkout.clone())
            .await
    }

    /// The send's telemetry by hand: a PRODUCER span with the same
    /// attributes, its context and the baggage injected, a counter and a
    /// histogram with the same labels.
    pub async fn send_by_hand(&self) -> Result<HashMap<String, String>, ()> {
        async {
            let start = Instant::now();
            let span = tracing::info_span!(
                "message send",
                otel.name = "xadd payment.notifications",
                otel.kind = "producer",
                otel.status_code = Empty,
                messaging.system = "redis",
                messaging.destination.name = "payment.notifications",
                messaging.operation.type = "send",
                messaging.operation.name = "xadd",
                messaging.message.id = "ntf_1",
                error.type = Empty,
                paytrace.flow_id = "ord_bench",
            );
            let mut headers = HashMap::new();
            self.propagator
                .inject_context(&span.context(), &mut headers);
            let result = async move { Ok(black_box(headers)) }.instrument(span).await;
            let labels = ["bench", "redis", "payment.notifications", ""];
            self.sent.with_label_values(&labels).inc();
            self.send_duration
                .with_label_values(&labels)
                .observe(start.elapsed().as_secs_f64());
            result
        }
        .with_context(self.in_checkout.clone())
        .await
    }

    /// A message processed through [`Consumer::process`].
    pub async fn process(&self) -> Result<usize, ()> {
        self.consumer
            .process(
                &self.headers,
                Delivery::new().message_id("ntf_1").delivery_count(1),
                async { Ok(black_box(1)) },
            )
            .await
    }

    /// The processing's telemetry by hand: the headers extracted, a
    /// CONSUMER span starting a trace linked to the send, with the flow's
    /// attributes and its baggage attached, a counter and a histogram.
    pub async fn process_by_hand(&self) -> Result<usize, ()> {
        use opentelemetry::baggage::BaggageExt as _;
        let start = Instant::now();
        let sent = self.propagator.extract(&self.headers);
        let link = sent.span().span_context().clone();
        let baggage = sent.baggage();
        let read = |key: &str| baggage.get(key).map(|v| v.as_str().to_owned());
        let span = tracing::info_span!(
            "message process",
            otel.name = "process payment.notifications",
            otel.kind = "consumer",
            otel.status_code = Empty,
            messaging.system = "redis",
            messaging.destination.name = "payment.notifications",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.message.id = "ntf_1",
            messaging.consumer.group.name = "order",
            error.type = Empty,
            paytrace.flow = read("paytrace.flow"),
            paytrace.flow_id = read("paytrace.flow_id"),
            payment.method = read("payment.method"),
            payment.channel = read("payment.channel"),
        );
        span.add_link(link);
        let parent = opentelemetry::Context::new().with_baggage(
            baggage
                .iter()
                .map(|(k, (v, _))| opentelemetry::KeyValue::new(k.clone(), v.clone())),
        );
        let _ = span.set_parent(parent);
        let labels = ["bench", "redis", "payment.notifications", "order"];
        self.consumed.with_label_values(&labels).inc();
        let result = async { Ok(black_box(1)) }.instrument(span).await;
        self.process_duration
            .with_label_values(&labels)
            .observe(start.elapsed().as_secs_f64());
        result
    }
}
