//! OTLP receivers: gRPC `TraceService/Export` and HTTP `POST /v1/traces`
//! (protobuf or JSON, optionally gzip), as the OTLP specification describes.
//!
//! - Invalid spans are rejected one by one in `partial_success`.
//! - A malformed payload is `INVALID_ARGUMENT` / `400`; an oversize one
//!   `RESOURCE_EXHAUSTED` / `413`.
//! - Under overload (too many requests in flight, or the assembly buffer
//!   near its byte budget) the answer is retryable: gRPC `UNAVAILABLE` with
//!   `RetryInfo`, HTTP `503` with `Retry-After`. Memory does not grow.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prometheus::IntCounterVec;
use prost::Message;
use tokio::sync::Semaphore;
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::StageRules;
use crate::decode::{Decoded, Interner, SpanLimits, decode, decode_protobuf};
use crate::pipeline::{Pipeline, Protocol};

mod grpc;

pub use grpc::TraceServiceExport;

/// Limits of the receivers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReceiverLimits {
    /// Largest request body, after decompression.
    pub max_body_bytes: usize,
    /// Requests decoded at once; more are told to retry.
    pub max_in_flight: usize,
    /// How long a client told to retry should wait.
    pub retry_after: Duration,
    /// Per-span limits.
    pub spans: SpanLimits,
    /// Rules naming the stages of plain OpenTelemetry spans.
    pub rules: Arc<StageRules>,
    /// The bearer tokens a sender must present (`Authorization: Bearer …`,
    /// gRPC metadata `authorization` alike); `None` admits anyone.
    pub tokens: Option<Arc<crate::auth::Tokens>>,
}

impl Default for ReceiverLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_in_flight: 64,
            retry_after: Duration::from_secs(1),
            spans: SpanLimits::default(),
            rules: Arc::new(StageRules::default()),
            tokens: None,
        }
    }
}

/// What both receivers share.
#[derive(Clone)]
pub struct Receiver {
    pipeline: Arc<Pipeline>,
    limits: ReceiverLimits,
    in_flight: Arc<Semaphore>,
    refused: IntCounterVec,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The `protocol` label of refusals by the API and page (not OTLP).
const API_PROTOCOL: &str = "api";

/// Why a request was turned away whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Overloaded,
    TooLarge,
    Malformed,
    UnsupportedMediaType,
    Unauthenticated,
}

