//! The gRPC client layer: context injected, a client span and the RPC
//! client histogram per call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use paytrace_semconv::grpc_status::{DEADLINE_EXCEEDED, UNAVAILABLE};
use pin_project_lite::pin_project;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::BoxError;
use super::body::GrpcBody;
use super::call::{Call, SYSTEM, Side, deadline_in, method_and_label, on_error, on_response};
use crate::cardinality::OTHER;
use crate::propagation::{ambient, inject, outgoing};
use crate::redact::redact;
use crate::service::ServiceTelemetry;
use opentelemetry::baggage::BaggageExt;

/// A tower [`Layer`](tower::Layer) for gRPC channels: every call carries
/// W3C `traceparent` and `baggage` in its metadata, gets a client span
/// named by the method with `rpc.system.name`, `rpc.method`,
/// `server.address`, `rpc.response.status_code` and `error.type`, and is
/// measured in `rpc_client_call_duration_seconds` until its response
/// ends. A deadline that passes (`grpc-timeout`, or the channel's timeout)
/// is `DEADLINE_EXCEEDED`, a server that cannot be reached `UNAVAILABLE`,
/// a call dropped by its caller `CANCELLED`.
///
/// Made by [`ServiceTelemetry::grpc_client_layer`], naming the server the
/// channel reaches (its `server_address` label and `server.address`).
///
/// ```
/// # #[derive(Clone)] struct Channel;
/// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
/// let layer = svc.grpc_client_layer("inventory:50051");
/// // let channel = tonic::transport::Endpoint::from_static("http://inventory:50051").connect_lazy();
/// // let client = InventoryClient::new(tower::ServiceBuilder::new().layer(layer).service(channel));
/// let _traced = tower::Layer::layer(&layer, Channel);
/// ```
#[derive(Clone, Debug)]
pub struct GrpcClientLayer {
    service: ServiceTelemetry,
    server_address: String,
    server_port: Option<u16>,
}

impl GrpcClientLayer {
    pub(crate) fn new(service: ServiceTelemetry, server: &str) -> Self {
        let server = server
            .split_once("://")
            .map_or(server, |(_, rest)| rest)
            .trim_end_matches('/');
        let (host, port) = match server.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') => match port.parse() {
                Ok(port) => (host, Some(port)),
                Err(_) => (server, None),
            },
            _ => (server, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_address = service
            .families()
            .admit(service.name(), |g| &g.server_address, host)
            .unwrap_or(OTHER)
            .to_owned();
        Self {
            service,
            server_address,
            server_port: port,
        }
    }
}

impl<S> tower::Layer<S> for GrpcClientLayer {
    type Service = GrpcClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcClientService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GrpcClientLayer`] wraps around a channel.
#[derive(Clone, Debug)]
pub struct GrpcClientService<S> {
    inner: S,
    layer: GrpcClientLayer,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for GrpcClientService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<GrpcBody<ResBody>>;
    type Error = BoxError;
    type Future = GrpcClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let layer = &self.layer;
        let service = &layer.service;
        let ambient = ambient();
        let (method, method_label) = method_and_label(service, req.uri().path());
        // The flow id rides on every span, for routing by flow.
        let flow_id = ambient
            .baggage()
            .get(paytrace_semconv::attr::FLOW_ID)
            .map(|v| redact(v.as_str()));
        let span = tracing::info_span!(
            target: "paytrace::grpc",
            "RPC client request",
            otel.name = method.as_str(),
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system.name = SYSTEM,
            rpc.method = method.as_str(),
            rpc.response.status_code = Empty,
            server.address = layer.server_address.as_str(),
            server.port = layer.server_port,
            error.type = Empty,
            paytrace.flow_id = flow_id.as_deref(),
        );
        let _ = span.set_parent(service.tagged(ambient.clone()));
        inject(&outgoing(&span, &ambient), req.headers_mut());
        let deadline = deadline_in(req.headers(), start);
        let call = Call::new(
            service.clone(),
            method,
            method_label,
            Side::Client {
                server_address: layer.server_address.clone(),
            },
            start,
            deadline,
            span,
        );
        let inner = {
            let _enter = call.span.enter();
            self.inner.call(req)
        };
        GrpcClientFuture {
            inner,
            call: Some(call),
        }
    }
}

pin_project! {
    /// The response future of [`GrpcClientService`].
    pub struct GrpcClientFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for GrpcClientFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<GrpcBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let span = this.call.as_ref().map(|c| c.span.clone());
            let _enter = span.as_ref().map(tracing::Span::enter);
            ready!(this.inner.poll(cx))
        };
        let mut call = this.call.take();
        match result {
            Ok(response) => Poll::Ready(Ok(on_response(call, response))),
            Err(e) => {
                let e: BoxError = e.into();
                on_error(call.as_mut(), &e);
                Poll::Ready(Err(e))
            }
        }
    }
}

/// The status of a call that failed without a response, from its error
/// chain: a tonic `Status` gives its code, an expired timeout is
/// `DEADLINE_EXCEEDED` (tonic itself reports it `CANCELLED`; the gRPC
/// status table says a deadline that passed is `DEADLINE_EXCEEDED`), a
/// failed connection or any other transport error `UNAVAILABLE`.
pub(crate) fn status_of_error(e: &(dyn std::error::Error + 'static)) -> (u32, &'static str) {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(status) = err.downcast_ref::<tonic::Status>() {
            return (status.code() as u32, "status");
        }
        if err.is::<tonic::TimeoutExpired>() {
            return (u32::from(DEADLINE_EXCEEDED), "timeout");
        }
        if err.is::<tonic::ConnectError>() {
            return (u32::from(UNAVAILABLE), "connect");
        }
        source = err.source();
    }
    (u32::from(UNAVAILABLE), "transport")
}
