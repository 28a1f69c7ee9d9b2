//! Three replicas on loopback, each flow routed to one of them by a
//! consistent hash of its flow id (standing in for the Collector's
//! load-balancing exporter), and one aggregator that gets every span: each
//! replica's merged answers equal the single one's. A replica stopped makes
//! the answers partial, named; restarted on its state directory, the
//! answers are whole again.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use paytrace_aggregator::cluster::PeerSettings;
use paytrace_aggregator::pipeline::Now;
use paytrace_aggregator::server::{Running, ServeConfig, start};
use paytrace_aggregator::state::StateDir;
use paytrace_testkit::checkout::{CheckoutFlow, replica_for};
use serde_json::{Value, json};

const REPLICAS: usize = 3;
const FLOWS: u64 = 60;

fn config() -> ServeConfig {
    let mut config = ServeConfig::on_free_loopback_ports();
    // Nothing completes on its own: the test flushes when every span is in.
    config.pipeline.assembler.trace_idle = Duration::from_secs(3600);
    config.pipeline.flows.flow_idle = Duration::from_secs(3600);
    config.pipeline.tcc.timeout = Duration::from_secs(5);
    config.snapshot_interval = Duration::from_secs(3600);
    config
}

/// Replica `i` of the cluster whose APIs listen on `api_ports`.
async fn replica(i: usize, api_ports: &[u16; REPLICAS], state: &Path) -> Running {
    let mut config = config();
    config.listen = SocketAddr::from(([127, 0, 0, 1], api_ports[i]));
    let others = (0..REPLICAS)
        .filter(|j| *j != i)
        .map(|j| format!("http://127.0.0.1:{}", api_ports[j]))
        .collect();
    config.peers = Some(PeerSettings::new(others));
    config.state_dir = Some(StateDir::open(state.join(i.to_string())).expect("a state dir"));
    start(config).await.expect("the replica starts")
}

