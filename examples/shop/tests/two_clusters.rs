//! One rule set, many clusters: a real Prometheus scrapes the demo twice, as
//! two jobs labelled `cluster="a"` and `cluster="b"` (what a Thanos or Mimir
//! query over two environments sees), with the shipped rules loaded (every
//! `for:` shortened, nothing else changed). Every recording rule with data
//! and every alert that fires keeps the two apart: each series carries its
//! cluster, and each has a twin in the other cluster. Then the demo stops:
//! its targets page, in each cluster, through `TargetDown` and
//! `SloMetricsAbsent` (the families the SLO alerts read are gone).
//!
//! Needs `prometheus` (Debian package).

mod monitoring;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use monitoring::*;
use serde_json::Value;

const BASE: u16 = 7600;
const PROMETHEUS: u16 = 7691;

fn prometheus_config(dir: &std::path::Path, rules: &[String]) -> String {
    let targets: Vec<String> = (0..9)
        .map(|i| format!("127.0.0.1:{}", BASE + i))
        .chain([format!("127.0.0.1:{}", BASE + 80)])
        .collect();
    let job = |name, cluster| Job {
        name,
        cluster: Some(cluster),
        targets: targets.clone(),
    };
    write_prometheus_config(dir, rules, &[job("shop-a", "a"), job("shop-b", "b")])
}

#[test]
fn every_recording_rule_and_alert_keeps_two_clusters_apart() {
    let dir = std::env::temp_dir().join(format!("paytrace-clusters-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("prometheus")).expect("temp dir");
    let rules = drill_rules(&dir);
    let config = prometheus_config(&dir, &rules);
    // Recording rules that read a metric (not constants such as an SLO's
    // objective, which is the same in every cluster).
    let recorded: BTreeSet<String> = monitoring::rules()
        .iter()
        .filter(|(_, r)| {
            !metric_names(&text(r, "expr"))
                .unwrap_or_default()
                .is_empty()
        })
        .filter_map(|(_, r)| r.get("record").and_then(|r| r.as_str()).map(str::to_owned))
        .collect();

    let demo = spawn_faulty_demo(BASE, 10, 300);
    let _prometheus = spawn_prometheus(&config, &dir, PROMETHEUS);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (with_data, problems, alerts) = rt.block_on(async {
        let client = reqwest::Client::new();
        // Until the alerts the faults cause fire in both clusters, and the
        // recording rules have had data for a while.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(150);
        // Each cluster's copy of a series is scraped and evaluated on its
        // own schedule: an alert that just changed state may be a round
        // behind in one of them. Once ready, the comparison is repeated
        // until the two agree, for up to 30 s.
        let mut settle: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let alerts = firing(&client, PROMETHEUS).await;
            let names: BTreeSet<String> = alerts
                .iter()
                .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
                .collect();
            // The outage's page, and a minute of data for the recordings.
            let ready = names.contains("PaymentSuccessBurnRateFast")
                && started.elapsed() > Duration::from_secs(60);
            if !(ready || Instant::now() > deadline) {
                continue;
            }
            let mut problems = Vec::new();
            let mut with_data = 0;
            for name in &recorded {
                let series = query(&client, PROMETHEUS, name).await;
                if !series.is_empty() {
                    with_data += 1;
                }
                problems.extend(apart(name, ["a", "b"], &series, |s| &s["metric"]));
            }
            // The Watchdog fires on a constant, once for all clusters.
            let alerts: Vec<Value> = alerts
                .into_iter()
                .filter(|a| a["labels"]["alertname"] != "Watchdog")
                .collect();
            problems.extend(apart("alerts", ["a", "b"], &alerts, |a| &a["labels"]));
            let settle_by = *settle.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
            if !problems.is_empty() && Instant::now() < settle_by {
                continue;
            }
            return (with_data, problems, names.into_iter().collect::<Vec<_>>());
        }
    });
    // The targets stop: the missing-data alerts fire in both clusters.
    drop(demo);
    let missing = rt.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let alerts = firing(&client, PROMETHEUS).await;
            let fired = |name: &str| -> BTreeSet<String> {
                alerts
                    .iter()
                    .filter(|a| {
                        a["labels"]["alertname"] == name && a["labels"]["severity"] == "critical"
                    })
                    .filter_map(|a| a["labels"]["cluster"].as_str().map(str::to_owned))
                    .collect()
            };
            let (down, absent) = (fired("TargetDown"), fired("SloMetricsAbsent"));
            let both: BTreeSet<String> = ["a", "b"].iter().map(|c| (*c).to_owned()).collect();
            if (down == both && absent == both) || Instant::now() > deadline {
                return (down, absent);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        missing.0.len(),
        2,
        "TargetDown pages in both clusters: {:?}",
        missing.0
    );
    assert_eq!(
        missing.1.len(),
        2,
        "SloMetricsAbsent pages in both clusters: {:?}",
        missing.1
    );
    assert!(
        alerts.iter().any(|a| a == "PaymentSuccessBurnRateFast"),
        "the channel outage fires its page in both clusters: {alerts:?}"
    );
    assert!(
        alerts.len() >= 3,
        "the faults fire several alerts to compare: {alerts:?}"
    );
    assert!(
        with_data * 2 >= recorded.len(),
        "only {with_data} of {} recording rules had data",
        recorded.len()
    );
    assert!(
        problems.is_empty(),
        "the clusters mix:\n{}",
        problems.join("\n")
    );
}
