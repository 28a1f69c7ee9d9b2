//! The analysis of one flow instance: one trace, or several traces stitched
//! together across async hops (a payment channel's callback, a queue
//! consumer, a recovery job).
//!
//! Per stage it reports the total duration of the stage's spans, their self
//! time (duration minus the union of their children) and their
//! critical-path time. Critical-path
//! time of a span that is not a stage goes to its nearest stage ancestor; the
//! time a stitched flow spends between a span and the trace it triggered is
//! the pseudo-stage `async:<stage>`, named after the stage of the span that
//! links to the earlier trace (any span of the later trace may carry the
//! link), or after the later trace's root stage when no link names it. So
//! the stages' critical-path times sum to the flow's end-to-end duration.
//!
//! Timestamps are read with a clock tolerance (see the `tree` module): coarse
//! SDK clocks must not push a sequential stage off the critical path.

use std::sync::Arc;

use paytrace_semconv::stage::ASYNC_PREFIX;

use crate::span::{Span, SpanId, TraceId};
use paytrace_sampling::Threshold;

use crate::tree::Tree;

/// One stage's times in one flow instance, in nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageTimes {
    /// The stage name (`inventory.try`, `async:channel.callback`, or a root's
    /// `"{service.name} {span name}"`).
    pub stage: Arc<str>,
    /// How many spans of the stage the flow had (0 for an async wait).
    pub spans: u32,
    /// Sum of the stage spans' durations.
    pub duration_ns: u64,
    /// Sum of their self times (duration minus the union of their children).
    pub self_ns: u64,
    /// Their time on the flow's critical path.
    pub critical_path_ns: u64,
}

/// A piece of a flow's critical path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSegment {
    /// The trace the time was spent in.
    pub trace_id: TraceId,
    /// The span doing the work; `None` for an async wait between traces.
    pub span_id: Option<SpanId>,
    /// The stage the time is attributed to.
    pub stage: Arc<str>,
    /// Start, ns since the epoch.
    pub start_ns: u64,
    /// End.
    pub end_ns: u64,
}

/// The analysis of one flow instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowAnalysis {
    /// `paytrace.flow`, or else the first trace root's stage name.
    pub flow: Arc<str>,
    /// `paytrace.flow_id`, if any span carried one.
    pub flow_id: Option<Arc<str>>,
    /// `payment.method`, if any span carried one.
    pub payment_method: Option<Arc<str>>,
    /// `payment.channel`, if any span carried one.
    pub payment_channel: Option<Arc<str>>,
    /// The first span's start.
    pub start_ns: u64,
    /// The last span's end.
    pub end_ns: u64,
    /// Whether a trace root ended in error.
    pub is_error: bool,
    /// The traces of the flow, earliest first.
    pub traces: Vec<TraceId>,
    /// Per stage, sorted by critical-path time, largest first.
    pub stages: Vec<StageTimes>,
    /// The critical path, latest first.
    pub critical_path: Vec<PathSegment>,
    /// The sampling thresholds its spans carried.
    pub sampling: FlowSampling,
    /// The spans moved to fit their parents, for skew between services'
    /// clocks (see `tree::skew_adjustment`).
    pub clock_skew: Vec<ClockSkew>,
}

/// A span of `service` that lay outside its parent of another service,
/// moved to fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockSkew {
    /// `service.name` of the span moved.
    pub service: Arc<str>,
    /// How far that service's clock was estimated to be ahead of its
    /// caller's, in ns (negative: behind).
    pub offset_ns: i64,
}

/// How a flow instance was sampled, from the thresholds its traces carried
/// (`th` of `tracestate`): what it stands for in the unsampled population.
///
/// A trace's threshold is the highest any of its spans carried: SDKs write
/// it on every span (paytrace, the specification) or only on the root (the
/// Python SDK's experimental samplers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSampling {
    /// The highest threshold (the lowest probability) a trace carried.
    pub highest: Option<Threshold>,
    /// Whether some trace carried none.
    pub unknown: bool,
    /// Whether its traces carried different thresholds, or some none: its
    /// parts were sampled inconsistently.
    pub mixed: bool,
}

