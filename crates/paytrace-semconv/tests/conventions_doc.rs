//! Keeps `docs/conventions.md` and this crate in step: every table in the doc
//! lists exactly the names the crate defines, no more and no fewer.

use std::collections::BTreeSet;
use std::path::Path;

use paytrace_semconv::{
    DEFAULT_LATENCY_BUCKETS, attr, drop_reason, flow, label, metric, outcome, queue_outcome, stage,
    tcc,
};

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/conventions.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The first back-quoted cell of every table row under the `## {heading}` or
/// `### {heading}` section.
fn first_column(doc: &str, heading: &str) -> BTreeSet<String> {
    let mut in_section = false;
    let mut names = BTreeSet::new();
    for line in doc.lines() {
        if line.starts_with('#') {
            in_section = line.trim_start_matches('#').trim() == heading;
            continue;
        }
        if !in_section || !line.starts_with("| `") {
            continue;
        }
        let cell = line.trim_start_matches("| `");
        let name = cell.split('`').next().unwrap_or_default();
        assert!(
            names.insert(name.to_owned()),
            "{name} is listed twice under {heading}"
        );
    }
    assert!(!names.is_empty(), "no table found under heading {heading}");
    names
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn assert_same(heading: &str, code: &[&str]) {
    let documented = first_column(&doc(), heading);
    let defined = set(code);
    let undocumented: Vec<_> = defined.difference(&documented).collect();
    let undefined: Vec<_> = documented.difference(&defined).collect();
    assert!(
        undocumented.is_empty() && undefined.is_empty(),
        "docs/conventions.md `{heading}` and paytrace-semconv differ:\n  \
         in the crate, not the doc: {undocumented:?}\n  \
         in the doc, not the crate: {undefined:?}"
    );
}

#[test]
fn span_attributes_match() {
    assert_same("Span attributes", attr::ALL);
}

#[test]
fn metrics_match() {
    assert_same("Metrics", metric::ALL);
}

#[test]
fn labels_match() {
    assert_same("Labels", label::ALL);
}

#[test]
fn flows_match() {
    assert_same("Flows", flow::ALL);
}

#[test]
fn stages_match() {
    assert_same("Stages", stage::ALL);
}

#[test]
fn outcomes_match() {
    assert_same("Outcomes", outcome::ALL);
    assert_same("Queue outcomes", queue_outcome::ALL);
    assert_same("Messaging systems", paytrace_semconv::messaging_system::ALL);
    assert_same(
        "Messaging error types",
        paytrace_semconv::messaging_error::ALL,
    );
    assert_same("Span drop reasons", drop_reason::ALL);
    assert_same(
        "Aggregator span drop reasons",
        paytrace_semconv::aggregator_drop_reason::ALL,
    );
    assert_same(
        "Aggregator truncation reasons",
        paytrace_semconv::aggregator_truncation::ALL,
    );
    assert_same(
        "Incomplete flow reasons",
        paytrace_semconv::incomplete_reason::ALL,
    );
    assert_same(
        "Aggregator eviction reasons",
        paytrace_semconv::eviction_reason::ALL,
    );
    assert_same(
        "TCC phase outcomes",
        paytrace_semconv::tcc_phase_outcome::ALL,
    );
    assert_same("Keep reasons", paytrace_semconv::keep_reason::ALL);
    assert_same(
        "Forward drop reasons",
        paytrace_semconv::forward_drop_reason::ALL,
    );
}

#[test]
fn tcc_names_match() {
    assert_same("TCC phases", tcc::PHASES);
    assert_same("TCC anomaly kinds", tcc::ANOMALY_KINDS);
    assert_same("TCC global anomaly kinds", tcc::GLOBAL_ANOMALY_KINDS);
}

/// The back-quoted numbers of the line that starts with `prefix`.
fn documented_buckets(prefix: &str) -> Vec<f64> {
    let doc = doc();
    let line = doc
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("the Latency buckets section has a line `{prefix}`"));
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(|v| v.parse().expect("a bucket boundary is a number"))
        .collect()
}

#[test]
fn buckets_match() {
    assert_eq!(documented_buckets("Seconds: `"), DEFAULT_LATENCY_BUCKETS);
    assert_eq!(
        documented_buckets("HTTP and RPC seconds: `"),
        paytrace_semconv::HTTP_LATENCY_BUCKETS
    );
}

#[test]
fn baggage_keys_are_span_attributes() {
    for key in attr::BAGGAGE {
        assert!(attr::ALL.contains(key), "{key} is not an attribute");
        assert!(
            doc().contains(&format!("`{key}`")),
            "{key} is not in the doc"
        );
    }
}
