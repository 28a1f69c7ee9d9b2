//! One gRPC call's bookkeeping, on either side: when its status is known,
//! record the duration, release the active gauge and complete the span.

use std::time::{Duration, Instant};

use http::HeaderMap;
use paytrace_semconv::grpc_status::{self, CANCELLED, DEADLINE_EXCEEDED, UNIMPLEMENTED, UNKNOWN};
use prometheus::IntGauge;

use crate::service::ServiceTelemetry;

/// `rpc.system.name` and the `rpc_system_name` label.
pub(crate) const SYSTEM: &str = "grpc";

/// What `rpc.method` is when the server does not know the method.
pub(crate) const OTHER_METHOD: &str = "_OTHER";

/// The method of a request path `/package.Service/Method`
/// (`package.Service/Method`), or `None` for a path of another shape.
pub(crate) fn method_of(path: &str) -> Option<&str> {
    let method = path.strip_prefix('/')?;
    let (service, name) = method.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    (valid(service) && valid(name)).then_some(method)
}

/// The `grpc-status` code in `headers` (response headers or trailers).
pub(crate) fn status_in(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The status of a response that is not gRPC (no `grpc-status` and an HTTP
/// status other than 200), as the gRPC HTTP mapping gives it.
pub(crate) fn status_of_http(status: http::StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13, // INTERNAL
        401 => 16, // UNAUTHENTICATED
        403 => 7,  // PERMISSION_DENIED
        404 => u32::from(UNIMPLEMENTED),
        429 | 502..=504 => u32::from(grpc_status::UNAVAILABLE),
        _ => u32::from(UNKNOWN),
    }
}

/// The deadline a `grpc-timeout` header sets (`100m`, `5S`: an integer of
/// at most 8 digits and a unit, hours to nanoseconds).
pub(crate) fn deadline_in(headers: &HeaderMap, start: Instant) -> Option<Instant> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    start.checked_add(timeout)
}

/// The method of a request `path` and its `rpc_method` label, admitted
/// under the label limit (`other` past it; `_OTHER` for a path that names
/// no method).
pub(crate) fn method_and_label(service: &ServiceTelemetry, path: &str) -> (String, String) {
    let method = method_of(path).unwrap_or(OTHER_METHOD).to_owned();
    let label = service
        .families()
        .admit(service.name(), |g| &g.rpc_method, &method)
        .unwrap_or(crate::cardinality::OTHER)
        .to_owned();
    (method, label)
}

/// The response, its body wrapped to end `call` with the stream; an error
/// answered at once ("trailers only") carries its status in the headers
/// and ends it now.
pub(crate) fn on_response<B>(
    mut call: Option<Call>,
    response: http::Response<B>,
) -> http::Response<super::GrpcBody<B>> {
    let (parts, body) = response.into_parts();
    if let Some(call) = call.as_mut() {
        if let Some(code) = status_in(&parts.headers) {
            call.finish(code, None);
        } else if parts.status != http::StatusCode::OK {
            call.finish(status_of_http(parts.status), None);
        }
    }
    http::Response::from_parts(parts, super::GrpcBody::new(body, call))
}

/// Ends `call` with the status of a call that failed without a response.
pub(crate) fn on_error(call: Option<&mut Call>, e: &super::BoxError) {
    if let Some(call) = call {
        let (code, kind) = super::client::status_of_error(&**e);
        call.finish(code, Some(kind));
    }
}

/// Which side of the call this process is.
pub(crate) enum Side {
    /// A server: the active gauge to release.
    Server { active: IntGauge },
    /// A client calling `server_address`.
    Client { server_address: String },
}

/// One call in progress. Finished once: by its status, or when dropped.
pub(crate) struct Call {
    pub(crate) service: ServiceTelemetry,
    /// The method as asked (`package.Service/Method`).
    pub(crate) method: String,
    /// The `rpc_method` label admitted for it.
    pub(crate) method_label: String,
    pub(crate) side: Side,
    pub(crate) start: Instant,
    pub(crate) deadline: Option<Instant>,
    pub(crate) span: tracing::Span,
    done: bool,
}

