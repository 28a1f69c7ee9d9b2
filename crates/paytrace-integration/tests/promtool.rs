//! The `/metrics` output, with every middleware family populated, passes the
//! real `promtool check metrics` with no problems.
//!
//! promtool comes from Debian's `prometheus` package: `apt-get install prometheus`.

#[path = "../../paytrace/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use paytrace::{Metrics, ServiceTelemetry};
use paytrace_semconv::metric;

fn promtool() -> Command {
    let path = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => Command::new(path),
        _ => panic!(
            "promtool not found (looked for `{path}`): install it with \
             `apt-get install prometheus`, or set PROMTOOL to its path"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_passes_promtool_check_metrics() {
    let metrics = Metrics::new();
    let svc = ServiceTelemetry::with_metrics("order", "1.0.0", &metrics);
    svc.monitor_runtime(&tokio::runtime::Handle::current());
    let pool = svc.pool("order_db", 4);
    let (queue_tx, mut queue_rx) = paytrace::queue::<u8>(&svc, "callbacks", 8);

    let handler_svc = svc.clone();
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(move || {
                let svc = handler_svc.clone();
                let pool = pool.clone();
                async move {
                    let _conn = pool.acquire().await;
                    svc.stage("order.create")
                        .flow("checkout")
                        .run(async { Ok::<_, std::io::Error>("ok") })
                        .await
                        .unwrap_or("failed")
                }
            }),
        )
        .layer(svc.http_layer())
        .route(
            "/metrics",
            paytrace::metrics_route(metrics.registry().clone()),
        );
    let addr = common::serve(app).await;

    let http = svc.client(reqwest::Client::new());
    let response = http
        .get(&format!("http://{addr}/orders/1"))
        .send()
        .await
        .expect("served");
    assert!(response.status().is_success());
    // A gRPC call through both gRPC layers.
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc_addr = listener.local_addr().expect("an address");
    let server = tonic::transport::Server::builder()
        .layer(svc.grpc_layer())
        .add_service(health);
    tokio::spawn(
        server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .expect("a URI")
        .connect_lazy();
    let traced = tower::Layer::layer(&svc.grpc_client_layer(&grpc_addr.to_string()), channel);
    let checked = tonic_health::pb::health_client::HealthClient::new(traced)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the health server answers");
    drop(checked);
    queue_tx.send(1).expect("room in the queue");
    queue_tx.send(2).expect("room in the queue");
    assert_eq!(queue_rx.recv().await, Some(1));
    queue_rx.metrics().processed();
    svc.resource("order_db").error("timeout");
    let _ = svc
        .stage("notify.send")
        .run_with_deadline(
            Duration::from_millis(1),
            std::future::pending::<Result<(), ()>>(),
        )
        .await;

    let stock = svc.tcc(
        "inventory",
        std::sync::Arc::new(paytrace::tcc::MemoryFence::new(
            100,
            Duration::from_secs(60),
        )),
    );
    let branch = paytrace::tcc::BranchKey {
        xid: "ord_1".into(),
        branch_id: "inventory".into(),
    };
    let ok = || async { Ok::<_, std::io::Error>(()) };
    assert!(
        stock
            .run(paytrace::tcc::Phase::Try, &branch, ok)
            .await
            .is_ok()
    );
    let orphan = paytrace::tcc::BranchKey {
        xid: "ord_2".into(),
        branch_id: "inventory".into(),
    };
    assert!(
        stock
            .run(paytrace::tcc::Phase::Cancel, &orphan, ok)
            .await
            .is_ok()
    );
    stock.retried(paytrace::tcc::Phase::Confirm);

    let scraped = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text body");

    // Every family the middleware owns is there.
    for name in [
        metric::TCC_PHASE_TOTAL,
        metric::TCC_ANOMALIES_TOTAL,
        metric::TCC_BRANCHES_PENDING,
        metric::TCC_PENDING_OLDEST_SECONDS,
        metric::TCC_PHASE_RETRIES_TOTAL,
        metric::HTTP_SERVER_REQUEST_DURATION_SECONDS,
        metric::HTTP_SERVER_ACTIVE_REQUESTS,
        metric::HTTP_CLIENT_REQUEST_DURATION_SECONDS,
        metric::RPC_SERVER_CALL_DURATION_SECONDS,
        metric::RPC_SERVER_ACTIVE_CALLS,
        metric::RPC_CLIENT_CALL_DURATION_SECONDS,
        metric::STAGE_DURATION_SECONDS,
        metric::STAGE_ACTIVE,
        metric::RESOURCE_IN_USE,
        metric::RESOURCE_CAPACITY,
        metric::RESOURCE_WAIT_SECONDS,
        metric::RESOURCE_ERRORS_TOTAL,
        metric::QUEUE_DEPTH,
        metric::QUEUE_OLDEST_AGE_SECONDS,
        metric::QUEUE_MESSAGES_TOTAL,
        metric::RUNTIME_WORKERS,
        metric::RUNTIME_WORKER_BUSY_RATIO,
        metric::RUNTIME_GLOBAL_QUEUE_DEPTH,
        metric::RUNTIME_ALIVE_TASKS,
        metric::BUILD_INFO,
        metric::SPANS_DROPPED_TOTAL,
        metric::SPANS_EXPORTED_TOTAL,
        metric::PROCESS_CPU_SECONDS_TOTAL,
        metric::PROCESS_RESIDENT_MEMORY_BYTES,
        metric::PROCESS_OPEN_FDS,
        metric::PROCESS_MAX_FDS,
    ] {
        assert!(
            scraped.contains(&format!("# TYPE {name} ")),
            "{name} is missing from /metrics"
        );
    }
    assert!(scraped.contains(r#"paytrace_queue_depth{queue="callbacks",service_name="order"} 1"#));
    assert!(
        scraped.contains(
            r#"paytrace_tcc_branches_pending{resource="inventory",service_name="order"} 1"#
        )
    );
    assert!(scraped.contains(
        r#"paytrace_tcc_anomalies_total{kind="empty_rollback",resource="inventory",service_name="order"} 1"#
    ));

    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(scraped.as_bytes())
        .expect("promtool reads the exposition");
    let out = child.wait_with_output().expect("promtool finishes");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics found problems:\n{report}"
    );
}
