//! Every variant the counting binaries run (`overhead_instructions`,
//! `overhead_allocations`), by the name they take: the HTTP set-ups, the
//! stages, the client layer and the messaging variants.

use tower::{Layer as _, ServiceExt};

use crate::messaging::{MessagingBench, VARIANTS as MESSAGE_VARIANTS};
use crate::stage::{StageBench, VARIANTS as STAGE_VARIANTS};
use crate::{SETUPS, request};

/// The client variants: paytrace's layer, and the same telemetry by hand.
pub const CLIENT_VARIANTS: [&str; 2] = [
    "paytrace_client_layer",
    "tracing_span+propagator+prometheus",
];

/// The names of every variant.
pub fn names() -> Vec<String> {
    let requests = SETUPS.iter().map(|(name, _)| format!("request/{name}"));
    requests
        .chain(STAGE_VARIANTS.iter().map(|name| format!("stage/{name}")))
        .chain(CLIENT_VARIANTS.iter().map(|name| format!("client/{name}")))
        .chain(
            MESSAGE_VARIANTS
                .iter()
                .map(|name| format!("message/{name}")),
        )
        .collect()
}

/// Runs `variant` `n` times on a current-thread runtime, calling `before(i)`
/// ahead of iteration `i` (and `before(n)` after the last).
///
/// # Errors
///
/// When `variant` is none of [`names`].
pub fn run(variant: &str, n: u32, before: &mut dyn FnMut(u32)) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime: {e}"))?;
    if let Some(name) = variant.strip_prefix("request/")
        && let Some((_, make)) = SETUPS.iter().find(|(setup, _)| *setup == name)
    {
        rt.block_on(async {
            let router = make();
            for i in 0..n {
                before(i);
                // Read the body, as a server does: layers that record a
                // request at the body's end (paytrace's) see it end.
                let response = router.clone().oneshot(request()).await.expect("infallible");
                let body = axum::body::to_bytes(response.into_body(), usize::MAX).await;
                std::hint::black_box(body.expect("a body"));
            }
        });
    } else if let Some(name) = variant.strip_prefix("stage/")
        && STAGE_VARIANTS.contains(&name)
    {
        let bench = StageBench::new();
        rt.block_on(async {
            for i in 0..n {
                before(i);
                let _ = std::hint::black_box(bench.run(name).await);
            }
        });
    } else if variant == "client/paytrace_client_layer" {
        rt.block_on(client_calls(n, before));
    } else if variant == "client/tracing_span+propagator+prometheus" {
        rt.block_on(client_calls_by_hand(n, before));
    } else if let Some(name) = variant.strip_prefix("message/")
        && MESSAGE_VARIANTS.contains(&name)
    {
        let bench = MessagingBench::new();
        rt.block_on(async {
            for i in 0..n {
                before(i);
                std::hint::black_box(bench.run(name).await);
            }
        });
    } else {
        return Err(format!(
            "no variant {variant:?}; one of {}",
            names().join(", ")
        ));
    }
    before(n);
    Ok(())
}

/// Calls through paytrace's client layer to a service that answers at
/// once, inside a checkout's flow (its baggage goes with the call): the
/// client span, the injected context, the histogram.
async fn client_calls(n: u32, before: &mut dyn FnMut(u32)) {
    use opentelemetry::trace::FutureExt as _;
    let in_checkout = paytrace::Flow::new("checkout")
        .id("ord_bench")
        .payment_method("alipay")
        .payment_channel("alipay")
        .merge_into(&opentelemetry::Context::new());
    let metrics = crate::install_tracing();
    let svc = paytrace::ServiceTelemetry::with_metrics("bench", "1.0.0", metrics);
    let answer = tower::service_fn(|_req: paytrace::http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(paytrace::http::Response::new(String::new()))
    });
    let client = svc.client_layer().layer(answer);
    for i in 0..n {
        before(i);
        let request = paytrace::http::Request::post("http://inventory:8080/stock/1/reserve")
            .body(String::new())
            .expect("a valid request");
        let response = client
            .clone()
            .oneshot(request)
            .with_context(in_checkout.clone())
            .await;
        std::hint::black_box(response.expect("answered"));
    }
}

/// [`client_calls`]' telemetry written by hand: a CLIENT span with the same
/// attributes, the W3C propagators injecting its context and the baggage
/// into the request, a histogram with the same labels.
async fn client_calls_by_hand(n: u32, before: &mut dyn FnMut(u32)) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::FutureExt as _;
    use tracing::Instrument as _;
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let in_checkout = paytrace::Flow::new("checkout")
        .id("ord_bench")
        .payment_method("alipay")
        .payment_channel("alipay")
        .merge_into(&opentelemetry::Context::new());
    crate::install_tracing();
    let propagator = opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
        Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
    ]);
    let histogram = prometheus::HistogramVec::new(
        prometheus::HistogramOpts::new("plain_client_seconds", "plain")
            .buckets(paytrace_semconv::HTTP_LATENCY_BUCKETS.to_vec()),
        &["service_name", "method", "server_address", "status"],
    )
    .expect("a valid histogram");
    let answer = tower::service_fn(|_req: paytrace::http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(paytrace::http::Response::new(String::new()))
    });
    for i in 0..n {
        before(i);
        async {
            let start = std::time::Instant::now();
            let mut request =
                paytrace::http::Request::post("http://inventory:8080/stock/1/reserve")
                    .body(String::new())
                    .expect("a valid request");
            let span = tracing::info_span!(
                "HTTP client request",
                otel.name = "POST",
                otel.kind = "client",
                otel.status_code = Empty,
                http.request.method = "POST",
                http.response.status_code = Empty,
                server.address = "inventory",
                server.port = 8080,
                url.full = "http://inventory:8080/stock/1/reserve",
                error.type = Empty,
                paytrace.flow_id = "ord_bench",
            );
            let mut headers = std::collections::HashMap::new();
            propagator.inject_context(&span.context(), &mut headers);
            for (k, v) in headers {
                if let (Ok(name), Ok(value)) = (
                    paytrace::http::HeaderName::from_bytes(k.as_bytes()),
                    paytrace::http::HeaderValue::from_str(&v),
                ) {
                    request.headers_mut().insert(name, value);
                }
            }
            let response = answer
                .oneshot(request)
                .instrument(span.clone())
                .await
                .expect("answered");
            span.record("http.response.status_code", 200_i64);
            histogram
                .with_label_values(&["bench", "POST", "inventory", "200"])
                .observe(start.elapsed().as_secs_f64());
            std::hint::black_box(response);
        }
        .with_context(in_checkout.clone())
        .await;
    }
}
