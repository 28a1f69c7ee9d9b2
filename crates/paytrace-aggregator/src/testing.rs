//! Builders for hand-made spans, for tests and examples.
//!
//! Spans built here belong to one trace and are numbered by position: pass a
//! `Vec` through [`numbered`] (the tree and analysis helpers here do it for
//! you) and the span at position *k* (1-based) has span id *k*, so
//! `child("b", 1, ..)` is a child of the first span.
//!
//! ```
//! use paytrace_aggregator::testing::{child, numbered, span};
//! let spans = numbered(vec![span("root", 0, 10), child("db", 1, 2, 8)]);
//! assert_eq!(spans[1].parent_span_id, Some(spans[0].span_id));
//! ```

use std::sync::Arc;

use crate::span::{Business, Span, SpanId, TraceId};

/// The trace id every builder here uses.
pub const TRACE: TraceId = TraceId([7; 16]);

fn id(n: u64) -> SpanId {
    SpanId(n.max(1).to_be_bytes())
}

/// A span without a parent, from `start` to `end` (ns), service `svc`.
pub fn span(name: &str, start: u64, end: u64) -> Span {
    Span {
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
