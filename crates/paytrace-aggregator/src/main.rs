//! `paytrace-aggregator`: per-stage latency breakdowns from OpenTelemetry traces.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

// The pipeline allocates and frees many small objects per span; mimalloc
// serves them about twice as fast as glibc (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use paytrace_aggregator::analyze::{analyze_files, render_table};
use paytrace_aggregator::config::Config;
use paytrace_aggregator::server::{ServeConfig, start};

#[derive(Parser, Debug)]
#[command(
    name = "paytrace-aggregator",
    version,
    about = "Per-stage latency breakdowns (critical path, self time, end to end) from OpenTelemetry traces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Receive OTLP traces and serve live breakdowns: the web page, the JSON
    /// API and `/metrics` on --listen. Everything binds to 127.0.0.1 by
    /// default (--all-interfaces for 0.0.0.0). Every flag can also be set
    /// from the PAYTRACE_* variable its help names. SIGTERM or Ctrl-C stops
    /// intake, lets requests in flight finish, and analyses the buffered
    /// traces (with --state-dir: keeps them for the next process).
    Serve(Box<ServeArgs>),
    /// Analyse OTLP JSON files (the OpenTelemetry Collector file exporter's
    /// format: one ExportTraceServiceRequest per line) and print where each
    /// flow's time goes, per stage.
    Analyze {
        /// Files to read.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, env = "PAYTRACE_FORMAT", value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Configuration file (TOML): stage rules for plain OpenTelemetry spans.
        #[arg(long, env = "PAYTRACE_CONFIG")]
        config: Option<PathBuf>,
        /// How long a span may appear to end after its next sibling started
        /// and still precede it on the critical path (coarse SDK clocks).
        #[arg(long, env = "PAYTRACE_CLOCK_TOLERANCE", default_value = "1ms", value_parser = humantime::parse_duration)]
        clock_tolerance: Duration,
        /// The probability spans were sampled with when their `tracestate`
        /// carries no `ot=th:…` (SDKs without consistent probability
        /// sampling): each such flow counts as 1/P flows. Default 1.
        #[arg(long, env = "PAYTRACE_DEFAULT_SAMPLING_PROBABILITY", value_parser = probability)]
        default_sampling_probability: Option<f64>,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317, or 0.0.0.0:4317
    /// with --all-interfaces].
    #[arg(long, env = "PAYTRACE_OTLP_GRPC_LISTEN")]
    otlp_grpc_listen: Option<SocketAddr>,
    /// OTLP/HTTP listen address (`POST /v1/traces`, protobuf or JSON)
    /// [default: 127.0.0.1:4318, or 0.0.0.0:4318 with --all-interfaces].
    #[arg(long, env = "PAYTRACE_OTLP_HTTP_LISTEN")]
    otlp_http_listen: Option<SocketAddr>,
    /// API, `/metrics`, `/healthz` and `/readyz` listen address
    /// [default: 127.0.0.1:8686, or 0.0.0.0:8686 with --all-interfaces].
    #[arg(long, env = "PAYTRACE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Listen on every interface (0.0.0.0) instead of loopback, on the
    /// default ports, as a container needs; an address given above wins.
    /// Anyone who reaches the ports can then send spans and read flows.
    #[arg(long, env = "PAYTRACE_ALL_INTERFACES")]
    all_interfaces: bool,
    /// A trace is complete once no span of it arrived for this long. Set it
    /// above the longest batch delay of the SDKs that send here
    /// (OTEL_BSP_SCHEDULE_DELAY, 5 s by default) plus their export time.
    #[arg(long, env = "PAYTRACE_TRACE_IDLE", default_value = "15s", value_parser = humantime::parse_duration)]
    trace_idle: Duration,
    /// A flow (traces joined by links or flow id) is final once none of its
    /// spans arrived for this long; until then late spans still join it. Set
    /// it above the longest async hop (callback, queue) plus the batch delay.
    #[arg(long, env = "PAYTRACE_FLOW_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    flow_idle: Duration,
    /// How long a span may appear to end after its next sibling started and
    /// still precede it on the critical path: millisecond SDK clocks (the JS
    /// SDK, browsers) and skew between hosts make sequential stages overlap
    /// by up to this much.
    #[arg(long, env = "PAYTRACE_CLOCK_TOLERANCE", default_value = "1ms", value_parser = humantime::parse_duration)]
    clock_tolerance: Duration,
    /// The probability spans were sampled with when their `tracestate`
    /// carries no `ot=th:…` (SDKs without consistent probability
    /// sampling): each such flow counts as 1/P flows. Default 1.
    #[arg(long, env = "PAYTRACE_DEFAULT_SAMPLING_PROBABILITY", value_parser = probability)]
    default_sampling_probability: Option<f64>,
    /// A flow still missing its terminal stage (set per flow in --config:
    /// `[flows.checkout] terminal_stage = "payment.confirm"`) this long after
    /// it began is counted incomplete.
    #[arg(long, env = "PAYTRACE_FLOW_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    flow_timeout: Duration,
    /// A TCC branch tried this long ago with no Confirm or Cancel from any
    /// service is frozen: counted, listed, and its transaction unfinished.
    /// Set it above your order payment timeout.
    #[arg(long, env = "PAYTRACE_TCC_TIMEOUT", default_value = "15m", value_parser = humantime::parse_duration)]
    tcc_timeout: Duration,
    /// Bytes of spans waiting for their traces to complete; past it the
    /// oldest traces are analysed early (counted as evicted) and receivers
    /// answer "retry later" near it. About 375 bytes a span.
    #[arg(long, env = "PAYTRACE_MAX_BUFFER_BYTES", default_value_t = 512 * 1024 * 1024)]
    max_buffer_bytes: usize,
    /// Link traces on the page to a trace viewer, e.g.
    /// 'http://jaeger:16686/trace/{trace_id}' or a Grafana Tempo explore URL.
    #[arg(long, env = "PAYTRACE_TRACE_URL_TEMPLATE")]
    trace_url_template: Option<String>,
    /// Configuration file (TOML): stage rules for plain OpenTelemetry spans,
    /// terminal stages of flows.
    #[arg(long, env = "PAYTRACE_CONFIG")]
    config: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` (gRPC metadata alike) on the
    /// OTLP receivers, with one of the tokens in this file (one a line;
    /// read again when it changes). Refusals answer 401 / UNAUTHENTICATED and
    /// are counted; tokens are never logged.
    #[arg(long, env = "PAYTRACE_OTLP_TOKEN_FILE")]
    otlp_token_file: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on the JSON API, with one of
    /// the tokens in this file; the page asks for one. `/metrics`, `/healthz`
    /// and `/readyz` stay open (keep them on a private network).
    #[arg(long, env = "PAYTRACE_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Serve OTLP/gRPC, OTLP/HTTP, the API and the page over TLS with this
    /// certificate chain (PEM, leaf first); read again when it changes on
    /// disk. Needs --tls-key.
    #[arg(long, env = "PAYTRACE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "PAYTRACE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Another replica's API base URL (repeat the flag, or separate with
    /// commas): this replica's API and page then answer for all of them,
    /// merged exactly; a peer that does not answer makes the answer
    /// `"partial"`. Route each flow to one replica (see
    /// examples/deploy/otelcol.yaml).
    #[arg(long = "peer", env = "PAYTRACE_PEER", value_delimiter = ',')]
    peers: Vec<String>,
    /// Find the peers by DNS instead: every address this URL's host name
    /// resolves to (a Kubernetes headless Service, e.g.
    /// http://paytrace-aggregator-headless.monitoring.svc:8686), looked up
    /// again every 5 s; this replica among them is recognised and skipped.
    #[arg(long, env = "PAYTRACE_PEERS_DNS", conflicts_with = "peers")]
    peers_dns: Option<String>,
    /// How long a peer may take to answer.
    #[arg(long, env = "PAYTRACE_PEER_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    peer_timeout: Duration,
    /// The CA certificates (PEM) that `https://` peers chain to; the
    /// system's roots by default.
    #[arg(long, env = "PAYTRACE_PEER_CA")]
    peer_ca: Option<PathBuf>,
    /// Keep the state here across restarts: the rolling windows, recent
    /// flows, traces and flows still assembling, open TCC branches. Read at
    /// start (an unreadable snapshot is moved aside and reported), written
    /// every --snapshot-interval and at shutdown, atomically.
    #[arg(long, env = "PAYTRACE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// At SIGTERM or Ctrl-C, how long requests in flight may take to
    /// finish before they are cut off and the buffered state is analysed
    /// (or, with --state-dir, written). Keep it below the orchestrator's
    /// grace period (Kubernetes: 30s).
    #[arg(long, env = "PAYTRACE_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// How often the state is written to --state-dir.
    #[arg(long, env = "PAYTRACE_SNAPSHOT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    snapshot_interval: Duration,
    /// Require client certificates issued by the CAs in this file (PEM) on
    /// every listener (mTLS). Needs --tls-cert. Prometheus and probes then
    /// need a client certificate too.
    #[arg(long, env = "PAYTRACE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Forward the flows worth keeping, whole and as sent, to this trace
    /// store's OTLP/HTTP endpoint (`http://tempo:4318`; Jaeger, Tempo or
    /// any Collector): failed ones, TCC-anomalous ones, those slower than
    /// their flow's `keep_slower_than` (--config) or else its p99, and
    /// --keep-normal of the rest. Each span gets `paytrace.kept`.
    #[arg(long, env = "PAYTRACE_FORWARD_OTLP")]
    forward_otlp: Option<String>,
    /// With --forward-otlp: the share of normal flows kept as a sample.
    #[arg(long, env = "PAYTRACE_KEEP_NORMAL", default_value_t = 0.01, value_parser = share)]
    keep_normal: f64,
    /// With --forward-otlp: spans forwarded per second at most (a burst of
    /// a second's worth passes); kept flows past it are counted dropped.
    #[arg(
        long,
        env = "PAYTRACE_FORWARD_MAX_SPANS_PER_SECOND",
        default_value_t = 2000.0
    )]
    forward_max_spans_per_second: f64,
    /// Read the USE signals of the services from this Prometheus
    /// (`http://prometheus:9090`): /api/v1/changes names, next to each
    /// stage that slowed, the pool waits, queue ages, busy runtimes and
    /// restarts of its service that moved with it.
    #[arg(long, env = "PAYTRACE_PROMETHEUS")]
    prometheus: Option<String>,
}

