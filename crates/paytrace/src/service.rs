//! [`ServiceTelemetry`]: the handle every instrument of one service hangs off.

use std::borrow::Cow;
use std::sync::Arc;

use crate::client::{Client, ClientLayer};
use crate::metrics::{Families, Metrics};
use crate::resource::{Pool, QueueMetrics, ResourceMetrics, RuntimeSampler};
use crate::server::HttpLayer;
use crate::span_service::SpanService;
use crate::stage::Stage;

/// One service's telemetry: its name (the `service_name` label of every metric it
/// emits), the metrics it writes to, and the instruments built from it.
///
/// Cheap to clone; build it once at start-up and hand clones to handlers.
/// One process may host several services, each with its own
/// `ServiceTelemetry` (and one [`crate::init`] for the process): their
/// metrics are apart (`service_name`), and so are their spans: the spans of
/// each service's layers, clients and stages, and every span opened under
/// them, are exported under a resource with that service's `service.name`
/// and `service.version`.
///
/// ```
/// use axum::{Router, routing::get};
///
/// let order = paytrace::ServiceTelemetry::new("order", env!("CARGO_PKG_VERSION"));
/// let app: Router = Router::new()
///     .route("/orders/{id}", get(|| async { "ok" }))
///     .layer(order.http_layer());
/// ```
#[derive(Clone, Debug)]
pub struct ServiceTelemetry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    metrics: Metrics,
    /// The service its spans belong to, when the process hosts several.
    span_service: SpanService,
}

