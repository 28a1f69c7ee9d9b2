//! The HTTP layer and stages, in process through `tower::ServiceExt::oneshot`:
//! labels, outcomes, unmatched routes, overflow, panics, deadlines, and the
//! active gauge returning to zero.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use common::value;
use paytrace::{LabelLimits, Metrics, Outcome, ServiceTelemetry, StageError};
use paytrace_semconv::{label, metric};
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt;

const DURATION: &str = metric::HTTP_SERVER_REQUEST_DURATION_SECONDS;
const ACTIVE: &str = metric::HTTP_SERVER_ACTIVE_REQUESTS;

fn service() -> (ServiceTelemetry, Metrics) {
    let metrics = Metrics::new();
    (
        ServiceTelemetry::with_metrics("order", "1.2.3", &metrics),
        metrics,
    )
}

fn request(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("a valid request")
}

/// Sends `req` through `app` and reads the whole response, as a server
/// does: the layer records a request when its response body ends.
async fn send(app: &Router, req: Request<Body>) -> StatusCode {
    let response = app.clone().oneshot(req).await.expect("infallible");
    let status = response.status();
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    status
}

fn server_labels<'a>(route: &'a str, status: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("service_name", "order"),
        ("http_request_method", "GET"),
        ("http_route", route),
        ("http_response_status_code", status),
    ]
}

