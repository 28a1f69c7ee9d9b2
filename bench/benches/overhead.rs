//! Per-request cost of paytrace against the alternatives, in one run.
//!
//! `cargo bench -p paytrace-bench --bench overhead`; the figures and the
//! machine are recorded in `BENCHMARKS.md`.

use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use paytrace_bench::{
    bare, install_tracing, with_axum_tracing_opentelemetry_and_axum_prometheus, with_paytrace,
    with_tower_http_and_axum_prometheus,
};
use paytrace_semconv::DEFAULT_LATENCY_BUCKETS;
use prometheus::{HistogramOpts, HistogramVec};
use tower::ServiceExt;

/// Builds one of the compared set-ups.
type MakeRouter = fn() -> Router;

fn request() -> Request<Body> {
    Request::builder()
        .uri("/orders/42")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("baggage", "paytrace.flow=checkout,payment.method=alipay")
        .body(Body::empty())
        .expect("a valid request")
}

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("request");
    let setups: [(&str, MakeRouter); 4] = [
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
    for (name, make) in setups {
        let router = rt.block_on(async { make() });
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let router = router.clone();
                async move {
                    let response = router.oneshot(request()).await.expect("infallible");
                    black_box(response)
                }
            })
        });
    }
    group.finish();
}

fn stage(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let metrics = install_tracing();
    let svc = paytrace::Service::with_metrics("bench", "1.0.0", metrics);
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
    registry
        .register(Box::new(histogram.clone()))
        .expect("registered once");

    let mut group = c.benchmark_group("stage");
    group.bench_function("paytrace_stage", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move {
                svc.stage("inventory.try")
                    .flow("checkout")
                    .payment_method("alipay")
                    .run(async { Ok::<_, ()>(black_box(1)) })
                    .await
            }
        })
    });
    group.bench_function("tracing_span+prometheus_histogram", |b| {
        b.to_async(&rt).iter(|| {
            let histogram = histogram.clone();
            async move {
                use tracing::Instrument;
                let start = std::time::Instant::now();
                let span = tracing::info_span!("inventory.try", paytrace.stage = "inventory.try");
                let result = async { Ok::<_, ()>(black_box(1)) }.instrument(span).await;
                histogram
                    .with_label_values(&["bench", "checkout", "inventory.try", "alipay", "", "ok"])
                    .observe(start.elapsed().as_secs_f64());
                result
            }
        })
    });
    group.finish();
}

criterion_group!(benches, per_request, stage);
criterion_main!(benches);
