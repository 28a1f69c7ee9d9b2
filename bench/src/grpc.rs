//! An OTLP/gRPC client that costs as little as HTTP/2 allows, for measuring
//! a receiver rather than a client.

use std::net::SocketAddr;

use http::{HeaderMap, Request, Uri};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use prost::bytes::{Buf, Bytes, BytesMut};

/// The OTLP trace service's one method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One HTTP/2 connection to an OTLP/gRPC receiver, sending messages that
/// are already encoded.
///
/// A `tonic` client copies each message into its encoding buffer and hands
/// the call to a connection task through a channel; this one gives `h2` the
/// gRPC frame's 5-byte header and the message's own [`Bytes`] (no copy) on
/// the caller's task. What it does not skip is what the receiver sees: the
/// same HTTP/2 frames, headers and trailers. Its connection task runs on
/// the runtime that calls [`LeanGrpcClient::connect`].
///
/// ```no_run
/// # async fn run(address: std::net::SocketAddr, message: prost::bytes::Bytes) {
/// use paytrace_bench::grpc::LeanGrpcClient;
/// let mut client = LeanGrpcClient::connect(address).await.expect("connects");
/// client.export(message).await.expect("accepted whole");
/// # }
/// ```
#[derive(Debug)]
pub struct LeanGrpcClient {
    send: h2::client::SendRequest<Bytes>,
    uri: Uri,
}

impl LeanGrpcClient {
    /// Connects over plain TCP (`TCP_NODELAY`, as `tonic` sets it).
    pub async fn connect(address: SocketAddr) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let (send, connection) = h2::client::handshake(tcp)
            .await
            .map_err(|e| format!("HTTP/2 handshake with {address}: {e}"))?;
        tokio::spawn(async move {
            // Ends when the client is dropped or the server goes away; a
            // failing call reports its own error.
            let _ = connection.await;
        });
        let uri = format!("http://{address}{EXPORT_PATH}")
            .parse()
            .map_err(|e| format!("no URI for {address}: {e}"))?;
        Ok(Self { send, uri })
    }

    /// One `Export` call carrying `message`, an encoded
    /// `ExportTraceServiceRequest`; an error unless the receiver answered
    /// `OK` and rejected no span.
    pub async fn export(&mut self, message: Bytes) -> Result<(), String> {
        let request = Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| format!("building the request: {e}"))?;
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(|e| format!("the connection is closed: {e}"))?;
        let (response, mut stream) = send
            .send_request(request, false)
            .map_err(|e| format!("sending the request's headers: {e}"))?;
        let length = u32::try_from(message.len())
            .map_err(|_| format!("a {} byte message is too long for gRPC", message.len()))?;
        let mut header = [0u8; 5];
        header[1..].copy_from_slice(&length.to_be_bytes());
        stream
            .send_data(Bytes::copy_from_slice(&header), false)
            .and_then(|()| stream.send_data(message, true))
            .map_err(|e| format!("sending the message: {e}"))?;
        let response = response
            .await
            .map_err(|e| format!("waiting for the response: {e}"))?;
        if response.headers().contains_key("grpc-status") {
            // A trailers-only response: the call failed before any message.
            return grpc_status(response.headers());
        }
        let mut body = response.into_body();
        let mut reply = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("reading the response: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            reply.extend_from_slice(&chunk);
        }
        let trailers = body
            .trailers()
            .await
            .map_err(|e| format!("reading the trailers: {e}"))?
            .ok_or("the response has no trailers, so no grpc-status")?;
        grpc_status(&trailers)?;
        if reply.len() < 5 {
            return Err(format!(
                "a {} byte response has no gRPC message",
                reply.len()
            ));
        }
        reply.advance(5);
        let answer = ExportTraceServiceResponse::decode(reply)
            .map_err(|e| format!("the response is no ExportTraceServiceResponse: {e}"))?;
        match answer.partial_success {
            Some(partial) if partial.rejected_spans > 0 => Err(format!(
                "{} spans rejected: {}",
                partial.rejected_spans, partial.error_message
            )),
            _ => Ok(()),
        }
    }
}

/// `Ok` when `grpc-status` is 0.
fn grpc_status(headers: &HeaderMap) -> Result<(), String> {
    match headers.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"0") => Ok(()),
        Some(code) => Err(format!(
            "grpc-status {}: {}",
            String::from_utf8_lossy(code),
            headers
                .get("grpc-message")
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default()
        )),
        None => Err("the response has no grpc-status".to_owned()),
    }
}
