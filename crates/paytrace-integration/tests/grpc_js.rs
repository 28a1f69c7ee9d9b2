//! A gRPC call from the OpenTelemetry JS SDK into a tonic server behind
//! paytrace's gRPC layer: the caller is the SDK's gRPC instrumentation on
//! @grpc/grpc-js (`conformance/js/grpc_client.js`), not paytrace, and the
//! server span continues its trace and reads its baggage.
//!
//! Needs Node.js (`apt-get install nodejs npm`) and the pinned JS SDK
//! (`npm ci --prefix conformance/js`; scripts/test.sh does both).

#[path = "../../paytrace/tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::grpc::{labels, serve};
use common::{attribute, capture, value};
use opentelemetry::trace::{SpanKind, TraceId};
use paytrace::ServiceTelemetry;
use paytrace_semconv::{attr, metric};
use paytrace_testkit::Process;

const CHECK: &str = "grpc.health.v1.Health/Check";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_the_js_sdk_continues_its_trace() {
    paytrace_testkit::require("node", "apt-get install nodejs npm");
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/js");
    assert!(
        js.join("node_modules/@grpc/grpc-js").is_dir(),
        "the JS SDK is not installed: run `npm ci --prefix conformance/js` (scripts/test.sh does)"
    );
    let metrics = &capture().metrics;
    let inventory = ServiceTelemetry::with_metrics("grpc-inventory-js", "1.0.0", metrics);
    let addr = serve(&inventory).await;
    let out = Process::spawn(
        Command::new("node")
            .arg(js.join("grpc_client.js"))
            .args([addr.to_string(), "shop.v1.Inventory".to_owned()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "apt-get install nodejs npm",
    )
    .output()
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(answer["code"], 0, "{answer}");
    let trace_id =
        TraceId::from_hex(answer["traceId"].as_str().expect("a trace id")).expect("a hex trace id");

    let spans = capture().spans_of_trace(trace_id, |s| s.iter().any(|s| s.name == CHECK));
    let server = spans
        .iter()
        .find(|s| s.name == CHECK)
        .expect("the server span");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert!(
        server.parent_span_is_remote,
        "the parent is the JS client's span"
    );
    assert_ne!(server.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    assert_eq!(attribute(server, attr::FLOW).as_deref(), Some("checkout"));
    assert_eq!(
        attribute(server, attr::FLOW_ID).as_deref(),
        Some("ord_js_grpc")
    );
    assert_eq!(
        attribute(server, attr::PAYMENT_METHOD).as_deref(),
        Some("card")
    );
    assert_eq!(
        attribute(server, attr::RPC_RESPONSE_STATUS_CODE).as_deref(),
        Some("OK")
    );
    let ok = labels("grpc-inventory-js", CHECK, "OK");
    let calls =
        paytrace_testkit::eventually("the call is measured", Duration::from_secs(10), || {
            value(metrics, metric::RPC_SERVER_CALL_DURATION_SECONDS, &ok)
        })
        .await;
    assert_eq!(calls, 1.0);
}
