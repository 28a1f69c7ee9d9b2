//! Per-request cost of paytrace against the alternatives, in one run.
//!
//! `cargo bench -p paytrace-bench --bench overhead`; the figures and the
//! machine are recorded in `BENCHMARKS.md`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use paytrace_bench::messaging::{MessagingBench, VARIANTS as MESSAGE_VARIANTS};
use paytrace_bench::stage::{StageBench, VARIANTS};
use paytrace_bench::{SETUPS, request};
use tower::ServiceExt;

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("request");
    for (name, make) in SETUPS {
        let router = rt.block_on(async { make() });
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let router = router.clone();
                async move {
                    let response = router.oneshot(request()).await.expect("infallible");
                    // Read the body, as a server does: paytrace records a
                    // request when its body ends.
                    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await;
                    black_box(body.expect("a body"))
                }
            })
        });
    }
    group.finish();
}

fn stage(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let bench = StageBench::new();
    let mut group = c.benchmark_group("stage");
    for variant in VARIANTS {
        group.bench_function(variant, |b| {
            b.to_async(&rt).iter(|| bench.run(variant));
        });
    }
    group.finish();
}

fn message(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let bench = MessagingBench::new();
    let mut group = c.benchmark_group("message");
    for variant in MESSAGE_VARIANTS {
        group.bench_function(variant, |b| {
            b.to_async(&rt).iter(|| bench.run(variant));
        });
    }
    group.finish();
}

criterion_group!(benches, per_request, stage, message);
criterion_main!(benches);
