//! Real tonic servers and channels on loopback with the paytrace gRPC
//! layers on both sides (the standard `grpc.health.v1.Health` service, and
//! a slow one): one trace across the call with the caller's baggage on the
//! server span, the RPC histograms labelled by method and status code, a
//! stream measured to its end, unknown methods folded into `_OTHER`, and
//! deadlines, cancellations and unreachable servers named by their codes.

mod common;

use std::time::{Duration, Instant};

use common::grpc::{channel, labels, serve};
use common::{attribute, capture, value};
use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId};
use paytrace::{Flow, ServiceTelemetry};
use paytrace_semconv::{attr, label, metric};
use tokio_stream::StreamExt;
use tonic_health::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const CHECK: &str = "grpc.health.v1.Health/Check";

/// Polls until the family `name` has a series with `labels`, or panics
/// after 10 s; its value (a histogram's count).
async fn eventually(name: &str, labels: &[(&str, &str)]) -> f64 {
    // A series exists at 0 for a moment before its first observation.
    until(name, labels, |_| {
        value(&capture().metrics, name, labels).filter(|v| *v > 0.0)
    })
    .await
}

/// The sum of the histogram `name`'s series with `labels`, once it has one.
async fn eventually_sum(name: &str, labels: &[(&str, &str)]) -> f64 {
    until(name, labels, |labels| {
        capture()
            .metrics
            .registry()
            .gather()
            .into_iter()
            .find(|f| f.name() == name)?
            .get_metric()
            .iter()
            .find(|m| {
                m.get_label().len() == labels.len()
                    && labels.iter().all(|(k, v)| {
                        m.get_label()
                            .iter()
                            .any(|p| p.name() == *k && p.value() == *v)
                    })
            })
            // Observed at least once: created, it is 0 for a moment.
            .filter(|m| m.get_histogram().get_sample_count() > 0)
            .map(|m| m.get_histogram().get_sample_sum())
    })
    .await
}