impl FlowSampling {
    /// The thresholds of `traces`, each the spans of one trace.
    pub(crate) fn of<'a>(traces: impl IntoIterator<Item = &'a [Span]>) -> Self {
        let mut first: Option<Option<Threshold>> = None;
        let mut sampling = Self::default();
        for spans in traces {
            let th = spans.iter().filter_map(|s| s.sampling_threshold).max();
            match first {
                None => first = Some(th),
                Some(f) if f != th => sampling.mixed = true,
                Some(_) => {}
            }
            match th {
                Some(t) => sampling.highest = sampling.highest.max(Some(t)),
                None => sampling.unknown = true,
            }
        }
        sampling
    }

    /// The threshold the flow counts with: the lowest probability among its
    /// spans', `default` standing in for spans that carried none.
    pub(crate) fn threshold(&self, default: Threshold) -> Threshold {
        match (self.highest, self.unknown) {
            (Some(t), true) => t.max(default),
            (Some(t), false) => t,
            (None, _) => default,
        }
    }

    /// How many flows this one stands for: the inverse of its probability.
    pub(crate) fn weight(&self, default: Threshold) -> f64 {
        self.threshold(default).adjusted_count()
    }
}

impl FlowAnalysis {
    /// End-to-end duration.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

struct TraceInfo<'a> {
    spans: &'a [Span],
    tree: Tree<'a>,
    nearest: Vec<usize>,
    /// A consumer's subtree cut from its producer's trace (see
    /// [`split_at_consumers`]), not a trace of its own.
    detached: bool,
}

/// Analyses one flow instance made of `traces` (each a non-empty list of
/// the spans of one trace). Empty traces are ignored; `None` if all are.
#[cfg(test)]
pub(crate) fn analyze_flow(traces: &[Vec<Span>]) -> Option<FlowAnalysis> {
    analyze_flow_with(traces, crate::tree::DEFAULT_CLOCK_TOLERANCE_NS)
}

/// [`analyze_flow`] with the critical-path walk's clock tolerance set: a
/// span that ended up to `clock_tolerance_ns` after its next sibling
/// started still precedes it on the path (0 reads timestamps exactly).
pub(crate) fn analyze_flow_with(
    traces: &[Vec<Span>],
    clock_tolerance_ns: u64,
) -> Option<FlowAnalysis> {
    // A consumer that a producer of its own trace started is an async hop:
    // its subtree is walked as a trace of its own, linked to the producer.
    let splits: Vec<Option<Vec<Vec<Span>>>> =
        traces.iter().map(|t| split_at_consumers(t)).collect();
    // Each trace whole, or its parts (the first the trace without the
    // consumers, the others detached).
    let units = traces.iter().zip(&splits).flat_map(|(trace, split)| {
        let parts = split.as_deref().unwrap_or(std::slice::from_ref(trace));
        parts
            .iter()
            .enumerate()
            .map(|(k, part)| (part.as_slice(), k > 0))
    });
    let mut infos: Vec<TraceInfo<'_>> = units
        .filter(|(t, _)| !t.is_empty())
        .map(|(spans, detached)| {
            let tree = Tree::with_tolerance(spans, clock_tolerance_ns);
            let is_stage = stages_of(&tree);
            let nearest = tree.nearest_stage(|i| is_stage[i]);
            TraceInfo {
                spans,
                tree,
                nearest,
                detached,
            }
        })
        .collect();
    if infos.is_empty() {
        return None;
    }
    infos.sort_by_key(|t| {
        (
            t.spans[t.tree.root()].start_ns,
            t.spans[0].trace_id,
            t.detached,
        )
    });

    // The flow runs from its first root's start to its last root's end:
    // a child outside its root (a clock behind or ahead, work that outlives
    // the response) is not the user's wait.
    let start_ns = infos
        .iter()
        .map(|t| t.spans[t.tree.root()].start_ns)
        .min()
        .unwrap_or(0);
    let end_ns = infos
        .iter()
        .map(|t| t.spans[t.tree.root()].end_ns)
        .max()
        .unwrap_or(start_ns);

    let mut stages = StageTable::default();

    // Durations and self times of every stage span.
    for info in &infos {
        let self_times = info.tree.stage_self_time(&info.nearest);
        for (i, span) in info.spans.iter().enumerate() {
            if info.nearest[i] == i {
                let times = stages.entry(info.tree.stage_name(i));
                times.spans += 1;
                times.duration_ns += span.duration_ns();
                times.self_ns += self_times[i];
            }
        }
    }

    let critical_path = stitched_critical_path(&infos, start_ns, end_ns);
    let clock_skew = infos
        .iter()
        .flat_map(|info| {
            info.tree.skews().iter().map(|skew| ClockSkew {
                service: info.spans[skew.span].service.clone(),
                offset_ns: skew.offset_ns,
            })
        })
        .collect();
    for seg in &critical_path {
        stages.entry(seg.stage.clone()).critical_path_ns += seg.end_ns - seg.start_ns;
    }
    let mut stages = stages.list;
    for times in &mut stages {
        if times.stage.starts_with(ASYNC_PREFIX) {
            times.duration_ns = times.critical_path_ns;
            times.self_ns = times.critical_path_ns;
        }
    }
    stages.sort_by(|a, b| {
        b.critical_path_ns
            .cmp(&a.critical_path_ns)
            .then_with(|| a.stage.cmp(&b.stage))
    });

    let first = &infos[0];
    let find = |pick: fn(&Span) -> &Option<Arc<str>>| -> Option<Arc<str>> {
        infos
            .iter()
            .find_map(|t| pick(&t.spans[t.tree.root()]).clone())
            .or_else(|| {
                infos
                    .iter()
                    .flat_map(|t| t.spans.iter())
                    .filter(|s| pick(s).is_some())
                    .min_by_key(|s| s.start_ns)
                    .and_then(|s| pick(s).clone())
            })
    };
    let flow =
        find(|s| &s.business.flow).unwrap_or_else(|| first.tree.stage_name(first.tree.root()));
    Some(FlowAnalysis {
        flow,
        flow_id: find(|s| &s.business.flow_id),
        payment_method: find(|s| &s.business.payment_method),
        payment_channel: find(|s| &s.business.payment_channel),
        start_ns,
        end_ns,
        is_error: infos
            .iter()
            .any(|t| !t.detached && t.spans[t.tree.root()].is_error),
        traces: infos
            .iter()
            .filter(|t| !t.detached)
            .map(|t| t.spans[0].trace_id)
            .collect(),
        stages,
        critical_path,
        sampling: FlowSampling::of(traces.iter().filter(|t| !t.is_empty()).map(Vec::as_slice)),
        clock_skew,
    })
}

