//! Live flow stitching: completed traces wait, bounded, for the other
//! traces of their flow (linked, or sharing a `paytrace.flow_id`) until the
//! flow has been idle for `flow_idle`.
//!
//! A trace that carries no flow id and links to no waiting trace is a flow on
//! its own and is final at once. A flow whose configured terminal stage
//! (the demo's checkout: `payment.confirm`) has not appeared is kept until
//! `flow_timeout` after its first trace arrived, then reported incomplete;
//! unless its first trace's root ended in error: a failed flow never reaches
//! its terminal stage, and is final, as an error, once idle.
//!
//! A span that arrives after its trace was handed on, while the trace's flow
//! still waits here, joins its trace ([`FlowBuffer::add_late`]): SDKs export
//! in batches every few seconds, so a trace's last span can come long after
//! the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::span::{Span, TraceId};

/// Settings of the flow buffer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FlowSettings {
    /// A flow is final once none of its traces arrived for this long.
    pub flow_idle: Duration,
    /// A flow still missing its terminal stage this long after it began is
    /// reported incomplete.
    pub flow_timeout: Duration,
    /// The stage that ends each flow, by flow name; none unless configured
    /// (`[flows.NAME] terminal_stage` in the `--config` file).
    pub terminal_stages: HashMap<String, String>,
    /// Most flows waiting at once; past it the oldest is reported incomplete.
    pub max_pending: usize,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            flow_idle: Duration::from_secs(30),
            flow_timeout: Duration::from_secs(120),
            terminal_stages: HashMap::new(),
            max_pending: 100_000,
        }
    }
}

/// A flow the buffer let go of.
#[derive(Debug)]
pub(crate) struct FinishedFlow {
    /// The traces, each its spans.
    pub traces: Vec<Vec<Span>>,
    /// `None` when complete; else why it is incomplete.
    pub incomplete: Option<&'static str>,
}

use paytrace_semconv::incomplete_reason::{BUFFER_FULL, TERMINAL_STAGE_MISSING};

#[derive(Debug)]
struct Pending {
    traces: Vec<Vec<Span>>,
    trace_ids: Vec<TraceId>,
    flow_ids: crate::FastSet<Arc<str>>,
    flow: Option<Arc<str>>,
    stages: crate::FastSet<Arc<str>>,
    /// (start, is error) of the earliest trace root seen.
    first_root: Option<(u64, bool)>,
    first_arrival: Instant,
    last_arrival: Instant,
}

impl Pending {
    fn failed(&self) -> bool {
        self.first_root.is_some_and(|(_, error)| error)
    }

    /// Takes note of a trace root: the earliest decides whether the flow failed.
    fn see_root(&mut self, root: Option<(u64, bool)>) {
        if let Some(root) = root
            && self.first_root.is_none_or(|(start, _)| root.0 < start)
        {
            self.first_root = Some(root);
        }
    }
}

/// (start, is error) of the root of a trace's spans.
fn root_of(spans: &[Span]) -> Option<(u64, bool)> {
    let root = spans.get(crate::tree::choose_root(spans))?;
    Some((root.start_ns, root.is_error))
}

/// Completed traces waiting for the rest of their flow.
#[derive(Debug, Default)]
pub(crate) struct FlowBuffer {
    settings: FlowSettings,
    pending: crate::FastMap<u64, Pending>,
    by_flow_id: crate::FastMap<Arc<str>, u64>,
    by_trace: crate::FastMap<TraceId, u64>,
    next: u64,
}

