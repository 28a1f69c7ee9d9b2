//! The critical path at the edges, one test per situation: the nine that
//! Jaeger's UI tests its own critical path with (children neatly inside
//! their parent, overlapping, starting after their parent ended, ending
//! before it started, overflowing it at either end, a non-blocking child),
//! written here as traces of our own, then what a flow adds: work that
//! outlives the root, a consumer in its producer's trace, clocks skewed
//! between services. Read at a clock tolerance of 0 (exact timestamps).
//!
//! Each expectation is worked out by hand from the rules in
//! `docs/critical-path.md`, in nanoseconds.

use crate::critical_path::{FlowAnalysis, analyze_flow_with};
use crate::span::{Span, SpanKind};
use crate::testing::{child, numbered, span, stage};

/// A stage span of the root's service.
fn root(name: &str, start: u64, end: u64) -> Span {
    stage(span(name, start, end))
}

fn under(name: &str, parent: usize, start: u64, end: u64) -> Span {
    stage(child(name, parent, start, end))
}

fn kind(mut s: Span, kind: SpanKind) -> Span {
    s.business.kind = kind;
    s
}

fn service(mut s: Span, service: &str) -> Span {
    s.service = service.into();
    s
}

fn analyse(spans: Vec<Span>) -> FlowAnalysis {
    analyze_flow_with(&[numbered(spans)], 0).expect("a flow")
}

/// Each stage's critical-path time, and the flow's end to end; every
/// named stage must be listed.
fn assert_path(flow: &FlowAnalysis, end_to_end: u64, expected: &[(&str, u64)]) {
    let cp = |name: &str| {
        flow.stages
            .iter()
            .find(|s| &*s.stage == name)
            .map_or(0, |s| s.critical_path_ns)
    };
    for (name, ns) in expected {
        assert_eq!(cp(name), *ns, "{name}: {:#?}", flow.stages);
    }
    assert_eq!(flow.duration_ns(), end_to_end, "{:#?}", flow.critical_path);
    let sum: u64 = flow.stages.iter().map(|s| s.critical_path_ns).sum();
    assert_eq!(sum, end_to_end, "{:#?}", flow.stages);
    for s in &flow.stages {
        if !s.stage.starts_with(paytrace_semconv::stage::ASYNC_PREFIX) {
            assert!(s.critical_path_ns <= s.duration_ns, "{s:?}");
        }
    }
}

#[test]
fn sequential_children_inside_their_parent() {
    let flow = analyse(vec![
        root("checkout", 0, 100),
        under("reserve", 1, 20, 40),
        under("pay", 1, 50, 60),
    ]);
    assert_path(
        &flow,
        100,
        &[("checkout", 70), ("reserve", 20), ("pay", 10)],
    );
}

#[test]
fn of_two_overlapping_children_the_later_ending_one_blocks() {
    let flow = analyse(vec![
        root("checkout", 0, 100),
        under("reserve", 1, 10, 50),
        under("pay", 1, 20, 60),
    ]);
    // From 100 back: the root alone to 60, then pay (20..60); reserve had
    // not ended by 20, so the root's own time runs back to its start.
    assert_path(&flow, 100, &[("checkout", 60), ("pay", 40), ("reserve", 0)]);
}

#[test]
fn a_child_that_starts_after_its_parent_ended_is_off_the_path() {
    let flow = analyse(vec![
        root("checkout", 100, 140),
        under("audit", 1, 150, 300),
    ]);
    assert_path(&flow, 40, &[("checkout", 40), ("audit", 0)]);
}

#[test]
fn a_late_child_takes_its_own_children_off_the_path_with_it() {
    let flow = analyse(vec![
        root("checkout", 0, 30),
        under("audit", 1, 40, 80),
        under("audit.write", 2, 50, 60),
    ]);
    assert_path(
        &flow,
        30,
        &[("checkout", 30), ("audit", 0), ("audit.write", 0)],
    );
}

#[test]
fn a_consumer_of_a_producer_does_not_block_it() {
    let flow = analyse(vec![
        kind(root("publish", 0, 30), SpanKind::Producer),
        kind(under("consume", 1, 10, 20), SpanKind::Consumer),
    ]);
    assert_path(&flow, 30, &[("publish", 30), ("consume", 0)]);
}

#[test]
fn a_child_overflowing_its_parent_is_clipped_and_so_is_its_child() {
    // confirm overflows the root's end by 6; its child starts 5 before it.
    let flow = analyse(vec![
        root("checkout", 0, 29),
        under("confirm", 1, 15, 35),
        under("confirm.write", 2, 10, 25),
    ]);
    assert_path(
        &flow,
        29,
        &[("checkout", 15), ("confirm.write", 10), ("confirm", 4)],
    );
}

#[test]
fn a_chain_of_overflowing_children_is_clipped_to_the_root() {
    let flow = analyse(vec![
        root("checkout", 0, 29),
        under("confirm", 1, 15, 35),
        under("confirm.write", 2, 20, 40),
    ]);
    assert_path(
        &flow,
        29,
        &[("checkout", 15), ("confirm", 5), ("confirm.write", 9)],
    );
}

