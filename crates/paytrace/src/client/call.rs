//! One outgoing HTTP call, recorded the same way whichever client sent it:
//! the client span, the injected context, and the histogram.
//!
//! The rule for a call whose future is dropped before an answer: the span
//! ends with `error.type = "cancelled"` and the call is measured with an
//! empty status, as a call that got no response.

use std::time::Instant;

use http::StatusCode;
use opentelemetry::baggage::BaggageExt;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::cardinality::{OTHER, method_label};
use crate::propagation::{ambient, inject, outgoing};
use crate::redact::redact;
use crate::service::ServiceTelemetry;

/// Where a call goes, as its span names it.
pub(crate) struct Target<'a> {
    /// `server.address`: the host.
    pub(crate) host: &'a str,
    /// `server.port`: the port, or the scheme's.
    pub(crate) port: Option<u16>,
    /// `url.full`, without query and fragment (redacted here).
    pub(crate) url: &'a str,
}

/// A call in flight: its span is open until [`ClientCall::answered`],
/// [`ClientCall::failed`] or the drop.
pub(crate) struct ClientCall {
    service: ServiceTelemetry,
    method: &'static str,
    host: String,
    span: tracing::Span,
    start: Instant,
    done: bool,
}

impl ClientCall {
    /// Opens the client span of a `method` call to `target` under the
    /// ambient context and injects that span's context and the ambient
    /// baggage into `headers`.
    pub(crate) fn start(
        service: &ServiceTelemetry,
        method: &http::Method,
        target: Target<'_>,
        headers: &mut http::HeaderMap,
    ) -> Self {
        let ambient = ambient();
        let method = method_label(method);
        // The flow id rides on every span, so that a Collector can route
        // the spans of one flow to one aggregator by it.
        let flow_id = ambient
            .baggage()
            .get(paytrace_semconv::attr::FLOW_ID)
            .map(|v| redact(v.as_str()));
        // Recorded as a string, not through `Display` (which the
        // OpenTelemetry layer would format into a new `String`).
        let url = redact(target.url);
        let span = tracing::info_span!(
            target: "paytrace::http",
            "HTTP client request",
            otel.name = method,
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = method,
            http.response.status_code = Empty,
            server.address = target.host,
            server.port = target.port,
            url.full = url.as_ref(),
            error.type = Empty,
            paytrace.flow_id = flow_id.as_deref(),
        );
        let _ = span.set_parent(service.tagged(ambient.clone()));
        inject(&outgoing(&span, &ambient), headers);
        Self {
            service: service.clone(),
            method,
            host: target.host.to_owned(),
            span,
            start: Instant::now(),
            done: false,
        }
    }

    /// The call's span, to enter while the call runs.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The call got a response with `status`: a 4xx or 5xx is an error.
    pub(crate) fn answered(mut self, status: StatusCode) {
        self.span
            .record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_client_error() || status.is_server_error() {
            self.span.record("error.type", status.as_str());
            self.span.record("otel.status_code", "ERROR");
        }
        self.observe(status.as_str());
    }

    /// The call got no response; `error_type` says why (`timeout`,
    /// `connect`, …).
    pub(crate) fn failed(mut self, error_type: &'static str) {
        self.fail(error_type);
    }

    fn fail(&mut self, error_type: &'static str) {
        self.span.record("error.type", error_type);
        self.span.record("otel.status_code", "ERROR");
        self.observe("");
    }

    fn observe(&mut self, status: &str) {
        self.done = true;
        let elapsed = self.start.elapsed().as_secs_f64();
        let families = self.service.families();
        let server_address = families
            .admit(self.service.name(), |g| &g.server_address, &self.host)
            .unwrap_or(OTHER);
        families
            .http_client_duration
            .with_label_values(&[self.service.name(), self.method, server_address, status])
            .observe(elapsed);
    }
}

impl Drop for ClientCall {
    fn drop(&mut self) {
        if !self.done {
            self.fail("cancelled");
        }
    }
}
