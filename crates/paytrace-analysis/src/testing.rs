//! Builders for hand-made spans, for tests and examples (feature `testing`:
//! `paytrace-aggregator = { version = "…", features = ["testing"] }` in your
//! `[dev-dependencies]`).
//!
//! Spans built here belong to one trace and are numbered by position: pass a
//! `Vec` through [`numbered`] (the tree and analysis helpers here do it for
//! you) and the span at position *k* (1-based) has span id *k*, so
//! `child("b", 1, ..)` is a child of the first span.
//!
//! ```
//! use paytrace_analysis::testing::{child, numbered, span};
//! let spans = numbered(vec![span("root", 0, 10), child("db", 1, 2, 8)]);
//! assert_eq!(spans[1].parent_span_id, Some(spans[0].span_id));
//! ```

use std::sync::Arc;

use crate::span::{Business, Span, SpanId, Tcc, TraceId};

/// The trace id every builder here uses.
pub const TRACE: TraceId = TraceId([7; 16]);

fn id(n: u64) -> SpanId {
    SpanId(n.max(1).to_be_bytes())
}

/// A span without a parent, from `start` to `end` (ns), service `svc`.
pub fn span(name: &str, start: u64, end: u64) -> Span {
    Span {
        sampling_threshold: None,
        trace_id: TRACE,
        span_id: id(1),
        parent_span_id: None,
        name: Arc::from(name),
        service: Arc::from("svc"),
        start_ns: start,
        end_ns: end.max(start),
        is_error: false,
        links: Vec::new(),
        business: Business::default(),
        as_sent: None,
    }
}

/// A span whose parent is the span at 1-based position `parent`.
pub fn child(name: &str, parent: usize, start: u64, end: u64) -> Span {
    with_parent_id(span(name, start, end), parent as u64)
}

/// `span` with its parent id set to `parent` (any number; one that is no
/// span's position makes an orphan).
pub fn with_parent_id(mut span: Span, parent: u64) -> Span {
    span.parent_span_id = Some(id(parent));
    span
}

/// `span` marked as the stage of the same name.
pub fn stage(mut span: Span) -> Span {
    span.business.stage = Some(span.name.clone());
    span
}

/// Gives each span the id of its 1-based position.
pub fn numbered(mut spans: Vec<Span>) -> Vec<Span> {
    for (i, s) in spans.iter_mut().enumerate() {
        s.span_id = id(i as u64 + 1);
    }
    spans
}

/// A TCC phase span of `resource` in transaction `xid`, alone in trace
/// `[n; 16]` with span id `n`; an empty `xid` or `resource` is left out.
///
/// ```
/// use paytrace_analysis::testing::tcc_phase;
/// let s = tcc_phase(3, "ord_1", "inventory", "try", 10, 20);
/// assert_eq!(s.business.tcc.unwrap().phase.as_deref(), Some("try"));
/// ```
pub fn tcc_phase(n: u8, xid: &str, resource: &str, phase: &str, start: u64, end: u64) -> Span {
    let mut s = alone(n, phase, start, end);
    let nonempty = |v: &str| (!v.is_empty()).then(|| Arc::from(v));
    s.business.tcc = Some(Box::new(Tcc {
        xid: nonempty(xid),
        resource: nonempty(resource),
        phase: Some(Arc::from(phase)),
        ..Tcc::default()
    }));
    s
}

/// The coordinator's span deciding `decision` for `xid`, alone in trace `[n; 16]`.
pub fn tcc_decision(n: u8, xid: &str, decision: &str, start: u64, end: u64) -> Span {
    let mut s = alone(n, decision, start, end);
    s.business.tcc = Some(Box::new(Tcc {
        xid: Some(Arc::from(xid)),
        decision: Some(Arc::from(decision)),
        ..Tcc::default()
    }));
    s
}

/// `span` with `paytrace.outcome` set to `outcome`.
pub fn with_outcome(mut span: Span, outcome: &str) -> Span {
    span.business.outcome = Some(Arc::from(outcome));
    span
}

fn alone(n: u8, name: &str, start: u64, end: u64) -> Span {
    let mut s = span(name, start, end);
    s.trace_id = TraceId([n.max(1); 16]);
    s.span_id = id(u64::from(n));
    s
}
