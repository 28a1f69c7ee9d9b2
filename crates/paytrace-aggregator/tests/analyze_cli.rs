//! The `analyze` command on OTLP JSON written the way the OpenTelemetry
//! Collector's file exporter writes it (OTLP/JSON: hex ids, camelCase,
//! nanosecond timestamps as strings), run as the real binary.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

const MS: u64 = 1_000_000;
const BASE: u64 = 1_764_000_000_000_000_000;

struct S {
    trace: &'static str,
    id: &'static str,
    parent: &'static str,
    name: &'static str,
    start_ms: u64,
    end_ms: u64,
    attrs: Vec<(&'static str, &'static str)>,
    link: Option<(&'static str, &'static str)>,
}

fn otlp_span(s: &S) -> Value {
    let attributes: Vec<Value> = s
        .attrs
        .iter()
        .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
        .collect();
    let links: Vec<Value> = s
        .link
        .iter()
        .map(|(t, id)| json!({"traceId": t, "spanId": id}))
        .collect();
    json!({
        "traceId": s.trace,
        "spanId": s.id,
        "parentSpanId": s.parent,
        "name": s.name,
        "kind": 2,
        "startTimeUnixNano": (BASE + s.start_ms * MS).to_string(),
        "endTimeUnixNano": (BASE + s.end_ms * MS).to_string(),
        "attributes": attributes,
        "links": links,
        "status": {}
    })
}

fn request(service: &str, spans: &[S]) -> String {
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": spans.iter().map(otlp_span).collect::<Vec<_>>()}]
    }]})
    .to_string()
}

const TA: &str = "0af7651916cd43dd8448eb211c80319c";
const TB: &str = "1af7651916cd43dd8448eb211c80319c";
const TC: &str = "2af7651916cd43dd8448eb211c80319c";

