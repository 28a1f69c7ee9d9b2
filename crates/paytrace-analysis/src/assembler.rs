//! Trace assembly within bounded memory.
//!
//! Spans arrive in any order, from any number of services, in any batching.
//! The assembler groups them by trace id and hands a trace on once no span of
//! it has arrived for the idle period. Memory is bounded three ways, each
//! overflow counted by reason:
//! - spans per trace: later spans of an oversized trace are dropped
//!   (`trace_span_limit`);
//! - live traces and total bytes: the longest-idle trace is handed on early
//!   (evicted, `max_traces` / `max_bytes`).
//!
//! A span of a trace handed on recently is late: [`Added::late`] gives it
//! back, for the trace's flow to take if it still waits
//! (the flow buffer's `add_late`); otherwise it is dropped and
//! counted (`late`).

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::format::v1;
use crate::span::{Span, TraceId};

/// The default of [`AssemblerLimits::trace_idle`]: 15 s. SDKs export in
/// batches (`OTEL_BSP_SCHEDULE_DELAY`, 5 s by default, often raised to 10 s),
/// so two spans of one trace from different services can arrive a whole
/// batch delay apart; the idle period must exceed the longest delay of any
/// SDK that sends here, with room for the export itself.
pub const DEFAULT_TRACE_IDLE: Duration = Duration::from_secs(15);

/// Limits of the assembler.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AssemblerLimits {
    /// A trace is complete after this long without a new span.
    pub trace_idle: Duration,
    /// Most traces buffered at once.
    pub max_traces: usize,
    /// Most spans kept of one trace.
    pub max_spans_per_trace: usize,
    /// Most bytes of spans buffered (estimated with [`span_bytes`]).
    pub max_bytes: usize,
    /// How many completed trace ids are remembered to recognise late spans.
    pub remember_completed: usize,
}

impl Default for AssemblerLimits {
    fn default() -> Self {
        Self {
            trace_idle: DEFAULT_TRACE_IDLE,
            max_traces: 100_000,
            max_spans_per_trace: 10_000,
            max_bytes: 512 * 1024 * 1024,
            remember_completed: 200_000,
        }
    }
}

/// Why spans were dropped or traces handed on early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Overflow {
    /// A span of a trace that already has the most spans allowed.
    TraceSpanLimit,
    /// A span of a trace that was already complete.
    Late,
    /// A trace handed on early because too many traces were live.
    MaxTraces,
    /// A trace handed on early because buffered spans took too many bytes.
    MaxBytes,
}

impl Overflow {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TraceSpanLimit => paytrace_semconv::aggregator_drop_reason::TRACE_SPAN_LIMIT,
            Self::Late => paytrace_semconv::aggregator_drop_reason::LATE,
            Self::MaxTraces => paytrace_semconv::eviction_reason::MAX_TRACES,
            Self::MaxBytes => paytrace_semconv::eviction_reason::MAX_BYTES,
        }
    }
}

/// A trace handed on by the assembler.
#[derive(Debug)]
pub struct CompletedTrace {
    /// Its id.
    pub trace_id: TraceId,
    /// Its spans, in arrival order.
    pub spans: Vec<Span>,
    /// When its first span arrived.
    pub first_arrival: Instant,
    /// When its last span arrived.
    pub last_arrival: Instant,
    /// `None` when it went idle; the reason when it was evicted early.
    pub evicted: Option<Overflow>,
}

#[derive(Debug)]
struct LiveTrace {
    spans: Vec<Span>,
    bytes: usize,
    first_arrival: Instant,
    last_arrival: Instant,
}

/// What [`Assembler::add`] did with a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// Spans buffered.
    pub accepted: u64,
    /// Spans dropped, by reason.
    pub dropped: Vec<(Overflow, u64)>,
    /// Spans of traces already handed on: the caller offers them to their
    /// flow, and counts those nobody takes as dropped ([`Overflow::Late`]).
    pub late: Vec<Span>,
}

/// The estimated memory one buffered span takes: the struct, its strings
/// and links, plus the allocator's and the containers' overhead (calibrated
/// against the resident set with `cargo run -p paytrace-bench --bin
/// buffer_memory`, see BENCHMARKS.md).
pub fn span_bytes(span: &Span) -> usize {
    std::mem::size_of::<Span>()
        + span.name.len()
        + span.business.flow_id.as_ref().map_or(0, |s| s.len())
        + span.links.len() * std::mem::size_of::<crate::span::Link>()
        + span.as_sent.as_ref().map_or(0, |a| a.span.len() + 96)
        + 170
}

