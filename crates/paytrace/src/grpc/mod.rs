//! gRPC: the spans, RED metrics and flow labels of the HTTP layer, for tonic
//! servers and channels (or any gRPC stack built on `tower` and `http`).
//!
//! - [`GrpcLayer`] (from [`ServiceTelemetry::grpc_layer`]) wraps a server: a
//!   server span per call continuing the caller's `traceparent` and
//!   `baggage`, `rpc_server_call_duration_seconds` and
//!   `rpc_server_active_calls`.
//! - [`GrpcClientLayer`] (from [`ServiceTelemetry::grpc_client_layer`])
//!   wraps a channel: `traceparent` and `baggage` injected, a client span,
//!   `rpc_client_call_duration_seconds`.
//!
//! A call is measured from its request headers to the end of its response
//! body, so a streaming call counts whole. Its status is the `grpc-status`
//! of the response headers (an error answered at once) or trailers; a call
//! dropped before it has one was cancelled (`CANCELLED`), or timed out
//! (`DEADLINE_EXCEEDED`) when its `grpc-timeout` had passed.
//!
//! [`ServiceTelemetry::grpc_layer`]: crate::ServiceTelemetry::grpc_layer
//! [`ServiceTelemetry::grpc_client_layer`]: crate::ServiceTelemetry::grpc_client_layer

mod body;
mod call;
mod client;
mod server;

pub use body::GrpcBody;
pub use client::{GrpcClientFuture, GrpcClientLayer, GrpcClientService};
pub use server::{GrpcFuture, GrpcLayer, GrpcService};

pub use crate::client::BoxError;