impl FlowBuffer {
    /// An empty buffer.
    pub(crate) fn new(settings: FlowSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Flows waiting.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Adds a completed trace that arrived (last) at `now`. Returns the
    /// flows that are final because of it: the trace itself when it belongs
    /// to no multi-trace flow, or the oldest flow pushed out of a full buffer.
    pub(crate) fn add(&mut self, spans: Vec<Span>, now: Instant) -> Vec<FinishedFlow> {
        let Some(first) = spans.first() else {
            return Vec::new();
        };
        let trace_id = first.trace_id;
        let flow_ids: crate::FastSet<Arc<str>> = spans
            .iter()
            .filter_map(|s| s.business.flow_id.clone())
            .collect();
        let mut joined: Vec<u64> = spans
            .iter()
            .flat_map(|s| s.links.iter())
            .filter_map(|l| self.by_trace.get(&l.trace_id).copied())
            .chain(
                flow_ids
                    .iter()
                    .filter_map(|f| self.by_flow_id.get(f).copied()),
            )
            .collect();
        joined.sort_unstable();
        joined.dedup();

        if flow_ids.is_empty() && joined.is_empty() {
            return vec![FinishedFlow {
                traces: vec![spans],
                incomplete: None,
            }];
        }

        let id = match joined.first() {
            Some(&id) => id,
            None => {
                let id = self.next;
                self.next += 1;
                self.pending.insert(
                    id,
                    Pending {
                        traces: Vec::new(),
                        trace_ids: Vec::new(),
                        flow_ids: crate::FastSet::default(),
                        flow: None,
                        stages: crate::FastSet::default(),
                        first_root: None,
                        first_arrival: now,
                        last_arrival: now,
                    },
                );
                id
            }
        };
        for &other in joined.iter().skip(1) {
            if let Some(p) = self.pending.remove(&other) {
                for t in &p.trace_ids {
                    self.by_trace.insert(*t, id);
                }
                for f in &p.flow_ids {
                    self.by_flow_id.insert(f.clone(), id);
                }
                if let Some(target) = self.pending.get_mut(&id) {
                    target.traces.extend(p.traces);
                    target.trace_ids.extend(p.trace_ids);
                    target.flow_ids.extend(p.flow_ids);
                    target.stages.extend(p.stages);
                    target.see_root(p.first_root);
                    target.flow = target.flow.take().or(p.flow);
                    target.first_arrival = target.first_arrival.min(p.first_arrival);
                }
            }
        }
        self.by_trace.insert(trace_id, id);
        for f in &flow_ids {
            self.by_flow_id.insert(f.clone(), id);
        }
        if let Some(target) = self.pending.get_mut(&id) {
            target.flow = target
                .flow
                .take()
                .or_else(|| spans.iter().find_map(|s| s.business.flow.clone()));
            target
                .stages
                .extend(spans.iter().filter_map(|s| s.business.stage.clone()));
            target.see_root(root_of(&spans));
            target.trace_ids.push(trace_id);
            target.flow_ids.extend(flow_ids);
            target.traces.push(spans);
            target.last_arrival = now;
        }

        let mut out = Vec::new();
        while self.pending.len() > self.settings.max_pending {
            let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(id, p)| (p.first_arrival, **id))
                .map(|(id, _)| *id)
            else {
                break;
            };
            out.extend(self.finish(oldest, Some(BUFFER_FULL)));
        }
        out
    }

    /// The flows that are final at `now`.
    pub(crate) fn finish_idle(&mut self, now: Instant) -> Vec<FinishedFlow> {
        let ready: Vec<(u64, Option<&'static str>)> = self
            .pending
            .iter()
            .filter_map(|(id, p)| {
                if now.saturating_duration_since(p.last_arrival) < self.settings.flow_idle {
                    return None;
                }
                let terminal = p
                    .flow
                    .as_deref()
                    .and_then(|f| self.settings.terminal_stages.get(f));
                match terminal {
                    Some(stage) if !p.failed() && !p.stages.iter().any(|s| &**s == stage) => {
                        let timed_out = now.saturating_duration_since(p.first_arrival)
                            >= self.settings.flow_timeout;
                        timed_out.then_some((*id, Some(TERMINAL_STAGE_MISSING)))
                    }
                    _ => Some((*id, None)),
                }
            })
            .collect();
        ready
            .into_iter()
            .filter_map(|(id, reason)| self.finish(id, reason))
            .collect()
    }

    /// Whether the flow of trace `id` is waiting here.
    pub(crate) fn waits_for(&self, id: TraceId) -> bool {
        self.by_trace.contains_key(&id)
    }

    /// Adds `span`, which arrived at `now` after its trace was handed on,
    /// to that trace if the trace's flow is still waiting, and says whether
    /// it did (if not, the span is late: the caller counts it dropped).
    pub(crate) fn add_late(&mut self, span: Span, now: Instant) -> bool {
        let Some(&id) = self.by_trace.get(&span.trace_id) else {
            return false;
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return false;
        };
        let Some(at) = p.trace_ids.iter().position(|t| *t == span.trace_id) else {
            return false;
        };
        if let Some(flow_id) = &span.business.flow_id
            && p.flow_ids.insert(flow_id.clone())
        {
            self.by_flow_id.entry(flow_id.clone()).or_insert(id);
        }
        if let Some(stage) = &span.business.stage {
            p.stages.insert(stage.clone());
        }
        if p.flow.is_none() {
            p.flow = span.business.flow.clone();
        }
        p.last_arrival = p.last_arrival.max(now);
        let trace = &mut p.traces[at];
        trace.push(span);
        let root = root_of(trace);
        p.see_root(root);
        true
    }

    /// The waiting flows, arrival times as ages, for a snapshot.
    pub(crate) fn snapshot(&self, now: Instant) -> Vec<crate::format::v1::PendingFlow> {
        let mut ids: Vec<&u64> = self.pending.keys().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.pending.get(id))
            .map(|p| crate::format::v1::PendingFlow {
                traces: p.traces.iter().map(|t| crate::span::to_v1(t)).collect(),
                trace_ids: p.trace_ids.iter().map(|t| t.0).collect(),
                flow_ids: p.flow_ids.iter().cloned().collect(),
                flow: p.flow.clone(),
                stages: p.stages.iter().cloned().collect(),
                first_root: p.first_root,
                first_age_ns: crate::ages::age_ns(now, p.first_arrival),
                last_age_ns: crate::ages::age_ns(now, p.last_arrival),
            })
            .collect()
    }

