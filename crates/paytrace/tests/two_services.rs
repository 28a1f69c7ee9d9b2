//! Two real HTTP servers on loopback, one calling the other through the
//! paytrace client: one trace across both, the right parents, and the
//! caller's baggage turned into the callee's stage labels. Spans are captured
//! by an in-memory exporter behind paytrace's own batch pipeline.

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use common::{attribute, capture, serve, value};
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;
use paytrace::{Flow, ServiceTelemetry};
use paytrace_semconv::{attr, metric};

#[derive(Clone)]
struct Gateway {
    svc: ServiceTelemetry,
    http: paytrace::Client,
    downstream: SocketAddr,
}

async fn gateway_checkout(
    State(gw): State<Gateway>,
    Path(order): Path<String>,
) -> Result<String, StatusCode> {
    // The gateway adds the channel it chose to the flow the caller started.
    let url = format!("http://{}/reserve/{order}", gw.downstream);
    Flow::default()
        .payment_channel("wxpay")
        .scope(async {
            gw.svc
                .stage("order.create")
                .run(async {
                    let response = gw.http.get(&url).send().await?;
                    response.error_for_status()?.text().await
                })
                .await
        })
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)
}

async fn inventory_reserve(State(svc): State<ServiceTelemetry>) -> &'static str {
    svc.stage("inventory.try")
        .run(async { Ok::<_, std::io::Error>("reserved") })
        .await
        .unwrap_or("failed")
}

fn find<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span named {name:?} in {:#?}", names(spans)))
}

fn names(spans: &[SpanData]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_ref()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_both_services_with_baggage_as_labels() {
    let capture = capture();
    let metrics = &capture.metrics;

    let inventory = ServiceTelemetry::with_metrics("inventory", "1.0.0", metrics);
    let inventory_addr = serve(
        Router::new()
            .route("/reserve/{order}", get(inventory_reserve))
            .layer(inventory.http_layer())
            .with_state(inventory.clone()),
    )
    .await;

    let gateway = ServiceTelemetry::with_metrics("gateway", "1.0.0", metrics);
    let gateway_addr = serve(
        Router::new()
            .route("/checkout/{order}", get(gateway_checkout))
            .layer(gateway.http_layer())
            .with_state(Gateway {
                http: gateway.client(reqwest::Client::new()),
                svc: gateway.clone(),
                downstream: inventory_addr,
            }),
    )
    .await;

    // An upstream caller (a browser's BFF, say) starts the trace and the flow.
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("valid hex");
    let caller_span_id = "00f067aa0ba902b7";
    let response = reqwest::Client::new()
        .get(format!("http://{gateway_addr}/checkout/ord_42"))
        .header(
            "traceparent",
            format!("00-{trace_id}-{caller_span_id}-01"),
        )
        .header(
            "baggage",
            "paytrace.flow=checkout,payment.method=wechat_pay,paytrace.flow_id=ord_42%20bob%40example.com",
        )
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.text().await.expect("a body"), "reserved");

    let spans = capture.spans_of_trace(trace_id, |spans| spans.len() >= 5);
    assert_eq!(
        spans.len(),
        5,
        "gateway server, order.create, client, inventory server, inventory.try: {:#?}",
        names(&spans)
    );

    let gw_server = find(&spans, "GET /checkout/{order}");
    let order_create = find(&spans, "order.create");
    let client = find(&spans, "GET");
    let inv_server = find(&spans, "GET /reserve/{order}");
    let inv_try = find(&spans, "inventory.try");

    // Parent chain across the two processes' worth of spans.
    assert_eq!(gw_server.span_kind, SpanKind::Server);
    assert_eq!(format!("{}", gw_server.parent_span_id), caller_span_id);
    assert_eq!(
        order_create.parent_span_id,
        gw_server.span_context.span_id()
    );
    assert_eq!(client.span_kind, SpanKind::Client);
    assert_eq!(client.parent_span_id, order_create.span_context.span_id());
    assert_eq!(inv_server.span_kind, SpanKind::Server);
    assert_eq!(inv_server.parent_span_id, client.span_context.span_id());
    assert_eq!(inv_try.parent_span_id, inv_server.span_context.span_id());

    // HTTP semantic conventions.
    assert_eq!(
        attribute(inv_server, attr::HTTP_ROUTE).as_deref(),
        Some("/reserve/{order}")
    );
    // The status code is an integer on both sides of the call.
    let status = |span: &SpanData| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == attr::HTTP_RESPONSE_STATUS_CODE)
            .map(|kv| kv.value.clone())
    };
    assert_eq!(status(inv_server), Some(opentelemetry::Value::I64(200)));
    assert_eq!(status(client), Some(opentelemetry::Value::I64(200)));
    assert_eq!(
        attribute(client, attr::SERVER_ADDRESS).as_deref(),
        Some("127.0.0.1")
    );

    // Baggage, including the channel the gateway added, reached inventory:
    // as span attributes (the flow id redacted) and as stage labels.
    assert_eq!(
        attribute(inv_try, attr::STAGE).as_deref(),
        Some("inventory.try")
    );
    assert_eq!(attribute(inv_try, attr::FLOW).as_deref(), Some("checkout"));
    assert_eq!(
        attribute(inv_try, attr::PAYMENT_METHOD).as_deref(),
        Some("wechat_pay")
    );
    assert_eq!(
        attribute(inv_try, attr::PAYMENT_CHANNEL).as_deref(),
        Some("wxpay")
    );
    assert_eq!(attribute(inv_try, attr::OUTCOME).as_deref(), Some("ok"));
    // Every span of the flow carries its id (redacted, as every baggage
    // value reaching a span is): a Collector routes a flow by it.
    for span in &spans {
        assert_eq!(
            attribute(span, attr::FLOW_ID).as_deref(),
            Some("ord_42 [email]"),
            "{}",
            span.name
        );
    }
    assert_eq!(
        value(
            metrics,
            metric::STAGE_DURATION_SECONDS,
            &[
                ("service_name", "inventory"),
                ("flow", "checkout"),
                ("stage", "inventory.try"),
                ("payment_method", "wechat_pay"),
                ("payment_channel", "wxpay"),
                ("outcome", "ok"),
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            metrics,
            metric::HTTP_CLIENT_REQUEST_DURATION_SECONDS,
            &[
                ("service_name", "gateway"),
                ("http_request_method", "GET"),
                ("server_address", "127.0.0.1"),
                ("http_response_status_code", "200"),
            ]
        ),
        Some(1.0)
    );
}

