//! Flow-aware tail sampling against a real OTLP/HTTP receiver on loopback
//! (decoding what arrives with the OpenTelemetry protobuf types, as a trace
//! store does): every failed, TCC-anomalous and slow checkout arrives whole
//! (its request and its callback trace, every span as sent, each marked
//! `paytrace.kept`), normal ones at about the sample rate, nothing else; a
//! burst past the budget drops whole flows, counted; a receiver that is
//! down loses only counted flows and blocks nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use paytrace_aggregator::forward::ForwardSettings;
use paytrace_aggregator::pipeline::Now;
use paytrace_aggregator::server::{Running, ServeConfig, start};
use paytrace_testkit::checkout::CheckoutFlow;
use prost::Message;

/// A span the receiver got: its trace, id, service and `paytrace.kept`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Received {
    trace_id: String,
    span_id: String,
    service: String,
    kept: Option<String>,
}

/// An OTLP/HTTP (protobuf) receiver that keeps what it gets.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                let mut got = sink.lock().unwrap_or_else(|e| e.into_inner());
                for rs in request.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            any_value::Value::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        let kept = span
                            .attributes
                            .iter()
                            .find(|kv| kv.key == "paytrace.kept")
                            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                any_value::Value::StringValue(s) => Some(s.clone()),
                                _ => None,
                            });
                        got.push(Received {
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            service: service.clone(),
                            kept,
                        });
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, got)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn aggregator_config(forward: ForwardSettings) -> ServeConfig {
    let mut config = ServeConfig::on_free_loopback_ports();
    // Nothing completes on its own: the test flushes when every span is in.
    config.pipeline.assembler.trace_idle = Duration::from_secs(3600);
    config.pipeline.flows.flow_idle = Duration::from_secs(3600);
    config.forward = Some(forward);
    config
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Checkout `k`'s shape: every tenth slow, failed or TCC-anomalous.
fn checkout(k: u64, t0: u64) -> CheckoutFlow {
    let mut flow = CheckoutFlow::new(k, t0);
    match k % 10 {
        0 => flow.request_ms = 2_500,
        1 => flow.failed = true,
        2 => flow.decision_violated = true,
        _ => {}
    }
    flow
}

/// The spans a checkout sent, as (trace id, span id).
fn sent(flow: &CheckoutFlow) -> BTreeSet<(String, String)> {
    flow.otlp_json()["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| {
            (
                s["traceId"].as_str().unwrap_or("").to_owned(),
                s["spanId"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

async fn scrape(running: &Running, family: &str) -> BTreeMap<String, f64> {
    let text = reqwest::get(format!("http://{}/metrics", running.listen))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?.to_owned();
            Some((reason, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flows_worth_keeping_arrive_whole_and_nothing_else() {
    let (addr, got) = receiver().await;
    let mut forward = ForwardSettings::new(format!("http://{addr}"));
    forward.policy = forward.policy.slower_than("checkout", 2.0);
    forward.policy.keep_normal = 0.25;
    let running = start(aggregator_config(forward)).await.expect("starts");
    let t0 = now_ns() - 30_000_000_000;
    let flows: Vec<CheckoutFlow> = (0..200).map(|k| checkout(k, t0)).collect();
    for f in &flows {
        paytrace_testkit::post_otlp_json(running.otlp_http, &f.otlp_json()).await;
    }
    running.pipeline.flush(Now::current());
    running.shutdown().await;

    let got = got.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut by_trace: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in &got {
        by_trace.entry(r.trace_id.clone()).or_default().push(r);
    }
    let mut normal_kept = 0;
    for (k, f) in flows.iter().enumerate() {
        let spans = sent(f);
        let arrived: BTreeSet<(String, String)> = spans
            .iter()
            .filter(|(t, s)| got.iter().any(|r| &r.trace_id == t && &r.span_id == s))
            .cloned()
            .collect();
        let expected = match k % 10 {
            0 => Some("slow"),
            1 => Some("error"),
            2 => Some("tcc"),
            _ => None,
        };
        match expected {
            Some(reason) => {
                assert_eq!(arrived, spans, "checkout {k} ({reason}) arrives whole");
            }
            None if arrived.is_empty() => continue,
            None => {
                assert_eq!(arrived, spans, "a sampled checkout {k} arrives whole");
                normal_kept += 1;
            }
        }
        let reasons: BTreeSet<Option<String>> = got
            .iter()
            .filter(|r| spans.contains(&(r.trace_id.clone(), r.span_id.clone())))
            .map(|r| r.kept.clone())
            .collect();
        let want = expected.unwrap_or("sample").to_owned();
        assert_eq!(reasons, BTreeSet::from([Some(want)]), "checkout {k}");
    }
    // Each span once, the service from its resource.
    assert_eq!(
        got.len(),
        got.iter().collect::<BTreeSet<_>>().len(),
        "duplicates"
    );
    assert!(got.iter().all(|r| r.service == "shop"), "{:?}", got.first());
    // 140 normal checkouts at 25%: within 4 standard deviations (±20).
    assert!(
        (15..=55).contains(&normal_kept),
        "{normal_kept} of 140 normal kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_budget_and_a_receiver_that_is_down_drop_whole_counted_flows() {
    // The budget: 40 spans a second; a burst of 50 slow checkouts (4 spans
    // each) gets 10 through at once, the rest are dropped whole.
    let (addr, got) = receiver().await;
    let mut forward = ForwardSettings::new(format!("http://{addr}"));
    forward.policy = forward.policy.slower_than("checkout", 2.0);
    forward.policy.keep_normal = 0.0;
    forward.max_spans_per_second = 40.0;
    let running = start(aggregator_config(forward)).await.expect("starts");
    let t0 = now_ns() - 30_000_000_000;
    for k in 0..50 {
        let mut f = CheckoutFlow::new(k, t0);
        f.request_ms = 2_500;
        paytrace_testkit::post_otlp_json(running.otlp_http, &f.otlp_json()).await;
    }
    running.pipeline.flush(Now::current());
    let forwarded_before_stop = {
        running.shutdown().await;
        got.lock().unwrap_or_else(|e| e.into_inner()).len()
    };
    assert_eq!(forwarded_before_stop % 4, 0, "whole flows only");
    let flows = forwarded_before_stop / 4;
    assert!(
        (10..=12).contains(&flows),
        "{flows} flows within a 40-span budget"
    );

    // Down: nobody listens where the trace store should be.
    let closed = paytrace_testkit::free_port();
    let mut forward = ForwardSettings::new(format!("http://127.0.0.1:{closed}"));
    forward.policy = forward.policy.slower_than("checkout", 2.0);
    forward.timeout = Duration::from_secs(2);
    let running = start(aggregator_config(forward)).await.expect("starts");
    for k in 0..5 {
        let mut f = CheckoutFlow::new(k, t0);
        f.request_ms = 2_500;
        paytrace_testkit::post_otlp_json(running.otlp_http, &f.otlp_json()).await;
    }
    running.pipeline.flush(Now::current());
    // The pipeline answers while the forwarder fails.
    let breakdown: serde_json::Value = reqwest::get(format!(
        "http://{}/api/v1/breakdown?flow=checkout&window=5m",
        running.listen
    ))
    .await
    .expect("the API answers")
    .json()
    .await
    .expect("JSON");
    assert_eq!(breakdown["traces"], 5);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dropped = scrape(&running, "paytrace_aggregator_flows_forward_dropped_total").await;
        if dropped.get("export_failed") == Some(&5.0) {
            assert_eq!(dropped.get("budget"), Some(&0.0), "{dropped:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{dropped:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let forwarded = scrape(&running, "paytrace_aggregator_flows_forwarded_total").await;
    assert!(forwarded.values().all(|v| *v == 0.0), "{forwarded:?}");
    running.shutdown().await;
}
