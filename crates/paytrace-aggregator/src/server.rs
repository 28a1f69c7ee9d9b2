//! Running the aggregator: the OTLP receivers, the API, and the clock that
//! completes traces and flows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::pipeline::{Now, Pipeline, PipelineConfig};
use crate::receiver::{Receiver, ReceiverLimits};

/// Where to listen and how to behave.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// OTLP/gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// The API, `/metrics` and health endpoints.
    pub listen: SocketAddr,
    /// The pipeline.
    pub pipeline: PipelineConfig,
    /// The receivers.
    pub receiver: ReceiverLimits,
    /// How often traces and flows are checked for completion.
    pub tick: Duration,
    /// The web page.
    pub page: crate::page::PageConfig,
    /// The bearer tokens a reader of the API and page must present
    /// (`/metrics`, `/healthz` and `/readyz` stay open); `None` admits anyone.
    pub api_tokens: Option<Arc<crate::auth::Tokens>>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            otlp_grpc: SocketAddr::from(([127, 0, 0, 1], 4317)),
            otlp_http: SocketAddr::from(([127, 0, 0, 1], 4318)),
            listen: SocketAddr::from(([127, 0, 0, 1], 8686)),
            pipeline: PipelineConfig::default(),
            receiver: ReceiverLimits::default(),
            tick: Duration::from_millis(250),
            page: crate::page::PageConfig::default(),
            api_tokens: None,
        }
    }
}

impl ServeConfig {
    /// Every listener on a free loopback port (port 0): for tests, benchmarks
    /// and embedding.
    ///
    /// ```
    /// let config = paytrace_aggregator::server::ServeConfig::on_free_loopback_ports();
    /// assert_eq!(config.listen.port(), 0);
    /// ```
    pub fn on_free_loopback_ports() -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            otlp_grpc: loopback,
            otlp_http: loopback,
            listen: loopback,
            ..Self::default()
        }
    }
}

/// A running aggregator.
#[derive(Debug)]
pub struct Running {
    /// The bound OTLP/gRPC address.
    pub otlp_grpc: SocketAddr,
    /// The bound OTLP/HTTP address.
    pub otlp_http: SocketAddr,
    /// The bound API address.
    pub listen: SocketAddr,
    /// The pipeline, to query directly.
    pub pipeline: Arc<Pipeline>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Binds every listener (port 0 picks a free port) and starts serving.
pub async fn start(config: ServeConfig) -> std::io::Result<Running> {
    let pipeline = Arc::new(Pipeline::new(config.pipeline));
    let receiver = Receiver::new(pipeline.clone(), config.receiver)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let grpc = TcpListener::bind(config.otlp_grpc).await?;
    let http = TcpListener::bind(config.otlp_http).await?;
    let api = TcpListener::bind(config.listen).await?;
    let (otlp_grpc, otlp_http, listen) =
        (grpc.local_addr()?, http.local_addr()?, api.local_addr()?);
    let (shutdown, _) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let stop = |rx: &watch::Sender<bool>| {
        let mut rx = rx.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let grpc_service = receiver.grpc();
    let grpc_stop = stop(&shutdown);
    tasks.spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(grpc_service)
            .serve_with_incoming_shutdown(incoming, grpc_stop)
            .await
        {
            tracing::error!(error = %e, "the OTLP/gRPC receiver stopped");
        }
    });
    let http_router = receiver.http();
    let http_stop = stop(&shutdown);
    tasks.spawn(async move {
        let http = http.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(e) = axum::serve(http, http_router)
            .with_graceful_shutdown(http_stop)
            .await
        {
            tracing::error!(error = %e, "the OTLP/HTTP receiver stopped");
        }
    });
    let guard = crate::api::Guard {
        tokens: config.api_tokens.clone(),
        receiver: receiver.clone(),
    };
    let api_router =
        crate::api::router(pipeline.clone(), guard).merge(crate::page::router(config.page.clone()));
    let api_stop = stop(&shutdown);
    tasks.spawn(async move {
        if let Err(e) = axum::serve(api, api_router)
            .with_graceful_shutdown(api_stop)
            .await
        {
            tracing::error!(error = %e, "the API stopped");
        }
    });
    let ticking = pipeline.clone();
    let tick = config.tick;
    let tick_stop = stop(&shutdown);
    tasks.spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(tick_stop);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let p = ticking.clone();
                    let _ = tokio::task::spawn_blocking(move || p.tick(Now::current())).await;
                }
                () = &mut tick_stop => break,
            }
        }
    });
    Ok(Running {
        otlp_grpc,
        otlp_http,
        listen,
        pipeline,
        shutdown,
        tasks,
    })
}

impl Running {
    /// Stops accepting, finishes every buffered trace and flow, and waits for
    /// the listeners to close.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        let p = self.pipeline.clone();
        let _ = tokio::task::spawn_blocking(move || p.flush(Now::current())).await;
    }
}
