//! What share of a core the aggregator takes at a steady rate of spans, for
//! comparison with the OpenTelemetry Collector's load tests (10k spans/s of
//! plain OTLP at 10–13% of one core).
//!
//! ```sh
//! cargo build --release -p paytrace-aggregator -p paytrace-bench
//! target/release/paytrace-aggregator serve --otlp-grpc-listen 127.0.0.1:14317 \
//!     --otlp-http-listen 127.0.0.1:14318 --listen 127.0.0.1:19090 &
//! target/release/steady_load --pid $! --endpoint http://127.0.0.1:14317 \
//!     --spans-per-second 10000 --seconds 60
//! ```
//!
//! It sends checkout-shaped traces (`paytrace_bench::otlp`) over OTLP/gRPC
//! in requests of 100 spans, paced by a timer, and reads the aggregator's
//! CPU time and resident set from `/proc` before and after.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use paytrace_bench::otlp::checkout_request;

/// Sends spans at a steady rate and reports the receiver's CPU share.
#[derive(Parser)]
struct Args {
    /// The aggregator's process id, whose CPU time is measured.
    #[arg(long)]
    pid: i32,
    /// Its OTLP/gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    /// Spans per second to send (in requests of 100).
    #[arg(long, default_value_t = 10_000)]
    spans_per_second: u64,
    /// How long to send, after a 5-second warm-up.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// CPU seconds (user + system) and resident bytes of `pid`.
fn usage(pid: i32) -> Result<(f64, u64), String> {
    let process = procfs::process::Process::new(pid).map_err(|e| format!("process {pid}: {e}"))?;
    let stat = process
        .stat()
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    Ok(((stat.utime + stat.stime) as f64 / ticks, stat.rss * page))
}

const TRACES_PER_REQUEST: u64 = 10;

async fn send_for(
    client: &mut TraceServiceClient<tonic::transport::Channel>,
    interval: Duration,
    duration: Duration,
    next_trace: &mut u64,
) -> Result<u64, String> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let mut sent = 0;
    while Instant::now() < end {
        ticker.tick().await;
        let request = checkout_request(*next_trace, TRACES_PER_REQUEST);
        *next_trace += TRACES_PER_REQUEST;
        client
            .export(request)
            .await
            .map_err(|e| format!("export refused: {e}"))?;
        sent += TRACES_PER_REQUEST * 10;
    }
    Ok(sent)
}

async fn run(args: Args) -> Result<(), String> {
    let mut client = TraceServiceClient::connect(args.endpoint.clone())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.endpoint))?;
    let requests_per_second = (args.spans_per_second / (TRACES_PER_REQUEST * 10)).max(1);
    let interval = Duration::from_secs(1) / requests_per_second as u32;
    let mut next_trace = 1;
    send_for(
        &mut client,
        interval,
        Duration::from_secs(5),
        &mut next_trace,
    )
    .await?;
    let (cpu_before, _) = usage(args.pid)?;
    let start = Instant::now();
    let sent = send_for(
        &mut client,
        interval,
        Duration::from_secs(args.seconds),
        &mut next_trace,
    )
    .await?;
    let wall = start.elapsed().as_secs_f64();
    let (cpu_after, rss) = usage(args.pid)?;
    let cpu = cpu_after - cpu_before;
    println!(
        "{sent} spans in {wall:.1} s ({:.0} spans/s): aggregator CPU {cpu:.2} s = {:.1}% of one core, {:.1} µs per span; resident {:.0} MiB",
        sent as f64 / wall,
        100.0 * cpu / wall,
        1e6 * cpu / sent as f64,
        rss as f64 / (1024.0 * 1024.0),
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
