//! The one-command demo: starts the aggregator and every service, drives
//! checkouts, shows the live breakdown, and writes the report.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paytrace_aggregator::analyze::render_table;
use paytrace_aggregator::breakdown::Breakdown;
use paytrace_aggregator::pipeline::{Baseline, ChangeQuery, Changes, Now, Pipeline, Query};
use paytrace_aggregator::server::{Running, ServeConfig};
use paytrace_semconv::{flow, metric, payment, tcc};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::chaos::Fault;
use crate::exposition;
use crate::load::{Counters, Requests};
use crate::plan::{Plan, Role};
use crate::saturation::Saturated;
use crate::settle::{self, Settled};

/// What the demo was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ports.
    pub plan: Plan,
    /// Checkouts per second.
    pub rps: f64,
    /// Stop after this long (else at Ctrl-C).
    pub duration: Option<Duration>,
    /// Where to write the JSON report.
    pub report: Option<PathBuf>,
    /// Send OTLP to this endpoint instead of the in-process aggregator.
    pub aggregator: Option<String>,
    /// Run only the services, no load.
    pub services_only: bool,
    /// Faults.
    pub chaos: Vec<Fault>,
    /// Start the faults this long after the demo starts.
    pub chaos_after: Option<Duration>,
    /// The Prometheus scraping the services, for the USE signals.
    pub prometheus: Option<String>,
    /// The channel the channel faults hit.
    pub chaos_channel: Role,
    /// Participants that run without the TCC fence.
    pub without_fence: Vec<Role>,
    /// Redis for the inventory's stock.
    pub redis: Option<String>,
    /// The participants' database (else each its own SQLite file).
    pub database_url: Option<String>,
    /// The message broker of the payment's notifications (else HTTP).
    pub broker: Option<String>,
}

/// The report's `endpoints`.
#[derive(Debug, Serialize)]
struct Endpoints {
    aggregator: Option<String>,
    metrics: BTreeMap<String, String>,
}

/// The report written at exit.
#[derive(Debug, Serialize)]
struct Report {
    flows: Vec<Breakdown>,
    /// The flows overview of the last hour (`/api/v1/flows`): instances
    /// seen, the flows they stand for, error share, incomplete flows.
    summaries: Vec<paytrace_aggregator::pipeline::FlowSummary>,
    /// What the participants' fences counted, by kind.
    anomalies: BTreeMap<String, u64>,
    /// TCC faults the chaos injected (`paytrace_demo_faults_injected_total`
    /// of the order service), by the anomaly each should cause.
    injected: BTreeMap<String, u64>,
    /// What the aggregator found across services.
    tcc: TccReport,
    requests: Requests,
    endpoints: Endpoints,
    /// What changed in checkout (`/api/v1/changes`): with `--chaos-after`,
    /// the minutes since the faults started against those before; else the
    /// last 5 minutes against the rest of the hour. Read before the
    /// services stop, without the flows still waiting to be final.
    changes: Option<Changes>,
    /// The queues, pools and load driver seen saturated during the load
    /// (`saturation.rs`): figures measured then describe the overload.
    saturation: Vec<Saturated>,
    /// Whether the shop finished what it started before the counts above
    /// were read (`settle.rs`).
    settled: Settled,
}

/// The aggregator's view of the global TCC transactions.
#[derive(Debug, Serialize, Default)]
struct TccReport {
    /// `paytrace_tcc_global_anomalies_total` by kind, every kind present.
    anomalies: BTreeMap<String, u64>,
    /// Transactions with a branch tried and waiting past the timeout.
    unfinished: usize,
    /// What the fence would have prevented at participants without it
    /// (`/api/v1/tcc/shadow`), by resource and kind.
    shadow: Vec<paytrace_aggregator::pipeline::AnomalyCount>,
    /// The most recent anomalies (at most [`RECENT_ANOMALIES`]), newest
    /// first: which branch, of which service, in which traces.
    recent: Vec<paytrace_aggregator::pipeline::GlobalAnomaly>,
}

