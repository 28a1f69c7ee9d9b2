//! What the alerts and dashboards read exists: every metric name in
//! `alerts/*.rules.yml` and `dashboards/*.json` is emitted by a live run of
//! the demo (its nine services and its aggregator, scraped for real), by an
//! aggregator replica with a peer that forwards (for the families only
//! those have), by
//! a real node exporter, or recorded by one of the rules. Names are taken
//! from the scrapes, never from a list typed here. And no family of the
//! demo or the aggregators carries a label named like a Prometheus or Kubernetes
//! target label, which a scrape (a ServiceMonitor) would overwrite or rename
//! to `exported_*`. The node exporter: `apt-get install prometheus-node-exporter`.

mod monitoring;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use monitoring::*;

/// Metric names in the exposition `text`, histogram series names included.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Every metric name the shipped rules and dashboards read, and the names
/// the rules record.
fn used_and_recorded() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut used = BTreeSet::new();
    let mut recorded = BTreeSet::new();
    for (_, rule) in rules() {
        used.extend(metric_names(&text(&rule, "expr")).expect("rules parse"));
        if let Some(r) = rule.get("record").and_then(|r| r.as_str()) {
            recorded.insert(r.to_owned());
        }
    }
    for path in files("dashboards", ".json") {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
                .expect("JSON");
        for p in doc["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    used.extend(metric_names(&grafana_substituted(e)).expect("dashboards parse"));
                }
            }
        }
    }
    (used, recorded)
}

/// The labels a Prometheus scrape or the Prometheus Operator sets on every
/// target: a metric must not carry one of its own.
const TARGET_LABELS: [&str; 7] = [
    "service",
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "endpoint",
];

/// `(family, label)` for every sample in `text` that carries a target label.
fn target_like_labels(text: &str) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let labels = rest.rsplit_once('}').map_or(rest, |(l, _)| l);
        // Label values are quoted; names are what precedes each `="`.
        for part in labels.split("\",") {
            let label = part.split_once("=\"").map_or(part, |(l, _)| l);
            let label = label.trim_start_matches(',');
            if TARGET_LABELS.contains(&label) {
                found.insert((name.to_owned(), label.to_owned()));
            }
        }
    }
    found
}

#[test]
fn a_target_label_in_a_sample_is_found() {
    let text = "# TYPE x counter\nx{service=\"a\",flow=\"b\"} 1\ny{service_name=\"a\",kind=\"c,d\"} 2\nz{a=\"1\",pod=\"p\"} 3\n";
    let found: Vec<(String, String)> = target_like_labels(text).into_iter().collect();
    assert_eq!(
        found,
        [("x".into(), "service".into()), ("z".into(), "pod".into())]
    );
}

async fn scrape(client: &reqwest::Client, url: &str) -> Option<String> {
    let r = client.get(url).send().await.ok()?;
    r.status().is_success().then_some(())?;
    r.text().await.ok()
}

#[test]
fn every_metric_the_alerts_and_dashboards_read_is_emitted() {
    let (used, recorded) = used_and_recorded();
    const BASE: u16 = 7900;
    const NODE: u16 = 7995;
    let node = Killed::spawn(
        Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{NODE}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "apt-get install prometheus-node-exporter",
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // The payment's notifications through a real broker, for the messaging,
    // broker and outbox families.
    let redis = rt.block_on(paytrace_testkit::RedisServer::start());
    // Faults that make the lazily created series appear: pool timeouts,
    // TCC anomalies, lost callbacks (incomplete flows, frozen branches).
    let demo = Killed::spawn(
        Command::new(env!("CARGO_BIN_EXE_paytrace-demo"))
            .args(["--duration", "120s", "--rps", "10", "--port-base", &BASE.to_string()])
            .args(["--broker", redis.url()])
            .args([
                "--chaos",
                "pool-exhausted,empty-rollback,cancel-after-confirm,confirm-network-failure,callback-lost,queue-backlog",
                "--chaos-channel",
                "card",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "cargo build -p paytrace-demo",
    );
    let mut targets: Vec<String> = (0..9)
        .map(|i| format!("http://127.0.0.1:{}/metrics", BASE + i))
        .collect();
    targets.push(format!("http://127.0.0.1:{}/metrics", BASE + 80));
    targets.push(format!("http://127.0.0.1:{NODE}/metrics"));

    let node_target = format!("http://127.0.0.1:{NODE}/metrics");
    // A replica of a cluster (`serve --peer`) that forwards kept flows
    // (`--forward-otlp`), for the families only those have; its peer is the
    // demo's aggregator.
    let replica = rt.block_on(async {
        let mut config = paytrace_aggregator::server::ServeConfig::on_free_loopback_ports();
        config.peers = Some(paytrace_aggregator::cluster::PeerSettings::new(vec![
            format!("http://127.0.0.1:{}", BASE + 80),
        ]));
        config.forward = Some(paytrace_aggregator::forward::ForwardSettings::new(
            "http://127.0.0.1:9",
        ));
        paytrace_aggregator::server::start(config)
            .await
            .expect("a replica starts")
    });
    targets.push(format!("http://{}/metrics", replica.listen));
    let (emitted, missing, colliding) = rt.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(100);
        loop {
            let mut emitted = BTreeSet::new();
            let mut colliding = BTreeSet::new();
            for t in &targets {
                if let Some(text) = scrape(&client, t).await {
                    emitted.extend(exposed(&text));
                    if *t != node_target {
                        colliding.extend(target_like_labels(&text));
                    }
                }
            }
            // `up` is Prometheus's own, recorded names come from the rules.
            let missing: BTreeSet<String> = used
                .iter()
                .filter(|n| *n != "up" && !recorded.contains(*n) && !emitted.contains(*n))
                .cloned()
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                return (emitted, missing, colliding);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    drop(demo);
    drop(node);
    rt.block_on(replica.shutdown());
    assert!(
        missing.is_empty(),
        "read by alerts or dashboards but never emitted: {missing:#?}\n(emitted: {} names)",
        emitted.len()
    );
    assert!(
        colliding.is_empty(),
        "families with a label named like a target label (renamed `exported_*` by a ServiceMonitor): {colliding:#?}"
    );
    // Recording rules read by the dashboards exist.
    let unrecorded: Vec<&String> = used
        .iter()
        .filter(|n| n.contains(':') && !recorded.contains(*n))
        .collect();
    assert!(
        unrecorded.is_empty(),
        "{unrecorded:?} are read but no rule records them"
    );
}
