//! The HTTP server layer: one span and the RED metrics per request.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::Context;
use paytrace_semconv::UNMATCHED_ROUTE;
use pin_project_lite::pin_project;
use prometheus::{Histogram, IntGauge};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::cardinality::OTHER;
use crate::cardinality::method_label;
use crate::propagation::{Flow, extract};
use crate::redact::redact;
use crate::service::ServiceTelemetry;

/// A tower [`Layer`](tower::Layer) that traces and measures HTTP requests.
///
/// For every request it:
/// - starts a server span `"{METHOD} {route}"` whose parent is the caller's
///   `traceparent`, with the OpenTelemetry HTTP attributes and the flow,
///   flow id, payment method and channel from the caller's W3C baggage;
/// - records `http_server_request_duration_seconds` and
///   `http_server_active_requests`, labelled with the *matched route
///   template* (`unmatched` when no route matched — never the raw path);
/// - counts 5xx responses, handler errors and panics (as `500`), deadline
///   expiry (as `504`, see [`HttpLayer::timeout`]) and requests whose caller
///   went away (as `499`); the active gauge is released even then.
///
/// Add it with [`axum::Router::layer`]: that runs it after routing, so the
/// matched route is known. Built from [`ServiceTelemetry::http_layer`];
/// shaped with [`HttpLayer::on_request`], [`HttpLayer::on_response`] and
/// [`HttpLayer::classify`].
///
/// # Routing
///
/// `Router::layer` wraps the routes added **before** it, and only those:
///
/// - `nest` and `merge` routers before `.layer(..)`: their routes are
///   traced and labelled by their full template (`/api/v1/orders/{id}`).
///   A route or router added after the layer is neither traced nor
///   measured, and a handler there that takes `ServiceTelemetry` answers
///   500 (the extractor says why).
/// - `with_state` anywhere: state and the layer are independent.
/// - `route_layer(..)` instead of `layer(..)`: unmatched requests (404)
///   are then not seen at all; with `layer` they are, as `unmatched`.
/// - A `fallback` before the layer is traced as `unmatched`.
/// - Health and metrics routes: add them after the layer, or keep them
///   anywhere and leave them out with [`HttpLayer::skip_paths`] (or
///   [`HttpLayer::skip`] for any rule), so that the aggregator does not
///   list `GET /healthz` as a flow.
///
/// ```
/// use axum::{Router, routing::get};
/// use std::time::Duration;
///
/// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
/// let api = Router::new().route("/orders/{id}", get(|| async { "ok" }));
/// let app: Router = Router::new()
///     .nest("/api/v1", api)
///     .route("/healthz", get(|| async { "ok" }))
///     .layer(
///         svc.http_layer()
///             .timeout(Duration::from_secs(10))
///             .skip_paths(["/healthz"]),
///     )
///     .route("/metrics", svc.metrics_route());
/// ```
#[derive(Clone)]
pub struct HttpLayer {
    service: ServiceTelemetry,
    timeout: Option<Duration>,
    skip: Option<SkipRule>,
    hooks: Hooks,
}

/// Which request paths [`HttpLayer::skip`] leaves alone.
type SkipRule = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// [`HttpLayer::on_request`]'s hook.
type RequestHook = Arc<dyn Fn(&http::request::Parts, &ServerSpan<'_>) + Send + Sync>;
/// [`HttpLayer::on_response`]'s hook.
type ResponseHook = Arc<dyn Fn(&http::response::Parts, &ServerSpan<'_>) + Send + Sync>;
/// [`HttpLayer::classify`]'s rule.
type Classifier = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

/// What shapes the server span: the hooks and the failure classifier.
#[derive(Clone, Default)]
struct Hooks {
    on_request: Option<RequestHook>,
    on_response: Option<ResponseHook>,
    is_failure: Option<Classifier>,
}

/// The server span of one request, as [`HttpLayer::on_request`] and
/// [`HttpLayer::on_response`] see it: rename it, add attributes. Values
/// added here are not redacted: add no card numbers.
#[derive(Debug)]
pub struct ServerSpan<'a> {
    span: &'a tracing::Span,
}

impl ServerSpan<'_> {
    /// Renames the span (its OpenTelemetry name). The metrics keep the
    /// route template: a name is no label.
    pub fn set_name(&self, name: &str) {
        self.span.record("otel.name", name);
    }

    /// Sets the attribute `key` to `value` on the span.
    pub fn set_attribute(
        &self,
        key: impl Into<opentelemetry::Key>,
        value: impl Into<opentelemetry::Value>,
    ) {
        self.span.set_attribute(key, value);
    }
}