async fn until(
    name: &str,
    labels: &[(&str, &str)],
    read: impl Fn(&[(&str, &str)]) -> Option<f64>,
) -> f64 {
    paytrace_testkit::eventually(
        &format!("{name} {labels:?} recorded"),
        Duration::from_secs(10),
        || read(labels),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_continues_the_callers_trace_with_its_baggage_and_is_measured() {
    let metrics = &capture().metrics;
    let inventory = ServiceTelemetry::with_metrics("grpc-inventory", "1.0.0", metrics);
    let order = ServiceTelemetry::with_metrics("grpc-order", "1.0.0", metrics);
    let addr = serve(&inventory).await;
    let mut client = HealthClient::new(channel(&order, addr));

    let root = tracing::info_span!("checkout");
    let trace_id: TraceId = root.context().span().span_context().trace_id();
    let answer = async {
        Flow::new("checkout")
            .id("ord_77")
            .payment_method("alipay")
            .scope(client.check(HealthCheckRequest {
                service: "shop.v1.Inventory".into(),
            }))
            .await
    }
    .instrument(root)
    .await
    .expect("the server answers");
    assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);

    let spans = capture().spans_of_trace(trace_id, |s| {
        s.iter().filter(|s| s.name == CHECK).count() == 2
    });
    let of_kind = |kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.name == CHECK && s.span_kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} span: {spans:#?}"))
    };
    let (client_span, server_span) = (of_kind(SpanKind::Client), of_kind(SpanKind::Server));
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id(),
        "the server continues the client's span"
    );
    for span in [client_span, server_span] {
        assert_eq!(
            attribute(span, attr::RPC_SYSTEM_NAME).as_deref(),
            Some("grpc")
        );
        assert_eq!(attribute(span, attr::RPC_METHOD).as_deref(), Some(CHECK));
        assert_eq!(
            attribute(span, attr::RPC_RESPONSE_STATUS_CODE).as_deref(),
            Some("OK")
        );
        assert_eq!(attribute(span, attr::FLOW_ID).as_deref(), Some("ord_77"));
        assert_eq!(attribute(span, attr::ERROR_TYPE), None);
    }
    assert_eq!(
        attribute(server_span, attr::FLOW).as_deref(),
        Some("checkout")
    );
    assert_eq!(
        attribute(server_span, attr::PAYMENT_METHOD).as_deref(),
        Some("alipay")
    );
    assert_eq!(
        attribute(client_span, attr::SERVER_ADDRESS).as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        attribute(client_span, attr::SERVER_PORT),
        Some(addr.port().to_string())
    );

    let server = labels("grpc-inventory", CHECK, "OK");
    assert_eq!(
        eventually(metric::RPC_SERVER_CALL_DURATION_SECONDS, &server).await,
        1.0
    );
    let mut client_labels = labels("grpc-order", CHECK, "OK");
    client_labels.push((label::SERVER_ADDRESS, "127.0.0.1"));
    assert_eq!(
        eventually(metric::RPC_CLIENT_CALL_DURATION_SECONDS, &client_labels).await,
        1.0
    );
    assert_eq!(
        value(
            metrics,
            metric::RPC_SERVER_ACTIVE_CALLS,
            &[
                (label::SERVICE_NAME, "grpc-inventory"),
                (label::RPC_SYSTEM_NAME, "grpc"),
                (label::RPC_METHOD, CHECK),
            ]
        ),
        Some(0.0),
        "the call is no longer active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_are_named_and_unknown_methods_fold_into_other() {
    let metrics = &capture().metrics;
    let inventory = ServiceTelemetry::with_metrics("grpc-inventory-2", "1.0.0", metrics);
    let order = ServiceTelemetry::with_metrics("grpc-order-2", "1.0.0", metrics);
    let addr = serve(&inventory).await;
    let traced = channel(&order, addr);

    // A service the health server does not know: NOT_FOUND, the caller's
    // mistake, so no error on the server span; an error on the client's.
    let root = tracing::info_span!("lookup");
    let trace_id = root.context().span().span_context().trace_id();
    let status = HealthClient::new(traced.clone())
        .check(HealthCheckRequest {
            service: "shop.v1.Unknown".into(),
        })
        .instrument(root)
        .await
        .expect_err("NOT_FOUND");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let spans = capture().spans_of_trace(trace_id, |s| s.len() >= 2);
    for span in spans.iter().filter(|s| s.name == CHECK) {
        assert_eq!(
            attribute(span, attr::RPC_RESPONSE_STATUS_CODE).as_deref(),
            Some("NOT_FOUND")
        );
        let expected = (span.span_kind == SpanKind::Client).then(|| "NOT_FOUND".to_owned());
        assert_eq!(
            attribute(span, attr::ERROR_TYPE),
            expected,
            "{:?}",
            span.span_kind
        );
    }
    let not_found = labels("grpc-inventory-2", CHECK, "NOT_FOUND");
    assert_eq!(
        eventually(metric::RPC_SERVER_CALL_DURATION_SECONDS, &not_found).await,
        1.0
    );

    // Made-up methods: UNIMPLEMENTED, all under `_OTHER`.
    let mut grpc = tonic::client::Grpc::new(traced);
    for name in ["Nope", "Nada"] {
        grpc.ready().await.expect("ready");
        let path = format!("/grpc.health.v1.Health/{name}")
            .parse()
            .expect("a path");
        let status = grpc
            .unary::<HealthCheckRequest, HealthCheckResponse, _>(
                tonic::Request::new(HealthCheckRequest::default()),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("UNIMPLEMENTED");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
    let other = labels("grpc-inventory-2", "_OTHER", "UNIMPLEMENTED");
    assert_eq!(
        eventually(metric::RPC_SERVER_CALL_DURATION_SECONDS, &other).await,
        2.0
    );
    let methods: Vec<String> = common::series(metrics, metric::RPC_SERVER_CALL_DURATION_SECONDS)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k == label::RPC_METHOD)
        .map(|(_, v)| v)
        .collect();
    assert!(
        !methods
            .iter()
            .any(|m| m.ends_with("Nope") || m.ends_with("Nada")),
        "{methods:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_counts_to_its_end_and_a_dropped_one_is_cancelled() {
    let metrics = &capture().metrics;
    let inventory = ServiceTelemetry::with_metrics("grpc-inventory-3", "1.0.0", metrics);
    let order = ServiceTelemetry::with_metrics("grpc-order-3", "1.0.0", metrics);
    let addr = serve(&inventory).await;
    let mut client = HealthClient::new(channel(&order, addr));
    let watch = "grpc.health.v1.Health/Watch";

    let started = Instant::now();
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "shop.v1.Inventory".into(),
        })
        .await
        .expect("the stream opens")
        .into_inner();
    let first = stream.next().await.expect("a status").expect("no error");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // The stream stays open a while (no status comes): the call lasts.
    let open = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(open.is_err(), "no second status: {open:?}");
    drop(stream);
    let lasted = started.elapsed().as_secs_f64();

    let cancelled = labels("grpc-inventory-3", watch, "CANCELLED");
    let server_seconds = eventually_sum(metric::RPC_SERVER_CALL_DURATION_SECONDS, &cancelled).await;
    assert!(
        (0.3..=lasted + 0.5).contains(&server_seconds),
        "the server measured the whole stream: {server_seconds} s of {lasted} s"
    );
    let mut client_cancelled = labels("grpc-order-3", watch, "CANCELLED");
    client_cancelled.push((label::SERVER_ADDRESS, "127.0.0.1"));
    let client_seconds =
        eventually_sum(metric::RPC_CLIENT_CALL_DURATION_SECONDS, &client_cancelled).await;
    assert!(client_seconds >= 0.3, "{client_seconds}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_unreachable_servers_are_named_by_their_codes() {
    let metrics = &capture().metrics;
    let inventory = ServiceTelemetry::with_metrics("grpc-inventory-4", "1.0.0", metrics);
    let order = ServiceTelemetry::with_metrics("grpc-order-4", "1.0.0", metrics);
    let addr = serve(&inventory).await;

    // The caller gives the slow service 200 ms.
    let mut grpc = tonic::client::Grpc::new(channel(&order, addr));
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let failed = grpc
        .unary::<HealthCheckRequest, HealthCheckResponse, _>(
            request,
            "/shop.v1.Slow/Wait".parse().expect("a path"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("the deadline passes");
    assert!(started.elapsed() < Duration::from_secs(4), "{failed:?}");
    let wait = "shop.v1.Slow/Wait";
    let mut client_labels = labels("grpc-order-4", wait, "DEADLINE_EXCEEDED");
    client_labels.push((label::SERVER_ADDRESS, "127.0.0.1"));
    assert_eq!(
        eventually(metric::RPC_CLIENT_CALL_DURATION_SECONDS, &client_labels).await,
        1.0
    );
    // The server learnt the deadline when the request arrived, a moment
    // after the client set it: its own timer (DEADLINE_EXCEEDED) and the
    // client's cancellation at the client's deadline (CANCELLED, its
    // deadline not yet passed) race, and the machine's load picks the
    // winner. Either way the call is recorded once.
    let server = |status| labels("grpc-inventory-4", wait, status);
    let ended = paytrace_testkit::eventually(
        "the server records the call",
        Duration::from_secs(10),
        || {
            let metrics = &capture().metrics;
            let count = |status| {
                value(
                    metrics,
                    metric::RPC_SERVER_CALL_DURATION_SECONDS,
                    &server(status),
                )
                .unwrap_or(0.0)
            };
            let ended = count("DEADLINE_EXCEEDED") + count("CANCELLED");
            (ended > 0.0).then_some(ended)
        },
    )
    .await;
    assert_eq!(ended, 1.0);

    // Nobody listens: UNAVAILABLE.
    let closed: std::net::SocketAddr = format!("127.0.0.1:{}", paytrace_testkit::free_port())
        .parse()
        .expect("an address");
    let status = HealthClient::new(channel(&order, closed))
        .check(HealthCheckRequest::default())
        .await
        .expect_err("nobody answers");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let mut unreachable = labels("grpc-order-4", CHECK, "UNAVAILABLE");
    unreachable.push((label::SERVER_ADDRESS, "127.0.0.1"));
    assert_eq!(
        eventually(metric::RPC_CLIENT_CALL_DURATION_SECONDS, &unreachable).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_in_a_handler_takes_the_flow_labels_from_the_callers_baggage() {
    let metrics = &capture().metrics;
    let inventory = ServiceTelemetry::with_metrics("grpc-inventory-5", "1.0.0", metrics);
    let order = ServiceTelemetry::with_metrics("grpc-order-5", "1.0.0", metrics);
    let addr = serve(&inventory).await;
    let mut grpc = tonic::client::Grpc::new(channel(&order, addr));
    grpc.ready().await.expect("ready");
    let status = Flow::new("checkout")
        .id("ord_5")
        .payment_method("wechat_pay")
        .payment_channel("wxpay")
        .scope(grpc.unary::<HealthCheckRequest, HealthCheckResponse, _>(
            tonic::Request::new(HealthCheckRequest::default()),
            "/shop.v1.Staged/Try".parse().expect("a path"),
            tonic_prost::ProstCodec::default(),
        ))
        .await
        .expect_err("the phase is refused");
    assert_eq!(status.code(), tonic::Code::Aborted);
    let stage = [
        (label::SERVICE_NAME, "grpc-inventory-5"),
        (label::FLOW, "checkout"),
        (label::STAGE, "inventory.try"),
        (label::PAYMENT_METHOD, "wechat_pay"),
        (label::PAYMENT_CHANNEL, "wxpay"),
        (label::OUTCOME, "ok"),
    ];
    assert_eq!(
        eventually(metric::STAGE_DURATION_SECONDS, &stage).await,
        1.0
    );
    // ABORTED is the method's answer, not the server's failure.
    let aborted = labels("grpc-inventory-5", "shop.v1.Staged/Try", "ABORTED");
    assert_eq!(
        eventually(metric::RPC_SERVER_CALL_DURATION_SECONDS, &aborted).await,
        1.0
    );
}
