//! A live drill with the real stack: the demo under faults, a real
//! Prometheus scraping it with the shipped rules loaded (in a copy whose
//! `for:` durations are shortened, nothing else changed), the shipped
//! Alertmanager configuration in a real Alertmanager, and a webhook receiver
//! on the address that configuration names.
//!
//! - The card channel is down: the payment-success SLO of its channel
//!   (`stripe`) burns, its fast-burn alert fires and reaches the pager
//!   webhook.
//! - Inventory's pool is exhausted (a critical infra alert for `inventory`)
//!   while a recovery job cancels confirmed branches there (a critical
//!   business alert for `inventory`): Alertmanager holds the business alert
//!   back, inhibited by the infra one.
//!
//! Needs `prometheus` and `prometheus-alertmanager` (Debian packages).

mod monitoring;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use monitoring::*;
use serde_json::Value;

const BASE: u16 = 7400;
const PROMETHEUS: u16 = 7491;
const ALERTMANAGER: u16 = 7493;
/// The webhook address in `alerts/alertmanager.yml`.
const WEBHOOK: &str = "127.0.0.1:5001";

fn prometheus_config(dir: &std::path::Path, rules: &[String]) -> String {
    let targets: Vec<String> = (0..9)
        .map(|i| format!("\"127.0.0.1:{}\"", BASE + i))
        .chain([format!("\"127.0.0.1:{}\"", BASE + 80)])
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{ALERTMANAGER}\"]\nscrape_configs:\n  - job_name: paytrace-demo\n    static_configs:\n      - targets: [{}]\n",
        rules
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", "),
        targets.join(", ")
    );
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).expect("write prometheus.yml");
    path.to_string_lossy().into_owned()
}

type Received = Arc<Mutex<Vec<(String, Value)>>>;

async fn webhook(
    State(got): State<Received>,
    Path(receiver): Path<String>,
    Json(body): Json<Value>,
) {
    got.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((receiver, body));
}

/// Alerts Prometheus holds now, by name, with their state and labels.
async fn prometheus_alerts(client: &reqwest::Client) -> Vec<Value> {
    let data = prometheus_api(client, PROMETHEUS, "alerts").await;
    data["alerts"].as_array().cloned().unwrap_or_default()
}

async fn alertmanager_alerts(client: &reqwest::Client) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{ALERTMANAGER}/api/v2/alerts");
    match client.get(url).send().await {
        Ok(r) => r.json::<Vec<Value>>().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

fn labelled<'a>(alerts: &'a [Value], name: &str, key: &str, value: &str) -> Option<&'a Value> {
    alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == name && a["labels"][key] == value)
}

#[test]
fn a_channel_outage_pages_and_an_infra_cause_inhibits_its_business_symptom() {
    let dir = std::env::temp_dir().join(format!("paytrace-drill-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("prometheus")).expect("temp dir");
    std::fs::create_dir_all(dir.join("alertmanager")).expect("temp dir");
    let rules = drill_rules(&dir);
    let config = prometheus_config(&dir, &rules);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let received: Received = Arc::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(WEBHOOK))
        .unwrap_or_else(|e| panic!("the webhook needs {WEBHOOK} free: {e}"));
    let app = axum::Router::new()
        .route("/{receiver}", axum::routing::post(webhook))
        .with_state(received.clone());
    rt.spawn(async move { axum::serve(listener, app).await });

    let _alertmanager = spawn(
        "prometheus-alertmanager",
        &[
            format!(
                "--config.file={}",
                repo().join("alerts/alertmanager.yml").display()
            ),
            format!("--storage.path={}", dir.join("alertmanager").display()),
            format!("--web.listen-address=127.0.0.1:{ALERTMANAGER}"),
            "--cluster.listen-address=".to_owned(),
        ],
        "prometheus-alertmanager",
    );
    let _prometheus = spawn_prometheus(&config, &dir, PROMETHEUS);
    let _demo = spawn_faulty_demo(BASE, 15, 300);

    let outcome = rt.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut paged = false;
        let mut inhibited = None;
        while Instant::now() < deadline && !(paged && inhibited.is_some()) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            paged = received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|(receiver, body)| {
                    receiver == "pager"
                        && body["alerts"].as_array().into_iter().flatten().any(|a| {
                            a["status"] == "firing"
                                && a["labels"]["alertname"] == "PaymentSuccessBurnRateFast"
                                && a["labels"]["payment_channel"] == "stripe"
                        })
                });
            let am = alertmanager_alerts(&client).await;
            let source = labelled(&am, "ResourcePoolExhausted", "service_name", "inventory");
            let target = labelled(&am, "TccCancelAfterConfirm", "service_name", "inventory");
            if let (Some(source), Some(target)) = (source, target)
                && target["status"]["state"] == "suppressed"
                && target["status"]["inhibitedBy"]
                    .as_array()
                    .is_some_and(|by| by.contains(&source["fingerprint"]))
            {
                inhibited = Some(target.clone());
            }
        }
        let prom = prometheus_alerts(&client).await;
        let am = alertmanager_alerts(&client).await;
        (paged, inhibited, prom, am)
    });
    let (paged, inhibited, prom, am) = outcome;
    let states: BTreeMap<String, String> = prom
        .iter()
        .map(|a| {
            (
                format!(
                    "{} {}",
                    a["labels"]["alertname"], a["labels"]["service_name"]
                ),
                a["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        paged,
        "PaymentSuccessBurnRateFast{{payment_channel=\"stripe\"}} never reached the pager webhook.\nPrometheus: {states:#?}\nwebhook: {:#?}",
        received.lock().unwrap_or_else(|e| e.into_inner())
    );
    assert!(
        inhibited.is_some(),
        "TccCancelAfterConfirm{{service_name=\"inventory\"}} was not held back by ResourcePoolExhausted{{service_name=\"inventory\"}}.\nPrometheus: {states:#?}\nAlertmanager: {am:#?}"
    );
    // The payment service has no infra alert: its page went through.
    let payment = labelled(
        &am,
        "PaymentSuccessBurnRateFast",
        "payment_channel",
        "stripe",
    )
    .expect("still active in Alertmanager");
    assert_eq!(payment["status"]["state"], "active", "{payment}");
    // Only the channel that is down burns.
    for channel in ["alipay", "wxpay"] {
        assert!(
            labelled(
                &prom,
                "PaymentSuccessBurnRateFast",
                "payment_channel",
                channel
            )
            .is_none(),
            "{channel} is not down: {states:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