/// A gateway that starts the flow itself, inside its handler, minting the
/// order id: its own server span (opened before the id existed) carries the
/// id too, as do the stage and the outgoing call, so every span of the flow
/// can be routed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_started_in_a_handler_names_the_request_span_too() {
    let capture = capture();
    let metrics = &capture.metrics;
    let downstream = ServiceTelemetry::with_metrics("stock", "1.0.0", metrics);
    let downstream_addr = serve(
        Router::new()
            .route("/reserve/{order}", get(inventory_reserve))
            .layer(downstream.http_layer())
            .with_state(downstream.clone()),
    )
    .await;
    let gateway = ServiceTelemetry::with_metrics("storefront", "1.0.0", metrics);
    let gateway_addr = serve(
        Router::new()
            .route(
                "/orders",
                get(|State(gw): State<Gateway>| async move {
                    let url = format!("http://{}/reserve/ord_minted_7", gw.downstream);
                    Flow::new("checkout")
                        .id("ord_minted_7")
                        .scope(gw.svc.stage("order.create").run(async {
                            gw.http
                                .get(&url)
                                .send()
                                .await?
                                .error_for_status()?
                                .text()
                                .await
                        }))
                        .await
                        .map_err(|_| StatusCode::BAD_GATEWAY)
                }),
            )
            .layer(gateway.http_layer())
            .with_state(Gateway {
                http: gateway.client(reqwest::Client::new()),
                svc: gateway.clone(),
                downstream: downstream_addr,
            }),
    )
    .await;
    let trace_id = TraceId::from_hex("5c0f6ec6cfc153015c0f6ec6cfc15301").expect("valid hex");
    let response = reqwest::Client::new()
        .get(format!("http://{gateway_addr}/orders"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let spans = capture.spans_of_trace(trace_id, |spans| spans.len() >= 5);
    assert_eq!(spans.len(), 5, "{:#?}", names(&spans));
    for span in &spans {
        assert_eq!(
            attribute(span, attr::FLOW_ID).as_deref(),
            Some("ord_minted_7"),
            "{}",
            span.name
        );
    }
    assert_eq!(
        attribute(find(&spans, "GET /orders"), attr::FLOW).as_deref(),
        Some("checkout")
    );
}
