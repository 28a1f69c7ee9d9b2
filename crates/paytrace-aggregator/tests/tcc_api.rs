//! TCC spans from several services, sent as OTLP/HTTP JSON the way any SDK
//! would, come out of `/api/v1/tcc/anomalies`, `/api/v1/tcc/unfinished` and
//! `/metrics`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paytrace_aggregator::server::{Running, ServeConfig, start};
use serde_json::{Value, json};

async fn aggregator() -> Running {
    let mut config = ServeConfig::on_free_loopback_ports();
    config.pipeline.assembler.trace_idle = Duration::from_millis(100);
    config.pipeline.flows.flow_idle = Duration::from_millis(100);
    config.pipeline.tcc.settle = Duration::from_millis(100);
    config.pipeline.tcc.timeout = Duration::from_secs(60);
    start(config).await.expect("starts")
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

/// One OTLP JSON span; `attributes` as (key, OTLP JSON value).
fn span(trace: u8, id: u8, start_ns: u64, attributes: &[(&str, Value)]) -> Value {
    json!({
        "traceId": format!("{trace:02x}").repeat(16),
        "spanId": format!("{id:02x}").repeat(8),
        "name": "POST /tcc",
        "kind": 2,
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": (start_ns + 20_000_000).to_string(),
        "attributes": attributes
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect::<Vec<_>>(),
    })
}

fn s(v: &str) -> Value {
    json!({ "stringValue": v })
}

async fn send(running: &Running, service: &str, spans: Vec<Value>) {
    let body = json!({
        "resourceSpans": [{
            "resource": { "attributes": [{ "key": "service.name", "value": s(service) }] },
            "scopeSpans": [{ "spans": spans }],
        }],
    });
    paytrace_testkit::post_otlp_json(running.otlp_http, &body).await;
}

async fn get(running: &Running, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{}{path}", running.listen))
        .await
        .expect("the API answers");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON"))
}

/// Polls the anomaly list until `n` are listed.
async fn anomalies(running: &Running, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, doc) = get(running, "/api/v1/tcc/anomalies").await;
        if doc["anomalies"].as_array().map_or(0, Vec::len) >= n {
            return doc;
        }
        assert!(Instant::now() < deadline, "only {doc} after 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn anomalies_across_services_are_listed_with_their_traces() {
    let running = aggregator().await;
    let t0 = now_ns() - 5_000_000_000;
    let ms = 1_000_000;
    // A Java participant sends its xid as a number.
    let xid = json!({ "intValue": "42" });
    let phase = |p: &str| {
        vec![
            ("tcc.xid", xid.clone()),
            ("tcc.resource", s("inventory")),
            ("tcc.phase", s(p)),
        ]
    };
    send(
        &running,
        "inventory",
        vec![
            span(1, 1, t0, &phase("try")),
            span(2, 2, t0 + 500 * ms, &phase("confirm")),
        ],
    )
    .await;
    // A recovery job, in a trace of its own, cancels the confirmed branch.
    send(
        &running,
        "recovery",
        vec![span(3, 3, t0 + 900 * ms, &phase("cancel"))],
    )
    .await;
    // Nobody can classify these: no xid, an unknown phase.
    send(
        &running,
        "legacy",
        vec![
            span(4, 4, t0, &[("tcc.phase", s("try"))]),
            span(
                5,
                5,
                t0,
                &[("tcc.xid", s("ord_9")), ("tcc.phase", s("prepare"))],
            ),
        ],
    )
    .await;

    let doc = anomalies(&running, 3).await;
    let list = doc["anomalies"].as_array().expect("list");
    let late = list
        .iter()
        .find(|a| a["kind"] == "cancel_after_confirm")
        .unwrap_or_else(|| panic!("no cancel_after_confirm in {doc}"));
    assert_eq!(late["xid"], "42");
    assert_eq!(late["resource"], "inventory");
    assert_eq!(late["service"], "recovery");
    assert_eq!(late["span_id"], "03".repeat(8));
    assert_eq!(
        late["trace_ids"],
        json!(["03".repeat(16), "02".repeat(16)]),
        "the offending trace, then the Confirm's"
    );
    let started = late["time_unix_seconds"].as_f64().expect("time");
    assert!((started - (t0 + 900 * ms) as f64 / 1e9).abs() < 1e-3);
    assert_eq!(
        list.iter().filter(|a| a["kind"] == "malformed").count(),
        2,
        "{doc}"
    );
    assert!(
        doc["counts"].as_array().expect("counts").contains(
            &json!({ "resource": "inventory", "kind": "cancel_after_confirm", "count": 1 })
        ),
        "{doc}"
    );

    let (_, only) = get(&running, "/api/v1/tcc/anomalies?kind=malformed&limit=1").await;
    assert_eq!(only["anomalies"].as_array().map(Vec::len), Some(1));
    assert_eq!(only["anomalies"][0]["kind"], "malformed");
    let (status, err) = get(&running, "/api/v1/tcc/anomalies?kind=lost").await;
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().is_some_and(|e| e.contains("frozen")),
        "{err}"
    );

    let metrics = reqwest::get(format!("http://{}/metrics", running.listen))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            r#"paytrace_tcc_global_anomalies_total{kind="cancel_after_confirm",resource="inventory"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("paytrace_tcc_transactions_unfinished 0"));
    running.shutdown().await;
}

#[tokio::test]
async fn a_try_left_waiting_is_unfinished_and_frozen() {
    let mut config = ServeConfig::on_free_loopback_ports();
    config.pipeline.assembler.trace_idle = Duration::from_millis(100);
    config.pipeline.flows.flow_idle = Duration::from_millis(100);
    config.pipeline.tcc.settle = Duration::from_millis(100);
    config.pipeline.tcc.timeout = Duration::from_secs(1);
    let running = start(config).await.expect("starts");
    // Tried ten seconds ago; the coupon was confirmed, the points never.
    let t0 = now_ns() - 10_000_000_000;
    let branch = |resource: &str, phase: &str| {
        vec![
            ("tcc.xid", s("ord_7")),
            ("tcc.resource", s(resource)),
            ("tcc.phase", s(phase)),
        ]
    };
    send(
        &running,
        "shop",
        vec![
            span(1, 1, t0, &branch("points", "try")),
            span(1, 2, t0, &branch("coupon", "try")),
            span(2, 3, t0 + 1_000_000, &branch("coupon", "confirm")),
        ],
    )
    .await;
    let doc = anomalies(&running, 1).await;
    assert_eq!(doc["anomalies"][0]["kind"], "frozen", "{doc}");
    assert_eq!(doc["anomalies"][0]["resource"], "points");
    let (_, waiting) = get(&running, "/api/v1/tcc/unfinished").await;
    let first = &waiting["unfinished"][0];
    assert_eq!(first["xid"], "ord_7", "{waiting}");
    assert_eq!(first["resources"], json!(["points"]));
    assert_eq!(first["trace_ids"], json!(["01".repeat(16)]));
    assert!(
        first["age_seconds"].as_f64().is_some_and(|a| a >= 9.9),
        "{first}"
    );
    running.shutdown().await;
}
