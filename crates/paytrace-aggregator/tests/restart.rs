//! Restarts that lose nothing: `serve --state-dir` keeps what a restart
//! would lose. Spans still assembling at `SIGTERM` are analysed by the next
//! process on the same directory, a TCC Try among them is reported frozen
//! there, and a snapshot that cannot be read is set aside with a message
//! while the aggregator starts anyway.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use paytrace_testkit::Process;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

struct Serve {
    child: Process,
    api: u16,
    http: u16,
}

/// `paytrace-aggregator serve --state-dir DIR ARGS…` on free ports, once ready.
async fn serve(dir: &Path, args: &[&str]) -> Serve {
    let (child, [api, _, http]) = paytrace_testkit::serve_aggregator(
        env!("CARGO_BIN_EXE_paytrace-aggregator"),
        |cmd, [api, grpc, http]| {
            cmd.args(["--listen", &format!("127.0.0.1:{api}")])
                .args(["--otlp-grpc-listen", &format!("127.0.0.1:{grpc}")])
                .args(["--otlp-http-listen", &format!("127.0.0.1:{http}")])
                .arg("--state-dir")
                .arg(dir)
                .args(args)
                .stdout(Stdio::null());
        },
    )
    .await;
    Serve { child, api, http }
}

impl Serve {
    async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("http://127.0.0.1:{}{path}", self.api))
            .await
            .expect("the API answers")
            .json()
            .await
            .expect("JSON")
    }

    async fn metric(&self, series: &str) -> f64 {
        paytrace_testkit::scrape_value(&format!("http://127.0.0.1:{}/metrics", self.api), series)
            .await
    }

    /// Polls `path` until `done` holds of its answer.
    async fn wait_for(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let doc = self.get(path).await;
            if done(&doc) {
                return doc;
            }
            assert!(Instant::now() < deadline, "{path} never got there: {doc}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `SIGTERM`, then its exit status and stderr.
    async fn terminate(self) -> (std::process::ExitStatus, String) {
        let out = self.child.stop("TERM").await;
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Sends `body` to its OTLP/HTTP receiver.
    async fn send(&self, body: &Value) {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.http));
        paytrace_testkit::post_otlp_json(address, body).await;
    }
}

fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paytrace-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A checkout (its request trace and the channel's callback trace, tied by
/// the flow id) and a Try of the points branch whose transaction is never
/// decided, as OTLP/JSON.
fn checkout_and_a_try() -> Value {
    let t0 = now_ns() - 3_000_000_000;
    let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let span = |trace: &str,
                id: &str,
                parent: Option<&str>,
                name: &str,
                from_ms: u64,
                to_ms: u64,
                attrs: Vec<Value>| {
        let mut s = json!({
            "traceId": trace.repeat(16),
            "spanId": id.repeat(8),
            "name": name,
            "kind": 2,
            "startTimeUnixNano": (t0 + from_ms * 1_000_000).to_string(),
            "endTimeUnixNano": (t0 + to_ms * 1_000_000).to_string(),
            "attributes": attrs,
        });
        if let Some(p) = parent {
            s["parentSpanId"] = json!(p.repeat(8));
        }
        s
    };
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", "shop")]},
        "scopeSpans": [{"spans": [
            span("a1", "01", None, "POST /checkout", 0, 100, vec![
                attr("paytrace.flow", "checkout"),
                attr("paytrace.flow_id", "ord_restart"),
                attr("payment.method", "alipay"),
            ]),
            span("a1", "02", Some("01"), "channel.request", 10, 90, vec![
                attr("paytrace.stage", "channel.request"),
            ]),
            span("b2", "03", None, "POST /callbacks/alipay", 400, 450, vec![
                attr("paytrace.stage", "channel.callback"),
                attr("paytrace.flow_id", "ord_restart"),
            ]),
            span("c3", "04", None, "POST /points/try", 20, 40, vec![
                attr("tcc.xid", "ord_restart"),
                attr("tcc.resource", "points"),
                attr("tcc.phase", "try"),
            ]),
        ]}]
    }]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_assembling_at_sigterm_are_analysed_by_the_next_process() {
    let dir = state_dir("assembling");
    // Nothing goes idle in the first process: every span is still
    // assembling when it is stopped.
    let first = serve(&dir, &["--trace-idle", "1h", "--flow-idle", "1h"]).await;
    first.send(&checkout_and_a_try()).await;
    let received = first
        .metric(r#"paytrace_aggregator_spans_received_total{protocol="http_json"}"#)
        .await;
    assert_eq!(received, 4.0);
    let breakdown = first.get("/api/v1/breakdown?flow=checkout&window=5m").await;
    assert_eq!(breakdown["traces"], 0, "nothing analysed yet: {breakdown}");
    let (status, log) = first.terminate().await;
    assert!(status.success(), "{status:?}: {log}");
    assert!(
        dir.join("paytrace-aggregator.snapshot.json.gz").exists(),
        "{log}"
    );

    let second = serve(
        &dir,
        &[
            "--trace-idle",
            "1s",
            "--flow-idle",
            "1s",
            "--tcc-timeout",
            "2s",
        ],
    )
    .await;
    let restored = second
        .metric(r#"paytrace_aggregator_state_snapshots_total{outcome="restored"}"#)
        .await;
    assert_eq!(restored, 1.0);
    let breakdown = second
        .wait_for("/api/v1/breakdown?flow=checkout&window=5m", |b| {
            b["traces"] == 1
        })
        .await;
    let stages = paytrace_testkit::stage_names(&breakdown);
    assert!(
        stages.contains(&"async:channel.callback") && stages.contains(&"channel.request"),
        "the request and its callback are one flow across the restart: {stages:?}"
    );
    let anomalies = second
        .wait_for("/api/v1/tcc/anomalies", |d| {
            d["anomalies"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["kind"] == "frozen"))
        })
        .await;
    assert_eq!(
        anomalies["anomalies"][0]["resource"], "points",
        "{anomalies}"
    );
    let (status, log) = second.terminate().await;
    assert!(status.success(), "{status:?}: {log}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_snapshot_is_set_aside_and_the_aggregator_starts_empty() {
    let dir = state_dir("truncated");
    // A real snapshot, cut in half.
    let first = serve(&dir, &["--trace-idle", "1h"]).await;
    first.send(&checkout_and_a_try()).await;
    let (status, _) = first.terminate().await;
    assert!(status.success());
    let snapshot = dir.join("paytrace-aggregator.snapshot.json.gz");
    let bytes = std::fs::read(&snapshot).expect("a snapshot");
    std::fs::write(&snapshot, &bytes[..bytes.len() / 2]).expect("truncated");

    let second = serve(&dir, &[]).await;
    let set_aside = second
        .metric(r#"paytrace_aggregator_state_snapshots_total{outcome="set_aside"}"#)
        .await;
    assert_eq!(set_aside, 1.0);
    let (status, log) = second.terminate().await;
    assert!(status.success(), "{status:?}: {log}");
    assert!(
        log.contains("cannot be used") && log.contains("damaged") && log.contains("moved aside"),
        "{log}"
    );
    let kept: Vec<String> = std::fs::read_dir(&dir)
        .expect("the directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".set-aside-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read(dir.join(&kept[0])).expect("kept"),
        &bytes[..bytes.len() / 2],
        "the damaged file is kept as it was, for a post-mortem"
    );
    let _ = std::fs::remove_dir_all(dir);
}