impl Refusal {
    const ALL: [Self; 5] = [
        Self::Overloaded,
        Self::TooLarge,
        Self::Malformed,
        Self::UnsupportedMediaType,
        Self::Unauthenticated,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

impl Receiver {
    /// Receivers feeding `pipeline`; registers their refusal counter in the
    /// pipeline's registry.
    pub fn new(pipeline: Arc<Pipeline>, limits: ReceiverLimits) -> prometheus::Result<Self> {
        let refused = pipeline.register_counters(
            paytrace_semconv::metric::AGGREGATOR_REQUESTS_REFUSED_TOTAL,
            "OTLP requests turned away whole, by protocol and reason.",
            &[
                paytrace_semconv::label::PROTOCOL,
                paytrace_semconv::label::REASON,
            ],
        )?;
        // Every series exists from the start at zero, so that `increase()`
        // sees the first refusal.
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson] {
            for why in Refusal::ALL {
                refused.with_label_values(&[protocol.as_str(), why.as_str()]);
            }
        }
        refused.with_label_values(&[API_PROTOCOL, Refusal::Unauthenticated.as_str()]);
        Ok(Self {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            pipeline,
            limits,
            refused,
        })
    }

    /// Counts a request to the API or page refused for want of a token.
    pub(crate) fn refuse_api_unauthenticated(&self) {
        self.refused
            .with_label_values(&[API_PROTOCOL, Refusal::Unauthenticated.as_str()])
            .inc();
    }

    fn refuse(&self, protocol: Protocol, why: Refusal) {
        self.refused
            .with_label_values(&[protocol.as_str(), why.as_str()])
            .inc();
    }

    /// Whether a request with this `Authorization` value may send spans.
    fn admits(&self, authorization: Option<&[u8]>) -> bool {
        self.limits
            .tokens
            .as_ref()
            .is_none_or(|t| t.admits(authorization))
    }

    fn overloaded(&self) -> bool {
        self.pipeline.near_capacity()
    }

    /// Buffers the spans of a decoded request; the response carries the
    /// rejections.
    fn accept(&self, protocol: Protocol, decoded: Decoded) -> ExportTraceServiceResponse {
        // A rejection, or a warning with nothing rejected (the OTLP spec
        // allows `partial_success` with `rejected_spans` 0 for warnings).
        let partial_success = decoded
            .message()
            .map(|error_message| ExportTracePartialSuccess {
                rejected_spans: i64::try_from(decoded.rejected).unwrap_or(i64::MAX),
                error_message,
            });
        self.pipeline.ingest(protocol, decoded, Instant::now());
        ExportTraceServiceResponse { partial_success }
    }

    /// Decodes a protobuf `ExportTraceServiceRequest` and buffers its spans.
    fn accept_protobuf(
        &self,
        protocol: Protocol,
        body: &[u8],
    ) -> Result<ExportTraceServiceResponse, crate::decode::MalformedRequest> {
        let decoded = decode_protobuf(
            body,
            &self.limits.spans,
            &self.limits.rules,
            &mut Interner::default(),
        )?;
        Ok(self.accept(protocol, decoded))
    }

    /// Decodes an OTLP/JSON `ExportTraceServiceRequest` and buffers its spans.
    fn accept_json(&self, body: &[u8]) -> Result<ExportTraceServiceResponse, String> {
        let request = crate::decode::parse_json(body)
            .map_err(|e| format!("not an OTLP ExportTraceServiceRequest (JSON): {e}"))?;
        let decoded = decode(
            &request,
            &self.limits.spans,
            &self.limits.rules,
            &mut Interner::default(),
        );
        Ok(self.accept(Protocol::HttpJson, decoded))
    }

    /// The gRPC service, for a `tonic` server.
    pub fn grpc(&self) -> TraceServiceExport {
        TraceServiceExport::new(self.clone())
    }

    /// The HTTP router with `POST /v1/traces`.
    pub fn http(&self) -> Router {
        Router::new()
            .route("/v1/traces", post(http_export))
            // The handler reads the body with its own limit, so that an
            // oversize body is answered and counted like every refusal.
            .layer(DefaultBodyLimit::disable())
            .with_state(self.clone())
    }

    /// One gRPC `Export` call, its message still in bytes.
    async fn export_grpc(
        &self,
        body: Bytes,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(self.grpc_overloaded());
        };
        if self.overloaded() {
            return Err(self.grpc_overloaded());
        }
        let worker = self.clone();
        let outcome =
            tokio::task::spawn_blocking(move || worker.accept_protobuf(Protocol::Grpc, &body))
                .await
                .map_err(|e| tonic::Status::internal(format!("decoding failed: {e}")))?;
        match outcome {
            Ok(response) => Ok(tonic::Response::new(response)),
            Err(malformed) => {
                self.refuse(Protocol::Grpc, Refusal::Malformed);
                Err(tonic::Status::invalid_argument(malformed.to_string()))
            }
        }
    }

    fn grpc_overloaded(&self) -> tonic::Status {
        // Retryable: the exporter resends the spans, so they are not lost;
        // the refusal is counted, the spans are not dropped.
        self.refuse(Protocol::Grpc, Refusal::Overloaded);
        tonic::Status::with_error_details(
            tonic::Code::Unavailable,
            "the aggregator is overloaded; retry later",
            ErrorDetails::with_retry_info(Some(self.limits.retry_after)),
        )
    }
}

