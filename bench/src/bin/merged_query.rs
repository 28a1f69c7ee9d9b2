//! The cost of an answer merged across replicas (`serve --peer`): the same
//! hour of windows (60 minutes × 6 payment method/channel groups of the
//! demo's 10-span checkout, 1,998 flows a minute) spread over 1, 2, 4 and 8
//! replicas on loopback, and the time replica 0 takes to answer the 1 h
//! breakdown and the 1 h flows overview, median of 41 requests each.
//!
//! `cargo run --release -p paytrace-bench --bin merged_query`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use paytrace_aggregator::cluster::PeerSettings;
use paytrace_aggregator::config::StageRules;
use paytrace_aggregator::decode::{Interner, SpanLimits, decode_protobuf};
use paytrace_aggregator::pipeline::{Now, Protocol};
use paytrace_aggregator::server::{Running, ServeConfig, start};
use paytrace_bench::otlp::checkout_request;
use prost::Message;

const GROUPS: [(&str, &str); 6] = [
    ("alipay", "alipay"),
    ("wechat_pay", "wechat_pay"),
    ("card", "stripe"),
    ("card", "adyen"),
    ("points", "internal"),
    ("wallet", "internal"),
];
const SAMPLES: usize = 41;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

async fn cluster(replicas: usize) -> Vec<Running> {
    let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
    let mut running = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut config = ServeConfig::on_free_loopback_ports();
        config.listen = SocketAddr::from(([127, 0, 0, 1], *port));
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("http://127.0.0.1:{p}"))
            .collect();
        if !peers.is_empty() {
            config.peers = Some(PeerSettings::new(peers));
        }
        running.push(start(config).await.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1);
        }));
    }
    running
}

/// Fills the replicas round-robin with the last hour of flows (the API reads
/// the windows up to the current minute).
fn fill(replicas: &[Running]) {
    let limits = SpanLimits::default();
    let rules = StageRules::default();
    let now = Instant::now();
    let start_minute = Now::current().minute() - 59;
    let mut trace = 0u64;
    let mut turn = 0usize;
    for minute in 0..60 {
        for (method, channel) in GROUPS {
            let body = checkout_request(trace, 333).encode_to_vec();
            trace += 1_000;
            let Ok(mut batch) = decode_protobuf(&body, &limits, &rules, &mut Interner::default())
            else {
                eprintln!("error: a generated request does not decode");
                std::process::exit(1);
            };
            for span in &mut batch.spans {
                if span.business.flow.is_some() {
                    span.business.payment_method = Some(Arc::from(method));
                    span.business.payment_channel = Some(Arc::from(channel));
                }
            }
            replicas[turn % replicas.len()]
                .pipeline
                .ingest(Protocol::Grpc, batch, now);
            turn += 1;
        }
        let wall = UNIX_EPOCH + Duration::from_secs((start_minute + minute) * 60);
        for r in replicas {
            r.pipeline.flush(Now::at(now, wall));
        }
    }
}

async fn median_ms(client: &reqwest::Client, url: &str) -> (f64, serde_json::Value) {
    let mut times = Vec::with_capacity(SAMPLES);
    let mut last = serde_json::Value::Null;
    for _ in 0..SAMPLES {
        let started = Instant::now();
        last = match client.get(url).send().await {
            Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
            Err(e) => {
                eprintln!("error: {url}: {e}");
                std::process::exit(1);
            }
        };
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[SAMPLES / 2], last)
}

#[tokio::main]
async fn main() {
    let client = reqwest::Client::new();
    println!("| replicas | breakdown 1h (ms) | flows 1h (ms) | flows seen |");
    println!("|---|---|---|---|");
    for n in [1usize, 2, 4, 8] {
        let replicas = cluster(n).await;
        fill(&replicas);
        let api = replicas[0].listen;
        let (breakdown, b) = median_ms(
            &client,
            &format!("http://{api}/api/v1/breakdown?flow=checkout&window=1h"),
        )
        .await;
        let (flows, _) = median_ms(&client, &format!("http://{api}/api/v1/flows?window=1h")).await;
        println!(
            "| {n} | {breakdown:.2} | {flows:.2} | {} |",
            b["traces"].as_u64().unwrap_or(0)
        );
        for r in replicas {
            r.shutdown().await;
        }
    }
}
