//! Every variant the counting binaries run (`overhead_instructions`,
//! `overhead_allocations`), by the name they take: the HTTP set-ups, the
//! stages, the client layer and the messaging variants.

use tower::{Layer as _, ServiceExt};

use crate::messaging::{MessagingBench, VARIANTS as MESSAGE_VARIANTS};
use crate::stage::{StageBench, VARIANTS as STAGE_VARIANTS};
use crate::{SETUPS, request};

/// The names of every variant.
pub fn names() -> Vec<String> {
    let requests = SETUPS.iter().map(|(name, _)| format!("request/{name}"));
    requests
        .chain(STAGE_VARIANTS.iter().map(|name| format!("stage/{name}")))
        .chain(std::iter::once("client/paytrace_client_layer".to_owned()))
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