/// Groups spans by trace and hands traces on when idle or when memory runs out.
///
/// ```
/// use std::time::{Duration, Instant};
/// use paytrace_analysis::assembler::{Assembler, AssemblerLimits};
/// use paytrace_analysis::testing::span;
///
/// let mut limits = AssemblerLimits::default();
/// limits.trace_idle = Duration::from_secs(5);
/// let mut asm = Assembler::new(limits);
/// let t0 = Instant::now();
/// asm.add(vec![span("root", 0, 10)], t0);
/// assert!(asm.complete_idle(t0 + Duration::from_secs(4)).is_empty());
/// assert_eq!(asm.complete_idle(t0 + Duration::from_secs(5)).len(), 1);
/// ```
#[derive(Debug)]
pub struct Assembler {
    limits: AssemblerLimits,
    live: crate::FastMap<TraceId, LiveTrace>,
    /// (last arrival, trace) of every live trace: the idle order.
    idle_order: BTreeSet<(Instant, TraceId)>,
    bytes: usize,
    completed: crate::FastSet<TraceId>,
    completed_order: VecDeque<TraceId>,
    evicted: Vec<CompletedTrace>,
}

impl Assembler {
    /// An empty assembler.
    pub fn new(limits: AssemblerLimits) -> Self {
        Self {
            limits,
            live: crate::FastMap::default(),
            idle_order: BTreeSet::new(),
            bytes: 0,
            completed: crate::FastSet::default(),
            completed_order: VecDeque::new(),
            evicted: Vec::new(),
        }
    }

    /// Whether trace `id` is being assembled or was handed on lately.
    pub(crate) fn has_seen(&self, id: &TraceId) -> bool {
        self.live.contains_key(id) || self.completed.contains(id)
    }

    /// Live traces.
    pub fn live_traces(&self) -> usize {
        self.live.len()
    }

    /// Estimated bytes buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Buffers `spans` that arrived at `now`. Traces evicted to make room
    /// are returned by the next [`Assembler::complete_idle`].
    pub fn add(&mut self, spans: Vec<Span>, now: Instant) -> Added {
        let mut added = Added::default();
        let mut too_many = 0;
        let mut rest = spans.into_iter();
        while let Some(span) = rest.next() {
            let id = span.trace_id;
            // One look-up for a span of a trace already live (most spans).
            let trace = if let Some(trace) = self.live.get_mut(&id) {
                trace
            } else {
                // Only a span that would start a trace is looked up among
                // the completed ones: that set is large and cold, the live
                // one small and hot.
                if self.completed.contains(&id) {
                    added.late.push(span);
                    continue;
                }
                if self.live.len() >= self.limits.max_traces {
                    self.evict_oldest(Overflow::MaxTraces);
                }
                self.live.entry(id).or_insert(LiveTrace {
                    spans: Vec::new(),
                    bytes: 0,
                    first_arrival: now,
                    last_arrival: now,
                })
            };
            if trace.spans.len() >= self.limits.max_spans_per_trace {
                too_many += 1;
                continue;
            }
            if trace.spans.len() == trace.spans.capacity() {
                // Room for the run of this trace's spans that follows in the
                // batch (an SDK sends a trace's spans together): one
                // allocation instead of growing 4, 8, 16 and moving the
                // spans (a few hundred bytes each) every time.
                let run = 1 + rest
                    .as_slice()
                    .iter()
                    .take_while(|s| s.trace_id == id)
                    .count();
                let room = self.limits.max_spans_per_trace - trace.spans.len();
                trace.spans.reserve(run.min(room));
            }
            let bytes = span_bytes(&span);
            if trace.spans.is_empty() || trace.last_arrival != now {
                self.idle_order.remove(&(trace.last_arrival, id));
                trace.last_arrival = now;
                self.idle_order.insert((now, id));
            }
            trace.spans.push(span);
            trace.bytes += bytes;
            self.bytes += bytes;
            added.accepted += 1;
            while self.bytes > self.limits.max_bytes && self.live.len() > 1 {
                self.evict_oldest(Overflow::MaxBytes);
            }
        }
        if too_many > 0 {
            added.dropped.push((Overflow::TraceSpanLimit, too_many));
        }
        added
    }