/// The body formats of OTLP/HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Self::Protobuf => Protocol::HttpProtobuf,
            Self::Json => Protocol::HttpJson,
        }
    }
}

fn http_status(format: Format, status: StatusCode, message: String) -> Response {
    // google.rpc.Status: code 3 is INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED,
    // 14 UNAVAILABLE, 16 UNAUTHENTICATED.
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => 3,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::UNAUTHORIZED => 16,
        _ => 14,
    };
    let body = match format {
        Format::Json => serde_json::json!({ "code": code, "message": message })
            .to_string()
            .into_bytes(),
        Format::Protobuf => tonic_types::pb::Status {
            code,
            message,
            details: Vec::new(),
        }
        .encode_to_vec(),
    };
    (
        status,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

async fn http_export(State(rx): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match content_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Format::Protobuf,
        "application/json" => Format::Json,
        other => {
            rx.refuse(Protocol::HttpProtobuf, Refusal::UnsupportedMediaType);
            return http_status(
                Format::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type {other:?} is not OTLP: use application/x-protobuf or application/json"
                ),
            );
        }
    };
    let protocol = format.protocol();
    if !rx.admits(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    ) {
        rx.refuse(protocol, Refusal::Unauthenticated);
        let mut response = http_status(
            format,
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>` with a token of the aggregator's --otlp-token-file"
                .to_owned(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let Ok(_permit) = rx.in_flight.try_acquire() else {
        return http_overloaded(&rx, format);
    };
    if rx.overloaded() {
        return http_overloaded(&rx, format);
    }
    let max = rx.limits.max_body_bytes;
    let body: Bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(_) => {
            rx.refuse(protocol, Refusal::TooLarge);
            return http_status(
                format,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body exceeds {max} bytes (or the client stopped sending it)"),
            );
        }
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let worker = rx.clone();
    let outcome =
        tokio::task::spawn_blocking(move || -> Result<Vec<u8>, (StatusCode, Refusal, String)> {
            let raw: Bytes = if gzip {
                let mut out = Vec::new();
                let read = flate2::read::GzDecoder::new(&body[..])
                    .take(max as u64 + 1)
                    .read_to_end(&mut out);
                match read {
                    Ok(n) if n > max => {
                        return Err((
                            StatusCode::PAYLOAD_TOO_LARGE,
                            Refusal::TooLarge,
                            format!("the decompressed body exceeds {max} bytes"),
                        ));
                    }
                    Ok(_) => out.into(),
                    Err(e) => {
                        return Err((
                            StatusCode::BAD_REQUEST,
                            Refusal::Malformed,
                            format!("invalid gzip body: {e}"),
                        ));
                    }
                }
            } else {
                body
            };
            let response = match format {
                Format::Protobuf => worker
                    .accept_protobuf(protocol, &raw)
                    .map_err(|e| e.to_string()),
                Format::Json => worker.accept_json(&raw),
            }
            .map_err(|m| (StatusCode::BAD_REQUEST, Refusal::Malformed, m))?;
            Ok(match format {
                Format::Protobuf => response.encode_to_vec(),
                Format::Json => serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
            })
        })
        .await;
    match outcome {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, format.content_type())],
            body,
        )
            .into_response(),
        Ok(Err((status, why, message))) => {
            rx.refuse(protocol, why);
            http_status(format, status, message)
        }
        Err(e) => http_status(
            format,
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("decoding failed: {e}"),
        ),
    }
}

fn http_overloaded(rx: &Receiver, format: Format) -> Response {
    rx.refuse(format.protocol(), Refusal::Overloaded);
    let mut response = http_status(
        format,
        StatusCode::SERVICE_UNAVAILABLE,
        "the aggregator is overloaded; retry later".to_owned(),
    );
    let secs = rx.limits.retry_after.as_secs().max(1).to_string();
    if let Ok(v) = HeaderValue::from_str(&secs) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}