#[tokio::test]
async fn labels_are_the_route_template_method_and_status() {
    let (svc, metrics) = service();
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "ok" }))
        .route("/orders", post(|| async { StatusCode::CREATED }))
        .layer(svc.http_layer());

    for id in ["1", "2", "3"] {
        let status = send(&app, request("GET", &format!("/orders/{id}"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    send(&app, request("POST", "/orders")).await;

    assert_eq!(
        value(&metrics, DURATION, &server_labels("/orders/{id}", "200")),
        Some(3.0),
        "three requests to one template are one series"
    );
    assert_eq!(
        value(
            &metrics,
            DURATION,
            &[
                ("service_name", "order"),
                ("http_request_method", "POST"),
                ("http_route", "/orders"),
                ("http_response_status_code", "201"),
            ]
        ),
        Some(1.0)
    );
    for labels in common::series(&metrics, DURATION) {
        let route = labels
            .iter()
            .find(|(k, _)| k == label::HTTP_ROUTE)
            .map(|(_, v)| v.as_str());
        assert!(
            matches!(route, Some("/orders/{id}" | "/orders")),
            "raw path leaked into a label: {labels:?}"
        );
    }
}

#[tokio::test]
async fn unmatched_paths_and_unknown_methods_do_not_mint_labels() {
    let (svc, metrics) = service();
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "ok" }))
        .layer(svc.http_layer());

    for path in ["/nope", "/users/alice", "/orders/1/extra"] {
        let response = app
            .clone()
            .oneshot(request("GET", path))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let response = app
        .clone()
        .oneshot(request("BREW", "/orders/1"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);

    assert_eq!(
        value(&metrics, DURATION, &server_labels("unmatched", "404")),
        Some(3.0)
    );
    assert_eq!(
        value(
            &metrics,
            DURATION,
            &[
                ("service_name", "order"),
                ("http_request_method", "_OTHER"),
                ("http_route", "/orders/{id}"),
                ("http_response_status_code", "405"),
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn routes_past_the_limit_fold_into_other_and_are_counted() {
    let metrics = Metrics::register(
        prometheus::Registry::new(),
        &LabelLimits::default().limit(label::HTTP_ROUTE, 2),
    )
    .expect("fresh registry");
    let svc = ServiceTelemetry::with_metrics("order", "1.2.3", &metrics);
    let mut app = Router::new();
    for i in 0..5 {
        app = app.route(&format!("/r{i}"), get(|| async { "ok" }));
    }
    let app = app.layer(svc.http_layer());
    for i in 0..5 {
        send(&app, request("GET", &format!("/r{i}"))).await;
    }
    // Again: routes admitted before the limit keep their own series.
    send(&app, request("GET", "/r0")).await;

    assert_eq!(
        value(&metrics, DURATION, &server_labels("/r0", "200")),
        Some(2.0)
    );
    assert_eq!(
        value(&metrics, DURATION, &server_labels("/r1", "200")),
        Some(1.0)
    );
    assert_eq!(
        value(&metrics, DURATION, &server_labels("/r2", "200")),
        None
    );
    assert_eq!(
        value(&metrics, DURATION, &server_labels("other", "200")),
        Some(3.0)
    );
    assert_eq!(
        value(
            &metrics,
            metric::SERIES_OVERFLOW_TOTAL,
            &[("service_name", "order"), ("label", "http_route")]
        ),
        Some(3.0)
    );
}

#[tokio::test]
async fn server_errors_and_panics_are_counted_as_500_and_release_the_gauge() {
    let (svc, metrics) = service();
    let app = Router::new()
        .route(
            "/fail",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("handler bug");
                }
                "unreachable"
            }),
        )
        .layer(svc.http_layer());

    let status = send(&app, request("GET", "/fail")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        value(&metrics, DURATION, &server_labels("/fail", "503")),
        Some(1.0)
    );

    // The layer records the panic, then lets it continue (as without the layer).
    let panicked = tokio::spawn(app.clone().oneshot(request("GET", "/panic"))).await;
    assert!(panicked.expect_err("the handler panics").is_panic());
    assert_eq!(
        value(&metrics, DURATION, &server_labels("/panic", "500")),
        Some(1.0)
    );
    assert_eq!(
        value(
            &metrics,
            ACTIVE,
            &[
                ("service_name", "order"),
                ("http_request_method", "GET"),
                ("http_route", "/panic")
            ]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn the_active_gauge_counts_requests_in_flight_and_returns_to_zero() {
    let (svc, metrics) = service();
    let entered = Arc::new(Notify::new());
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let handler_entered = entered.clone();
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let entered = handler_entered.clone();
                let release = release_rx.clone();
                async move {
                    entered.notify_one();
                    if let Some(rx) = release.lock().await.take() {
                        let _ = rx.await;
                    }
                    "done"
                }
            }),
        )
        .layer(svc.http_layer());
    let labels = [
        ("service_name", "order"),
        ("http_request_method", "GET"),
        ("http_route", "/slow"),
    ];

    let in_flight = tokio::spawn(app.clone().oneshot(request("GET", "/slow")));
    entered.notified().await;
    assert_eq!(value(&metrics, ACTIVE, &labels), Some(1.0));
    release_tx.send(()).expect("the handler waits");
    let response = in_flight.await.expect("no panic").expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    // The head is out, the body not yet: the request is still in flight.
    assert_eq!(value(&metrics, ACTIVE, &labels), Some(1.0));
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    assert_eq!(value(&metrics, ACTIVE, &labels), Some(0.0));
}

#[tokio::test]
async fn a_request_dropped_by_its_caller_is_recorded_as_499() {
    let (svc, metrics) = service();
    let entered = Arc::new(Notify::new());
    let handler_entered = entered.clone();
    let app = Router::new()
        .route(
            "/hang",
            get(move || {
                let entered = handler_entered.clone();
                async move {
                    entered.notify_one();
                    std::future::pending::<()>().await;
                    "never"
                }
            }),
        )
        .layer(svc.http_layer());

    let in_flight = tokio::spawn(app.clone().oneshot(request("GET", "/hang")));
    entered.notified().await;
    in_flight.abort();
    assert!(in_flight.await.expect_err("aborted").is_cancelled());

    assert_eq!(
        value(&metrics, DURATION, &server_labels("/hang", "499")),
        Some(1.0)
    );
    assert_eq!(
        value(
            &metrics,
            ACTIVE,
            &[
                ("service_name", "order"),
                ("http_request_method", "GET"),
                ("http_route", "/hang")
            ]
        ),
        Some(0.0)
    );
}

#[tokio::test(start_paused = true)]
async fn the_layer_deadline_answers_504_and_counts_it() {
    let (svc, metrics) = service();
    let app = Router::new()
        .route(
            "/hang",
            get(|| async {
                std::future::pending::<()>().await;
                "never"
            }),
        )
        .layer(svc.http_layer().timeout(Duration::from_secs(5)));

    // Paused time: the runtime advances the clock when every task is idle.
    let response = app
        .oneshot(request("GET", "/hang"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        value(&metrics, DURATION, &server_labels("/hang", "504")),
        Some(1.0)
    );
}

fn stage_labels<'a>(
    flow: &'a str,
    method: &'a str,
    channel: &'a str,
    outcome: &'a str,
) -> [(&'a str, &'a str); 6] {
    [
        ("service_name", "order"),
        ("flow", flow),
        ("stage", "payment.create"),
        ("payment_method", method),
        ("payment_channel", channel),
        ("outcome", outcome),
    ]
}

#[tokio::test(start_paused = true)]
async fn stage_outcomes_come_from_the_result_and_the_deadline() {
    let (svc, metrics) = service();
    let stage = || {
        svc.stage("payment.create")
            .flow("checkout")
            .payment_method("card")
    };

    let ok: Result<u8, &str> = stage().run(async { Ok(1) }).await;
    assert_eq!(ok, Ok(1));
    let err: Result<u8, &str> = stage().run(async { Err("declined") }).await;
    assert_eq!(err, Err("declined"));
    let timed_out: Result<u8, StageError<&str>> = stage()
        .run_with_deadline(Duration::from_millis(50), async {
            std::future::pending::<()>().await;
            Ok(0)
        })
        .await;
    assert!(matches!(timed_out, Err(StageError::TimedOut(_))));
    let mut guard = stage().start();
    guard.set_outcome(Outcome::Rejected);
    drop(guard);

    for outcome in ["ok", "error", "timeout", "rejected"] {
        assert_eq!(
            value(
                &metrics,
                metric::STAGE_DURATION_SECONDS,
                &stage_labels("checkout", "card", "", outcome)
            ),
            Some(1.0),
            "outcome {outcome}"
        );
    }
    assert_eq!(
        value(
            &metrics,
            metric::STAGE_ACTIVE,
            &[
                ("service_name", "order"),
                ("flow", "checkout"),
                ("stage", "payment.create")
            ]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn stages_inside_a_request_take_flow_labels_from_baggage() {
    let (svc, metrics) = service();
    let handler_svc = svc.clone();
    let app = Router::new()
        .route(
            "/pay",
            post(move || {
                let svc = handler_svc.clone();
                async move {
                    svc.stage("payment.create")
                        .run(async { Ok::<_, std::io::Error>("paid") })
                        .await
                        .unwrap_or("failed")
                }
            }),
        )
        .layer(svc.http_layer());

    let request = Request::builder()
        .method("POST")
        .uri("/pay")
        .header(
            "baggage",
            "paytrace.flow=checkout,payment.method=wechat_pay,payment.channel=wxpay,paytrace.flow_id=ord_1",
        )
        .body(Body::empty())
        .expect("valid request");
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        value(
            &metrics,
            metric::STAGE_DURATION_SECONDS,
            &stage_labels("checkout", "wechat_pay", "wxpay", "ok")
        ),
        Some(1.0)
    );
    // The flow id is never a label.
    for labels in common::series(&metrics, metric::STAGE_DURATION_SECONDS) {
        assert!(labels.iter().all(|(_, v)| v != "ord_1"), "{labels:?}");
    }
}

#[tokio::test]
async fn baggage_values_past_the_limit_fold_into_other() {
    let metrics = Metrics::register(
        prometheus::Registry::new(),
        &LabelLimits::default()
            .limit(label::PAYMENT_METHOD, 0)
            .allow(label::PAYMENT_METHOD, ["card"]),
    )
    .expect("fresh registry");
    let svc = ServiceTelemetry::with_metrics("order", "1.2.3", &metrics);
    for method in ["card", "user-12345", "user-67890"] {
        drop(
            svc.stage("payment.create")
                .flow("checkout")
                .payment_method(method)
                .start(),
        );
    }
    assert_eq!(
        value(
            &metrics,
            metric::STAGE_DURATION_SECONDS,
            &stage_labels("checkout", "card", "", "ok")
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &metrics,
            metric::STAGE_DURATION_SECONDS,
            &stage_labels("checkout", "other", "", "ok")
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn handlers_take_the_service_as_an_extractor() {
    async fn create(svc: ServiceTelemetry) -> &'static str {
        svc.stage("order.create")
            .run(async { Ok::<_, std::io::Error>("created") })
            .await
            .unwrap_or("failed")
    }
    let (svc, metrics) = service();
    let app = Router::new()
        .route("/orders", post(create))
        .layer(svc.http_layer());
    let response = app
        .oneshot(request("POST", "/orders"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let recorded = common::series(&metrics, metric::STAGE_DURATION_SECONDS);
    assert!(
        recorded.iter().any(|labels| {
            let has = |k: &str, v: &str| labels.iter().any(|(lk, lv)| lk == k && lv == v);
            has("service_name", "order") && has("stage", "order.create") && has("outcome", "ok")
        }),
        "the stage ran in the extracted service: {recorded:?}"
    );

    // Without the layer the handler cannot run, and says what is missing.
    let bare = Router::new().route("/orders", post(create));
    let response = bare
        .oneshot(request("POST", "/orders"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .expect("body");
    assert!(String::from_utf8_lossy(&body).contains("http_layer"));
}

/// Every series of the HTTP server histogram: its `http_route` labels.
fn routes_seen(metrics: &Metrics) -> Vec<String> {
    common::series(metrics, DURATION)
        .into_iter()
        .filter_map(|labels| {
            labels
                .into_iter()
                .find(|(k, _)| k == "http_route")
                .map(|(_, v)| v)
        })
        .collect()
}

#[tokio::test]
async fn nested_routers_are_labelled_by_their_full_template_and_health_can_be_skipped() {
    async fn health(svc: ServiceTelemetry) -> &'static str {
        // A skipped route still has its service.
        assert_eq!(svc.name(), "order");
        "ok"
    }
    let (svc, metrics) = service();
    let api = Router::new().route("/orders/{id}", get(|| async { "ok" }));
    let app = Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(health))
        .layer(svc.http_layer().skip_paths(["/healthz"]));
    for uri in ["/api/v1/orders/7", "/healthz", "/healthz"] {
        assert_eq!(
            send(&app, request("GET", uri)).await,
            StatusCode::OK,
            "{uri}"
        );
    }
    assert_eq!(
        value(
            &metrics,
            DURATION,
            &server_labels("/api/v1/orders/{id}", "200")
        ),
        Some(1.0)
    );
    assert_eq!(
        routes_seen(&metrics),
        vec!["/api/v1/orders/{id}".to_owned()],
        "the health route is neither traced nor measured"
    );
}

#[tokio::test]
async fn a_route_added_after_the_layer_says_so() {
    async fn create(svc: ServiceTelemetry) -> &'static str {
        svc.name();
        "created"
    }
    let (svc, metrics) = service();
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "ok" }))
        .layer(svc.http_layer())
        .route("/late", post(create));
    let response = app
        .oneshot(request("POST", "/late"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .expect("body");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("not behind `svc.http_layer()`") && body.contains("added before it"),
        "{body}"
    );
    assert!(
        routes_seen(&metrics).is_empty(),
        "nothing after the layer is measured"
    );
}

#[tokio::test]
async fn a_response_is_recorded_when_its_body_ends_or_as_499_when_dropped_before() {
    let (svc, metrics) = service();
    let app = Router::new()
        .route("/receipt", get(|| async { "a receipt of some length" }))
        .layer(svc.http_layer());

    // Read to the end: recorded with its status.
    assert_eq!(send(&app, request("GET", "/receipt")).await, StatusCode::OK);
    assert_eq!(
        value(&metrics, DURATION, &server_labels("/receipt", "200")),
        Some(1.0)
    );

    // The caller goes away after the head: the body never ends.
    let response = app
        .clone()
        .oneshot(request("GET", "/receipt"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    assert_eq!(
        value(&metrics, DURATION, &server_labels("/receipt", "499")),
        Some(1.0)
    );
    assert_eq!(
        value(&metrics, DURATION, &server_labels("/receipt", "200")),
        Some(1.0),
        "the dropped one is not a 200"
    );
}