/// How many of the aggregator's recent TCC anomalies the report lists.
const RECENT_ANOMALIES: usize = 20;

/// How long the demo waits, after the load, for the shop to finish what it
/// started. Callbacks come up to about 9 s late (a late one is five times
/// its channel's log-normal delay), and the queue of confirmations can be
/// far behind: under `confirm-network-failure` a fifth of inventory's
/// Confirms wait out the coordinator's 1 s timeout, so at 10 checkouts a
/// second the one consumer falls about 50 messages (14 s) behind in 12 s.
/// A run whose queue never keeps up (`queue-backlog`) is read after this
/// limit, and says so.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// What changed in checkout: the minutes from the one `chaos_at` falls in
/// to now (at least one, at most 30) against those before it in the hour;
/// without it, the last 5 minutes.
///
/// The window starts at the minute of the chaos, never after it: the
/// baseline ends before the faults began, so that the infrastructure read
/// at its end (`infra::add_infrastructure`) is the state before them. (The
/// minutes *since* the chaos, rounded up, started the window up to a
/// minute late whenever now's second was earlier in its minute than the
/// chaos' was, and the "before" reading then saw the leaked pool.)
fn checkout_changes(pipeline: &Pipeline, chaos_at: Option<SystemTime>) -> Changes {
    let now = Now::current();
    let window_minutes = match chaos_at {
        Some(at) => {
            let chaos_minute = Now::at(now.instant, at).minute();
            (now.minute().saturating_sub(chaos_minute) + 1).clamp(1, 30)
        }
        None => 5,
    };
    pipeline.windows(60, now.minute()).changes(&ChangeQuery {
        flow: "checkout",
        window_minutes,
        now_minute: now.minute(),
        baseline: Baseline::Preceding,
    })
}

fn tcc_report(pipeline: &Pipeline) -> TccReport {
    let mut anomalies: BTreeMap<String, u64> = tcc::GLOBAL_ANOMALY_KINDS
        .iter()
        .map(|k| ((*k).to_owned(), 0))
        .collect();
    for c in pipeline.tcc_anomaly_counts() {
        *anomalies.entry(c.kind.to_owned()).or_default() += c.count;
    }
    TccReport {
        anomalies,
        unfinished: pipeline.tcc_unfinished(usize::MAX, Now::current()).len(),
        shadow: pipeline.tcc_shadow_counts(),
        recent: pipeline.tcc_anomalies(None, None, RECENT_ANOMALIES),
    }
}