/// A checkout paid with alipay: the request trace, then the callback trace
/// 220 ms after the channel answered; and a one-trace checkout with card.
fn checkout_file() -> String {
    let a = [
        S {
            trace: TA,
            id: "a000000000000001",
            parent: "",
            name: "POST /checkout",
            start_ms: 0,
            end_ms: 100,
            attrs: vec![
                ("paytrace.flow", "checkout"),
                ("paytrace.flow_id", "ord_1"),
                ("payment.method", "alipay"),
            ],
            link: None,
        },
        S {
            trace: TA,
            id: "a000000000000002",
            parent: "a000000000000001",
            name: "order.create",
            start_ms: 5,
            end_ms: 95,
            attrs: vec![("paytrace.stage", "order.create")],
            link: None,
        },
        S {
            trace: TA,
            id: "a000000000000003",
            parent: "a000000000000002",
            name: "channel.request",
            start_ms: 20,
            end_ms: 80,
            attrs: vec![
                ("paytrace.stage", "channel.request"),
                ("payment.channel", "alipay"),
            ],
            link: None,
        },
    ];
    let b = [
        S {
            trace: TB,
            id: "b000000000000001",
            parent: "",
            name: "POST /callbacks/alipay",
            start_ms: 300,
            end_ms: 340,
            attrs: vec![
                ("paytrace.stage", "channel.callback"),
                ("paytrace.flow_id", "ord_1"),
            ],
            link: Some((TA, "a000000000000003")),
        },
        S {
            trace: TB,
            id: "b000000000000002",
            parent: "b000000000000001",
            name: "payment.confirm",
            start_ms: 320,
            end_ms: 340,
            attrs: vec![("paytrace.stage", "payment.confirm")],
            link: None,
        },
    ];
    let c = [
        S {
            trace: TC,
            id: "c000000000000001",
            parent: "",
            name: "POST /checkout",
            start_ms: 0,
            end_ms: 50,
            attrs: vec![("paytrace.flow", "checkout"), ("payment.method", "card")],
            link: None,
        },
        S {
            trace: TC,
            id: "c000000000000002",
            parent: "c000000000000001",
            name: "channel.request",
            start_ms: 10,
            end_ms: 40,
            attrs: vec![("paytrace.stage", "channel.request")],
            link: None,
        },
        // Invalid: ends before it starts. Rejected, counted, not fatal.
        S {
            trace: TC,
            id: "c000000000000003",
            parent: "c000000000000001",
            name: "broken",
            start_ms: 30,
            end_ms: 20,
            attrs: vec![],
            link: None,
        },
    ];
    // The callback arrives in its own export, from another service, before
    // the request trace: order must not matter.
    format!(
        "{}\n{}\n{}\n",
        request("payment", &b),
        request("gateway", &a),
        request("gateway", &c)
    )
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paytrace-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write input");
    path
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paytrace-aggregator"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// `analyze --format json` of `path`, which must succeed.
fn analyze_json(path: &std::path::Path) -> Value {
    let out = run(&[
        "analyze",
        "--format",
        "json",
        path.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn breakdown<'a>(doc: &'a Value, method: Option<&str>) -> &'a Value {
    doc["flows"]
        .as_array()
        .expect("flows is an array")
        .iter()
        .find(|b| b["flow"] == "checkout" && b["payment_method"].as_str() == method)
        .unwrap_or_else(|| panic!("no checkout breakdown for {method:?} in {doc:#}"))
}

fn stage<'a>(b: &'a Value, name: &str) -> &'a Value {
    b["stages"]
        .as_array()
        .expect("stages is an array")
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {b:#}"))
}

fn close(actual: &Value, expected: f64) -> bool {
    let a = actual.as_f64().expect("a number");
    (a - expected).abs() <= expected.abs() * 0.02 + 1e-9
}

#[test]
fn analyze_json_reports_stitched_flows_with_async_waits() {
    let path = write_temp("checkout.jsonl", &checkout_file());
    let doc = analyze_json(&path);

    let all = breakdown(&doc, None);
    assert_eq!(all["traces"], 2, "the alipay flow's two traces count once");
    assert_eq!(all["window_seconds"], Value::Null);

    let alipay = breakdown(&doc, Some("alipay"));
    assert_eq!(alipay["traces"], 1);
    assert!(close(&alipay["end_to_end"]["p50"], 0.340), "{alipay:#}");
    // The flow waited 220 ms for the callback: the largest share, first.
    let wait = &alipay["stages"][0];
    assert_eq!(wait["stage"], "async:channel.callback");
    assert!(
        close(&wait["critical_path"]["share"], 220.0 / 340.0),
        "{wait:#}"
    );
    assert!(close(
        &stage(alipay, "channel.request")["critical_path"]["mean"],
        0.060
    ));
    assert!(close(
        &stage(alipay, "order.create")["critical_path"]["mean"],
        0.015
    ));
    assert!(close(&stage(alipay, "order.create")["self"]["p50"], 0.030));
    assert!(close(
        &stage(alipay, "order.create")["duration"]["p50"],
        0.090
    ));
    assert!(close(
        &stage(alipay, "gateway POST /checkout")["critical_path"]["mean"],
        0.005
    ));
    let shares: f64 = alipay["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["critical_path"]["share"].as_f64().expect("share"))
        .sum();
    assert!((shares - 1.0).abs() < 1e-6, "shares sum to 1, got {shares}");

    let card = breakdown(&doc, Some("card"));
    assert!(close(
        &stage(card, "channel.request")["critical_path"]["mean"],
        0.030
    ));
}

#[test]
fn analyze_table_counts_rejected_spans() {
    let path = write_temp("table.jsonl", &checkout_file());
    let out = run(&["analyze", path.to_str().expect("utf-8 path")]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("flow checkout, payment method alipay: 1 flows"),
        "{stdout}"
    );
    assert!(stdout.contains("async:channel.callback"), "{stdout}");
    assert!(
        stderr.contains("7 spans in 3 traces, 2 flows; 1 spans rejected"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("resourceSpans[0].scopeSpans[0].spans[2].endTimeUnixNano: before the start"),
        "{stderr}"
    );
}

#[test]
fn a_single_pretty_printed_document_is_accepted() {
    let one = request(
        "svc",
        &[S {
            trace: TA,
            id: "a000000000000001",
            parent: "",
            name: "GET /health",
            start_ms: 0,
            end_ms: 2,
            attrs: vec![],
            link: None,
        }],
    );
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(&one).expect("json"))
        .expect("pretty");
    let path = write_temp("pretty.json", &pretty);
    let doc = analyze_json(&path);
    assert_eq!(doc["flows"][0]["flow"], "svc GET /health");
}

#[test]
fn malformed_input_names_the_file_and_line() {
    let path = write_temp(
        "bad.jsonl",
        &format!(
            "{}\nnot json at all\n",
            checkout_file().lines().next().unwrap_or_default()
        ),
    );
    let out = run(&["analyze", path.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.jsonl:2"), "{stderr}");
    assert!(stderr.contains("OTLP JSON"), "{stderr}");

    let out = run(&["analyze", "/nonexistent/traces.jsonl"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/traces.jsonl"));
}

/// `analyze` over a file and `serve` over the same spans give the same
/// breakdown: one pipeline, one stitcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_and_serve_agree_on_the_same_spans() {
    let file = checkout_file();
    let path = write_temp("agree.jsonl", &file);
    let offline = analyze_json(&path);

    let running = paytrace_aggregator::server::start(
        paytrace_aggregator::server::ServeConfig::on_free_loopback_ports(),
    )
    .await
    .expect("starts");
    for line in file.lines() {
        let body: Value = serde_json::from_str(line).expect("a request per line");
        paytrace_testkit::post_otlp_json(running.otlp_http, &body).await;
    }
    // Analyse whatever is buffered now, as the file's end does.
    let api = running.listen;
    let pipeline = running.pipeline.clone();
    tokio::task::spawn_blocking(move || {
        pipeline.flush(paytrace_aggregator::pipeline::Now::current())
    })
    .await
    .expect("flushed");
    let live: Value = reqwest::get(format!(
        "http://{api}/api/v1/breakdown?flow=checkout&window=5m"
    ))
    .await
    .expect("the API answers")
    .json()
    .await
    .expect("JSON");
    running.shutdown().await;

    let offline = breakdown(&offline, None);
    assert_eq!(live["traces"], offline["traces"], "{live:#}\n{offline:#}");
    assert_eq!(live["end_to_end"], offline["end_to_end"]);
    assert_eq!(live["stages"], offline["stages"]);
}