/// Which spans of a trace are stages: those with `paytrace.stage`, and
/// entry spans (a request entering a service) with no stage below them and
/// none named above them, so that a service instrumented only automatically
/// is a stage of its own (`"order POST /orders"`) rather than time of its
/// caller's root, while a call made inside a named stage (`channel.request`
/// calling the channel) stays that stage's time.
fn stages_of(tree: &Tree<'_>) -> Vec<bool> {
    let spans = tree.spans();
    let mut is_stage: Vec<bool> = spans.iter().map(|s| s.business.stage.is_some()).collect();
    if !spans
        .iter()
        .any(|s| s.business.entry && s.business.stage.is_none())
    {
        return is_stage;
    }
    // Mark the ancestors of every named stage; each is marked once.
    let mut has_stage_below = vec![false; spans.len()];
    for i in (0..spans.len()).filter(|&i| is_stage[i]) {
        let mut cur = tree.parent(i);
        while let Some(p) = cur {
            if has_stage_below[p] {
                break;
            }
            has_stage_below[p] = true;
            cur = tree.parent(p);
        }
    }
    // The nearest named stage above each span (the root when none is).
    let named = tree.nearest_stage(|i| spans[i].business.stage.is_some());
    for (i, s) in spans.iter().enumerate() {
        let under_named = tree
            .parent(i)
            .is_some_and(|p| spans[named[p]].business.stage.is_some());
        if s.business.entry && !has_stage_below[i] && !under_named {
            is_stage[i] = true;
        }
    }
    is_stage
}

/// The stages of one flow as they are met. A flow has a handful of stages,
/// found by a scan that mostly compares pointers (names are interned); past
/// [`StageTable::SCAN`] stages, a hash index takes over.
#[derive(Default)]
struct StageTable {
    list: Vec<StageTimes>,
    index: crate::FastMap<Arc<str>, usize>,
}

impl StageTable {
    const SCAN: usize = 16;

    fn entry(&mut self, name: Arc<str>) -> &mut StageTimes {
        let found = if self.list.len() <= Self::SCAN {
            self.list
                .iter()
                .position(|t| Arc::ptr_eq(&t.stage, &name) || t.stage == name)
        } else {
            if self.index.is_empty() {
                self.index = (self.list.iter().enumerate())
                    .map(|(i, t)| (t.stage.clone(), i))
                    .collect();
            }
            self.index.get(&name).copied()
        };
        let at = match found {
            Some(at) => at,
            None => {
                if !self.index.is_empty() {
                    self.index.insert(name.clone(), self.list.len());
                }
                self.list.push(StageTimes {
                    stage: name,
                    spans: 0,
                    duration_ns: 0,
                    self_ns: 0,
                    critical_path_ns: 0,
                });
                self.list.len() - 1
            }
        };
        &mut self.list[at]
    }
}

