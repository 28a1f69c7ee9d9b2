//! The response body of a traced call: it ends the call when the status
//! arrives in the trailers, or when the stream ends or breaks without one.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use paytrace_semconv::grpc_status::{UNAVAILABLE, UNKNOWN};
use pin_project_lite::pin_project;

use super::call::{Call, Side, status_in};

pin_project! {
    /// A gRPC response body that records its call's end: the `grpc-status`
    /// of its trailers, or `UNKNOWN` when it ends without one; a body
    /// dropped before its end was cancelled. Holds the call's span open
    /// until then, so a streaming call's span covers the whole stream.
    pub struct GrpcBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B> GrpcBody<B> {
    pub(crate) fn new(inner: B, call: Option<Call>) -> Self {
        Self { inner, call }
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        call.finish(status_in(trailers).unwrap_or(u32::from(UNKNOWN)), None);
                    }
                }
                // A stream that broke: the connection, for a client.
                Some(Err(_)) => {
                    let code = match call.side {
                        Side::Client { .. } => UNAVAILABLE,
                        Side::Server { .. } => UNKNOWN,
                    };
                    call.finish(u32::from(code), Some("stream"));
                }
                None => call.finish(u32::from(UNKNOWN), Some("no_status")),
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

impl<B: std::fmt::Debug> std::fmt::Debug for GrpcBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