fn spawn_service(
    role: Role,
    o: &Options,
    otlp: &str,
    chaos_at: Option<SystemTime>,
) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("service")
        .arg("--role")
        .arg(role.name())
        .arg("--port-base")
        .arg(o.plan.base.to_string())
        .arg("--chaos-channel")
        .arg(o.chaos_channel.name())
        .arg("--exit-with-parent")
        .stdin(std::process::Stdio::piped());
    if let Some(url) = &o.redis {
        cmd.arg("--redis").arg(url);
    }
    if let Some(url) = &o.broker {
        cmd.arg("--broker").arg(url);
    }
    if let Some(url) = &o.database_url {
        cmd.arg("--database-url").arg(url);
    }
    for fault in &o.chaos {
        if let Some(v) = clap::ValueEnum::to_possible_value(fault) {
            cmd.arg("--chaos").arg(v.get_name());
        }
    }
    for role in &o.without_fence {
        cmd.arg("--without-fence").arg(role.name());
    }
    if let Some(at) = chaos_at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        cmd.arg("--chaos-at-unix-ms")
            .arg(at.as_millis().to_string());
    }
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_SERVICE_NAME", role.name())
        .env("OTEL_BSP_SCHEDULE_DELAY", "500")
        .env(
            "RUST_LOG",
            std::env::var("PAYTRACE_DEMO_SERVICE_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .kill_on_drop(true)
        .spawn()
}

async fn wait_ready(plan: Plan, children: &mut [(Role, Child)]) -> Result<(), String> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (role, child) in children.iter_mut() {
        let url = format!("{}/healthz", plan.url(*role));
        loop {
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the {role} service exited during start-up ({status}); is port {} free?",
                    plan.addr(*role).port()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {role} service did not answer on {url} within 30 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn stop_services(plan: Plan, children: Vec<(Role, Child)>) {
    let client = reqwest::Client::new();
    for (role, _) in &children {
        let _ = client
            .post(format!("{}/admin/shutdown", plan.url(*role)))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
    }
    for (role, mut child) in children {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("the {role} service did not stop in 10 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// `paytrace_tcc_anomalies_total` of every TCC participant, summed by kind
/// (every kind present, zero when none happened).
async fn count_anomalies(plan: Plan) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = tcc::ANOMALY_KINDS
        .iter()
        .map(|k| ((*k).to_owned(), 0))
        .collect();
    let roles = [Role::Inventory, Role::Coupon, Role::Points];
    for (kind, n) in scrape_counts(plan, &roles, metric::TCC_ANOMALIES_TOTAL, "kind").await {
        *counts.entry(kind).or_default() += n;
    }
    counts
}

/// The samples of `family` at `roles`' `/metrics`, added up by `label`.
async fn scrape_counts(
    plan: Plan,
    roles: &[Role],
    family: &str,
    label: &str,
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let client = reqwest::Client::new();
    for role in roles {
        let Ok(text) = exposition::scrape(&client, plan, *role).await else {
            eprintln!("warning: cannot scrape the {role} service for {family}");
            continue;
        };
        for sample in exposition::samples(&text).filter(|s| s.family == family) {
            if let Some(v) = exposition::label(sample.labels, label) {
                *counts.entry(v.to_owned()).or_default() += sample.value as u64;
            }
        }
    }
    counts
}

/// The report's breakdowns: per flow, and per (flow, payment method).
fn breakdowns(pipeline: &Pipeline) -> Vec<Breakdown> {
    let now = Now::current().minute();
    let mut out = Vec::new();
    for f in pipeline.flows(60, now) {
        out.push(pipeline.breakdown(&Query::new(&f.flow, 60, now)));
        for m in payment::METHODS {
            let b = pipeline.breakdown(&Query::new(&f.flow, 60, now).payment_method(Some(m)));
            if b.traces > 0 {
                out.push(b);
            }
        }
    }
    out
}

fn live_view(
    pipeline: Option<&Pipeline>,
    requests: Requests,
    elapsed: Duration,
    total: Option<Duration>,
) -> String {
    let mut view = String::new();
    let progress = match total {
        Some(t) => format!("{:>4.0}s / {:.0}s", elapsed.as_secs_f64(), t.as_secs_f64()),
        None => format!("{:>4.0}s (Ctrl-C to stop)", elapsed.as_secs_f64()),
    };
    view.push_str(&format!(
        "paytrace demo  {progress}  checkouts sent {}  ok {}  failed {}\n\n",
        requests.sent, requests.ok, requests.failed
    ));
    if let Some(p) = pipeline {
        let now = Now::current().minute();
        let per_method: Vec<Breakdown> = payment::METHODS
            .iter()
            .map(|m| p.breakdown(&Query::new(flow::CHECKOUT, 5, now).payment_method(Some(m))))
            .filter(|b| b.traces > 0)
            .map(|mut b| {
                b.stages.truncate(6);
                b
            })
            .collect();
        if per_method.is_empty() {
            view.push_str("waiting for the first complete checkouts (flows finish a few seconds after their callback)...\n");
        } else {
            view.push_str("checkout, last 5 minutes, by payment method (top stages by critical-path share):\n");
            view.push_str(&render_table(&per_method));
        }
    }
    view
}

/// Runs the demo.
pub async fn run(o: Options) -> Result<(), Box<dyn std::error::Error>> {
    // The services read the OTEL_* variables they inherit; a bad value stops
    // the demo here, with the variable named, rather than nine services.
    let telemetry = paytrace::TelemetryConfig::from_env("paytrace-demo")?;
    let aggregator: Option<Running> = match &o.aggregator {
        Some(_) => None,
        None => {
            let mut config = ServeConfig::default();
            config.otlp_grpc = o.plan.otlp_grpc();
            config.otlp_http = o.plan.otlp_http();
            config.listen = o.plan.api();
            config.pipeline.assembler.trace_idle = Duration::from_secs(2);
            config.pipeline.flows.flow_idle = Duration::from_secs(4);
            config.pipeline.flows.flow_timeout = Duration::from_secs(30);
            config.pipeline.tcc.settle = Duration::from_secs(4);
            // Callbacks come within seconds here; a real shop waits for
            // its payment timeout.
            config.pipeline.tcc.timeout = Duration::from_secs(8);
            // The shop's flows (its checkout ends at payment.confirm), as a
            // --config file would give them.
            let flows = paytrace_aggregator::config::Config::from_toml(
                "examples/shop/flows.toml",
                include_str!("../flows.toml"),
            )?;
            config.pipeline.flows.terminal_stages = flows.terminal_stages;
            config.prometheus = o.prometheus.clone();
            Some(
                paytrace_aggregator::server::start(config)
                    .await
                    .map_err(|e| {
                        format!("cannot start the aggregator on {}: {e}", o.plan.otlp_grpc())
                    })?,
            )
        }
    };
    let otlp = o
        .aggregator
        .clone()
        .unwrap_or_else(|| format!("http://{}", o.plan.otlp_grpc()));

    let chaos_at = o.chaos_after.map(|after| SystemTime::now() + after);
    // Each run's SQLite ledgers start empty.
    let ledgers = crate::service::sqlite_dir(o.plan);
    if o.database_url.is_none() {
        match std::fs::remove_dir_all(&ledgers) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot empty {}: {e}", ledgers.display()).into());
            }
            _ => {}
        }
    }
    let mut children = Vec::new();
    for role in Role::ALL {
        children.push((role, spawn_service(role, &o, &otlp, chaos_at)?));
    }
    wait_ready(o.plan, &mut children).await?;

    let mut metrics = BTreeMap::new();
    for role in Role::ALL {
        metrics.insert(
            role.name().to_owned(),
            format!("{}/metrics", o.plan.url(role)),
        );
    }
    let api = aggregator.as_ref().map(|a| format!("http://{}", a.listen));
    println!("paytrace demo is up (sampler: {:?})", telemetry.sampler());
    if let Some(api) = &api {
        println!("  aggregator API   {api}/api/v1/flows");
        println!("  breakdown        {api}/api/v1/breakdown?flow=checkout&window=5m");
        println!("  slow flows       {api}/api/v1/traces/slow?flow=checkout");
        println!("  aggregator       {api}/metrics");
    } else {
        println!("  OTLP goes to     {otlp}");
    }
    println!(
        "  checkout         POST {}/checkout",
        o.plan.url(Role::Gateway)
    );
    for (name, url) in &metrics {
        println!("  {name:<16} {url}");
    }
    println!();

    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let load = (!o.services_only).then(|| {
        tokio::spawn(crate::load::drive(
            o.plan.url(Role::Gateway),
            o.rps,
            counters.clone(),
            stop_rx.clone(),
        ))
    });
    let saturation = (!o.services_only).then(|| {
        tokio::spawn(crate::saturation::watch(
            o.plan,
            o.rps,
            counters.clone(),
            o.chaos.clone(),
            stop_rx,
        ))
    });

    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut refresh = tokio::time::interval(Duration::from_secs(if tty { 2 } else { 10 }));
    let deadline = async {
        match o.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                let view = live_view(aggregator.as_ref().map(|a| &*a.pipeline), counters.snapshot(), started.elapsed(), o.duration);
                if tty {
                    print!("\x1b[2J\x1b[H{view}");
                } else {
                    println!("{view}");
                }
                let _ = std::io::stdout().flush();
            }
            () = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }

    println!("stopping: the load is over...");
    let _ = stop_tx.send(true);
    if let Some(load) = load {
        let _ = load.await;
    }
    let saturation = match saturation {
        Some(watch) => watch.await.unwrap_or_default(),
        None => Vec::new(),
    };
    for s in saturation.iter().filter(|s| !s.injected) {
        eprintln!("warning: saturated: {}", s.message);
    }
    // Callbacks come seconds after the last checkout, and the Confirms and
    // late Cancels they set off after them: the counts are read once the
    // shop has finished what it started (`settle.rs`).
    println!(
        "stopping: waiting for the shop to finish what it started (callbacks, queues, retries)..."
    );
    let settled = tokio::select! {
        s = settle::wait_until_idle(o.plan, SETTLE_LIMIT) => s,
        _ = tokio::signal::ctrl_c() => Settled { idle: false, waited_ms: 0, busy: vec!["interrupted".to_owned()] },
    };
    if !settled.idle {
        eprintln!(
            "warning: the shop was still busy after {} ms ({}); counts read now may miss its last work",
            settled.waited_ms,
            settled.busy.join(", ")
        );
    }
    let anomalies = count_anomalies(o.plan).await;
    let injected = scrape_counts(
        o.plan,
        &[Role::Order],
        "paytrace_demo_faults_injected_total",
        "fault",
    )
    .await;
    // What changed is read while the services run, so that Prometheus still
    // has their signals (a target that stops goes stale at once); the
    // flows still waiting for their idle time are not in it.
    let changes = match &aggregator {
        Some(a) => {
            let mut changes = checkout_changes(&a.pipeline, chaos_at);
            if let Some(url) = &o.prometheus {
                let prometheus = paytrace_aggregator::infra::Prometheus::new(url)?;
                let pipeline = a.pipeline.clone();
                changes.infrastructure_error = paytrace_aggregator::infra::add_infrastructure(
                    &mut changes,
                    &prometheus,
                    |stage| pipeline.stage_services("checkout", stage),
                )
                .await;
            }
            Some(changes)
        }
        None => None,
    };
    stop_services(o.plan, children).await;
    if o.database_url.is_none() {
        // Best effort: the next run empties it anyway.
        let _ = std::fs::remove_dir_all(&ledgers);
    }

    let (flows, summaries, tcc) = match &aggregator {
        Some(a) => {
            let p = a.pipeline.clone();
            tokio::task::spawn_blocking(move || p.flush(Now::current())).await?;
            let summaries = a.pipeline.flows(60, Now::current().minute());
            (breakdowns(&a.pipeline), summaries, tcc_report(&a.pipeline))
        }
        None => (Vec::new(), Vec::new(), TccReport::default()),
    };
    println!("{}", render_table(&flows));
    if let Some(c) = &changes {
        println!("what changed in checkout:");
        for f in &c.latency {
            println!("  {}", f.summary);
            for signal in &f.infrastructure {
                println!("    with {}", signal.summary);
            }
        }
        for f in &c.errors {
            println!("  {}", f.summary);
        }
        if let Some(why) = &c.not_compared {
            println!("  not compared: {why}");
        } else if c.latency.is_empty() && c.errors.is_empty() {
            println!("  nothing significant");
        }
    }
    let report = Report {
        flows,
        summaries,
        anomalies,
        injected,
        tcc,
        requests: counters.snapshot(),
        endpoints: Endpoints {
            aggregator: api,
            metrics,
        },
        changes,
        saturation,
        settled,
    };
    if let Some(path) = &o.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| format!("cannot write the report to {}: {e}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if let Some(a) = aggregator {
        a.shutdown().await;
    }
    Ok(())
}
