//! Real tonic servers and clients behind paytrace's gRPC layers, for the
//! gRPC tests of the middleware and of the JS SDK's calls into it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use paytrace::ServiceTelemetry;
use paytrace_semconv::label;
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;

/// A tonic server with the health service (`shop.v1.Inventory` serving),
/// [`Slow`] and [`Staged`], behind `svc`'s gRPC layer.
pub async fn serve(svc: &ServiceTelemetry) -> SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.v1.Inventory", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    let router = Server::builder()
        .layer(svc.grpc_layer())
        .add_service(health)
        .add_service(Slow)
        .add_service(Staged(svc.clone()));
    tokio::spawn(async move {
        // Keeps the reporter (and so the statuses) alive with the server.
        let _reporter = reporter;
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    addr
}

/// A channel to `addr` behind `svc`'s gRPC client layer.
pub fn channel(
    svc: &ServiceTelemetry,
    addr: SocketAddr,
) -> paytrace::grpc::GrpcClientService<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect_lazy();
    tower::Layer::layer(&svc.grpc_client_layer(&addr.to_string()), channel)
}

/// A service that answers after five seconds, whatever is asked.
#[derive(Clone)]
pub struct Slow;

impl NamedService for Slow {
    const NAME: &'static str = "shop.v1.Slow";
}

impl tower::Service<http::Request<tonic::body::Body>> for Slow {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(tonic::Status::unavailable("too late").into_http())
        })
    }
}

/// A service whose handler runs the stage `inventory.try`, then answers
/// `ABORTED` (a refused phase), whatever is asked.
#[derive(Clone)]
pub struct Staged(pub ServiceTelemetry);

impl NamedService for Staged {
    const NAME: &'static str = "shop.v1.Staged";
}

impl tower::Service<http::Request<tonic::body::Body>> for Staged {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let _ = svc
                .stage("inventory.try")
                .run(async { Ok::<_, std::io::Error>(()) })
                .await;
            Ok(tonic::Status::aborted("refused").into_http())
        })
    }
}

pub fn labels<'a>(service: &'a str, method: &'a str, status: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (label::SERVICE_NAME, service),
        (label::RPC_SYSTEM_NAME, "grpc"),
        (label::RPC_METHOD, method),
        (label::RPC_RESPONSE_STATUS_CODE, status),
    ]
}
