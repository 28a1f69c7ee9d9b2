//! A short run of the real demo: nine service processes over real HTTP (and
//! gRPC from order to inventory), the
//! real OTLP exporter, the in-process aggregator. The report must show every
//! stage of checkout, shares summing to 1, the callback stitched into the
//! flow, and mostly successful requests.

use std::process::Command;

mod monitoring;

use serde_json::Value;

const CHECKOUT_STAGES: [&str; 13] = [
    "order.create",
    "inventory.try",
    "coupon.try",
    "points.try",
    "payment.create",
    "channel.request",
    "channel.callback",
    "async:channel.callback",
    "payment.confirm",
    "async:payment.confirm",
    "inventory.confirm",
    "coupon.confirm",
    "points.confirm",
];

/// Runs the demo for 12 s on `port_base` with `args`, and returns its report.
fn run_demo(name: &str, port_base: u16, rps: u32, args: &[&str]) -> Value {
    let (rps, port_base) = (rps.to_string(), port_base.to_string());
    let mut all = vec![
        "--duration",
        "12s",
        "--rps",
        &rps,
        "--port-base",
        &port_base,
    ];
    all.extend_from_slice(args);
    monitoring::demo_report(name, &all, &[])
}

#[test]
fn a_short_demo_run_reports_a_stitched_checkout() {
    let doc = run_demo("report", 7600, 8, &[]);

    let requests = &doc["requests"];
    let sent = requests["sent"].as_u64().expect("sent");
    let ok = requests["ok"].as_u64().expect("ok");
    assert!(sent >= 50, "{requests}");
    assert!(
        ok as f64 >= 0.85 * sent as f64,
        "requests mostly succeed: {requests}"
    );

    let flows = doc["flows"].as_array().expect("flows");
    let checkout = flows
        .iter()
        .find(|b| b["flow"] == "checkout" && b["payment_method"].is_null())
        .expect("a checkout breakdown");
    let stages: Vec<&str> = checkout["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["stage"].as_str().expect("stage name"))
        .collect();
    for stage in CHECKOUT_STAGES {
        assert!(stages.contains(&stage), "{stage} missing from {stages:?}");
    }
    // The order service calls inventory's phases over gRPC. Had the call
    // lost the trace context, each gRPC server span would root a trace of
    // its own, a stage named by service and RPC method
    // (`inventory shop.v1.TccParticipant/Try`); carried, the phases'
    // stages sit inside the checkout's trace.
    assert!(
        !stages.iter().any(|s| s.contains("TccParticipant")),
        "a gRPC hop lost its trace context: {stages:?}"
    );
    let share: f64 = checkout["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["critical_path"]["share"].as_f64().expect("share"))
        .sum();
    assert!((share - 1.0).abs() < 0.01, "shares sum to {share}");
    // The callback comes 150-350 ms (median) after the channel answered:
    // end to end includes it.
    let p50 = checkout["end_to_end"]["p50"].as_f64().expect("p50");
    assert!(
        p50 > 0.15,
        "end to end p50 {p50}s should include the callback delay"
    );
    for method in ["alipay", "wechat_pay", "card"] {
        assert!(
            flows
                .iter()
                .any(|b| b["flow"] == "checkout" && b["payment_method"] == method),
            "no breakdown for {method}"
        );
    }
    for service in [
        "gateway",
        "order",
        "inventory",
        "payment",
        "points",
        "coupon",
        "alipay",
        "wechat_pay",
        "card",
    ] {
        assert!(
            doc["endpoints"]["metrics"][service].is_string(),
            "no /metrics URL for {service}"
        );
    }
    let anomalies = doc["anomalies"].as_object().expect("anomalies");
    assert_eq!(anomalies.len(), 7);
    assert!(
        anomalies.values().all(|v| v == 0),
        "no faults injected, no TCC anomalies: {anomalies:?}"
    );
    // The aggregator agrees across services: nothing but the duplicates
    // that at-least-once delivery legitimately causes.
    let global = doc["tcc"]["anomalies"].as_object().expect("tcc anomalies");
    assert_eq!(global.len(), 10, "{global:?}");
    for (kind, count) in global {
        if !kind.starts_with("duplicate_") {
            assert_eq!(
                count, 0,
                "{kind} without a fault: {global:?}; the most recent: {:#}",
                doc["tcc"]["recent"]
            );
        }
    }
    assert_eq!(doc["tcc"]["unfinished"], 0);
}

#[test]
fn tcc_faults_produce_their_anomalies() {
    let doc = run_demo(
        "tcc",
        7800,
        10,
        &[
            "--chaos",
            "empty-rollback,cancel-after-confirm,confirm-network-failure,callback-lost",
            "--chaos-channel",
            "card",
        ],
    );
    // The counts below are read once the shop finished what it started:
    // a late Cancel sent after they were read would be in the spans only.
    assert_eq!(
        doc["settled"]["idle"], true,
        "the shop was still busy when the counts were read: {}",
        doc["settled"]
    );
    let a = &doc["anomalies"];
    for kind in [
        "empty_rollback",
        "hanging_try",
        "duplicate_cancel",
        "cancel_after_confirm",
        "duplicate_confirm",
    ] {
        assert!(a[kind].as_u64().unwrap_or(0) > 0, "{kind} expected: {a}");
    }
    // A hanging Try needs an empty rollback before it.
    assert!(
        a["hanging_try"].as_u64() <= a["empty_rollback"].as_u64(),
        "{a}"
    );
    for kind in ["confirm_after_cancel", "confirm_without_try"] {
        assert_eq!(a[kind], 0, "{kind} not injected: {a}");
    }

    // The aggregator, from the spans of every service, finds the same
    // anomalies by timestamps, and what no fence can see: card's callbacks
    // never come, so its orders' branches stay tried past the timeout.
    let g = &doc["tcc"]["anomalies"];
    for kind in ["empty_rollback", "hanging_try", "cancel_after_confirm"] {
        assert_eq!(g[kind], a[kind], "{kind}: aggregator {g} vs fences {a}");
    }
    for kind in ["duplicate_confirm", "duplicate_cancel", "frozen"] {
        assert!(g[kind].as_u64().unwrap_or(0) > 0, "{kind} expected: {g}");
    }
    assert!(
        doc["tcc"]["unfinished"].as_u64().unwrap_or(0) > 0,
        "{}",
        doc["tcc"]
    );
    for kind in [
        "confirm_after_cancel",
        "confirm_without_try",
        "decision_violated",
        "malformed",
    ] {
        assert_eq!(g[kind], 0, "{kind} not injected: {g}");
    }
    // The fences caught every fault the chaos injected; every participant
    // runs one, so the shadow report has nothing to show.
    let injected = &doc["injected"];
    for kind in ["empty_rollback", "cancel_after_confirm"] {
        assert_eq!(
            a[kind], injected[kind],
            "{kind}: fences {a} vs injected {injected}"
        );
    }
    assert_eq!(
        doc["tcc"]["shadow"],
        serde_json::json!([]),
        "{}",
        doc["tcc"]
    );
}

/// Inventory runs without the fence: the faults go through, and the
/// aggregator's shadow report counts, for inventory alone, what the fence
/// would have prevented: each injected early Cancel an empty rollback and
/// the Try after it a hanging Try; each late Cancel a cancel after confirm
/// (less the few that hit an order already rolled back empty).
#[test]
fn a_participant_without_the_fence_shows_what_the_fence_would_have_prevented() {
    let doc = run_demo(
        "shadow",
        7200,
        10,
        &[
            "--without-fence",
            "inventory",
            "--chaos",
            "empty-rollback,cancel-after-confirm",
        ],
    );
    assert_eq!(
        doc["settled"]["idle"], true,
        "the shop was still busy when the counts were read: {}",
        doc["settled"]
    );
    let injected = &doc["injected"];
    let count = |name: &str| injected[name].as_u64().unwrap_or(0);
    assert!(
        count("empty_rollback") > 0 && count("cancel_after_confirm") > 0,
        "{injected}"
    );
    let mut shadow = std::collections::BTreeMap::new();
    for c in doc["tcc"]["shadow"].as_array().expect("shadow counts") {
        assert_eq!(
            c["resource"], "inventory",
            "only inventory runs without the fence: {c}"
        );
        shadow.insert(
            c["kind"].as_str().expect("a kind").to_owned(),
            c["count"].as_u64().expect("a count"),
        );
    }
    let seen = |kind: &str| shadow.get(kind).copied().unwrap_or(0);
    assert_eq!(
        seen("empty_rollback"),
        count("empty_rollback"),
        "{shadow:?}"
    );
    assert_eq!(seen("hanging_try"), count("empty_rollback"), "{shadow:?}");
    let late = seen("cancel_after_confirm");
    assert!(
        late <= count("cancel_after_confirm")
            && late + seen("confirm_after_cancel") >= count("cancel_after_confirm"),
        "late cancels {late} of {} injected: {shadow:?}",
        count("cancel_after_confirm")
    );
    // Inventory's own fence is off: it counted nothing.
    assert_eq!(
        doc["anomalies"]["empty_rollback"], 0,
        "{}",
        doc["anomalies"]
    );
}

fn stage_cp(doc: &Value, method: &str, stage: &str) -> f64 {
    doc["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .find(|b| b["flow"] == "checkout" && b["payment_method"] == method)
        .and_then(|b| {
            b["stages"]
                .as_array()?
                .iter()
                .find(|s| s["stage"] == stage)
                .and_then(|s| s["critical_path"]["mean"].as_f64())
        })
        .unwrap_or_else(|| panic!("no {stage} for {method}"))
}

#[test]
fn channel_slow_slows_only_that_channels_requests() {
    let doc = run_demo(
        "slow",
        7700,
        8,
        &["--chaos", "channel-slow", "--chaos-channel", "wechat_pay"],
    );
    let slow = stage_cp(&doc, "wechat_pay", "channel.request");
    let alipay = stage_cp(&doc, "alipay", "channel.request");
    // wechat_pay's channel answers in ~45 ms normally (alipay ~60 ms): twentyfold now.
    assert!(
        slow > 4.0 * alipay,
        "wechat_pay {slow}s vs alipay {alipay}s"
    );
    assert!(alipay < 0.2, "alipay unaffected: {alipay}s");
}

/// The demo's services alone (`--services-only`), driven from here: with the
/// card channel down, `channel.request` fails for card and only for card.
#[test]
fn channel_down_fails_only_that_channels_requests() {
    use std::time::{Duration, Instant};

    let demo = paytrace_testkit::Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_paytrace-demo"))
            .args([
                "--services-only",
                "--duration",
                "60s",
                "--port-base",
                "7750",
            ])
            .args(["--chaos", "channel-down", "--chaos-channel", "card"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
        "cargo build -p paytrace-demo",
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // All nine services answer before the first checkout: on a busy
        // machine the gateway can be up while order or inventory still
        // starts, and every checkout would fail.
        for port in 7750..7759 {
            while !client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                assert!(Instant::now() < deadline, "port {port} never came up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut ok = std::collections::HashMap::new();
        for method in ["alipay", "wechat_pay", "card"] {
            for _ in 0..10 {
                let r = client
                    .post("http://127.0.0.1:7750/checkout")
                    .json(&serde_json::json!({ "payment_method": method }))
                    .send()
                    .await
                    .expect("the gateway answers");
                *ok.entry(method).or_insert(0) += u32::from(r.status().is_success());
            }
        }
        let metrics = client
            .get("http://127.0.0.1:7753/metrics")
            .send()
            .await
            .expect("payment /metrics")
            .text()
            .await
            .expect("text");
        (ok, metrics)
    });
    // Ctrl-C: the demo stops its services and waits for them.
    rt.block_on(demo.stop("INT"));
    let (ok, metrics) = result;
    assert_eq!(ok["card"], 0, "card checkouts fail: {ok:?}");
    assert!(
        ok["alipay"] >= 7 && ok["wechat_pay"] >= 7,
        "the other channels work: {ok:?}"
    );
    let count = |method: &str, outcome: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("paytrace_stage_duration_seconds_count{")
                    && l.contains("stage=\"channel.request\"")
                    && l.contains(&format!("payment_method=\"{method}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("card", "error"), 10.0, "{metrics}");
    assert!(count("alipay", "error") <= 3.0);
    assert!(count("alipay", "ok") >= 7.0);
}

/// Every flag of the demo can be set from a `PAYTRACE_DEMO_…` variable,
/// and `--help` names it and says how sampling is passed to the services.
#[test]
fn every_flag_names_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_paytrace-demo"))
        .arg("--help")
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    let (missing, seen) = paytrace_testkit::options_without_env(&help, "PAYTRACE_DEMO_");
    assert!(seen >= 8, "{help}");
    assert!(missing.is_empty(), "no variable for {missing:?}");
    assert!(
        help.contains("OTEL_TRACES_SAMPLER=parentbased_traceidratio"),
        "{help}"
    );
}

/// A checkout whose payment notification crosses a real broker: written to
/// the payment's outbox with its Confirm, published by the relay, consumed
/// by the order service in another process (stage `order.paid`). The
/// aggregator stitches the consumer's trace into the flow through the
/// message's link and baggage, and reports the wait as `async:order.paid`.
fn assert_checkout_crosses_the_broker(doc: &Value) {
    let requests = &doc["requests"];
    let (sent, ok) = (
        requests["sent"].as_u64().expect("sent"),
        requests["ok"].as_u64().expect("ok"),
    );
    assert!(sent >= 40 && ok as f64 >= 0.85 * sent as f64, "{requests}");
    let checkout = doc["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .find(|b| b["flow"] == "checkout" && b["payment_method"].is_null())
        .expect("a checkout breakdown");
    let stages: Vec<&str> = checkout["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["stage"].as_str().expect("stage name"))
        .collect();
    for stage in [
        "payment.confirm",
        "async:order.paid",
        "order.paid",
        "order.confirm",
        "inventory.confirm",
        "coupon.confirm",
        "points.confirm",
    ] {
        assert!(stages.contains(&stage), "{stage} missing from {stages:?}");
    }
    // Stitched, not split: no consumer trace stands alone as a stage named
    // by its service and span.
    assert!(
        !stages
            .iter()
            .any(|s| s.contains("process payment.notifications")),
        "the consumer's trace was not stitched into the flow: {stages:?}"
    );
    let share: f64 = checkout["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["critical_path"]["share"].as_f64().expect("share"))
        .sum();
    assert!((share - 1.0).abs() < 0.01, "shares sum to {share}");
    assert_eq!(doc["tcc"]["unfinished"], 0, "{}", doc["tcc"]);
}

#[test]
fn a_checkout_over_redis_streams_is_one_flow_with_its_queue_wait() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let redis = rt.block_on(paytrace_testkit::RedisServer::start());
    let doc = run_demo("broker-redis", 8000, 6, &["--broker", redis.url()]);
    assert_checkout_crosses_the_broker(&doc);
}

#[test]
fn a_checkout_over_rabbitmq_is_one_flow_with_its_queue_wait() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let rabbit = rt.block_on(paytrace_testkit::RabbitMqServer::start());
    let broker = format!("{}#{}", rabbit.amqp_url(), rabbit.management_url());
    let doc = run_demo("broker-amqp", 8800, 6, &["--broker", &broker]);
    assert_checkout_crosses_the_broker(&doc);
}
