//! The stage and the spans and histograms a user would write by hand
//! instead, as the `stage` benchmarks and `overhead_instructions` run them.

use std::hint::black_box;

use opentelemetry::trace::FutureExt as _;
use paytrace_semconv::DEFAULT_LATENCY_BUCKETS;
use prometheus::{HistogramOpts, HistogramVec, IntGaugeVec, Opts};
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::install_tracing;

/// The variants compared, by the name the benchmarks report.
pub const VARIANTS: [&str; 6] = [
    "paytrace_stage",
    "paytrace_stage/in_flow_scope",
    "tracing_span+prometheus_histogram",
    "tracing_span+prometheus_histogram/same_telemetry",
    "tracing_span+prometheus_histogram/same_telemetry_and_baggage",
    "tracing_span+prometheus_histogram/same_telemetry_in_flow_scope",
];

/// Everything the variants share, built once.
#[derive(Debug)]
pub struct StageBench {
    svc: paytrace::ServiceTelemetry,
    histogram: HistogramVec,
    active: IntGaugeVec,
    in_checkout: opentelemetry::Context,
}

impl Default for StageBench {
    fn default() -> Self {
        Self::new()
    }
}

impl StageBench {
    /// Installs the shared subscriber and registers the hand-written families.
    pub fn new() -> Self {
        let metrics = install_tracing();
        let svc = paytrace::ServiceTelemetry::with_metrics("bench", "1.0.0", metrics);
        let registry = prometheus::Registry::new();
        let histogram = HistogramVec::new(
            HistogramOpts::new("plain_stage_duration_seconds", "plain")
                .buckets(DEFAULT_LATENCY_BUCKETS.to_vec()),
            &[
                "service",
                "flow",
                "stage",
                "payment_method",
                "payment_channel",
                "outcome",
            ],
        )
        .expect("valid histogram");
        let active = IntGaugeVec::new(
            Opts::new("plain_stage_active", "plain"),
            &["service", "flow", "stage"],
        )
        .expect("valid gauge");
        for family in [
            Box::new(histogram.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(active.clone()),
        ] {
            registry.register(family).expect("registered once");
        }
        let in_checkout = paytrace::Flow::new("checkout")
            .payment_method("alipay")
            .merge_into(&opentelemetry::Context::new());
        Self {
            svc,
            histogram,
            active,
            in_checkout,
        }
    }

    /// Runs the variant named `name` (one of [`VARIANTS`]) once.
    pub async fn run(&self, name: &str) -> Result<u32, ()> {
        match name {
            "paytrace_stage" => self.stage().await,
            "paytrace_stage/in_flow_scope" => self.stage_in_flow_scope().await,
            "tracing_span+prometheus_histogram" => self.plain().await,
            "tracing_span+prometheus_histogram/same_telemetry" => {
                self.same_telemetry(["checkout", "", "alipay", ""]).await
            }
            "tracing_span+prometheus_histogram/same_telemetry_and_baggage" => {
                self.same_telemetry_and_baggage().await
            }
            _ => self.same_telemetry_in_flow_scope().await,
        }
    }

    /// A stage that names its flow and payment method (as at the gateway).
    pub async fn stage(&self) -> Result<u32, ()> {
        self.svc
            .stage("inventory.try")
            .flow("checkout")
            .payment_method("alipay")
            .run(async { Ok(black_box(1)) })
            .await
    }

    /// A stage downstream of the gateway: the flow arrives in baggage and the
    /// stage restates nothing, the common case in every other service.
    pub async fn stage_in_flow_scope(&self) -> Result<u32, ()> {
        self.svc
            .stage("inventory.try")
            .run(async { Ok(black_box(1)) })
            .with_context(self.in_checkout.clone())
            .await
    }

    /// The least a user writes by hand: a span naming the stage and one
    /// histogram observation.
    pub async fn plain(&self) -> Result<u32, ()> {
        let start = std::time::Instant::now();
        let span = tracing::info_span!("inventory.try", paytrace.stage = "inventory.try");
        let result = async { Ok(black_box(1)) }.instrument(span).await;
        self.histogram
            .with_label_values(&["bench", "checkout", "inventory.try", "alipay", "", "ok"])
            .observe(start.elapsed().as_secs_f64());
        result
    }

    /// The stage's telemetry written by hand: the span carries the stage,
    /// flow, payment method and channel and the outcome; the histogram and an
    /// in-flight gauge carry the same labels. (No baggage: what the stage adds
    /// for services downstream is not counted here.)
    pub async fn same_telemetry(&self, flow: [&str; 4]) -> Result<u32, ()> {
        let [flow, flow_id, method, channel] = flow;
        fn set(v: &str) -> Option<&str> {
            (!v.is_empty()).then_some(v)
        }
        let start = std::time::Instant::now();
        let in_flight = self
            .active
            .with_label_values(&["bench", flow, "inventory.try"]);
        in_flight.inc();
        let span = tracing::info_span!(
            "stage",
            otel.name = "inventory.try",
            otel.status_code = Empty,
            paytrace.stage = "inventory.try",
            paytrace.flow = set(flow),
            paytrace.flow_id = set(flow_id),
            paytrace.outcome = Empty,
            payment.method = set(method),
            payment.channel = set(channel),
        );
        let result = async { Ok(black_box(1)) }.instrument(span.clone()).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.histogram
            .with_label_values(&["bench", flow, "inventory.try", method, channel, outcome])
            .observe(start.elapsed().as_secs_f64());
        in_flight.dec();
        span.set_attribute("paytrace.outcome", outcome);
        result
    }

    /// [`StageBench::same_telemetry`] at the gateway, with the flow and payment
    /// method put into baggage for the services downstream, as the stage does.
    pub async fn same_telemetry_and_baggage(&self) -> Result<u32, ()> {
        use opentelemetry::KeyValue;
        use opentelemetry::baggage::BaggageExt as _;
        let cx = opentelemetry::Context::current().with_baggage([
            KeyValue::new("paytrace.flow", "checkout"),
            KeyValue::new("payment.method", "alipay"),
        ]);
        self.same_telemetry(["checkout", "", "alipay", ""])
            .with_context(cx)
            .await
    }

    /// [`StageBench::same_telemetry`] downstream of the gateway: the flow, its
    /// id, the payment method and channel read from the baggage the request
    /// arrived with, as a hand-written stage must to label its series.
    pub async fn same_telemetry_in_flow_scope(&self) -> Result<u32, ()> {
        use opentelemetry::baggage::BaggageExt as _;
        let cx = self.in_checkout.clone();
        async {
            let cx = opentelemetry::Context::current();
            let baggage = cx.baggage();
            let read = |key: &str| baggage.get(key).map_or("", |v| v.as_str());
            let flow = [
                read("paytrace.flow"),
                read("paytrace.flow_id"),
                read("payment.method"),
                read("payment.channel"),
            ];
            self.same_telemetry(flow).await
        }
        .with_context(cx)
        .await
    }
}
