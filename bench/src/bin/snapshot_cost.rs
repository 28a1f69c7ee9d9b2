//! What `serve --state-dir` costs: the snapshot's size, the time to write it
//! at shutdown and to read it back at start, for a full hour of windows
//! (60 minutes × 6 payment method/channel groups of the demo's 10-span
//! checkout, 2,000 flows a minute) plus 200,000 spans still assembling.
//!
//! `cargo run --release -p paytrace-bench --bin snapshot_cost`

use std::time::{Duration, Instant};

use paytrace_aggregator::pipeline::Protocol;
use paytrace_aggregator::server::{ServeConfig, start};
use paytrace_aggregator::state::StateDir;

fn config(dir: &std::path::Path) -> ServeConfig {
    let mut config = ServeConfig::on_free_loopback_ports();
    config.state_dir = Some(StateDir::open(dir).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    }));
    // Nothing completes on its own: what is buffered stays buffered.
    config.pipeline.assembler.trace_idle = Duration::from_secs(3600);
    config.snapshot_interval = Duration::from_secs(3600);
    config
}

/// The last minute of the hour of windows (since the epoch).
const LAST_MINUTE: u64 = 29_400_059;

#[tokio::main]
async fn main() {
    // RUST_LOG=paytrace_aggregator=debug shows the snapshot's own timing.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let dir = std::env::temp_dir().join(format!("paytrace-snapshot-cost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let running = start(config(&dir)).await.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    paytrace_bench::windows::fill_hour(&[&running.pipeline], LAST_MINUTE);
    for r in 0..200 {
        running.pipeline.ingest(
            Protocol::Grpc,
            paytrace_bench::windows::decoded_checkouts(10_000_000 + r * 100, 100),
            Instant::now(),
        );
    }
    let path = dir.join(paytrace_aggregator::state::SNAPSHOT_FILE);

    let stopping = Instant::now();
    running.shutdown().await;
    let written = stopping.elapsed();
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());

    let starting = Instant::now();
    let restarted = start(config(&dir)).await.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let restored = starting.elapsed();
    let flows = restarted.pipeline.flows(60, LAST_MINUTE);
    let instances: u64 = flows.iter().map(|f| f.traces).sum();
    println!(
        "60 minutes × {} groups of windows ({instances} flows) + 200,000 spans assembling: \
         snapshot {:.1} MB (gzip JSON), written at shutdown in {:.2} s, read back at start in {:.2} s",
        paytrace_bench::windows::PAYMENT_GROUPS.len(),
        bytes as f64 / 1e6,
        written.as_secs_f64(),
        restored.as_secs_f64(),
    );
    restarted.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