impl ServiceTelemetry {
    /// A service that writes to [`Metrics::global`].
    ///
    /// Its name, the `service_name` label of every metric, is `OTEL_SERVICE_NAME`
    /// when that is set, as for the spans [`crate::init`] exports; `name`
    /// otherwise. `version` becomes the `version` label of
    /// `paytrace_build_info`; pass your crate's `env!("CARGO_PKG_VERSION")`.
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let expected = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "order".to_owned());
    /// assert_eq!(svc.name(), expected);
    /// ```
    pub fn new(name: impl Into<String>, version: &str) -> Self {
        let name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|n| !n.trim().is_empty())
            .map_or_else(|| name.into(), |n| n.trim().to_owned());
        Self::with_metrics(name, version, Metrics::global())
    }

    /// A service that writes to `metrics`, named `name` whatever the
    /// environment says.
    ///
    /// ```
    /// let metrics = paytrace::Metrics::new();
    /// let svc = paytrace::ServiceTelemetry::with_metrics("coupon", "0.1.0", &metrics);
    /// assert_eq!(svc.name(), "coupon");
    /// ```
    pub fn with_metrics(name: impl Into<String>, version: &str, metrics: &Metrics) -> Self {
        let name = name.into();
        metrics
            .families()
            .build_info
            .with_label_values(&[name.as_str(), version])
            .set(1);
        metrics.families().guards.each(|guard| {
            // At zero from the start, so that `increase()` sees the first overflow.
            metrics
                .families()
                .series_overflow
                .with_label_values(&[name.as_str(), guard.name()]);
        });
        Self {
            inner: Arc::new(Inner {
                span_service: SpanService::new(&name, version),
                name,
                metrics: metrics.clone(),
            }),
        }
    }

    /// The service's name, the `service_name` label of its metrics.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The metrics this service writes to.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `cx` with this service as the one the spans started in it belong to
    /// (see [`crate::span_service`]).
    pub(crate) fn tagged(&self, cx: opentelemetry::Context) -> opentelemetry::Context {
        self.inner.span_service.tag(cx)
    }

    /// `cx` with this service, when that changes it.
    pub(crate) fn retagged(&self, cx: &opentelemetry::Context) -> Option<opentelemetry::Context> {
        self.inner.span_service.retag(cx)
    }

    pub(crate) fn families(&self) -> &Families {
        self.inner.metrics.families()
    }

    /// The tower layer that traces and measures every HTTP request this
    /// service answers. Add it with [`axum::Router::layer`] so that it sees the
    /// matched route.
    pub fn http_layer(&self) -> HttpLayer {
        HttpLayer::new(self.clone())
    }

    /// The tower layer that traces and measures every gRPC call this
    /// service answers; add it with tonic's `Server::builder().layer(...)`.
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("inventory", "1.0.0");
    /// let layer = svc.grpc_layer();
    /// # drop(layer);
    /// ```
    pub fn grpc_layer(&self) -> crate::grpc::GrpcLayer {
        crate::grpc::GrpcLayer::new(self.clone())
    }

    /// The tower layer for a gRPC channel to `server` (`host:port`, or the
    /// endpoint's URI): calls carry trace context and baggage, get a client
    /// span and are measured.
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let layer = svc.grpc_client_layer("http://inventory:50051");
    /// # drop(layer);
    /// ```
    pub fn grpc_client_layer(&self, server: &str) -> crate::grpc::GrpcClientLayer {
        crate::grpc::GrpcClientLayer::new(self.clone(), server)
    }

    /// Wraps a `reqwest::Client` (reqwest 0.13, re-exported as
    /// [`crate::reqwest`]) so that its calls carry trace context and
    /// baggage, get a client span and are measured. A service on another
    /// reqwest version builds the client through paytrace's:
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let http = svc.client(paytrace::reqwest::Client::new());
    /// # drop(http);
    /// ```
    pub fn client(&self, client: reqwest::Client) -> Client {
        Client::new(self.clone(), client)
    }

    /// The tower layer for any HTTP client built on tower (hyper-util's
    /// legacy client, a `tower::ServiceBuilder` stack around one): the same
    /// span, context and measurement as [`ServiceTelemetry::client`],
    /// without depending on paytrace's reqwest. See [`ClientLayer`].
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let layer = svc.client_layer();
    /// // let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    /// // let traced = tower::ServiceBuilder::new().layer(layer).service(client);
    /// # drop(layer);
    /// ```
    pub fn client_layer(&self) -> ClientLayer {
        ClientLayer::new(self.clone())
    }

    /// Starts describing a business stage; finish with [`Stage::run`] or
    /// [`Stage::start`].
    ///
    /// ```
    /// # async fn demo() {
    /// let svc = paytrace::ServiceTelemetry::new("inventory", "1.0.0");
    /// let reserved: Result<u32, std::io::Error> =
    ///     svc.stage("inventory.try").run(async { Ok(3) }).await;
    /// # }
    /// ```
    pub fn stage(&self, name: impl Into<Cow<'static, str>>) -> Stage {
        Stage::new(self.clone(), name.into())
    }

    /// A pool of `capacity` permits (connections, workers) measured as a USE
    /// resource named `resource`.
    ///
    /// ```
    /// # async fn demo() -> Result<(), paytrace::PoolError> {
    /// let svc = paytrace::ServiceTelemetry::new("inventory", "1.0.0");
    /// let db = svc.pool("inventory_db", 8);
    /// let conn = db.acquire().await?;
    /// # drop(conn); Ok(()) }
    /// ```
    pub fn pool(&self, resource: &str, capacity: usize) -> Pool {
        Pool::new(self.resource(resource), capacity)
    }

    /// USE metrics of a resource whose pooling you do yourself (or that a
    /// library such as `deadpool` or `bb8` does).
    pub fn resource(&self, resource: &str) -> ResourceMetrics {
        ResourceMetrics::new(self, resource)
    }

    /// Metrics of a queue named `queue`; see [`QueueMetrics`] and
    /// [`ServiceTelemetry::queue`].
    pub fn queue_metrics(&self, queue: &str) -> QueueMetrics {
        QueueMetrics::new(self, queue)
    }

    /// Sends messages to `destination` of the broker `system` (`rabbitmq`,
    /// `redis`, or the OpenTelemetry name of another): PRODUCER spans whose
    /// context travels in the messages' headers; see
    /// [`crate::messaging::Producer`].
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("payment", "1.0.0");
    /// let producer = svc.producer("rabbitmq", "payment.notifications");
    /// assert_eq!(producer.destination(), "payment.notifications");
    /// ```
    pub fn producer(&self, system: &str, destination: &str) -> crate::messaging::Producer {
        crate::messaging::Producer::new(self, system, destination)
    }

    /// Processes messages of `destination` of the broker `system`: CONSUMER
    /// spans that continue the producer's flow; see
    /// [`crate::messaging::Consumer`].
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let consumer = svc.consumer("redis", "payment.notifications").group("order");
    /// assert_eq!(consumer.destination(), "payment.notifications");
    /// ```
    pub fn consumer(&self, system: &str, destination: &str) -> crate::messaging::Consumer {
        crate::messaging::Consumer::new(self, system, destination)
    }

    /// The broker-side metrics of `queue` (with its consumer `group`, where
    /// the broker has groups); see [`crate::messaging::BrokerMetrics`].
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let broker = svc.broker_metrics("redis", "payment.notifications", Some("order"));
    /// broker.dead_lettered();
    /// ```
    pub fn broker_metrics(
        &self,
        system: &str,
        queue: &str,
        group: Option<&str>,
    ) -> crate::messaging::BrokerMetrics {
        crate::messaging::BrokerMetrics::new(self, system, queue, group)
    }

    /// A bounded in-process queue named `queue` of up to `capacity`
    /// messages, measured as this service's: depth, oldest message's age,
    /// messages by outcome. The same as [`crate::queue`], as a method like
    /// [`ServiceTelemetry::pool`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let svc = paytrace::ServiceTelemetry::with_metrics("payment", "1.0.0", &paytrace::Metrics::new());
    /// let (tx, mut rx) = svc.queue::<u32>("callbacks", 16);
    /// tx.send(7).unwrap();
    /// assert_eq!(rx.recv().await, Some(7));
    /// # }
    /// ```
    pub fn queue<T>(
        &self,
        queue: &str,
        capacity: usize,
    ) -> (crate::QueueSender<T>, crate::QueueReceiver<T>) {
        crate::queue(self, queue, capacity)
    }

    /// The route that serves this service's metrics registry (`GET
    /// /metrics`) in the Prometheus text format.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let app: Router = Router::new()
    ///     .route("/orders/{id}", get(|| async { "ok" }))
    ///     .layer(svc.http_layer())
    ///     .route("/metrics", svc.metrics_route());
    /// ```
    pub fn metrics_route<S>(&self) -> axum::routing::MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        crate::metrics_route(self.metrics().registry().clone())
    }

    /// Reports the tokio runtime behind `handle` as this service's
    /// `paytrace_runtime_*` gauges, read at every scrape.
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let svc = paytrace::ServiceTelemetry::with_metrics("gateway", "1.0.0", &paytrace::Metrics::new());
    /// svc.monitor_runtime(&tokio::runtime::Handle::current());
    /// assert!(svc.metrics().render().contains(r#"paytrace_runtime_workers{service_name="gateway"}"#));
    /// # }
    /// ```
    pub fn monitor_runtime(&self, handle: &tokio::runtime::Handle) {
        self.families()
            .sampled
            .add(Box::new(RuntimeSampler::new(self.name(), handle)));
    }
}
