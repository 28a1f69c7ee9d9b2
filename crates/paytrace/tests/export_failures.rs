//! A collector that is down, or that accepts connections and never answers,
//! must never block or fail a request; every span it costs is counted.
//!
//! Each test runs its service, its HTTP client and the real OTLP/gRPC
//! exporter on one current-thread runtime with a thread-local subscriber, so
//! the tests of this file do not share a pipeline.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{serve, value};
use opentelemetry_sdk::trace::SdkTracerProvider;
use paytrace::{Metrics, Protocol, ServiceTelemetry, TelemetryConfig};
use paytrace_semconv::{drop_reason, metric};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn dropped(metrics: &Metrics, reason: &str) -> f64 {
    value(metrics, metric::SPANS_DROPPED_TOTAL, &[("reason", reason)]).unwrap_or_default()
}

fn exported(metrics: &Metrics) -> f64 {
    value(metrics, metric::SPANS_EXPORTED_TOTAL, &[]).unwrap_or_default()
}

/// A pipeline exporting over real OTLP/gRPC to `collector`, installed as this
/// thread's subscriber until the returned guard drops.
fn pipeline(
    metrics: &Metrics,
    collector: SocketAddr,
    export_timeout: Duration,
    max_queue: usize,
) -> (SdkTracerProvider, tracing::subscriber::DefaultGuard) {
    let provider = TelemetryConfig::from_vars("test", |_| None)
        .expect("the default configuration is valid")
        .with_endpoint(Protocol::Grpc, format!("http://{collector}"))
        .with_export_timeout(export_timeout)
        .with_max_queue_size(max_queue)
        .with_schedule_delay(Duration::from_millis(10))
        .with_metrics(metrics)
        .build_provider()
        .expect("the exporter builds");
    let guard = tracing::subscriber::set_default(common::otel_subscriber(&provider));
    (provider, guard)
}

async fn order_service(metrics: &Metrics) -> SocketAddr {
    let svc = ServiceTelemetry::with_metrics("order", "1.0.0", metrics);
    serve(
        Router::new()
            .route("/orders/{id}", get(|| async { "ok" }))
            .layer(svc.http_layer()),
    )
    .await
}

/// Sends `n` requests one after another; each must succeed within five
/// seconds (a liveness bound, far above any request's own cost).
async fn send_requests(addr: SocketAddr, n: usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client");
    for i in 0..n {
        let response = client
            .get(format!("http://{addr}/orders/{i}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} failed while the collector misbehaves: {e}"));
        assert_eq!(response.status(), reqwest::StatusCode::OK);
    }
}

/// A TCP listener that accepts connections and never reads or answers;
/// reports each accepted connection.
async fn black_hole() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = tx.send(());
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "current_thread")]
async fn collector_down_fails_exports_not_requests_and_counts_every_span() {
    let metrics = Metrics::new();
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("bound")
    };
    let (provider, _subscriber) = pipeline(&metrics, closed, Duration::from_millis(500), 64);
    let addr = order_service(&metrics).await;

    const REQUESTS: usize = 200;
    send_requests(addr, REQUESTS).await;
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("shutdown does not panic")
        .ok();

    let failed = dropped(&metrics, drop_reason::EXPORT_FAILED)
        + dropped(&metrics, drop_reason::EXPORT_TIMEOUT);
    let queue_full = dropped(&metrics, drop_reason::QUEUE_FULL);
    assert_eq!(exported(&metrics), 0.0);
    assert!(failed > 0.0, "failed exports are counted");
    assert_eq!(
        failed + queue_full,
        REQUESTS as f64,
        "every server span is accounted for: {failed} failed + {queue_full} queue_full"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn collector_black_holed_never_blocks_requests_and_the_queue_stays_bounded() {
    let metrics = Metrics::new();
    let (collector, mut accepted) = black_hole().await;
    const QUEUE: usize = 16;
    // An export that hangs far longer than any request may take.
    let (provider, _subscriber) = pipeline(&metrics, collector, Duration::from_secs(600), QUEUE);
    let addr = order_service(&metrics).await;

    // The first span makes the exporter connect; the collector then holds
    // that export forever.
    send_requests(addr, 1).await;
    accepted.recv().await.expect("the exporter connects");

    const REQUESTS: usize = 100;
    send_requests(addr, REQUESTS).await;

    let queue_full = dropped(&metrics, drop_reason::QUEUE_FULL);
    assert_eq!(exported(&metrics), 0.0);
    assert!(
        queue_full >= (REQUESTS + 1 - QUEUE) as f64,
        "at most {QUEUE} spans wait; the rest are dropped and counted, got {queue_full}"
    );
    // The hung export would block shutdown for ten minutes; leave it.
    std::mem::forget(provider);
}

#[tokio::test(flavor = "current_thread")]
async fn exports_to_a_black_hole_time_out_and_are_counted_as_timeouts() {
    let metrics = Metrics::new();
    let (collector, _accepted) = black_hole().await;
    let (provider, _subscriber) = pipeline(&metrics, collector, Duration::from_millis(300), 1024);
    let addr = order_service(&metrics).await;

    const REQUESTS: usize = 20;
    send_requests(addr, REQUESTS).await;
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("shutdown does not panic")
        .ok();

    let timed_out = dropped(&metrics, drop_reason::EXPORT_TIMEOUT);
    assert_eq!(exported(&metrics), 0.0);
    assert!(
        timed_out > 0.0,
        "black-holed exports count as export_timeout"
    );
    assert_eq!(
        timed_out + dropped(&metrics, drop_reason::EXPORT_FAILED),
        REQUESTS as f64
    );
}
