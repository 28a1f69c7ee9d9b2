//! End to end over real sockets: the real `opentelemetry-otlp` exporter, over
//! gRPC and over HTTP, sends a known checkout (a request trace and its
//! callback trace) to a running aggregator, and the JSON API returns the
//! expected breakdown.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Link, SpanContext, SpanKind, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use paytrace_aggregator::pipeline::Now;
use paytrace_aggregator::server::{Running, ServeConfig, start};
use serde_json::Value;

async fn aggregator() -> Running {
    start(ServeConfig::on_free_loopback_ports())
        .await
        .expect("the aggregator starts")
}

const MS: Duration = Duration::from_millis(1);

/// Sends, through `provider`, a checkout paid with alipay:
/// trace A: `POST /checkout` 0..100ms > order.create 5..95 > channel.request 20..80;
/// trace B (the channel's callback, linked to channel.request, same flow id):
/// channel.callback 300..340 > payment.confirm 320..340.
fn send_checkout(provider: &SdkTracerProvider) {
    let tracer = provider.tracer("e2e");
    let t0 = SystemTime::now() - Duration::from_secs(2);
    let at = |ms: u32| t0 + MS * ms;
    let span =
        |name: &str, start: u32, attrs: Vec<KeyValue>, parent: &Context, links: Vec<Link>| {
            let s = tracer
                .span_builder(name.to_owned())
                .with_kind(SpanKind::Internal)
                .with_start_time(at(start))
                .with_attributes(attrs)
                .with_links(links)
                .start_with_context(&tracer, parent);
            parent.with_span(s)
        };
    let root = span(
        "POST /checkout",
        0,
        vec![
            KeyValue::new("paytrace.flow", "checkout"),
            KeyValue::new("paytrace.flow_id", "ord_e2e"),
            KeyValue::new("payment.method", "alipay"),
            KeyValue::new("payment.channel", "alipay"),
        ],
        &Context::new(),
        vec![],
    );
    let order = span(
        "order.create",
        5,
        vec![KeyValue::new("paytrace.stage", "order.create")],
        &root,
        vec![],
    );
    let channel = span(
        "channel.request",
        20,
        vec![KeyValue::new("paytrace.stage", "channel.request")],
        &order,
        vec![],
    );
    let channel_ctx: SpanContext = channel.span().span_context().clone();
    channel.span().end_with_timestamp(at(80));
    order.span().end_with_timestamp(at(95));
    root.span().end_with_timestamp(at(100));

    let callback = span(
        "POST /callbacks/alipay",
        300,
        vec![
            KeyValue::new("paytrace.stage", "channel.callback"),
            KeyValue::new("paytrace.flow_id", "ord_e2e"),
        ],
        &Context::new(),
        vec![Link::with_context(channel_ctx)],
    );
    let confirm = span(
        "payment.confirm",
        320,
        vec![KeyValue::new("paytrace.stage", "payment.confirm")],
        &callback,
        vec![],
    );
    confirm.span().end_with_timestamp(at(340));
    callback.span().end_with_timestamp(at(340));
}

fn stage<'a>(b: &'a Value, name: &str) -> &'a Value {
    b["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {b:#}"))
}

fn close(v: &Value, expected: f64) -> bool {
    let a = v.as_f64().expect("a number");
    (a - expected).abs() <= expected * 0.02 + 1e-6
}

async fn exported_checkout_is_broken_down(provider: SdkTracerProvider, running: Running) {
    send_checkout(&provider);
    let flushed = tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("no panic");
    assert!(flushed.is_ok(), "the exporter delivered: {flushed:?}");
    // Every span has arrived (export returned); finish the buffered flow now
    // rather than waiting out the idle periods.
    let pipeline = running.pipeline.clone();
    tokio::task::spawn_blocking(move || pipeline.flush(Now::current()))
        .await
        .expect("no panic");

    let api = format!("http://{}", running.listen);
    let b: Value = reqwest::get(format!(
        "{api}/api/v1/breakdown?flow=checkout&window=5m&payment_method=alipay"
    ))
    .await
    .expect("the API answers")
    .json()
    .await
    .expect("JSON");
    assert_eq!(b["traces"], 1, "{b:#}");
    assert_eq!(b["window_seconds"], 300);
    assert!(close(&b["end_to_end"]["p50"], 0.340), "{b:#}");
    assert_eq!(b["stages"][0]["stage"], "async:channel.callback");
    assert!(close(
        &stage(&b, "async:channel.callback")["critical_path"]["share"],
        220.0 / 340.0
    ));
    assert!(close(
        &stage(&b, "channel.request")["critical_path"]["mean"],
        0.060
    ));
    assert!(close(&stage(&b, "order.create")["self"]["p50"], 0.030));
    assert!(close(
        &stage(&b, "payment.confirm")["critical_path"]["mean"],
        0.020
    ));

    let flows: Value = reqwest::get(format!("{api}/api/v1/flows?window=5m"))
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(flows["flows"][0]["flow"], "checkout");
    assert_eq!(flows["flows"][0]["traces"], 1);

    let slow: Value = reqwest::get(format!("{api}/api/v1/traces/slow?flow=checkout&limit=5"))
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    let path = slow["traces"][0]["critical_path"]
        .as_array()
        .expect("a path");
    let total: f64 = path
        .iter()
        .map(|s| s["duration_seconds"].as_f64().expect("number"))
        .sum();
    assert!(close(&Value::from(total), 0.340));
    assert_eq!(
        slow["traces"][0]["trace_ids"].as_array().map(Vec::len),
        Some(2)
    );

    let metrics = reqwest::get(format!("{api}/metrics"))
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"paytrace_stage_critical_path_seconds_count{flow="checkout",payment_channel="alipay",payment_method="alipay",stage="channel.request"} 1"#),
        "{metrics}"
    );
    running.shutdown().await;
}

fn resource() -> Resource {
    Resource::builder().with_service_name("gateway").build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_otlp_grpc() {
    let running = aggregator().await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", running.otlp_grpc))
        .build()
        .expect("exporter");
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    exported_checkout_is_broken_down(provider, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_otlp_http_protobuf() {
    let running = aggregator().await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("http://{}/v1/traces", running.otlp_http))
        .with_headers(Default::default())
        .build()
        .expect("exporter");
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    exported_checkout_is_broken_down(provider, running).await;
}