impl std::fmt::Debug for HttpLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpLayer")
            .field("service", &self.service.name())
            .field("timeout", &self.timeout)
            .field("skip", &self.skip.is_some())
            .field("on_request", &self.hooks.on_request.is_some())
            .field("on_response", &self.hooks.on_response.is_some())
            .field("classify", &self.hooks.is_failure.is_some())
            .finish()
    }
}

impl HttpLayer {
    pub(crate) fn new(service: ServiceTelemetry) -> Self {
        Self {
            service,
            timeout: None,
            skip: None,
            hooks: Hooks::default(),
        }
    }

    /// Calls `hook` with each request's head and its server span once the
    /// span has started: name it after something the route template does
    /// not say, or add an attribute of your own.
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let layer = svc.http_layer().on_request(|request, span| {
    ///     if let Some(tenant) = request.headers.get("x-tenant").and_then(|v| v.to_str().ok()) {
    ///         span.set_attribute("tenant.id", tenant.to_owned());
    ///     }
    /// });
    /// # drop(layer);
    /// ```
    pub fn on_request(
        mut self,
        hook: impl Fn(&http::request::Parts, &ServerSpan<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_request = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` with each response's head and the request's server
    /// span, before the span ends.
    pub fn on_response(
        mut self,
        hook: impl Fn(&http::response::Parts, &ServerSpan<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_response = Some(Arc::new(hook));
        self
    }

    /// Which responses are failures (the span's status `ERROR`, its
    /// `error.type` the status code): 5xx unless `is_failure` says
    /// otherwise, say a `409` that is a failure for you or a `503` that is
    /// not. Panics, handler errors and the layer's own timeout are failures
    /// whatever it says; the metrics keep every status code as it was.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let layer = svc.http_layer().classify(|status| {
    ///     status == StatusCode::CONFLICT || (status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE)
    /// });
    /// # drop(layer);
    /// ```
    pub fn classify(
        mut self,
        is_failure: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.hooks.is_failure = Some(Arc::new(is_failure));
        self
    }

    /// Leaves the requests whose path `skip` answers `true` for untraced
    /// and unmeasured: no span, no metrics, no timeout; handlers there can
    /// still take `ServiceTelemetry`. The path is the request's, as this
    /// layer sees it (inside a `nest`, without the nest's prefix).
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    /// let layer = svc.http_layer().skip(|path| path.starts_with("/internal/"));
    /// # drop(layer);
    /// ```
    pub fn skip(mut self, skip: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.skip = Some(Arc::new(skip));
        self
    }

    /// [`HttpLayer::skip`] for these exact paths (`["/healthz", "/readyz"]`).
    pub fn skip_paths<I, P>(self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        let paths: Vec<String> = paths.into_iter().map(Into::into).collect();
        self.skip(move |path| paths.iter().any(|p| p == path))
    }

    /// Answers `504 Gateway Timeout` (and counts it as an error) when the
    /// inner service has not produced a response within `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<S> tower::Layer<S> for HttpLayer {
    type Service = HttpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`HttpLayer`] wraps around an inner HTTP service.
#[derive(Clone, Debug)]
pub struct HttpService<S> {
    inner: S,
    layer: HttpLayer,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for HttpService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body + Default,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let service = &self.layer.service;
        // Handlers take it as an extractor (`svc: paytrace::ServiceTelemetry`).
        req.extensions_mut().insert(service.clone());
        if let Some(skip) = &self.layer.skip
            && skip(req.uri().path())
        {
            return ResponseFuture {
                inner: self.inner.call(req),
                deadline: None,
                attach: None,
                in_flight: None,
            };
        }
        let method = method_label(req.method());
        let route = match req.extensions().get::<MatchedPath>() {
            Some(p)
                if service
                    .families()
                    .admit(service.name(), |g| &g.route, p.as_str())
                    .is_some() =>
            {
                RouteLabel::Template(p.clone())
            }
            Some(_) => RouteLabel::Fixed(OTHER),
            None => RouteLabel::Fixed(UNMATCHED_ROUTE),
        };
        let parent = service.tagged(extract(req.headers()));
        let flow = Flow::redacted_from_context(&parent);

        let mut name = String::with_capacity(method.len() + 1 + route.as_str().len());
        name.push_str(method);
        name.push(' ');
        name.push_str(route.as_str());
        let path = redact(req.uri().path());
        let span = tracing::info_span!(
            target: "paytrace::http",
            "HTTP request",
            otel.name = name.as_str(),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = route.as_str(),
            http.response.status_code = Empty,
            url.path = path.as_ref(),
            url.scheme = req.uri().scheme_str().unwrap_or("http"),
            error.type = Empty,
            paytrace.flow = flow.flow.as_deref(),
            paytrace.flow_id = flow.flow_id.as_deref(),
            payment.method = flow.payment_method.as_deref(),
            payment.channel = flow.payment_channel.as_deref(),
        );
        // With an OpenTelemetry layer, the span's context (the caller's span
        // as parent, plus its baggage) becomes current whenever the span is
        // entered. Without one, attach the extracted context ourselves so
        // stages and outgoing calls still see the caller's trace and baggage.
        let attach = match span.set_parent(parent.clone()) {
            Ok(()) => None,
            Err(_) => Some(parent),
        };
        if let Some(hook) = &self.layer.hooks.on_request {
            let (parts, body) = req.into_parts();
            hook(&parts, &ServerSpan { span: &span });
            req = Request::from_parts(parts, body);
        }

        let families = service.families();
        let active = families.http_server_active.with_label_values(&[
            service.name(),
            method,
            route.as_str(),
        ]);
        active.inc();
        let in_flight = InFlight {
            hooks: self.layer.hooks.clone(),
            service: service.clone(),
            method,
            route,
            active,
            start: Instant::now(),
            span,
            done: std::cell::Cell::new(false),
        };

        let inner = {
            let _enter = in_flight.span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner,
            deadline: self.layer.timeout.map(tokio::time::sleep),
            attach,
            in_flight: Some(in_flight),
        }
    }
}

pin_project! {
    /// The response future of [`HttpService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        attach: Option<Context>,
        // `None` for a request the layer skips.
        in_flight: Option<InFlight>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body + Default,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.in_flight.is_none() {
            // A skipped request: passed through.
            let polled = ready!(this.inner.poll(cx));
            return Poll::Ready(polled.map(|r| r.map(ResponseBody::untraced)));
        }
        let polled = {
            let _attached = this.attach.as_ref().map(|cx| cx.clone().attach());
            let _enter = this.in_flight.as_ref().map(|f| f.span.enter());
            catch_unwind(AssertUnwindSafe(|| this.inner.poll(cx)))
        };
        let Some(in_flight) = this.in_flight.as_ref() else {
            return Poll::Pending;
        };
        match polled {
            Err(panic) => {
                in_flight.finish(StatusCode::INTERNAL_SERVER_ERROR, Some("panic"));
                resume_unwind(panic)
            }
            Ok(Poll::Ready(Ok(response))) => {
                let (parts, body) = response.into_parts();
                if let Some(hook) = &in_flight.hooks.on_response {
                    hook(
                        &parts,
                        &ServerSpan {
                            span: &in_flight.span,
                        },
                    );
                }
                // Recorded when the body ends: a streamed response is
                // measured whole. An empty one has ended already.
                if body.is_end_stream() {
                    in_flight.finish(parts.status, None);
                }
                let body = ResponseBody {
                    inner: body,
                    in_flight: this.in_flight.take().map(|f| (f, parts.status)),
                };
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            Ok(Poll::Ready(Err(e))) => {
                in_flight.finish(StatusCode::INTERNAL_SERVER_ERROR, Some("service_error"));
                Poll::Ready(Err(e))
            }
            Ok(Poll::Pending) => {
                if let Some(deadline) = this.deadline.as_pin_mut() {
                    ready!(deadline.poll(cx));
                    in_flight.finish(StatusCode::GATEWAY_TIMEOUT, Some("timeout"));
                    let mut response = Response::new(ResponseBody::untraced(ResBody::default()));
                    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                    return Poll::Ready(Ok(response));
                }
                Poll::Pending
            }
        }
    }
}

pin_project! {
    /// The body of a traced response. The request is recorded (its
    /// duration, status and the end of its span) when the body ends, so
    /// that a streamed response is measured whole, as the gRPC layer
    /// measures a stream; a body that breaks is a failure (`body`), and one
    /// dropped before its end, its caller gone, is recorded as `499`.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        // The request and its status; `None` for a body the layer does
        // not record.
        in_flight: Option<(InFlight, StatusCode)>,
    }
}

impl<B> ResponseBody<B> {
    /// A body passed through: a skipped request, or the layer's own 504.
    fn untraced(inner: B) -> Self {
        Self {
            inner,
            in_flight: None,
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some((in_flight, status)) = this.in_flight.as_ref() {
            let status = *status;
            match &frame {
                None => in_flight.finish(status, None),
                Some(Err(_)) => in_flight.finish(status, Some("body")),
                Some(Ok(_)) if this.inner.is_end_stream() => in_flight.finish(status, None),
                Some(Ok(_)) => {}
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The bookkeeping of one request in flight. Dropping it before
/// [`InFlight::finish`] records the request as abandoned by its caller.
struct InFlight {
    hooks: Hooks,
    service: ServiceTelemetry,
    method: &'static str,
    route: RouteLabel,
    active: IntGauge,
    start: Instant,
    span: tracing::Span,
    done: std::cell::Cell<bool>,
}

/// The `http_route` label of a request: its matched template, or a fixed
/// value (`unmatched`, or `other` past the route limit).
enum RouteLabel {
    Template(MatchedPath),
    Fixed(&'static str),
}

impl RouteLabel {
    fn as_str(&self) -> &str {
        match self {
            Self::Template(p) => p.as_str(),
            Self::Fixed(s) => s,
        }
    }
}

/// Status label of a request whose caller went away first (nginx's convention).
const CLIENT_CLOSED_REQUEST: &str = "499";

impl InFlight {
    /// Records the response: a failure when the layer says so (a panic,
    /// a handler error, its timeout: `error_type`), else as the classifier
    /// (5xx by default) says.
    fn finish(&self, status: StatusCode, error_type: Option<&str>) {
        let failed = error_type.is_some()
            || match &self.hooks.is_failure {
                Some(is_failure) => is_failure(status),
                None => status.is_server_error(),
            };
        self.record(status.as_str(), failed, error_type);
    }

    fn record(&self, status: &str, is_error: bool, error_type: Option<&str>) {
        if self.done.replace(true) {
            return;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let histogram: Histogram = self
            .service
            .families()
            .http_server_duration
            .with_label_values(&[
                self.service.name(),
                self.method,
                self.route.as_str(),
                status,
            ]);
        histogram.observe(elapsed);
        self.active.dec();

        // An integer, as the HTTP conventions say and the client span
        // records it (the metric's label is the same code as text).
        if let Ok(code) = status.parse::<u16>() {
            self.span
                .record("http.response.status_code", i64::from(code));
        }
        let error_type = error_type.or(is_error.then_some(status));
        if let Some(kind) = error_type {
            self.span.record("error.type", kind);
        }
        if is_error {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.record(CLIENT_CLOSED_REQUEST, false, Some("cancelled"));
    }
}
