//! Running the aggregator: the OTLP receivers, the API, and the clock that
//! completes traces and flows.

pub use crate::page::{PageConfig, TemplateError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::{Listener, ListenerExt};
use prometheus::IntCounterVec;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::pipeline::{Now, Pipeline, PipelineConfig};
use crate::receiver::{Receiver, ReceiverLimits};
use crate::state::StateDir;
use crate::tls::{Alpn, Certificates, TlsFiles, TlsListener};

/// Where to listen and how to behave.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// Serve every listener over TLS with these files; `None` serves
    /// plaintext.
    pub tls: Option<TlsFiles>,
    /// Where the pipeline's state is kept across restarts: read at start,
    /// written every [`ServeConfig::snapshot_interval`] and at shutdown.
    /// `None`: a shutdown analyses what is buffered, a restart starts empty.
    pub state_dir: Option<StateDir>,
    /// How often the state is written to `state_dir`.
    pub snapshot_interval: Duration,
    /// The other replicas this one answers with (see [`crate::cluster`]);
    /// `None`: this replica answers for itself.
    pub peers: Option<crate::cluster::PeerSettings>,
    /// Where the flows worth keeping go (`--forward-otlp`); `None`: nothing
    /// is forwarded.
    pub forward: Option<crate::forward::ForwardSettings>,
    /// The Prometheus whose USE signals `/api/v1/changes` adds
    /// (`--prometheus`).
    pub prometheus: Option<String>,
    /// How long [`Running::shutdown`] waits for the requests in flight
    /// before it stops them and goes on to analyse or write the state.
    pub drain_timeout: Duration,
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
            tls: None,
            state_dir: None,
            snapshot_interval: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            peers: None,
            forward: None,
            prometheus: None,
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
    snapshots: Option<Snapshots>,
    drain_timeout: Duration,
    /// The forwarder task and what stops it, last of all (it takes the
    /// flows the final flush keeps).
    forwarding: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

/// Writes the pipeline's state to the state directory, counting outcomes.
#[derive(Clone, Debug)]
struct Snapshots {
    dir: StateDir,
    pipeline: Arc<Pipeline>,
    outcomes: IntCounterVec,
}

impl Snapshots {
    /// Takes a snapshot and writes it; the outcome is counted and a
    /// failure logged (the previous snapshot stays whole).
    fn write(&self) {
        let started = std::time::Instant::now();
        let now = Now::current();
        let snapshot = self.pipeline.snapshot(now);
        let copied = started.elapsed();
        let outcome = match self.dir.save(&snapshot, now.wall) {
            Ok(()) => {
                tracing::debug!(
                    path = %self.dir.snapshot_path().display(),
                    bytes = std::fs::metadata(self.dir.snapshot_path()).map_or(0, |m| m.len()),
                    copy_seconds = copied.as_secs_f64(),
                    seconds = started.elapsed().as_secs_f64(),
                    "state snapshot written"
                );
                paytrace_semconv::snapshot_outcome::WRITTEN
            }
            Err(e) => {
                tracing::error!(
                    path = %self.dir.snapshot_path().display(),
                    error = %e,
                    "cannot write the state snapshot: the previous one stays"
                );
                paytrace_semconv::snapshot_outcome::FAILED
            }
        };
        self.outcomes.with_label_values(&[outcome]).inc();
    }

    /// Reads the snapshot left by the last process into the pipeline.
    fn restore(&self) {
        let now = Now::current();
        let outcome = match self.dir.load(now.wall) {
            Ok(None) => {
                tracing::info!(dir = %self.dir.snapshot_path().display(), "no state snapshot: starting empty");
                return;
            }
            Ok(Some((snapshot, down))) => {
                self.pipeline.restore(snapshot, now, down);
                tracing::info!(
                    path = %self.dir.snapshot_path().display(),
                    down_seconds = down.as_secs_f64(),
                    "state restored from the snapshot"
                );
                paytrace_semconv::snapshot_outcome::RESTORED
            }
            Err((why, aside)) => {
                tracing::error!(
                    path = %self.dir.snapshot_path().display(),
                    moved_to = %aside.display(),
                    "the state snapshot cannot be used: {why}; it was moved aside and the aggregator starts empty"
                );
                paytrace_semconv::snapshot_outcome::SET_ASIDE
            }
        };
        self.outcomes.with_label_values(&[outcome]).inc();
    }
}

/// Binds every listener (port 0 picks a free port) and starts serving.
///
/// Fails when an address cannot be bound, or when the TLS files cannot be
/// used (the message names the file).
pub async fn start(mut config: ServeConfig) -> std::io::Result<Running> {
    let pipeline = Arc::new(Pipeline::new(config.pipeline));
    // Forwarding needs every span as it was sent.
    config.receiver.spans.keep_as_sent |= config.forward.is_some();
    let forwarding = match config.forward.take() {
        Some(settings) => {
            let counts = crate::forward::Counts::register(pipeline.registry())
                .map_err(std::io::Error::other)?;
            let (forwarder, queue) = crate::forward::Forwarder::new(&settings, counts.clone());
            pipeline.forward_to(forwarder);
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(crate::forward::run(queue, settings, counts, stopped));
            Some((stop, task))
        }
        None => None,
    };
    let receiver = Receiver::new(pipeline.clone(), config.receiver)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let certificates = match config.tls {
        Some(files) => Some(Arc::new(Certificates::load(files).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
        })?)),
        None => None,
    };
    let refused = connections_refused(&pipeline)?;
    // Registered with or without a state directory, so that the alert on
    // failed snapshots reads a series wherever the aggregator runs.
    let outcomes = snapshot_outcomes(&pipeline)?;
    let snapshots = match config.state_dir {
        Some(dir) => {
            let snapshots = Snapshots {
                dir,
                pipeline: pipeline.clone(),
                outcomes,
            };
            let restoring = snapshots.clone();
            tokio::task::spawn_blocking(move || restoring.restore())
                .await
                .map_err(std::io::Error::other)?;
            Some(snapshots)
        }
        None => None,
    };
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
    let grpc_router = tonic::transport::Server::builder().add_service(receiver.grpc());
    let grpc_stop = stop(&shutdown);
    match &certificates {
        None => tasks.spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
            if let Err(e) = grpc_router
                .serve_with_incoming_shutdown(incoming, grpc_stop)
                .await
            {
                tracing::error!(error = %e, "the OTLP/gRPC receiver stopped");
            }
        }),
        Some(certificates) => {
            let accepted = crate::tls::accept(
                grpc,
                certificates.clone(),
                Alpn::H2,
                refused.clone(),
                paytrace_semconv::listener::OTLP_GRPC,
            );
            tasks.spawn(async move {
                use tokio_stream::StreamExt;
                let incoming = tokio_stream::wrappers::ReceiverStream::new(accepted)
                    .map(|(tls, _peer)| Ok::<_, std::io::Error>(tls));
                if let Err(e) = grpc_router
                    .serve_with_incoming_shutdown(incoming, grpc_stop)
                    .await
                {
                    tracing::error!(error = %e, "the OTLP/gRPC receiver stopped");
                }
            })
        }
    };
    let guard = crate::api::Guard {
        tokens: config.api_tokens.clone(),
        receiver: receiver.clone(),
    };
    let peers = match &config.peers {
        Some(settings) => Some(Arc::new(
            crate::cluster::Peers::new(settings, config.api_tokens.clone(), &pipeline)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        )),
        None => None,
    };
    let prometheus = match &config.prometheus {
        Some(url) => Some(Arc::new(
            crate::infra::Prometheus::new(url).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let api_state = crate::api::ApiState {
        pipeline: pipeline.clone(),
        peers,
        prometheus,
    };
    let api_router =
        crate::api::router(api_state, guard).merge(crate::page::router(config.page.clone()));
    for (listener, router, name, what) in [
        (
            http,
            receiver.http(),
            paytrace_semconv::listener::OTLP_HTTP,
            "the OTLP/HTTP receiver",
        ),
        (api, api_router, paytrace_semconv::listener::API, "the API"),
    ] {
        let stopped = stop(&shutdown);
        match &certificates {
            None => {
                let plain = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                tasks.spawn(serve_http(plain, router, stopped, what))
            }
            Some(certificates) => {
                let local = listener.local_addr()?;
                let accepted = crate::tls::accept(
                    listener,
                    certificates.clone(),
                    Alpn::Http1,
                    refused.clone(),
                    name,
                );
                tasks.spawn(serve_http(
                    TlsListener::new(accepted, local),
                    router,
                    stopped,
                    what,
                ))
            }
        };
    }
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
    if let Some(snapshots) = snapshots.clone() {
        let interval = config.snapshot_interval;
        let stopped = stop(&shutdown);
        tasks.spawn(async move {
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {
                        let s = snapshots.clone();
                        let _ = tokio::task::spawn_blocking(move || s.write()).await;
                    }
                    () = &mut stopped => break,
                }
            }
        });
    }
    Ok(Running {
        otlp_grpc,
        otlp_http,
        listen,
        pipeline,
        shutdown,
        tasks,
        snapshots,
        drain_timeout: config.drain_timeout,
        forwarding,
    })
}

