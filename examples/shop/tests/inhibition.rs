//! Every inhibit rule of `alerts/alertmanager.yml` against every alert the
//! rule files can produce, in a real Alertmanager, read back through its v2
//! API (`status.inhibitedBy`).
//!
//! The alerts are the ones the promtool unit tests expect, with the labels
//! promtool checked against the real rules, posted for two services and two
//! clusters each (`cluster="a"`, `cluster="b"`). Then:
//! - no alert is silenced by an alert of another service, another cluster,
//!   or by one that names no service at all (a host alert: Alertmanager takes
//!   a label missing on both sides as equal);
//! - the intended inhibitions still happen: a critical infra alert of a
//!   service silences that service's business alerts in its cluster, and a
//!   fast burn the slow burn of its SLO.
//!
//! Needs `prometheus-alertmanager` (Debian package).

mod monitoring;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use monitoring::*;
use serde_json::{Value, json};

type Labels = BTreeMap<String, String>;

/// The label sets the promtool tests expect the rules to fire with.
fn producible_alerts() -> Vec<Labels> {
    let mut out = BTreeSet::new();
    for path in test_files() {
        let doc = yaml(&path);
        for test in doc["tests"].as_sequence().into_iter().flatten() {
            for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = case["alertname"].as_str().unwrap_or_default();
                for expected in case["exp_alerts"].as_sequence().into_iter().flatten() {
                    let mut labels: Labels = expected["exp_labels"]
                        .as_mapping()
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, v)| {
                            let value = match v {
                                serde_yaml_ng::Value::String(s) => s.clone(),
                                serde_yaml_ng::Value::Number(n) => n.to_string(),
                                _ => return None,
                            };
                            Some((k.as_str()?.to_owned(), value))
                        })
                        .collect();
                    labels.insert("alertname".into(), name.to_owned());
                    out.insert(labels);
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Each alert in clusters `a` and `b`, and, where it names a service, also
/// for a second service, so that every pair that must not meet does.
fn variants(alerts: &[Labels]) -> Vec<Labels> {
    let mut out = Vec::new();
    for alert in alerts {
        for cluster in ["a", "b"] {
            let mut a = alert.clone();
            a.insert("cluster".into(), cluster.into());
            if let Some(service) = alert.get("service_name") {
                let mut other = a.clone();
                other.insert("service_name".into(), format!("{service}-other"));
                out.push(other);
            }
            out.push(a);
        }
    }
    out
}

/// The shipped configuration, its receivers pointed at a port nobody
/// listens on: the inhibit rules are what is tested, not the routing.
fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("alerts/alertmanager.yml"))
        .expect("alerts/alertmanager.yml");
    let text = text.replace("127.0.0.1:5001", "127.0.0.1:9");
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, text).expect("config written");
    path
}

fn alertmanager(dir: &std::path::Path, port: u16) -> Killed {
    std::fs::create_dir_all(dir.join("data")).expect("temp dir");
    Killed::spawn(
        Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config(dir).display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "apt-get install prometheus-alertmanager",
    )
}

async fn post(client: &reqwest::Client, port: u16, alerts: &[Labels]) {
    let body: Vec<Value> = alerts
        .iter()
        .map(|labels| json!({ "labels": labels, "annotations": {} }))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sent = client
            .post(format!("http://127.0.0.1:{port}/api/v2/alerts"))
            .json(&body)
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager did not take the alerts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every alert Alertmanager holds, with the label sets of its inhibitors.
async fn inhibitions(client: &reqwest::Client, port: u16) -> Vec<(Labels, Vec<Labels>)> {
    let alerts: Vec<Value> = client
        .get(format!("http://127.0.0.1:{port}/api/v2/alerts"))
        .send()
        .await
        .expect("the v2 API answers")
        .json()
        .await
        .expect("JSON");
    let labels = |a: &Value| -> Labels {
        serde_json::from_value(a["labels"].clone()).expect("labels are strings")
    };
    let by_fingerprint: BTreeMap<String, Labels> = alerts
        .iter()
        .map(|a| {
            (
                a["fingerprint"].as_str().unwrap_or_default().to_owned(),
                labels(a),
            )
        })
        .collect();
    alerts
        .iter()
        .map(|a| {
            let by = a["status"]["inhibitedBy"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| by_fingerprint.get(f.as_str()?).cloned())
                .collect();
            (labels(a), by)
        })
        .collect()
}

fn get<'a>(labels: &'a Labels, key: &str) -> &'a str {
    labels.get(key).map_or("", String::as_str)
}

