//! `let _ = paytrace::init(..)` drops the guard at once and shuts the tracer
//! provider down: the OpenTelemetry SDK then drops every span without a
//! word. paytrace counts them (`paytrace_spans_dropped_total{reason=
//! "after_shutdown"}`). Alone in its test binary: `init` installs the
//! process's global subscriber.

use prometheus::Encoder;

fn dropped_after_shutdown() -> f64 {
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&paytrace::Metrics::global().registry().gather(), &mut text)
        .expect("the registry encodes");
    paytrace_testkit::sample_value(
        &String::from_utf8_lossy(&text),
        r#"paytrace_spans_dropped_total{reason="after_shutdown"}"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_after_a_guard_dropped_at_once_are_counted() {
    // The mistake, as a newcomer writes it (`#[must_use]` does not catch
    // `let _ =`).
    let _ = paytrace::init("guard-test").expect("telemetry installs");
    assert_eq!(
        dropped_after_shutdown(),
        0.0,
        "the series exists from the start"
    );

    tracing::info_span!("checkout").in_scope(|| {});
    tracing::info_span!("checkout").in_scope(|| {});
    assert_eq!(dropped_after_shutdown(), 2.0);

    // Below INFO nothing would have been exported: nothing is lost.
    tracing::debug_span!("detail").in_scope(|| {});
    assert_eq!(dropped_after_shutdown(), 2.0);
}