/// The parts of one trace when a CONSUMER span in it has a PRODUCER
/// parent: the trace without those consumers' subtrees first, then each
/// subtree with its consumer as root (its parent id cleared, a link to the
/// producer added), so that the flow's walk treats the edge as an async
/// hop, like a link between traces. `None` when there is no such edge.
fn split_at_consumers(spans: &[Span]) -> Option<Vec<Vec<Span>>> {
    use crate::span::{Link, SpanKind};
    let kind = |i: usize| spans[i].business.kind;
    if !spans
        .iter()
        .any(|s| s.business.kind == SpanKind::Consumer && s.parent_span_id.is_some())
    {
        return None;
    }
    let by_id: crate::FastMap<SpanId, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id, i))
        .collect();
    let parent = |i: usize| -> Option<usize> {
        let p = *by_id.get(&spans[i].parent_span_id?)?;
        (p != i).then_some(p)
    };
    let detached = |i: usize| {
        kind(i) == SpanKind::Consumer && parent(i).is_some_and(|p| kind(p) == SpanKind::Producer)
    };
    let roots: Vec<usize> = (0..spans.len()).filter(|&i| detached(i)).collect();
    if roots.is_empty() {
        return None;
    }
    // Each span's part: its nearest detached ancestor-or-self, else the
    // trace's (0). A parent cycle stops after as many steps as spans.
    let mut parts: Vec<Vec<Span>> = vec![Vec::new(); roots.len() + 1];
    for (i, span) in spans.iter().enumerate() {
        let mut cur = i;
        let mut part = 0;
        for _ in 0..spans.len() {
            if let Ok(k) = roots.binary_search(&cur) {
                part = k + 1;
                break;
            }
            match parent(cur) {
                Some(p) => cur = p,
                None => break,
            }
        }
        let mut span = span.clone();
        if part > 0
            && roots[part - 1] == i
            && let Some(producer) = span.parent_span_id.take()
        {
            span.links.push(Link {
                trace_id: span.trace_id,
                span_id: producer,
            });
        }
        parts[part].push(span);
    }
    Some(parts)
}

/// Every span of the flow with its trace and span index.
fn all_spans<'a>(infos: &'a [TraceInfo<'_>]) -> impl Iterator<Item = (usize, usize, &'a Span)> {
    infos
        .iter()
        .enumerate()
        .flat_map(|(t, info)| info.spans.iter().enumerate().map(move |(i, s)| (t, i, s)))
}