/// Whether the shipped rules mean `source` to silence `target`.
fn intended(source: &Labels, target: &Labels) -> bool {
    let same = |k: &str| get(source, k) == get(target, k);
    let cause_first = get(source, "severity") == "critical"
        && get(source, "layer") == "infra"
        && get(target, "layer") == "business"
        && !get(source, "service_name").is_empty()
        && same("service_name")
        && same("cluster");
    let page_over_ticket = get(source, "burn_tier") == "page"
        && get(target, "burn_tier") == "ticket"
        && same("slo")
        && same("payment_channel")
        && same("cluster");
    cause_first || page_over_ticket
}

fn short(labels: &Labels) -> String {
    let keys = [
        "alertname",
        "service_name",
        "cluster",
        "payment_channel",
        "instance",
    ];
    keys.iter()
        .filter_map(|k| labels.get(*k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn inhibitions_silence_only_the_same_service_in_the_same_cluster() {
    let produced = producible_alerts();
    assert!(produced.len() > 30, "only {} alerts found", produced.len());
    let hosts: Vec<&Labels> = produced
        .iter()
        .filter(|a| get(a, "layer") == "infra" && get(a, "severity") == "critical")
        .filter(|a| !a.contains_key("service_name"))
        .collect();
    assert!(!hosts.is_empty(), "a critical host alert is among them");
    let posted = variants(&produced);
    let expected: BTreeSet<Labels> = posted
        .iter()
        .filter(|t| posted.iter().any(|s| s != *t && intended(s, t)))
        .cloned()
        .collect();
    assert!(
        expected.iter().any(|t| get(t, "layer") == "business"),
        "some business alert has a cause to be silenced by"
    );

    let port = paytrace_testkit::free_port();
    let dir = std::env::temp_dir().join(format!("paytrace-inhibit-{}", std::process::id()));
    let _am = alertmanager(&dir, port);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let held = rt.block_on(async {
        let client = reqwest::Client::new();
        post(&client, port, &posted).await;
        // The inhibitor sees new alerts asynchronously: wait until every
        // intended inhibition shows (or the deadline).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let held = inhibitions(&client, port).await;
            let silenced: BTreeSet<&Labels> = held
                .iter()
                .filter(|(_, by)| !by.is_empty())
                .map(|(l, _)| l)
                .collect();
            let all_in =
                held.len() == posted.len() && expected.iter().all(|e| silenced.contains(e));
            if all_in || Instant::now() > deadline {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(
        held.len(),
        posted.len(),
        "Alertmanager holds every alert posted"
    );
    let mut wrong = Vec::new();
    let mut missing = Vec::new();
    for (target, by) in &held {
        for source in by {
            if !intended(source, target) {
                wrong.push(format!("{} silenced by {}", short(target), short(source)));
            }
        }
        if expected.contains(target) && by.is_empty() {
            missing.push(short(target));
        }
    }
    assert!(
        wrong.is_empty(),
        "silenced by an unrelated alert:\n{}",
        wrong.join("\n")
    );
    assert!(
        missing.is_empty(),
        "not silenced though their cause fires:\n{}",
        missing.join("\n")
    );
    // A business alert's cause in the other cluster, or of the other
    // service, never silences it; checked above for every pair, and here
    // spelled out for the case the bug was found with.
    let business_critical: Vec<&(Labels, Vec<Labels>)> = held
        .iter()
        .filter(|(l, _)| get(l, "layer") == "business" && get(l, "severity") == "critical")
        .collect();
    assert!(!business_critical.is_empty());
    for (target, by) in business_critical {
        assert!(
            by.iter()
                .all(|s| !s.get("service_name").is_none_or(String::is_empty)),
            "{} silenced by an alert that names no service",
            short(target)
        );
    }
}