    /// Takes back the flows [`FlowBuffer::snapshot`] kept, into an empty
    /// buffer.
    pub(crate) fn restore(
        &mut self,
        pending: Vec<crate::format::v1::PendingFlow>,
        ago: &crate::ages::Ago,
    ) {
        for p in pending {
            let id = self.next;
            self.next += 1;
            let trace_ids: Vec<TraceId> = p.trace_ids.into_iter().map(TraceId).collect();
            for t in &trace_ids {
                self.by_trace.insert(*t, id);
            }
            for f in &p.flow_ids {
                self.by_flow_id.insert(f.clone(), id);
            }
            self.pending.insert(
                id,
                Pending {
                    traces: p.traces.into_iter().map(crate::span::from_v1).collect(),
                    trace_ids,
                    flow_ids: p.flow_ids.into_iter().collect(),
                    flow: p.flow,
                    stages: p.stages.into_iter().collect(),
                    first_root: p.first_root,
                    first_arrival: ago.instant(p.first_age_ns),
                    last_arrival: ago.instant(p.last_age_ns),
                },
            );
        }
    }

    /// Every waiting flow, final now (at shutdown).
    pub(crate) fn drain(&mut self) -> Vec<FinishedFlow> {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.finish(id, None))
            .collect()
    }

    fn finish(&mut self, id: u64, incomplete: Option<&'static str>) -> Option<FinishedFlow> {
        let p = self.pending.remove(&id)?;
        for t in &p.trace_ids {
            self.by_trace.remove(t);
        }
        for f in &p.flow_ids {
            if self.by_flow_id.get(f) == Some(&id) {
                self.by_flow_id.remove(f);
            }
        }
        Some(FinishedFlow {
            traces: p.traces,
            incomplete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Link;
    use crate::testing::{span, stage};

    fn trace(id: u8, flow_id: Option<&str>, flow: Option<&str>, stage_name: &str) -> Vec<Span> {
        let mut s = stage(span(stage_name, 0, 1));
        s.trace_id = TraceId([id; 16]);
        s.business.flow_id = flow_id.map(Arc::from);
        s.business.flow = flow.map(Arc::from);
        vec![s]
    }

    fn settings() -> FlowSettings {
        FlowSettings {
            flow_idle: Duration::from_secs(30),
            flow_timeout: Duration::from_secs(120),
            terminal_stages: HashMap::from([("checkout".into(), "payment.confirm".into())]),
            ..Default::default()
        }
    }

    #[test]
    fn a_trace_without_flow_id_or_links_is_final_at_once() {
        let mut buf = FlowBuffer::new(settings());
        let out = buf.add(trace(1, None, None, "x.y"), Instant::now());
        assert_eq!(out.len(), 1);
        assert_eq!(buf.pending(), 0);
    }

    #[test]
    fn traces_sharing_a_flow_id_wait_for_each_other_until_idle() {
        let mut buf = FlowBuffer::new(settings());
        let t0 = Instant::now();
        assert!(
            buf.add(
                trace(1, Some("ord_1"), Some("checkout"), "order.create"),
                t0
            )
            .is_empty()
        );
        let later = t0 + Duration::from_secs(20);
        assert!(
            buf.add(trace(2, Some("ord_1"), None, "payment.confirm"), later)
                .is_empty()
        );
        assert!(
            buf.finish_idle(t0 + Duration::from_secs(40)).is_empty(),
            "idle counts from the last trace"
        );
        let done = buf.finish_idle(t0 + Duration::from_secs(50));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].traces.len(), 2);
        assert_eq!(done[0].incomplete, None);
    }

    #[test]
    fn a_link_joins_a_waiting_flow() {
        let mut buf = FlowBuffer::new(settings());
        let t0 = Instant::now();
        let first = trace(1, Some("ord_1"), Some("checkout"), "channel.request");
        let target = Link {
            trace_id: first[0].trace_id,
            span_id: first[0].span_id,
        };
        buf.add(first, t0);
        let mut callback = trace(2, None, None, "payment.confirm");
        callback[0].links.push(target);
        assert!(buf.add(callback, t0).is_empty());
        let done = buf.finish_idle(t0 + Duration::from_secs(30));
        assert_eq!(done[0].traces.len(), 2);
    }

    #[test]
    fn a_missing_terminal_stage_waits_for_the_timeout_then_is_incomplete() {
        let mut buf = FlowBuffer::new(settings());
        let t0 = Instant::now();
        buf.add(
            trace(1, Some("ord_9"), Some("checkout"), "order.create"),
            t0,
        );
        assert!(buf.finish_idle(t0 + Duration::from_secs(60)).is_empty());
        let done = buf.finish_idle(t0 + Duration::from_secs(120));
        assert_eq!(done[0].incomplete, Some(TERMINAL_STAGE_MISSING));
    }

    #[test]
    fn a_failed_flow_is_final_once_idle_not_incomplete() {
        let mut buf = FlowBuffer::new(settings());
        let t0 = Instant::now();
        let mut failed = trace(1, Some("ord_8"), Some("checkout"), "order.create");
        failed[0].is_error = true;
        buf.add(failed, t0);
        assert!(buf.finish_idle(t0 + Duration::from_secs(29)).is_empty());
        let done = buf.finish_idle(t0 + Duration::from_secs(30));
        assert_eq!(done.len(), 1, "final at flow_idle, not at flow_timeout");
        assert_eq!(done[0].incomplete, None);
    }

    #[test]
    fn a_late_span_joins_its_trace_while_the_flow_waits() {
        let mut buf = FlowBuffer::new(settings());
        let t0 = Instant::now();
        // The trace was handed on without its root: only a child had come.
        let mut child = stage(span("inventory.try", 10, 20));
        child.trace_id = TraceId([1; 16]);
        child.parent_span_id = Some(crate::span::SpanId([9; 8]));
        child.business.flow_id = Some("ord_1".into());
        buf.add(vec![child], t0);
        // Its root, failed, comes 8 s later, as a slow batch exporter sends it.
        let mut root = stage(span("checkout", 0, 30));
        root.trace_id = TraceId([1; 16]);
        root.span_id = crate::span::SpanId([9; 8]);
        root.business.flow = Some("checkout".into());
        root.is_error = true;
        let late = t0 + Duration::from_secs(8);
        assert!(buf.add_late(root, late));
        // Idle counts from the late span; the failed root makes it final
        // then, without waiting for the terminal stage.
        assert!(buf.finish_idle(t0 + Duration::from_secs(30)).is_empty());
        let done = buf.finish_idle(late + Duration::from_secs(30));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].traces[0].len(), 2);
        assert_eq!(done[0].incomplete, None);
        // A span of a trace no flow waits for is given back.
        let mut stray = span("x", 0, 1);
        stray.trace_id = TraceId([5; 16]);
        assert!(!buf.add_late(stray, late));
    }

    #[test]
    fn a_full_buffer_pushes_out_the_oldest_flow() {
        let mut buf = FlowBuffer::new(FlowSettings {
            max_pending: 1,
            ..settings()
        });
        let t0 = Instant::now();
        buf.add(trace(1, Some("a"), None, "x.y"), t0);
        let out = buf.add(
            trace(2, Some("b"), None, "x.y"),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].incomplete, Some(BUFFER_FULL));
        assert_eq!(buf.pending(), 1);
    }
}