    /// Hands on every trace idle for at least the idle period at `now`,
    /// and every trace evicted since the last call.
    pub fn complete_idle(&mut self, now: Instant) -> Vec<CompletedTrace> {
        let mut out = std::mem::take(&mut self.evicted);
        while let Some(&(last, id)) = self.idle_order.first() {
            if now.saturating_duration_since(last) < self.limits.trace_idle {
                break;
            }
            if let Some(done) = self.take(id, None) {
                out.push(done);
            }
        }
        out
    }

    /// Hands on every live trace now (at shutdown, or at the end of a file).
    pub fn drain(&mut self) -> Vec<CompletedTrace> {
        let mut out = std::mem::take(&mut self.evicted);
        let ids: Vec<TraceId> = self.idle_order.iter().map(|(_, id)| *id).collect();
        out.extend(ids.into_iter().filter_map(|id| self.take(id, None)));
        out
    }

    /// The live traces (spans and arrival ages) and the ids of the traces
    /// handed on lately, for a snapshot.
    pub(crate) fn snapshot(&self, now: Instant) -> v1::Assembler {
        v1::Assembler {
            live: self
                .idle_order
                .iter()
                .filter_map(|(_, id)| self.live.get(id))
                .map(|t| v1::LiveTrace {
                    spans: crate::span::to_v1(&t.spans),
                    first_age_ns: crate::ages::age_ns(now, t.first_arrival),
                    last_age_ns: crate::ages::age_ns(now, t.last_arrival),
                })
                .collect(),
            completed: self.completed_order.iter().map(|id| id.0).collect(),
        }
    }

    /// Takes back what [`Assembler::snapshot`] kept, into an empty assembler.
    pub(crate) fn restore(&mut self, snapshot: v1::Assembler, ago: &crate::ages::Ago) {
        for id in snapshot.completed {
            self.remember(TraceId(id));
        }
        for trace in snapshot.live {
            let spans = crate::span::from_v1(trace.spans);
            let Some(id) = spans.first().map(|s| s.trace_id) else {
                continue;
            };
            let bytes: usize = spans.iter().map(span_bytes).sum();
            let last_arrival = ago.instant(trace.last_age_ns);
            self.idle_order.insert((last_arrival, id));
            self.bytes += bytes;
            self.live.insert(
                id,
                LiveTrace {
                    spans,
                    bytes,
                    first_arrival: ago.instant(trace.first_age_ns),
                    last_arrival,
                },
            );
        }
    }

    fn evict_oldest(&mut self, reason: Overflow) {
        if let Some(&(_, id)) = self.idle_order.first()
            && let Some(done) = self.take(id, Some(reason))
        {
            self.evicted.push(done);
        }
    }

    fn take(&mut self, id: TraceId, evicted: Option<Overflow>) -> Option<CompletedTrace> {
        let trace = self.live.remove(&id)?;
        self.idle_order.remove(&(trace.last_arrival, id));
        self.bytes -= trace.bytes;
        self.remember(id);
        Some(CompletedTrace {
            trace_id: id,
            spans: trace.spans,
            first_arrival: trace.first_arrival,
            last_arrival: trace.last_arrival,
            evicted,
        })
    }

