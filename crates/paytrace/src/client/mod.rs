//! Outgoing HTTP: trace context and baggage injected, a client span, a
//! histogram; through a wrapped `reqwest::Client` ([`Client`]) or any tower
//! HTTP client ([`ClientLayer`]).

mod call;
mod layer;

use tracing::Instrument;

use crate::service::ServiceTelemetry;
use call::{ClientCall, Target};
pub use layer::{BoxError, ClientFuture, ClientLayer, ClientService};

/// A `reqwest::Client` whose calls carry W3C `traceparent` and `baggage`, get
/// a client span `"{METHOD}"` with the OpenTelemetry HTTP attributes, and are
/// measured in `http_client_request_duration_seconds`.
///
/// Made by [`ServiceTelemetry::client`]. Requests are built as with reqwest, and sent
/// traced:
///
/// ```no_run
/// # async fn demo() -> Result<(), reqwest::Error> {
/// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
/// let http = svc.client(reqwest::Client::new());
/// let stock = http.get("http://127.0.0.1:8081/items/1").send().await?;
/// let reserved = http
///     .post("http://127.0.0.1:8081/reserve")
///     .json(&serde_json::json!({ "sku": 1, "count": 2 }))
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    service: ServiceTelemetry,
    inner: reqwest::Client,
}

/// A request being built, sent through its [`Client`]: reqwest's builder,
/// traced and measured when sent. Anything the shortcuts here do not cover
/// goes through [`RequestBuilder::with`].
#[derive(Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder {
    client: Client,
    inner: reqwest::RequestBuilder,
}

impl RequestBuilder {
    /// Adds a header.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.with(|b| b.header(name, value))
    }

    /// Sets a JSON body (and its content type).
    pub fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> Self {
        self.with(|b| b.json(body))
    }

    /// Sets the body.
    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        self.with(|b| b.body(body))
    }

    /// Sets a timeout for this request.
    pub fn timeout(self, timeout: std::time::Duration) -> Self {
        self.with(|b| b.timeout(timeout))
    }

    /// Applies any reqwest builder method.
    ///
    /// ```no_run
    /// # async fn demo(http: paytrace::Client) -> Result<(), reqwest::Error> {
    /// let r = http.get("http://127.0.0.1:8081/items").with(|b| b.bearer_auth("t0k3n")).send().await?;
    /// # Ok(()) }
    /// ```
    pub fn with(self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        Self {
            client: self.client,
            inner: f(self.inner),
        }
    }

    /// Sends the request, traced and measured.
    pub async fn send(self) -> reqwest::Result<reqwest::Response> {
        self.client.execute(self.inner.build()?).await
    }
}

impl Client {
    pub(crate) fn new(service: ServiceTelemetry, inner: reqwest::Client) -> Self {
        Self { service, inner }
    }

    /// The wrapped client.
    pub fn inner(&self) -> &reqwest::Client {
        &self.inner
    }

    /// Starts a request of `method` to `url`.
    pub fn request(&self, method: reqwest::Method, url: &str) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            inner: self.inner.request(method, url),
        }
    }

    /// Starts a `GET` to `url`.
    pub fn get(&self, url: &str) -> RequestBuilder {
        self.request(reqwest::Method::GET, url)
    }

    /// Starts a `POST` to `url`.
    pub fn post(&self, url: &str) -> RequestBuilder {
        self.request(reqwest::Method::POST, url)
    }

    /// Starts a `PUT` to `url`.
    pub fn put(&self, url: &str) -> RequestBuilder {
        self.request(reqwest::Method::PUT, url)
    }

    /// Starts a `DELETE` to `url`.
    pub fn delete(&self, url: &str) -> RequestBuilder {
        self.request(reqwest::Method::DELETE, url)
    }

    /// Builds and sends a request built with the inner client.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        self.execute(request.build()?).await
    }

    /// Sends `request`, traced and measured.
    pub async fn execute(
        &self,
        mut request: reqwest::Request,
    ) -> reqwest::Result<reqwest::Response> {
        let url = request.url();
        let host = url.host_str().unwrap_or("").to_owned();
        let port = url.port_or_known_default();
        let mut full = url.clone();
        full.set_query(None);
        full.set_fragment(None);
        let method = request.method().clone();
        let call = ClientCall::start(
            &self.service,
            &method,
            Target {
                host: &host,
                port,
                url: full.as_str(),
            },
            request.headers_mut(),
        );
        let span = call.span().clone();
        let result = self.inner.execute(request).instrument(span).await;
        match &result {
            Ok(response) => call.answered(response.status()),
            Err(e) => call.failed(error_type(e)),
        }
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