#[test]
fn a_child_wider_than_its_parent_at_both_ends_fills_it() {
    let flow = analyse(vec![root("checkout", 10, 30), under("pay", 1, 5, 35)]);
    assert_path(&flow, 20, &[("checkout", 0), ("pay", 20)]);
}

#[test]
fn a_child_that_ended_before_its_parent_started_is_off_the_path() {
    let flow = analyse(vec![root("checkout", 10, 30), under("warmup", 1, 1, 5)]);
    assert_path(&flow, 20, &[("checkout", 20), ("warmup", 0)]);
}

#[test]
fn fire_and_forget_work_that_outlives_the_root_is_not_the_users_wait() {
    let flow = analyse(vec![
        root("checkout", 0, 100),
        under("pay", 1, 10, 70),
        // Sent at 80, not awaited: it runs on long after the response.
        under("notify", 1, 80, 300),
    ]);
    assert_path(
        &flow,
        100,
        // Its part inside the root is clipped onto the path, as any
        // child's: the root cannot tell it was not awaited.
        &[("checkout", 20), ("pay", 60), ("notify", 20)],
    );
}

#[test]
fn a_flow_ending_in_a_consumer_of_its_own_trace_waits_for_it() {
    let flow = analyse(vec![
        kind(root("checkout", 0, 100), SpanKind::Server),
        kind(under("publish", 1, 60, 70), SpanKind::Producer),
        kind(under("settle", 2, 150, 250), SpanKind::Consumer),
        under("settle.write", 3, 160, 200),
    ]);
    // From the consumer's end: its own time and its child's; the wait from
    // the producer's end to the consumer's start; the producer; the root
    // before it. The root's 70..100 is not waited on: the flow continued.
    assert_path(
        &flow,
        250,
        &[
            ("settle", 60),
            ("settle.write", 40),
            ("async:settle", 80),
            ("publish", 10),
            ("checkout", 60),
        ],
    );
}

#[test]
fn a_consumer_done_before_the_root_ends_is_off_the_path() {
    let flow = analyse(vec![
        kind(root("checkout", 0, 100), SpanKind::Server),
        kind(under("publish", 1, 60, 70), SpanKind::Producer),
        kind(under("settle", 2, 75, 90), SpanKind::Consumer),
    ]);
    assert_path(
        &flow,
        100,
        &[("checkout", 90), ("publish", 10), ("settle", 0)],
    );
    assert_eq!(flow.traces.len(), 1, "one trace, however it was walked");
}

/// order calls inventory (a CLIENT span 20..80 ms); inventory's server span
/// took 50 ms, read on a clock `skew_ms` off.
fn skewed(skew_ms: i64) -> FlowAnalysis {
    let ms = 1_000_000u64;
    let at = |t: i64| u64::try_from((t + 1_000) * 1_000_000).expect("positive");
    let spans = vec![
        service(
            kind(root("order.create", at(0), at(100)), SpanKind::Server),
            "order",
        ),
        service(
            kind(child("POST inventory", 1, at(20), at(80)), SpanKind::Client),
            "order",
        ),
        service(
            kind(
                under("inventory.try", 2, at(25 + skew_ms), at(75 + skew_ms)),
                SpanKind::Server,
            ),
            "inventory",
        ),
    ];
    let flow = analyze_flow_with(&[numbered(spans)], ms).expect("a flow");
    let cp = |name: &str| {
        flow.stages
            .iter()
            .find(|s| &*s.stage == name)
            .map_or(0, |s| s.critical_path_ns)
    };
    assert_eq!(cp("inventory.try"), 50 * ms, "{:#?}", flow.stages);
    assert_eq!(cp("order.create"), 50 * ms, "{:#?}", flow.stages);
    assert_eq!(flow.duration_ns(), 100 * ms);
    flow
}

#[test]
fn a_service_whose_clock_is_ahead_is_moved_into_its_caller_and_named() {
    let flow = skewed(40);
    assert_eq!(flow.clock_skew.len(), 1, "{:?}", flow.clock_skew);
    assert_eq!(&*flow.clock_skew[0].service, "inventory");
    assert_eq!(flow.clock_skew[0].offset_ns, 40_000_000);
}

#[test]
fn a_service_whose_clock_is_behind_is_moved_into_its_caller_and_named() {
    let flow = skewed(-40);
    assert_eq!(flow.clock_skew.len(), 1, "{:?}", flow.clock_skew);
    assert_eq!(flow.clock_skew[0].offset_ns, -40_000_000);
}

#[test]
fn skew_within_the_tolerance_moves_nothing() {
    let flow = skewed(0);
    assert!(flow.clock_skew.is_empty(), "{:?}", flow.clock_skew);
}

#[test]
fn a_child_of_the_same_service_overflowing_its_parent_is_clipped_not_moved() {
    let flow = analyse(vec![
        kind(root("order.create", 0, 100), SpanKind::Server),
        kind(under("inventory.try", 1, 60, 140), SpanKind::Server),
    ]);
    assert!(flow.clock_skew.is_empty(), "{:?}", flow.clock_skew);
    assert_path(&flow, 100, &[("order.create", 60), ("inventory.try", 40)]);
}
