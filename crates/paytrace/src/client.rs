//! Outgoing HTTP: trace context and baggage injected, a client span, a histogram.

use std::time::Instant;

use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::propagation::{ambient, inject, outgoing};
use crate::redact::redact;
use crate::server::method_label;
use crate::service::Service;

/// A `reqwest::Client` whose calls carry W3C `traceparent` and `baggage`, get
/// a client span `"{METHOD}"` with the OpenTelemetry HTTP attributes, and are
/// measured in `http_client_request_duration_seconds`.
///
/// Made by [`Service::client`]. Build requests with the inner client and send
/// them through this one:
///
/// ```no_run
/// # async fn demo() -> Result<(), reqwest::Error> {
/// let svc = paytrace::Service::new("order", "1.0.0");
/// let http = svc.client(reqwest::Client::new());
/// let stock = http.send(http.inner().get("http://127.0.0.1:8081/items/1")).await?;
/// let same = http.get("http://127.0.0.1:8081/items/1").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    service: Service,
    inner: reqwest::Client,
}

impl Client {
    pub(crate) fn new(service: Service, inner: reqwest::Client) -> Self {
        Self { service, inner }
    }

    /// The wrapped client, to build requests with.
    pub fn inner(&self) -> &reqwest::Client {
        &self.inner
    }

    /// Builds and sends `request`.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        self.execute(request.build()?).await
    }

    /// Sends a `GET` to `url`.
    pub async fn get(&self, url: &str) -> reqwest::Result<reqwest::Response> {
        self.send(self.inner.get(url)).await
    }

    /// Sends `request`, traced and measured.
    pub async fn execute(
        &self,
        mut request: reqwest::Request,
    ) -> reqwest::Result<reqwest::Response> {
        let ambient = ambient();
        let method = method_label(request.method());
        let url = request.url();
        let host = url.host_str().unwrap_or("").to_owned();
        let port = url.port_or_known_default();
        let mut full = url.clone();
        full.set_query(None);
        full.set_fragment(None);

        let span = tracing::info_span!(
            target: "paytrace::http",
            "HTTP client request",
            otel.name = method,
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = method,
            http.response.status_code = Empty,
            server.address = %host,
            server.port = port,
            url.full = %redact(full.as_str()),
            error.type = Empty,
        );
        let _ = span.set_parent(ambient.clone());
        inject(&outgoing(&span, &ambient), request.headers_mut());

        let start = Instant::now();
        let result = self.inner.execute(request).instrument(span.clone()).await;
        let elapsed = start.elapsed().as_secs_f64();

        let status = match &result {
            Ok(response) => {
                let status = response.status();
                span.record("http.response.status_code", status.as_u16());
                if status.is_client_error() || status.is_server_error() {
                    span.record("error.type", status.as_str());
                    span.record("otel.status_code", "ERROR");
                }
                status.as_str().to_owned()
            }
            Err(e) => {
                span.record("error.type", error_type(e));
                span.record("otel.status_code", "ERROR");
                String::new()
            }
        };
        let server_address = self.service.admit(|g| &g.server_address, &host);
        self.service
            .families()
            .http_client_duration
            .with_label_values(&[self.service.name(), method, server_address, status.as_str()])
            .observe(elapsed);
        result
    }
}

/// The `error.type` of a request that got no response.
fn error_type(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_request() {
        "request"
    } else {
        "transport"
    }
}