    fn remember(&mut self, id: TraceId) {
        if self.limits.remember_completed == 0 {
            return;
        }
        if self.completed_order.len() >= self.limits.remember_completed
            && let Some(old) = self.completed_order.pop_front()
        {
            self.completed.remove(&old);
        }
        self.completed.insert(id);
        self.completed_order.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::span;

    fn in_trace(name: &str, id: u8) -> Span {
        let mut s = span(name, 0, 10);
        s.trace_id = TraceId([id; 16]);
        s
    }

    fn limits() -> AssemblerLimits {
        AssemblerLimits {
            trace_idle: Duration::from_secs(5),
            ..Default::default()
        }
    }

    #[test]
    fn a_run_of_one_traces_spans_is_buffered_in_one_allocation_within_the_span_limit() {
        let mut asm = Assembler::new(AssemblerLimits {
            max_spans_per_trace: 7,
            ..limits()
        });
        let t0 = Instant::now();
        // Ten spans of trace 1 together (three past its limit), then five
        // of trace 2.
        let mut batch: Vec<Span> = (0..10).map(|i| in_trace(&format!("a{i}"), 1)).collect();
        batch.extend((0..5).map(|i| in_trace(&format!("b{i}"), 2)));
        let added = asm.add(batch, t0);
        assert_eq!(added.accepted, 12);
        assert_eq!(added.dropped, vec![(Overflow::TraceSpanLimit, 3)]);
        let done = asm.drain();
        let capacity = |id: u8| {
            let t = done
                .iter()
                .find(|t| t.spans[0].trace_id == TraceId([id; 16]));
            t.map(|t| (t.spans.len(), t.spans.capacity()))
        };
        // Grown one span at a time, they would sit in 8 and 8.
        assert_eq!(capacity(1), Some((7, 7)));
        assert_eq!(capacity(2), Some((5, 5)));
    }

    #[test]
    fn a_trace_completes_when_idle_and_new_spans_restart_the_clock() {
        let mut asm = Assembler::new(limits());
        let t0 = Instant::now();
        asm.add(vec![in_trace("a", 1)], t0);
        asm.add(vec![in_trace("b", 1)], t0 + Duration::from_secs(3));
        assert!(asm.complete_idle(t0 + Duration::from_secs(6)).is_empty());
        let done = asm.complete_idle(t0 + Duration::from_secs(8));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].spans.len(), 2);
        assert_eq!(done[0].evicted, None);
        assert_eq!(asm.live_traces(), 0);
        assert_eq!(asm.bytes(), 0);
    }

    #[test]
    fn late_spans_are_given_back() {
        let mut asm = Assembler::new(limits());
        let t0 = Instant::now();
        asm.add(vec![in_trace("a", 1)], t0);
        asm.complete_idle(t0 + Duration::from_secs(5));
        let added = asm.add(vec![in_trace("late", 1)], t0 + Duration::from_secs(6));
        assert_eq!(added.accepted, 0);
        assert!(added.dropped.is_empty());
        assert_eq!(added.late.len(), 1);
        assert_eq!(&*added.late[0].name, "late");
    }

    #[test]
    fn oversized_traces_keep_their_first_spans() {
        let mut asm = Assembler::new(AssemblerLimits {
            max_spans_per_trace: 3,
            ..limits()
        });
        let t0 = Instant::now();
        let added = asm.add((0..5).map(|_| in_trace("s", 1)).collect(), t0);
        assert_eq!(added.accepted, 3);
        assert_eq!(added.dropped, vec![(Overflow::TraceSpanLimit, 2)]);
    }

    #[test]
    fn too_many_traces_evict_the_longest_idle() {
        let mut asm = Assembler::new(AssemblerLimits {
            max_traces: 2,
            ..limits()
        });
        let t0 = Instant::now();
        asm.add(vec![in_trace("a", 1)], t0);
        asm.add(vec![in_trace("b", 2)], t0 + Duration::from_secs(1));
        asm.add(vec![in_trace("a2", 1)], t0 + Duration::from_secs(2));
        asm.add(vec![in_trace("c", 3)], t0 + Duration::from_secs(3));
        assert_eq!(asm.live_traces(), 2);
        let done = asm.complete_idle(t0 + Duration::from_secs(3));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].trace_id, TraceId([2; 16]), "b was idle longest");
        assert_eq!(done[0].evicted, Some(Overflow::MaxTraces));
    }

    #[test]
    fn the_byte_budget_is_enforced() {
        let one = span_bytes(&in_trace("a", 1));
        let mut asm = Assembler::new(AssemblerLimits {
            max_bytes: one * 3,
            ..limits()
        });
        let t0 = Instant::now();
        for i in 0..10u8 {
            asm.add(
                vec![in_trace("x", i + 1)],
                t0 + Duration::from_millis(u64::from(i)),
            );
            assert!(asm.bytes() <= one * 3);
        }
        let done = asm.complete_idle(t0);
        assert_eq!(done.len(), 7);
        assert!(done.iter().all(|t| t.evicted == Some(Overflow::MaxBytes)));
    }
}
