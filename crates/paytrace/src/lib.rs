//! paytrace: latency tracing middleware for payment and TCC microservices.
//!
//! Add it to an axum service and every request becomes an OpenTelemetry span
//! (exported over OTLP) and a set of Prometheus RED metrics; every business
//! step you mark becomes a *stage* with its own span and latency histogram,
//! labelled by flow, payment method and channel; pools, queues and the tokio
//! runtime report USE metrics. The names are fixed by [`paytrace_semconv`].
//!
//! # Where to start
//!
//! `docs/getting-started.md` goes from `cargo new` to a breakdown of two
//! services of your own. Then:
//!
//! 1. [`init`] once at start-up: tracing + OpenTelemetry + OTLP from the
//!    standard `OTEL_*` variables; or [`layer`] when the application builds
//!    its own `tracing` subscriber and only needs the OpenTelemetry layer.
//! 2. A [`ServiceTelemetry`] per service you run; everything else hangs off it:
//!    - [`ServiceTelemetry::http_layer`]: the tower layer for your `Router`;
//!    - [`ServiceTelemetry::client`]: outgoing calls that carry trace context and baggage;
//!    - [`ServiceTelemetry::grpc_layer`] and [`ServiceTelemetry::grpc_client_layer`]:
//!      the same for tonic servers and channels ([`grpc`]);
//!    - [`ServiceTelemetry::stage`]: business stages (`inventory.try`, `channel.request`);
//!    - [`ServiceTelemetry::producer`] and [`ServiceTelemetry::consumer`]:
//!      messages through a broker that carry the trace and the flow
//!      ([`messaging`], with a Redis Streams adapter);
//!    - [`ServiceTelemetry::pool`], [`ServiceTelemetry::queue`], [`ServiceTelemetry::monitor_runtime`]: USE metrics;
//!    - the service itself, to handlers behind the layer, as an extractor.
//! 3. [`ServiceTelemetry::metrics_route`] serves `/metrics`.
//! 4. [`tcc`]: the fence that keeps a TCC participant's Try, Confirm and
//!    Cancel safe and names each anomaly it stops.
//! 5. [`Flow::scope`] where a flow starts (the gateway) so that every service
//!    downstream labels its stages with the flow, payment method and channel.
//! 6. [`FlowSampler`]: what `OTEL_TRACES_SAMPLER=parentbased_traceidratio`
//!    builds, keeping every trace of a flow or none (`docs/sampling.md`).
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use paytrace::ServiceTelemetry;
//!
//! // Behind `svc.http_layer()`, a handler takes its service as an extractor.
//! async fn create(svc: ServiceTelemetry) -> &'static str {
//!     svc.stage("order.create")
//!         .run(async { Ok::<_, std::io::Error>("created") })
//!         .await
//!         .unwrap_or("failed")
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let _telemetry = paytrace::init("order")?;
//!     let svc = ServiceTelemetry::new("order", env!("CARGO_PKG_VERSION"));
//!     svc.monitor_runtime(&tokio::runtime::Handle::current());
//!
//!     let app = Router::new()
//!         .route("/orders/{id}", get(create))
//!         .layer(svc.http_layer())
//!         .route("/metrics", svc.metrics_route());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Versions
//!
//! paytrace is built against axum 0.8, tonic 0.14, reqwest 0.13,
//! opentelemetry 0.33, prometheus 0.14 and tracing 0.1 (sqlx 0.9 and
//! redis 1 behind their features). Their types appear in its signatures
//! ([`ServiceTelemetry::client`] takes a `reqwest::Client`), so a service
//! on another major version of one of them gets "expected
//! `reqwest::Client`, found `reqwest::Client`": use the crate through
//! paytrace instead (`paytrace::reqwest::Client::new()`), or the same
//! version.
//!
//! # Guarantees
//!
//! - Exporting never blocks a request: finished spans wait in a bounded
//!   queue; spans dropped because it is full, or because the collector failed
//!   or timed out, are counted in `paytrace_spans_dropped_total{reason}`.
//! - Label values are bounded: routes are templates (`unmatched` when none
//!   matched), methods outside the standard set are `_OTHER`, and every other
//!   free-form label folds into `other` past its limit ([`LabelLimits`]),
//!   counted in `paytrace_series_overflow_total`.
//! - Values taken from requests (paths, baggage, stage attributes) are
//!   [redacted](redact::redact) before they reach a span.

mod cardinality;
mod client;
mod export;
mod extract;
pub mod grpc;
mod handler;
pub mod messaging;
mod metrics;
mod propagation;
pub mod redact;
mod resource;
mod sampling;
mod server;
mod service;
mod span_service;
#[cfg(any(
    feature = "sqlx-postgres",
    feature = "sqlx-mysql",
    feature = "sqlx-sqlite"
))]
mod sqlx_pool;
mod stage;
mod sync;
pub mod tcc;
#[cfg(feature = "redis")]
mod tcc_redis;
#[cfg(any(
    feature = "sqlx-postgres",
    feature = "sqlx-mysql",
    feature = "sqlx-sqlite"
))]
mod tcc_sql;
mod telemetry;

pub use cardinality::LabelLimits;
pub use client::{BoxError, Client, ClientFuture, ClientLayer, ClientService, RequestBuilder};
pub use handler::metrics_route;
pub use metrics::{Buckets, Metrics};
pub use propagation::{Flow, current_traceparent, current_tracestate};
pub use resource::{
    Pool, PoolError, PoolPermit, QueueError, QueueMetrics, QueueReceiver, QueueSender,
    ResourceMetrics, queue,
};
pub use sampling::FlowSampler;
pub use server::{HttpLayer, HttpService, ResponseBody, ResponseFuture, ServerSpan};
pub use service::ServiceTelemetry;

/// The former name of [`ServiceTelemetry`], kept so that code written before
/// the rename still builds. It clashed with `tower::Service`, which every
/// axum application also has in scope.
#[deprecated(note = "renamed `ServiceTelemetry`; `Service` clashed with `tower::Service`")]
pub type Service = ServiceTelemetry;
pub use stage::{Outcome, Stage, StageError, StageGuard};
pub use telemetry::{
    InitError, OtelLayer, Protocol, SamplerConfig, TelemetryConfig, TelemetryGuard, init, layer,
};

pub use paytrace_semconv as semconv;

// The crates whose types appear in paytrace's public signatures, so that a
// service uses exactly the versions paytrace was built against: name them
// through paytrace (`paytrace::reqwest::Client`) or pin the same versions
// (README, "Versions").
#[doc(no_inline)]
pub use axum;
#[doc(no_inline)]
pub use http;
/// The RabbitMQ client the `amqp` adapter's signatures name.
#[cfg(feature = "amqp")]
#[doc(no_inline)]
pub use lapin;
#[doc(no_inline)]
pub use opentelemetry;
#[doc(no_inline)]
pub use prometheus;
#[cfg(feature = "redis")]
#[doc(no_inline)]
pub use redis;
#[doc(no_inline)]
pub use reqwest;
#[cfg(any(
    feature = "sqlx-postgres",
    feature = "sqlx-mysql",
    feature = "sqlx-sqlite"
))]
#[doc(no_inline)]
pub use sqlx;
#[doc(no_inline)]
pub use tonic;
#[doc(no_inline)]
pub use tower;
#[doc(no_inline)]
pub use tracing;

/// The README's Rust examples, compiled (and, where not `no_run`, run) as
/// doc tests of this crate, so that the first code a newcomer copies builds.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;

/// `docs/getting-started.md`'s code, compiled as a doc test: a newcomer who
/// follows it word for word gets code that builds.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/getting-started.md")]
struct GettingStarted;