/// A share: a number from 0 to 1.
fn share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{s:?} is not a share: give a number from 0 to 1 (0.01 for 1%)"
        )),
    }
}

/// A sampling probability: a number above 0 and at most 1.
fn probability(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!(
            "{s:?} is not a probability: give a number above 0 and at most 1 (0.1 for 10%)"
        )),
    }
}

/// Waits for `SIGTERM` (what Kubernetes and `docker stop` send) or `SIGINT`
/// (Ctrl-C), and names it.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}

fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    match path {
        None => Ok(Config::default()),
        Some(p) => Config::load(p).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Aligned text tables, one per flow and per (flow, payment method).
    Table,
    /// `{"flows": [BREAKDOWN, ...]}`.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Analyze {
            files,
            format,
            config,
            clock_tolerance,
            default_sampling_probability,
        } => match load_config(config.as_deref()).map(|mut c| {
            c.clock_tolerance = clock_tolerance;
            c.default_sampling_probability = default_sampling_probability;
            analyze_files(&files, &c)
        }) {
            Err(code) => code,
            Ok(result) => match result {
                Ok(report) => {
                    let breakdowns = report.breakdowns();
                    match format {
                        Format::Table => {
                            print!("{}", render_table(&breakdowns));
                            eprintln!(
                                "{} spans in {} traces, {} flows; {} spans rejected{}",
                                report.spans,
                                report.traces,
                                report.flows,
                                report.rejected,
                                report
                                    .first_rejection
                                    .as_deref()
                                    .map(|r| format!(" (first: {r})"))
                                    .unwrap_or_default()
                            );
                        }
                        Format::Json => {
                            let doc = serde_json::json!({ "flows": breakdowns });
                            println!("{doc:#}");
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
        },
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let file = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let host: std::net::IpAddr = if args.all_interfaces {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    let mut config = ServeConfig::default();
    config.otlp_grpc = args.otlp_grpc_listen.unwrap_or(SocketAddr::new(host, 4317));
    config.otlp_http = args.otlp_http_listen.unwrap_or(SocketAddr::new(host, 4318));
    config.listen = args.listen.unwrap_or(SocketAddr::new(host, 8686));
    config.pipeline.assembler.trace_idle = args.trace_idle;
    config.pipeline.clock_tolerance = Some(args.clock_tolerance);
    config.pipeline.default_sampling_probability = args.default_sampling_probability;
    config.pipeline.flows.flow_idle = args.flow_idle;
    config.pipeline.flows.flow_timeout = args.flow_timeout;
    // A transaction's phases are replayed once its spans stop arriving, as
    // a flow is final once idle.
    config.pipeline.tcc.settle = args.flow_idle;
    config.pipeline.tcc.timeout = args.tcc_timeout;
    config.pipeline.assembler.max_bytes = args.max_buffer_bytes;
    if let Some(t) = &args.trace_url_template {
        config.page = match config.page.trace_url_template(t) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
    }
    config
        .pipeline
        .flows
        .terminal_stages
        .extend(file.terminal_stages);
    let keep_slower_than = file.keep_slower_than;
    config.pipeline.buckets = Some(file.buckets);
    config.receiver.rules = std::sync::Arc::new(file.rules);
    for (path, slot) in [
        (&args.otlp_token_file, &mut config.receiver.tokens),
        (&args.api_token_file, &mut config.api_tokens),
    ] {
        if let Some(path) = path {
            match paytrace_aggregator::auth::Tokens::load(path) {
                Ok(t) => *slot = Some(std::sync::Arc::new(t)),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let files = paytrace_aggregator::tls::TlsFiles::new(cert, key);
        config.tls = Some(match &args.tls_client_ca {
            Some(ca) => files.require_client_certificates(ca),
            None => files,
        });
    }
    if let Some(dir) = &args.state_dir {
        config.state_dir = match paytrace_aggregator::state::StateDir::open(dir) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
    }
    config.snapshot_interval = args.snapshot_interval;
    if !args.peers.is_empty() || args.peers_dns.is_some() {
        let mut peers = paytrace_aggregator::cluster::PeerSettings::new(args.peers.clone());
        peers.dns = args.peers_dns.clone();
        peers.timeout = args.peer_timeout;
        peers.ca = args.peer_ca.clone();
        config.peers = Some(peers);
    }
    config.drain_timeout = args.drain_timeout;
    config.prometheus = args.prometheus.clone();
    if let Some(url) = &args.forward_otlp {
        let mut forward = paytrace_aggregator::forward::ForwardSettings::new(url.clone());
        forward.policy.keep_normal = args.keep_normal;
        forward.policy.slower_than = keep_slower_than;
        forward.max_spans_per_second = args.forward_max_spans_per_second;
        config.forward = Some(forward);
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start serving: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            otlp_grpc = %running.otlp_grpc,
            otlp_http = %running.otlp_http,
            page = %format!("{scheme}://{}/", running.listen),
            api = %format!("{scheme}://{}/api/v1/flows", running.listen),
            metrics = %format!("{scheme}://{}/metrics", running.listen),
            "paytrace-aggregator listening"
        );
        let signal = stop_signal().await;
        tracing::info!(signal, "shutting down: finishing buffered traces");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}
