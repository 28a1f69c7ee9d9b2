//! The cost of an answer merged across replicas (`serve --peer`): the same
//! hour of windows (60 minutes × 6 payment method/channel groups of the
//! demo's 10-span checkout, 1,998 flows a minute) spread over 1, 2, 4 and 8
//! replicas on loopback, and the time replica 0 takes to answer the 1 h
//! breakdown and the 1 h flows overview, median of 41 requests each.
//!
//! `cargo run --release -p paytrace-bench --bin merged_query`

use std::net::SocketAddr;
use std::time::Instant;

use paytrace_aggregator::cluster::PeerSettings;
use paytrace_aggregator::pipeline::Now;
use paytrace_aggregator::server::{Running, ServeConfig, start};

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
        let pipelines: Vec<&paytrace_aggregator::pipeline::Pipeline> =
            replicas.iter().map(|r| &*r.pipeline).collect();
        paytrace_bench::windows::fill_hour(&pipelines, Now::current().minute());
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
