//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` over gRPC.
//!
//! The service `tonic` generates from the OTLP protos decodes each request
//! into OTLP messages before the handler sees it. This one hands the
//! handler the message's bytes, for [`decode_protobuf`](crate::decode::decode_protobuf);
//! framing, compression, size limits and status codes stay `tonic`'s.

use std::convert::Infallible;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use prost::bytes::{Buf, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};

use super::{Receiver, Refusal};
use crate::pipeline::Protocol;

/// The OTLP trace service's name.
const SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The path of its one method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The OTLP/gRPC trace service of a [`Receiver`], for a `tonic` server.
///
/// ```no_run
/// # async fn run(receiver: paytrace_aggregator::receiver::Receiver) {
/// tonic::transport::Server::builder()
///     .add_service(receiver.grpc())
///     .serve("127.0.0.1:4317".parse().unwrap())
///     .await
///     .unwrap();
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TraceServiceExport {
    receiver: Receiver,
}

impl TraceServiceExport {
    pub(super) fn new(receiver: Receiver) -> Self {
        Self { receiver }
    }
}

impl NamedService for TraceServiceExport {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for TraceServiceExport
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        let receiver = self.receiver.clone();
        let authorization = request.headers().get("authorization");
        if !receiver.admits(authorization.map(http::HeaderValue::as_bytes)) {
            receiver.refuse(Protocol::Grpc, Refusal::Unauthenticated);
            return Box::pin(async {
                Ok(tonic::Status::unauthenticated(
                    "send metadata `authorization: Bearer <token>` with a token of the aggregator's --otlp-token-file",
                )
                .into_http())
            });
        }
        Box::pin(async move {
            let mut grpc = Grpc::new(RawRequestCodec)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(receiver.limits.max_body_bytes);
            let response = grpc.unary(Export(receiver.clone()), request).await;
            Ok(too_large_is_resource_exhausted(&receiver, response))
        })
    }
}

/// `tonic` refuses a message over the size limit before the handler runs:
/// with `OUT_OF_RANGE` when its frame says so, with `RESOURCE_EXHAUSTED`
/// when it only grows past the limit while being decompressed. OTLP clients
/// expect `RESOURCE_EXHAUSTED`, and each refusal must be counted. The
/// handler itself answers neither code, so the code says which refusal
/// this is.
fn too_large_is_resource_exhausted(
    receiver: &Receiver,
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    match status.code() {
        tonic::Code::OutOfRange => {
            receiver.refuse(Protocol::Grpc, Refusal::TooLarge);
            tonic::Status::resource_exhausted(format!(
                "the message exceeds {} bytes: {}",
                receiver.limits.max_body_bytes,
                status.message()
            ))
            .into_http()
        }
        tonic::Code::ResourceExhausted => {
            receiver.refuse(Protocol::Grpc, Refusal::TooLarge);
            response
        }
        _ => response,
    }
}

/// The handler of one call.
struct Export(Receiver);

impl UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<ExportTraceServiceResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let receiver = self.0.clone();
        Box::pin(async move { receiver.export_grpc(request.into_inner()).await })
    }
}

/// Requests stay bytes; responses are encoded with `prost`.
#[derive(Clone, Copy, Debug, Default)]
struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the response: {e}")))
    }
}

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