fn route(flow_id: &str) -> usize {
    replica_for(flow_id, REPLICAS)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Flow `k`: a checkout request and the channel's callback as a second
/// trace tied by the flow id; every tenth leaves a Try of the points branch
/// undecided (frozen).
fn flow(k: u64, t0: u64) -> (String, Value) {
    let mut flow = CheckoutFlow::new(k, t0);
    flow.undecided_try = k.is_multiple_of(10);
    (flow.flow_id(), flow.otlp_json())
}

async fn get(client: &reqwest::Client, api: SocketAddr, path: &str) -> Value {
    client
        .get(format!("http://{api}{path}"))
        .send()
        .await
        .expect("the API answers")
        .json()
        .await
        .expect("JSON")
}

/// `v` with every number rounded to 9 significant digits (sums of the same
/// values in another order differ in the last bits), the cluster fields
/// taken out, and the anomalies (found at the same moment, so listed in no
/// particular order among themselves) sorted by transaction.
fn normalized(v: &Value) -> Value {
    let mut v = rounded(v);
    if let Some(anomalies) = v.get_mut("anomalies").and_then(Value::as_array_mut) {
        anomalies.sort_by_key(|a| a["xid"].as_str().unwrap_or("").to_owned());
    }
    v
}

fn rounded(v: &Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f != 0.0 && n.as_u64().is_none() => {
                let digits = 8 - f.abs().log10().floor() as i32;
                let scale = 10f64.powi(digits);
                json!((f * scale).round() / scale)
            }
            _ => v.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(rounded).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| *k != "partial" && *k != "missing_peers")
                .map(|(k, v)| (k.clone(), rounded(v)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

const PATHS: [&str; 6] = [
    "/api/v1/breakdown?flow=checkout&window=5m",
    "/api/v1/breakdown?flow=checkout&window=5m&payment_method=wechat_pay",
    "/api/v1/flows?window=15m",
    "/api/v1/timeseries?flow=checkout&window=1h",
    "/api/v1/traces/slow?flow=checkout&limit=7",
    "/api/v1/tcc/anomalies",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_answers_as_one_aggregator_holding_every_flow() {
    let state = std::env::temp_dir().join(format!("paytrace-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let api_ports = [
        paytrace_testkit::free_port(),
        paytrace_testkit::free_port(),
        paytrace_testkit::free_port(),
    ];
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        replicas.push(Some(replica(i, &api_ports, &state).await));
    }
    let single = start(config()).await.expect("the single aggregator starts");

    let t0 = now_ns() - 30_000_000_000;
    let mut routed = [0u64; REPLICAS];
    for k in 0..FLOWS {
        let (flow_id, body) = flow(k, t0);
        let to = route(&flow_id);
        routed[to] += 1;
        let replica = replicas[to].as_ref().expect("running");
        paytrace_testkit::post_otlp_json(replica.otlp_http, &body).await;
        paytrace_testkit::post_otlp_json(single.otlp_http, &body).await;
    }
    assert!(
        routed.iter().all(|n| *n > 0),
        "every replica holds flows: {routed:?}"
    );
    let now = Now::current();
    for r in replicas.iter().flatten() {
        r.pipeline.flush(now);
    }
    single.pipeline.flush(now);

    let client = reqwest::Client::new();
    for path in PATHS {
        let expected = get(&client, single.listen, path).await;
        for (i, r) in replicas.iter().flatten().enumerate() {
            let merged = get(&client, r.listen, path).await;
            assert_eq!(merged["partial"], false, "replica {i} {path}: {merged}");
            assert_eq!(
                normalized(&merged),
                normalized(&expected),
                "replica {i} {path}"
            );
        }
    }
    let whole = get(&client, single.listen, PATHS[0]).await;
    assert_eq!(whole["traces"], FLOWS, "{whole}");
    let own = get(
        &client,
        replicas[0].as_ref().expect("running").listen,
        &format!("{}&local=true", PATHS[0]),
    )
    .await;
    assert_eq!(
        own["traces"], routed[0],
        "local=true answers for the replica alone"
    );
    let frozen = get(&client, single.listen, "/api/v1/tcc/anomalies?kind=frozen").await;
    assert_eq!(
        frozen["anomalies"].as_array().map(Vec::len),
        Some((FLOWS / 10) as usize),
        "{frozen}"
    );

    // A replica stops: the others answer without it, saying so.
    let stopped = replicas[2].take().expect("running");
    stopped.shutdown().await;
    let down = format!("http://127.0.0.1:{}", api_ports[2]);
    let partial = get(
        &client,
        replicas[0].as_ref().expect("running").listen,
        PATHS[0],
    )
    .await;
    assert_eq!(partial["partial"], true, "{partial}");
    assert_eq!(partial["missing_peers"], json!([down]));
    assert_eq!(partial["traces"], routed[0] + routed[1]);
    let failed = paytrace_testkit::scrape_value(
        &format!(
            "http://{}/metrics",
            replicas[0].as_ref().expect("running").listen
        ),
        &format!(r#"paytrace_aggregator_peer_requests_failed_total{{peer="{down}"}}"#),
    )
    .await;
    assert!(failed >= 1.0, "{failed}");

    // It comes back on its state directory: whole again.
    replicas[2] = Some(replica(2, &api_ports, &state).await);
    for path in PATHS {
        let expected = get(&client, single.listen, path).await;
        let merged = get(&client, replicas[0].as_ref().expect("running").listen, path).await;
        assert_eq!(merged["partial"], false, "{path}: {merged}");
        assert_eq!(
            normalized(&merged),
            normalized(&expected),
            "after the restart: {path}"
        );
    }
    // A flow split across replicas (as a routing change would): its
    // request to one, its callback to another. The replica holding the
    // callback counts it; nothing else did.
    let split_metric = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("paytrace_aggregator_flows_split_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let scrape = |api: SocketAddr| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{api}/metrics"))
                .send()
                .await
                .expect("scrape")
                .text()
                .await
                .expect("text")
        }
    };
    for r in replicas.iter().flatten() {
        assert_eq!(
            split_metric(&scrape(r.listen).await),
            0.0,
            "no flow was split yet"
        );
    }
    let (_, body) = flow(FLOWS + 1, t0);
    let spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .expect("spans")
        .clone();
    let part = |callback: bool| {
        let mut b = body.clone();
        b["resourceSpans"][0]["scopeSpans"][0]["spans"] = spans
            .iter()
            .filter(|s| s["links"].is_array() == callback)
            .cloned()
            .collect();
        b
    };
    let (first, second) = (
        replicas[0].as_ref().expect("running"),
        replicas[1].as_ref().expect("running"),
    );
    paytrace_testkit::post_otlp_json(first.otlp_http, &part(false)).await;
    paytrace_testkit::post_otlp_json(second.otlp_http, &part(true)).await;
    first.pipeline.flush(Now::current());
    second.pipeline.flush(Now::current());
    assert_eq!(split_metric(&scrape(first.listen).await), 0.0);
    assert_eq!(split_metric(&scrape(second.listen).await), 1.0);
    assert_eq!(split_metric(&scrape(single.listen).await), 0.0);
    // Its request is a checkout of its own now: one more than the
    // reference, which never got this flow.
    let extra = get(&client, first.listen, PATHS[0]).await["traces"].as_u64();
    assert_eq!(extra, Some(FLOWS + 1));

    for r in replicas.into_iter().flatten() {
        r.shutdown().await;
    }
    single.shutdown().await;
    let _ = std::fs::remove_dir_all(state);
}

/// `--peers-dns`: the name resolves to every replica, this one included; it
/// recognises its own answer (by the replica name on every response) and
/// does not count its flows twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_found_among_its_peers_by_dns_skips_itself() {
    let port = paytrace_testkit::free_port();
    let mut config = config();
    config.listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut peers = PeerSettings::new(Vec::new());
    peers.dns = Some(format!("http://127.0.0.1:{port}"));
    config.peers = Some(peers);
    let replica = start(config).await.expect("the replica starts");
    let t0 = now_ns() - 30_000_000_000;
    for k in 0..5 {
        paytrace_testkit::post_otlp_json(replica.otlp_http, &flow(k, t0).1).await;
    }
    replica.pipeline.flush(Now::current());
    let client = reqwest::Client::new();
    let answer = get(&client, replica.listen, PATHS[0]).await;
    assert_eq!(answer["traces"], 5, "counted once: {answer}");
    assert_eq!(answer["partial"], false);
    assert_eq!(answer["missing_peers"], json!([]));
    replica.shutdown().await;
}

/// A peer on a newer build sends windows in a format version this build
/// does not read (here a stand-in answering version 2 with a field version
/// 1 never had): the replica answers with its own flows, says the answer is
/// partial and names that peer, and counts it failed; it never merges what
/// it cannot read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_of_a_newer_format_version_are_refused_not_misread() {
    use axum::routing::get as route_get;
    let newer = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let newer_addr = newer.local_addr().expect("bound");
    let server = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/api/v1/internal/windows",
            route_get(|| async {
                axum::Json(json!({
                    "version": 2,
                    "minutes": [{"minute": 1, "sketches": "opaque"}],
                }))
            }),
        );
        axum::serve(newer, app).await
    });
    let mut config = config();
    let peer = format!("http://{newer_addr}");
    config.peers = Some(PeerSettings::new(vec![peer.clone()]));
    let replica = start(config).await.expect("the replica starts");
    let t0 = now_ns() - 30_000_000_000;
    for k in 0..5 {
        paytrace_testkit::post_otlp_json(replica.otlp_http, &flow(k, t0).1).await;
    }
    replica.pipeline.flush(Now::current());
    let client = reqwest::Client::new();
    let answer = get(&client, replica.listen, PATHS[0]).await;
    assert_eq!(answer["traces"], 5, "its own flows only: {answer}");
    assert_eq!(answer["partial"], true, "{answer}");
    assert_eq!(answer["missing_peers"], json!([peer]));
    let failed = paytrace_testkit::scrape_value(
        &format!("http://{}/metrics", replica.listen),
        &format!(r#"paytrace_aggregator_peer_requests_failed_total{{peer="{peer}"}}"#),
    )
    .await;
    assert_eq!(failed, 1.0);
    replica.shutdown().await;
    server.abort();
}