impl Call {
    pub(crate) fn new(
        service: ServiceTelemetry,
        method: String,
        method_label: String,
        side: Side,
        start: Instant,
        deadline: Option<Instant>,
        span: tracing::Span,
    ) -> Self {
        Self {
            service,
            method,
            method_label,
            side,
            start,
            deadline,
            span,
            done: false,
        }
    }

    /// Records the call as ended with `code`; `error_type` names how it
    /// failed when the code alone does not (`panic`, `transport`).
    pub(crate) fn finish(&mut self, code: u32, error_type: Option<&'static str>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // tonic ends a call whose deadline passed as CANCELLED ("Timeout
        // expired"), on whichever side's timer fires first; the gRPC status
        // table says DEADLINE_EXCEEDED. Which side wins depends on the
        // machine's load, so a passed deadline is named the same either way.
        let (code, error_type) =
            if code == u32::from(CANCELLED) && self.deadline.is_some_and(|d| Instant::now() >= d) {
                (u32::from(DEADLINE_EXCEEDED), Some("timeout"))
            } else {
                (code, error_type)
            };
        let elapsed = self.start.elapsed().as_secs_f64();
        let status = grpc_status::name(code);
        let families = self.service.families();
        let service = self.service.name();
        let is_error = match &self.side {
            Side::Server { active } => {
                active.dec();
                // Unknown methods (tonic answers UNIMPLEMENTED) share one
                // series, so a scan of made-up names cannot grow the family.
                let method = if code == u32::from(UNIMPLEMENTED) {
                    self.span.record("rpc.method", OTHER_METHOD);
                    self.span
                        .record("rpc.method_original", self.method.as_str());
                    self.span.record("otel.name", OTHER_METHOD);
                    OTHER_METHOD
                } else {
                    self.method_label.as_str()
                };
                families
                    .rpc_server_duration
                    .with_label_values(&[service, SYSTEM, method, status])
                    .observe(elapsed);
                grpc_status::SERVER_SPAN_ERRORS.contains(&status)
            }
            Side::Client { server_address } => {
                families
                    .rpc_client_duration
                    .with_label_values(&[
                        service,
                        SYSTEM,
                        self.method_label.as_str(),
                        server_address,
                        status,
                    ])
                    .observe(elapsed);
                code != u32::from(grpc_status::OK)
            }
        };
        self.span.record("rpc.response.status_code", status);
        if is_error {
            self.span.record("error.type", error_type.unwrap_or(status));
            self.span.record("otel.status_code", "ERROR");
        }
    }

    /// Records the call as ended before it had a status: past its deadline,
    /// `DEADLINE_EXCEEDED`; otherwise the caller went away, `CANCELLED`.
    pub(crate) fn abandon(&mut self) {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.finish(u32::from(DEADLINE_EXCEEDED), Some("timeout"));
        } else {
            self.finish(u32::from(CANCELLED), Some("cancelled"));
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_package_service_slash_method() {
        assert_eq!(
            method_of("/inventory.v1.Inventory/Try"),
            Some("inventory.v1.Inventory/Try")
        );
        assert_eq!(method_of("/Echo/Echo"), Some("Echo/Echo"));
        for bad in [
            "",
            "/",
            "/a",
            "/a/",
            "//b",
            "/a/b/c",
            "/a b/c",
            "no-slash/x",
        ] {
            assert_eq!(method_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_timeouts_parse_by_unit_and_refuse_the_rest() {
        let start = Instant::now();
        let at = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().expect("a header value"));
            deadline_in(&h, start).map(|d| d - start)
        };
        assert_eq!(at("100m"), Some(Duration::from_millis(100)));
        assert_eq!(at("2S"), Some(Duration::from_secs(2)));
        assert_eq!(at("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(at("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_failures_map_to_grpc_codes() {
        assert_eq!(status_of_http(http::StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(status_of_http(http::StatusCode::NOT_FOUND), 12);
        assert_eq!(status_of_http(http::StatusCode::IM_A_TEAPOT), 2);
    }
}