/// The critical path of the whole flow, from its last span's end back to its
/// first span's start.
fn stitched_critical_path(infos: &[TraceInfo<'_>], start_ns: u64, end_ns: u64) -> Vec<PathSegment> {
    // Only a multi-trace flow needs to resolve links.
    let by_id: crate::FastMap<(TraceId, SpanId), (usize, usize)> = if infos.len() < 2 {
        crate::FastMap::default()
    } else {
        all_spans(infos)
            .map(|(t, i, s)| ((s.trace_id, s.span_id), (t, i)))
            .collect()
    };
    let mut path = Vec::new();
    let mut visited: crate::FastSet<usize> = crate::FastSet::default();

    // Start at the root that ends last.
    let Some((mut t, mut from)) = infos
        .iter()
        .enumerate()
        .max_by_key(|(_, info)| {
            let root = &info.spans[info.tree.root()];
            (
                root.end_ns,
                std::cmp::Reverse((root.trace_id, root.span_id)),
            )
        })
        .map(|(t, info)| (t, info.tree.root()))
    else {
        return path;
    };
    let mut cursor = end_ns;
    loop {
        visited.insert(t);
        let info = &infos[t];
        let (walk_end, segments) = info.tree.critical_path_to(from, cursor);
        // A span the later trace waited on may outlive its parent: its own
        // time past the parent's end stays with its stage, as far as the
        // stage's span lasted; a span wholly after its parent (work started
        // and not waited on) begins later. The time around it is the wait
        // for it.
        if cursor > walk_end {
            let own_start = info.tree.start_ns(from).clamp(walk_end, cursor);
            let stage_span = info.nearest[from];
            let kept_start = own_start.max(info.tree.start_ns(stage_span));
            let kept_end = cursor.min(info.tree.end_ns(stage_span));
            let wait = |start_ns, end_ns| PathSegment {
                trace_id: info.spans[from].trace_id,
                span_id: None,
                stage: format!("{ASYNC_PREFIX}{}", info.tree.stage_name(stage_span)).into(),
                start_ns,
                end_ns,
            };
            if kept_start < kept_end {
                if cursor > kept_end {
                    path.push(wait(kept_end, cursor));
                }
                path.push(segment(info, from, kept_start, kept_end));
                if kept_start > walk_end {
                    path.push(wait(walk_end, kept_start));
                }
            } else {
                path.push(wait(walk_end, cursor));
            }
        }
        path.extend(
            segments
                .iter()
                .map(|s| segment(info, s.span, s.start_ns, s.end_ns)),
        );
        let root = info.tree.root();
        let root_start = info.spans[root].start_ns.min(cursor);
        cursor = root_start;
        if cursor <= start_ns {
            break;
        }
        let hop = predecessor(infos, &by_id, &visited, t, cursor);
        // The wait is named after the stage that carries the link (the
        // handler's stage under an auto-instrumented root), else the root's.
        let waiting = hop.and_then(|h| h.linked_from).unwrap_or(root);
        let wait_stage: Arc<str> = format!(
            "{ASYNC_PREFIX}{}",
            info.tree.stage_name(info.nearest[waiting])
        )
        .into();
        match hop.map(|h| h.span) {
            Some((pt, pi)) => {
                // A predecessor that ended before the flow began (its clock
                // behind) hands on at the flow's start.
                let pred_end = infos[pt].tree.end_ns(pi).clamp(start_ns, cursor);
                if cursor > pred_end {
                    path.push(PathSegment {
                        trace_id: info.spans[root].trace_id,
                        span_id: None,
                        stage: wait_stage,
                        start_ns: pred_end,
                        end_ns: cursor,
                    });
                }
                cursor = pred_end;
                t = pt;
                from = pi;
            }
            None => {
                // Spans that started before this root: another trace's (an
                // async wait), or, when every trace is walked, this trace's
                // own children seen through clock skew.
                let (span_id, stage) = if visited.len() == infos.len() {
                    (
                        Some(info.spans[root].span_id),
                        info.tree.stage_name(info.nearest[root]),
                    )
                } else {
                    (None, wait_stage)
                };
                path.push(PathSegment {
                    trace_id: info.spans[root].trace_id,
                    span_id,
                    stage,
                    start_ns,
                    end_ns: cursor,
                });
                break;
            }
        }
    }
    path
}

fn segment(info: &TraceInfo<'_>, span: usize, start_ns: u64, end_ns: u64) -> PathSegment {
    let s = &info.spans[span];
    PathSegment {
        trace_id: s.trace_id,
        span_id: Some(s.span_id),
        stage: info.tree.stage_name(info.nearest[span]),
        start_ns,
        end_ns,
    }
}

/// Where a trace of a flow was started from.
#[derive(Clone, Copy)]
struct Hop {
    /// (trace, span) of the span of an earlier trace.
    span: (usize, usize),
    /// The span of the later trace that links to it, if a link named it.
    linked_from: Option<usize>,
}

/// The span of an earlier trace of the flow that trace `t` (whose root
/// starts at `before`) was started from: the one a span of `t` links to
/// (any span: with auto-instrumentation the link sits on the handler's
/// span, not on the HTTP server root), the latest-ending if several do;
/// else the latest-ending span of the other unvisited traces that ended by
/// then.
fn predecessor(
    infos: &[TraceInfo<'_>],
    by_id: &crate::FastMap<(TraceId, SpanId), (usize, usize)>,
    visited: &crate::FastSet<usize>,
    t: usize,
    before: u64,
) -> Option<Hop> {
    let linked = infos[t]
        .spans
        .iter()
        .enumerate()
        .flat_map(|(from, s)| s.links.iter().map(move |l| (from, l)))
        .filter_map(|(from, l)| {
            let (lt, li) = by_id.get(&(l.trace_id, l.span_id)).copied()?;
            (!visited.contains(&lt)).then_some((from, lt, li))
        })
        .max_by_key(|&(from, lt, li)| {
            // Ties: the link nearest the root wins, then the lowest index.
            (
                infos[lt].tree.end_ns(li),
                std::cmp::Reverse((from != infos[t].tree.root(), from)),
            )
        })
        .map(|(from, lt, li)| Hop {
            span: (lt, li),
            linked_from: Some(from),
        });
    linked.or_else(|| {
        infos
            .iter()
            .enumerate()
            .filter(|(ot, _)| !visited.contains(ot))
            .flat_map(|(ot, info)| {
                (0..info.spans.len())
                    .map(move |i| (info.tree.end_ns(i), ot, i))
                    .filter(move |&(end, _, _)| end <= before)
            })
            .max_by_key(|&(end, ot, i)| {
                let s = &infos[ot].spans[i];
                (end, std::cmp::Reverse((s.trace_id, s.span_id)))
            })
            .map(|(_, ot, i)| Hop {
                span: (ot, i),
                linked_from: None,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Link;
    use crate::testing::{child, numbered, span, stage};

    fn stage_cp(flow: &FlowAnalysis, name: &str) -> u64 {
        flow.stages
            .iter()
            .find(|s| &*s.stage == name)
            .map_or(0, |s| s.critical_path_ns)
    }

    fn retrace(mut spans: Vec<Span>, id: u8) -> Vec<Span> {
        for s in &mut spans {
            s.trace_id = TraceId([id; 16]);
        }
        spans
    }

    #[test]
    fn plain_spans_count_towards_their_nearest_stage() {
        let trace = numbered(vec![
            stage(span("checkout", 0, 100)),
            child("POST /inventory", 1, 10, 60),
            stage(child("inventory.try", 2, 20, 50)),
        ]);
        let flow = analyze_flow(&[trace]).expect("one trace");
        assert_eq!(stage_cp(&flow, "checkout"), 70);
        assert_eq!(stage_cp(&flow, "inventory.try"), 30);
        let checkout = &flow.stages[0];
        assert_eq!((checkout.duration_ns, checkout.self_ns), (100, 50));
        assert_eq!(
            &*flow.flow, "checkout",
            "no paytrace.flow: the root stage names it"
        );
    }

    #[test]
    fn an_entry_span_with_no_stage_below_is_a_stage_named_by_its_route() {
        let entry = |mut s: Span, service: &str, operation: &str| {
            s.service = service.into();
            s.business.entry = true;
            s.business.operation = Some(operation.into());
            s
        };
        let trace = numbered(vec![
            entry(span("POST", 0, 100), "gateway", "POST /checkout"),
            child("POST", 1, 5, 45), // the gateway's client span
            entry(child("POST", 2, 10, 40), "order", "POST /orders"),
            child("POST", 1, 50, 95),
            // An instrumented service: its entry span holds a named stage.
            entry(child("POST", 4, 55, 90), "inventory", "POST /reserve"),
            stage(child("inventory.try", 5, 60, 85)),
        ]);
        let mut trace = trace;
        // A service called from inside a named stage is that stage's time.
        trace.push(stage(child("channel.request", 1, 95, 99)));
        trace.push(entry(child("POST", 7, 96, 98), "channel", "POST /pay"));
        let trace = numbered(trace);
        let flow = analyze_flow(&[trace]).expect("one trace");
        assert_eq!(stage_cp(&flow, "channel.request"), 4);
        assert_eq!(stage_cp(&flow, "channel POST /pay"), 0);
        assert_eq!(stage_cp(&flow, "order POST /orders"), 30);
        assert_eq!(stage_cp(&flow, "inventory.try"), 25);
        assert_eq!(stage_cp(&flow, "inventory POST /reserve"), 0);
        assert_eq!(stage_cp(&flow, "gateway POST /checkout"), 41);
    }

    #[test]
    fn a_root_without_a_stage_is_named_after_service_and_span() {
        let trace = numbered(vec![span("GET /orders/{id}", 0, 10)]);
        let flow = analyze_flow(&[trace]).expect("one trace");
        assert_eq!(&*flow.stages[0].stage, "svc GET /orders/{id}");
    }

    #[test]
    fn a_callback_trace_is_stitched_through_its_link_with_an_async_wait() {
        // Trace A: checkout 0..100 with channel.request 20..80.
        // Trace B (the callback) starts at 300, linked to channel.request,
        // and runs channel.callback 300..340 then payment.confirm 340..400.
        let a = retrace(
            numbered(vec![
                stage(span("checkout", 0, 100)),
                stage(child("channel.request", 1, 20, 80)),
            ]),
            1,
        );
        let mut callback_root = stage(span("channel.callback", 300, 400));
        callback_root.links.push(Link {
            trace_id: TraceId([1; 16]),
            span_id: a[1].span_id,
        });
        let b = retrace(
            numbered(vec![
                callback_root,
                stage(child("payment.confirm", 1, 340, 400)),
            ]),
            2,
        );
        let flow = analyze_flow(&[b, a]).expect("two traces");
        assert_eq!(flow.duration_ns(), 400);
        assert_eq!(flow.traces, vec![TraceId([1; 16]), TraceId([2; 16])]);
        // The callback waited from channel.request's end (80) to 300.
        assert_eq!(stage_cp(&flow, "async:channel.callback"), 220);
        assert_eq!(stage_cp(&flow, "payment.confirm"), 60);
        assert_eq!(stage_cp(&flow, "channel.callback"), 40);
        assert_eq!(stage_cp(&flow, "channel.request"), 60);
        // checkout's time after channel.request (80..100) is not waited on.
        assert_eq!(stage_cp(&flow, "checkout"), 20);
        let total: u64 = flow.stages.iter().map(|s| s.critical_path_ns).sum();
        assert_eq!(total, flow.duration_ns());
    }

    #[test]
    fn a_link_on_a_child_span_marks_the_hop_and_names_the_wait() {
        // Trace A: checkout 0..100 with channel.request 20..80 and a
        // parallel notify.send 30..250 that is never waited on.
        let a = retrace(
            numbered(vec![
                stage(span("checkout", 0, 100)),
                stage(child("channel.request", 1, 20, 80)),
                stage(child("notify.send", 1, 30, 250)),
            ]),
            1,
        );
        // Trace B: an auto-instrumented HTTP root 300..400 whose handler
        // stage channel.callback (310..390) carries the link.
        let mut handler = stage(child("channel.callback", 1, 310, 390));
        handler.links.push(Link {
            trace_id: TraceId([1; 16]),
            span_id: a[1].span_id,
        });
        let b = retrace(numbered(vec![span("POST", 300, 400), handler]), 2);
        let flow = analyze_flow(&[a, b]).expect("two traces");
        assert_eq!(stage_cp(&flow, "async:channel.callback"), 220);
        assert_eq!(stage_cp(&flow, "notify.send"), 0);
        assert_eq!(stage_cp(&flow, "channel.request"), 60);
        let total: u64 = flow.stages.iter().map(|s| s.critical_path_ns).sum();
        assert_eq!(total, flow.duration_ns());
    }

    #[test]
    fn without_a_link_the_latest_earlier_span_is_the_predecessor() {
        let a = retrace(numbered(vec![stage(span("checkout", 0, 100))]), 1);
        let b = retrace(numbered(vec![stage(span("refund", 150, 200))]), 2);
        let flow = analyze_flow(&[a, b]).expect("two traces");
        assert_eq!(stage_cp(&flow, "async:refund"), 50);
        assert_eq!(stage_cp(&flow, "checkout"), 100);
        assert_eq!(stage_cp(&flow, "refund"), 50);
    }

    #[test]
    fn overlapping_traces_still_sum_to_the_flow_duration() {
        // B starts before A ends and is linked to A's root.
        let a = retrace(numbered(vec![stage(span("a", 0, 100))]), 1);
        let mut root_b = stage(span("b", 50, 150));
        root_b.links.push(Link {
            trace_id: TraceId([1; 16]),
            span_id: a[0].span_id,
        });
        let b = retrace(numbered(vec![root_b]), 2);
        let flow = analyze_flow(&[a, b]).expect("two traces");
        assert_eq!(stage_cp(&flow, "b"), 100);
        assert_eq!(stage_cp(&flow, "a"), 50);
        assert_eq!(stage_cp(&flow, "async:b"), 0);
    }

    #[test]
    fn analyze_flow_sums_critical_path_to_duration() {
        use crate::critical_path::analyze_flow;
        use crate::testing::{child, numbered, span, stage};

        let trace = numbered(vec![
            stage(span("checkout", 0, 100)),
            stage(child("inventory.try", 1, 10, 40)),
        ]);
        let flow = analyze_flow(&[trace]).expect("one flow");
        let cp: u64 = flow.stages.iter().map(|s| s.critical_path_ns).sum();
        assert_eq!(cp, flow.duration_ns());
    }

    #[test]
    fn tolerance_follows_a_child_a_millisecond_clock_moved() {
        use crate::critical_path::analyze_flow_with;
        use crate::testing::{child, numbered, span, stage};

        // a (0..2 ms) then b, whose start a millisecond clock put 0.4 ms early.
        let ms = 1_000_000;
        let trace = numbered(vec![
            stage(span("checkout", 0, 5 * ms)),
            stage(child("a", 1, 0, 2 * ms)),
            stage(child("b", 1, 2 * ms - 400_000, 5 * ms)),
        ]);
        let flow = analyze_flow_with(&[trace], ms).expect("one flow");
        let a = flow
            .stages
            .iter()
            .find(|s| &*s.stage == "a")
            .expect("stage a");
        assert_eq!(a.critical_path_ns, 2 * ms - 400_000);
    }

    #[test]
    fn a_flow_counts_with_the_lowest_probability_of_its_traces() {
        use crate::testing::{child, numbered, span};
        let tenth = Threshold::from_probability(0.1);
        let half = Threshold::from_probability(0.5);
        // The threshold on the root only, as the Python SDK writes it.
        let mut first = numbered(vec![span("checkout", 0, 10), child("a", 1, 1, 5)]);
        first[0].sampling_threshold = Some(tenth);
        let whole = FlowSampling::of([first.as_slice()]);
        assert_eq!(
            (whole.highest, whole.unknown, whole.mixed),
            (Some(tenth), false, false)
        );
        assert!((whole.weight(Threshold::ALWAYS) - 10.0).abs() < 1e-3);
        // A second trace at 50% and a third saying nothing: mixed; counted
        // at 10%, or at the default when that is lower.
        let mut second = numbered(vec![span("callback", 20, 30)]);
        second[0].sampling_threshold = Some(half);
        let third = numbered(vec![span("consumer", 40, 50)]);
        let mixed = FlowSampling::of([first.as_slice(), second.as_slice(), third.as_slice()]);
        assert!(mixed.mixed && mixed.unknown);
        assert_eq!(mixed.threshold(Threshold::ALWAYS), tenth);
        let hundredth = Threshold::from_probability(0.01);
        assert_eq!(mixed.threshold(hundredth), hundredth);
    }
}

/// The analysis in format version 1 ([`crate::format`]).
mod format_v1 {
    use super::*;
    use crate::format::v1;

    impl From<&FlowAnalysis> for v1::FlowAnalysis {
        fn from(a: &FlowAnalysis) -> Self {
            Self {
                flow: a.flow.clone(),
                flow_id: a.flow_id.clone(),
                payment_method: a.payment_method.clone(),
                payment_channel: a.payment_channel.clone(),
                start_ns: a.start_ns,
                end_ns: a.end_ns,
                is_error: a.is_error,
                traces: a.traces.iter().map(|t| t.0).collect(),
                stages: a
                    .stages
                    .iter()
                    .map(|s| v1::StageTimes {
                        stage: s.stage.clone(),
                        spans: s.spans,
                        duration_ns: s.duration_ns,
                        self_ns: s.self_ns,
                        critical_path_ns: s.critical_path_ns,
                    })
                    .collect(),
                critical_path: a
                    .critical_path
                    .iter()
                    .map(|p| v1::PathSegment {
                        trace_id: p.trace_id.0,
                        span_id: p.span_id.map(|s| s.0),
                        stage: p.stage.clone(),
                        start_ns: p.start_ns,
                        end_ns: p.end_ns,
                    })
                    .collect(),
                sampling: v1::FlowSampling {
                    highest: a.sampling.highest,
                    unknown: a.sampling.unknown,
                    mixed: a.sampling.mixed,
                },
                clock_skew: a
                    .clock_skew
                    .iter()
                    .map(|c| v1::ClockSkew {
                        service: c.service.clone(),
                        offset_ns: c.offset_ns,
                    })
                    .collect(),
            }
        }
    }

    impl From<v1::FlowAnalysis> for FlowAnalysis {
        fn from(a: v1::FlowAnalysis) -> Self {
            Self {
                flow: a.flow,
                flow_id: a.flow_id,
                payment_method: a.payment_method,
                payment_channel: a.payment_channel,
                start_ns: a.start_ns,
                end_ns: a.end_ns,
                is_error: a.is_error,
                traces: a.traces.into_iter().map(TraceId).collect(),
                stages: a
                    .stages
                    .into_iter()
                    .map(|s| StageTimes {
                        stage: s.stage,
                        spans: s.spans,
                        duration_ns: s.duration_ns,
                        self_ns: s.self_ns,
                        critical_path_ns: s.critical_path_ns,
                    })
                    .collect(),
                critical_path: a
                    .critical_path
                    .into_iter()
                    .map(|p| PathSegment {
                        trace_id: TraceId(p.trace_id),
                        span_id: p.span_id.map(SpanId),
                        stage: p.stage,
                        start_ns: p.start_ns,
                        end_ns: p.end_ns,
                    })
                    .collect(),
                sampling: FlowSampling {
                    highest: a.sampling.highest,
                    unknown: a.sampling.unknown,
                    mixed: a.sampling.mixed,
                },
                clock_skew: a
                    .clock_skew
                    .into_iter()
                    .map(|c| ClockSkew {
                        service: c.service,
                        offset_ns: c.offset_ns,
                    })
                    .collect(),
            }
        }
    }
}
