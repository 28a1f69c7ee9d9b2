//! The HTTP client layer for any tower client (hyper-util's, a tower
//! stack around one, a test double): the same span, context and histogram
//! as [`super::Client`], without tying the caller to one reqwest version.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;

use super::call::{ClientCall, Target};
use crate::service::ServiceTelemetry;

/// The error a [`ClientService`] or a gRPC layer returns: the inner
/// service's error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tower [`Layer`](tower::Layer) for HTTP clients: every request carries
/// W3C `traceparent` and `baggage`, gets a client span `"{METHOD}"` with
/// the OpenTelemetry HTTP attributes (`http.request.method`,
/// `http.response.status_code` as an integer, `server.address`,
/// `server.port`, `url.full` without its query, `error.type`) and is
/// measured in `http_client_request_duration_seconds` until its response
/// head arrives, exactly as [`ServiceTelemetry::client`]'s reqwest calls.
///
/// The request's URI must be absolute (`http://host:port/path`), as
/// hyper-util's client requires anyway. A call that fails without a
/// response is `error.type = "timeout"`, `"connect"` or `"transport"` (read
/// from the error's `std::io::Error` source, if any); one whose future is
/// dropped before its answer is `"cancelled"`.
///
/// ```
/// use paytrace::tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), paytrace::BoxError> {
/// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
/// // Any tower HTTP client: here one that answers 204 to everything.
/// let client = paytrace::tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::io::Error>(http::Response::builder().status(204).body(()).unwrap())
/// });
/// let mut traced = paytrace::tower::ServiceBuilder::new().layer(svc.client_layer()).service(client);
/// let request = http::Request::get("http://inventory:8081/items/1").body(String::new())?;
/// let response = traced.ready().await?.call(request).await?;
/// assert_eq!(response.status(), 204);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ClientLayer {
    service: ServiceTelemetry,
}

impl ClientLayer {
    pub(crate) fn new(service: ServiceTelemetry) -> Self {
        Self { service }
    }
}

impl<S> tower::Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service [`ClientLayer`] wraps around a client.
#[derive(Clone, Debug)]
pub struct ClientService<S> {
    inner: S,
    service: ServiceTelemetry,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for ClientService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let uri = req.uri();
        let host = uri.host().unwrap_or("").to_owned();
        let port = uri.port_u16().or(match uri.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        });
        let url = match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{}", uri.path()),
            _ => uri.path().to_owned(),
        };
        let method = req.method().clone();
        let call = ClientCall::start(
            &self.service,
            &method,
            Target {
                host: host.trim_start_matches('[').trim_end_matches(']'),
                port,
                url: &url,
            },
            req.headers_mut(),
        );
        let inner = {
            let _enter = call.span().enter();
            self.inner.call(req)
        };
        ClientFuture {
            inner,
            call: Some(call),
        }
    }
}

pin_project! {
    /// The response future of [`ClientService`]; dropped before its answer,
    /// the call is recorded as `cancelled`.
    pub struct ClientFuture<F> {
        #[pin]
        inner: F,
        call: Option<ClientCall>,
    }
}

impl<F, ResBody, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let span = this.call.as_ref().map(|c| c.span().clone());
            let _enter = span.as_ref().map(tracing::Span::enter);
            ready!(this.inner.poll(cx))
        };
        let call = this.call.take();
        match result {
            Ok(response) => {
                if let Some(call) = call {
                    call.answered(response.status());
                }
                Poll::Ready(Ok(response))
            }
            Err(e) => {
                let e: BoxError = e.into();
                if let Some(call) = call {
                    call.failed(error_type(e.as_ref()));
                }
                Poll::Ready(Err(e))
            }
        }
    }
}

/// The `error.type` of a call that got no response, from the first
/// `std::io::Error` in its source chain.
fn error_type(e: &(dyn std::error::Error + 'static)) -> &'static str {
    use std::io::ErrorKind;
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::TimedOut => "timeout",
                ErrorKind::ConnectionRefused
                | ErrorKind::AddrNotAvailable
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable => "connect",
                _ => "transport",
            };
        }
        source = err.source();
    }
    "transport"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_in_the_chain_name_the_failure() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrapper(std::io::ErrorKind::ConnectionRefused.into());
        let timed_out = Wrapper(std::io::ErrorKind::TimedOut.into());
        let reset = Wrapper(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(error_type(&refused), "connect");
        assert_eq!(error_type(&timed_out), "timeout");
        assert_eq!(error_type(&reset), "transport");
        assert_eq!(error_type(&std::fmt::Error), "transport");
    }
}
