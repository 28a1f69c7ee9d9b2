//! Instructions per request and per stage, counted by callgrind, for every
//! set-up of the `overhead` benchmark: repeatable where wall-clock time on a
//! shared VM is not.
//!
//! ```sh
//! cargo build --release -p paytrace-bench --bin overhead_instructions
//! for variant in $(target/release/overhead_instructions --list); do
//!   for n in 1000 2000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!       target/release/overhead_instructions "$variant" $n 2>&1 | grep Collected
//!   done
//! done
//! ```
//!
//! The difference between the two counts, divided by 1,000, is the cost of
//! one request or stage, the export thread's share included (take the least
//! of a few runs: an export batch that falls into one run and not the other
//! shows as an outlier). Both counts stay under the export queue's 2,048
//! spans, so no set-up drops spans.

use paytrace_bench::messaging::{MessagingBench, VARIANTS as MESSAGE_VARIANTS};
use paytrace_bench::stage::{StageBench, VARIANTS};
use paytrace_bench::{SETUPS, request};
use tower::{Layer as _, ServiceExt};

fn variants() -> impl Iterator<Item = String> {
    let requests = SETUPS.iter().map(|(name, _)| format!("request/{name}"));
    requests
        .chain(VARIANTS.iter().map(|name| format!("stage/{name}")))
        .chain(std::iter::once("client/paytrace_client_layer".to_owned()))
        .chain(
            MESSAGE_VARIANTS
                .iter()
                .map(|name| format!("message/{name}")),
        )
}

/// One call through paytrace's client layer to a service that answers at
/// once, inside a checkout's flow (its baggage goes with the call): the
/// client span, the injected context, the histogram.
async fn client_calls(n: u32) {
    use opentelemetry::trace::FutureExt as _;
    let in_checkout = paytrace::Flow::new("checkout")
        .id("ord_bench")
        .payment_method("alipay")
        .payment_channel("alipay")
        .merge_into(&opentelemetry::Context::new());
    let metrics = paytrace_bench::install_tracing();
    let svc = paytrace::ServiceTelemetry::with_metrics("bench", "1.0.0", metrics);
    let answer = tower::service_fn(|_req: paytrace::http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(paytrace::http::Response::new(String::new()))
    });
    let client = svc.client_layer().layer(answer);
    for _ in 0..n {
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

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_default();
    if variant == "--list" {
        variants().for_each(|v| println!("{v}"));
        return;
    }
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    paytrace_bench::count_instructions();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if let Some(name) = variant.strip_prefix("request/")
        && let Some((_, make)) = SETUPS.iter().find(|(setup, _)| *setup == name)
    {
        rt.block_on(async {
            let router = make();
            for _ in 0..n {
                // Read the body, as a server does: layers that record a
                // request at the body's end (paytrace's) see it end.
                let response = router.clone().oneshot(request()).await.expect("infallible");
                let body = axum::body::to_bytes(response.into_body(), usize::MAX).await;
                std::hint::black_box(body.expect("a body"));
            }
        });
    } else if let Some(name) = variant.strip_prefix("stage/")
        && VARIANTS.contains(&name)
    {
        let bench = StageBench::new();
        rt.block_on(async {
            for _ in 0..n {
                let _ = std::hint::black_box(bench.run(name).await);
            }
        });
    } else if variant == "client/paytrace_client_layer" {
        rt.block_on(client_calls(n));
    } else if let Some(name) = variant.strip_prefix("message/")
        && MESSAGE_VARIANTS.contains(&name)
    {
        let bench = MessagingBench::new();
        rt.block_on(async {
            for _ in 0..n {
                std::hint::black_box(bench.run(name).await);
            }
        });
    } else {
        let all: Vec<String> = variants().collect();
        eprintln!("usage: overhead_instructions {} [N]", all.join("|"));
        std::process::exit(2);
    }
}
