//! The gRPC server layer: a server span and the RPC RED metrics per call.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use http::{Request, Response};
use opentelemetry::Context;
use paytrace_semconv::grpc_status::UNKNOWN;
use pin_project_lite::pin_project;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::BoxError;
use super::body::GrpcBody;
use super::call::{Call, SYSTEM, Side, deadline_in, method_and_label, on_error, on_response};
use crate::propagation::{Flow, extract};
use crate::service::ServiceTelemetry;

/// A tower [`Layer`](tower::Layer) that traces and measures gRPC calls.
///
/// For every call it:
/// - starts a server span named by the method (`inventory.v1.Inventory/Try`)
///   whose parent is the caller's `traceparent`, with `rpc.system.name`,
///   `rpc.method`, `rpc.response.status_code`, `error.type`, and the flow,
///   flow id, payment method and channel from the caller's W3C baggage;
///   stages inside the handler label themselves with them, as behind the
///   HTTP layer;
/// - records `rpc_server_call_duration_seconds` (to the end of the
///   response stream) and `rpc_server_active_calls`. Methods the server
///   does not know (answered `UNIMPLEMENTED`) are `_OTHER`, and method
///   names past the label limit fold into `other`.
///
/// Add it to a tonic server with `Server::builder().layer(...)`. Built
/// from [`ServiceTelemetry::grpc_layer`].
///
/// ```
/// # #[derive(Clone)] struct Routes;
/// let svc = paytrace::ServiceTelemetry::new("inventory", "1.0.0");
/// let layer = svc.grpc_layer();
/// // tonic::transport::Server::builder().layer(layer).add_service(...).serve(addr)
/// let _traced = tower::Layer::layer(&layer, Routes);
/// ```
#[derive(Clone, Debug)]
pub struct GrpcLayer {
    service: ServiceTelemetry,
}

impl GrpcLayer {
    pub(crate) fn new(service: ServiceTelemetry) -> Self {
        Self { service }
    }
}

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service [`GrpcLayer`] wraps around a gRPC server.
#[derive(Clone, Debug)]
pub struct GrpcService<S> {
    inner: S,
    service: ServiceTelemetry,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for GrpcService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<GrpcBody<ResBody>>;
    type Error = BoxError;
    type Future = GrpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let service = &self.service;
        // Handlers reach the service through the request's extensions
        // (`request.extensions().get::<paytrace::ServiceTelemetry>()`).
        req.extensions_mut().insert(service.clone());
        let (method, method_label) = method_and_label(service, req.uri().path());
        let parent = service.tagged(extract(req.headers()));
        let flow = Flow::redacted_from_context(&parent);
        let span = tracing::info_span!(
            target: "paytrace::grpc",
            "RPC request",
            otel.name = method.as_str(),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system.name = SYSTEM,
            rpc.method = method.as_str(),
            rpc.method_original = Empty,
            rpc.response.status_code = Empty,
            error.type = Empty,
            paytrace.flow = flow.flow.as_deref(),
            paytrace.flow_id = flow.flow_id.as_deref(),
            payment.method = flow.payment_method.as_deref(),
            payment.channel = flow.payment_channel.as_deref(),
        );
        // As in the HTTP layer: without an OpenTelemetry layer, attach the
        // caller's context ourselves so stages still see its baggage.
        let attach = match span.set_parent(parent.clone()) {
            Ok(()) => None,
            Err(_) => Some(parent),
        };
        let active = service.families().rpc_server_active.with_label_values(&[
            service.name(),
            SYSTEM,
            &method_label,
        ]);
        active.inc();
        let deadline = deadline_in(req.headers(), start);
        let call = Call::new(
            service.clone(),
            method,
            method_label,
            Side::Server { active },
            start,
            deadline,
            span,
        );
        let inner = {
            let _enter = call.span.enter();
            self.inner.call(req)
        };
        GrpcFuture {
            inner,
            attach,
            call: Some(call),
        }
    }
}

pin_project! {
    /// The response future of [`GrpcService`].
    pub struct GrpcFuture<F> {
        #[pin]
        inner: F,
        attach: Option<Context>,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for GrpcFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<GrpcBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _attached = this.attach.as_ref().map(|cx| cx.clone().attach());
        let span = this
            .call
            .as_ref()
            .map(|c| c.span.clone())
            .unwrap_or_else(tracing::Span::none);
        let _enter = span.enter();
        let polled = catch_unwind(AssertUnwindSafe(|| this.inner.poll(cx)));
        let mut call = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            _ => this.call.take(),
        };
        match polled {
            Err(panic) => {
                if let Some(call) = call.as_mut() {
                    call.finish(u32::from(UNKNOWN), Some("panic"));
                }
                resume_unwind(panic)
            }
            Ok(Poll::Ready(Ok(response))) => Poll::Ready(Ok(on_response(call, response))),
            Ok(Poll::Ready(Err(e))) => {
                let e: BoxError = e.into();
                on_error(call.as_mut(), &e);
                Poll::Ready(Err(e))
            }
            Ok(Poll::Pending) => Poll::Pending,
        }
    }
}