/// `paytrace_aggregator_state_snapshots_total`, registered, every outcome
/// at zero from the start.
fn snapshot_outcomes(pipeline: &Pipeline) -> std::io::Result<IntCounterVec> {
    let outcomes = pipeline
        .register_counters(
            paytrace_semconv::metric::AGGREGATOR_STATE_SNAPSHOTS_TOTAL,
            "Snapshots of the state directory, by outcome: written, failed, restored at start, set aside as unreadable.",
            &[paytrace_semconv::label::OUTCOME],
        )
        .map_err(std::io::Error::other)?;
    for outcome in paytrace_semconv::snapshot_outcome::ALL {
        outcomes.with_label_values(&[outcome]);
    }
    Ok(outcomes)
}

/// Serves `router` on `listener` until `stop` completes, then finishes the
/// requests in flight.
async fn serve_http<L>(
    listener: L,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    what: &'static str,
) where
    L: Listener,
    L::Addr: std::fmt::Debug,
{
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "{what} stopped");
    }
}

/// `paytrace_aggregator_connections_refused_total`, registered in the
/// pipeline's registry, every series at zero from the start.
fn connections_refused(pipeline: &Pipeline) -> std::io::Result<IntCounterVec> {
    let refused = pipeline
        .register_counters(
            paytrace_semconv::metric::AGGREGATOR_CONNECTIONS_REFUSED_TOTAL,
            "Connections closed before they carried a request: their TLS handshake failed.",
            &[
                paytrace_semconv::label::LISTENER,
                paytrace_semconv::label::REASON,
            ],
        )
        .map_err(std::io::Error::other)?;
    for listener in paytrace_semconv::listener::ALL {
        for reason in paytrace_semconv::connection_refusal::ALL {
            refused.with_label_values(&[listener, reason]);
        }
    }
    Ok(refused)
}

impl Running {
    /// Stops accepting and lets the requests in flight finish; then, with a
    /// state directory, writes the state (traces and flows still assembling
    /// stay so, to be finished by the next process), and without one,
    /// finishes every buffered trace and flow now.
    ///
    /// Requests still running after [`ServeConfig::drain_timeout`] are cut
    /// off (their clients retry), so a stop takes a bounded time.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                timeout_seconds = self.drain_timeout.as_secs_f64(),
                "requests still in flight at the drain timeout: cut off"
            );
            self.tasks.shutdown().await;
        }
        match self.snapshots.take() {
            Some(snapshots) => {
                let _ = tokio::task::spawn_blocking(move || snapshots.write()).await;
            }
            None => {
                let p = self.pipeline.clone();
                let _ = tokio::task::spawn_blocking(move || p.flush(Now::current())).await;
            }
        }
        if let Some((stop, task)) = self.forwarding.take() {
            let _ = stop.send(true);
            if tokio::time::timeout(self.drain_timeout, task)
                .await
                .is_err()
            {
                tracing::warn!("the trace store did not take the last kept flows in time");
            }
        }
    }
}
