//! One trace as a tree, and the walks over it: critical path and self time.
//!
//! The critical path is the chain of work the root's end waits on (Uber's
//! CRISP, Jaeger's critical-path view): from the root's end, walk back to the
//! child that finished last at or before that point, recurse into it, and
//! continue from its start; the gaps are the parent's own time.
//!
//! - Children are clipped to their parent's interval (clock skew between
//!   services must not make a child look longer than its caller); the part of
//!   a child past its parent's end does not block the parent, and a child
//!   entirely outside its parent is not on the path at all.
//! - Clocks of different hosts disagree: a server span of another service
//!   than its parent's that lies outside the parent by more than the clock
//!   tolerance is moved, with its subtree, to fit ([`skew_adjustment`]);
//!   the move is reported ([`Tree::skews`]) so that the skewed service can
//!   be named.
//! - A span whose parent is not in the trace (lost, or sampled out) hangs off
//!   the root; so does a span caught in a parent cycle.
//! - Clocks are coarse: the OpenTelemetry JS SDK starts spans on whole
//!   milliseconds (`Date.now()`) and ends them at start plus a precise
//!   duration, so a stage that ran strictly after its sibling can appear to
//!   start up to 1 ms before the sibling ended; proxies, browsers and small
//!   skew between hosts do the same. A child that ends after the walk point
//!   by no more than the *clock tolerance* (and started before it) is taken
//!   as having ended at the walk point: the sequential sibling stays on the
//!   path, and at most the tolerance is moved between the two. Without it the
//!   walk would skip the sibling and hand its whole duration to the parent's
//!   self time. See [`DEFAULT_CLOCK_TOLERANCE_NS`].
//! - Everything is iterative: a 10,000-deep chain needs no deep stack.

use std::sync::Arc;

use crate::span::{Span, SpanId};

/// The default clock tolerance of the critical-path walk: 1 ms, the
/// resolution of the clocks that start spans in the OpenTelemetry JS SDK
/// and in browsers, and more than the skew NTP leaves between hosts of one
/// data centre. A child ending at most this long after the walk point counts
/// as ended at it.
pub(crate) const DEFAULT_CLOCK_TOLERANCE_NS: u64 = 1_000_000;

/// A piece of the critical path: `span` was doing its own work from
/// `start_ns` to `end_ns`, and the root's end waited on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Index of the span in the trace's span slice.
    pub span: usize,
    /// Start of the piece, ns since the epoch.
    pub start_ns: u64,
    /// End of the piece.
    pub end_ns: u64,
}

/// A trace's spans arranged as a tree rooted at one span.
#[derive(Debug)]
pub(crate) struct Tree<'a> {
    spans: &'a [Span],
    root: usize,
    parent: Vec<Option<usize>>,
    /// Children of each span, sorted by the end of their window.
    children: Children,
    /// Each span's interval clipped to its parent's window; `None` when it
    /// lies entirely outside (then its subtree is off the critical path).
    window: Vec<Option<(u64, u64)>>,
    /// The root's stage name when it has no `paytrace.stage`, made once.
    root_stage: Option<Arc<str>>,
    /// How far past the walk point a child may end and still be followed.
    tolerance_ns: u64,
    /// The children moved to fit their parents.
    skews: Vec<Skew>,
    /// How far each span was moved (ns), when any was.
    shift: Option<Box<[i64]>>,
}

/// A span of another service than its parent's that lay outside its
/// parent, moved (with its subtree) to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Skew {
    /// The span moved.
    pub span: usize,
    /// How far its service's clock is estimated to be ahead of its
    /// parent's (negative: behind), in ns: the span was moved by minus this.
    pub offset_ns: i64,
}

/// How far to move `child` (ns, with its subtree) so that it fits inside
/// `parent`: 0 unless the two are of different services, the child is the
/// server side of a call (kind SERVER, or its parent a CLIENT), and it
/// lies outside the parent by more than `tolerance_ns` at either end. Then
/// a child no longer than its parent is centred in it (the request's and
/// the response's network time taken as equal); a longer child starts
/// with its parent.
pub(crate) fn skew_adjustment(parent: &Span, child: &Span, tolerance_ns: u64) -> i64 {
    use crate::span::SpanKind;
    let a_call =
        child.business.kind == SpanKind::Server || parent.business.kind == SpanKind::Client;
    let overflows = child.start_ns.saturating_add(tolerance_ns) < parent.start_ns
        || child.end_ns > parent.end_ns.saturating_add(tolerance_ns);
    if !a_call || !overflows || child.service == parent.service {
        return 0;
    }
    let (pd, cd) = (parent.duration_ns(), child.duration_ns());
    let target = if cd > pd {
        parent.start_ns
    } else {
        parent.start_ns + (pd - cd) / 2
    };
    let adjust = i128::from(target) - i128::from(child.start_ns);
    i64::try_from(adjust).unwrap_or(if adjust < 0 { i64::MIN } else { i64::MAX })
}

impl<'a> Tree<'a> {
    /// Builds the tree with exact timestamps (no clock tolerance). `spans`
    /// must not be empty.
    ///
    /// The root is the earliest-starting span without a parent id (the
    /// longest on ties); if every span names a parent, the earliest-starting
    /// span. Spans whose parent is missing hang off the root.
    #[cfg(test)]
    pub(crate) fn new(spans: &'a [Span]) -> Self {
        Self::with_tolerance(spans, 0)
    }

    /// Builds the tree; the critical-path walk follows a child that ended
    /// up to `tolerance_ns` after the walk point as if it had ended there
    /// (see the module docs).
    pub(crate) fn with_tolerance(spans: &'a [Span], tolerance_ns: u64) -> Self {
        assert!(!spans.is_empty(), "a tree needs at least one span");
        let n = spans.len();
        // Span id -> first index with it, as a sorted list: no hashing, one
        // allocation.
        let mut by_id: Vec<(SpanId, usize)> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id, i))
            .collect();
        by_id.sort_unstable();
        let find = |id: SpanId| -> Option<usize> {
            let at = by_id.partition_point(|(s, _)| *s < id);
            by_id.get(at).filter(|(s, _)| *s == id).map(|(_, i)| *i)
        };
        let root = choose_root(spans);

        // Parent pointers, with missing parents hanging off the root.
        let mut parent: Vec<Option<usize>> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == root {
                    return None;
                }
                match s.parent_span_id.and_then(find) {
                    Some(p) if p != i => Some(p),
                    _ => Some(root),
                }
            })
            .collect();

        // Break cycles: anything not reachable from the root hangs off it.
        let mut children = Children::from_parents(&parent);
        let mut reached = vec![false; n];
        let mut order = Vec::with_capacity(n);
        visit(root, &children, &mut reached, &mut order);
        if order.len() < n {
            for i in 0..n {
                if !reached[i] {
                    parent[i] = Some(root);
                    // `i`'s own children are unchanged by the move.
                    visit(i, &children, &mut reached, &mut order);
                }
            }
            children = Children::from_parents(&parent);
        }

        // Windows, parents before children (`order` is a pre-order), on
        // clocks corrected for skew between services.
        let mut window: Vec<Option<(u64, u64)>> = vec![None; n];
        // Allocated at the first skewed span (spans before it have none).
        let mut shift: Option<Box<[i64]>> = None;
        let mut skews = Vec::new();
        for &i in &order {
            let s = &spans[i];
            window[i] = match parent[i] {
                None => Some((s.start_ns, s.end_ns)),
                Some(p) => {
                    let adjust = skew_adjustment(&spans[p], s, tolerance_ns);
                    if adjust != 0 {
                        skews.push(Skew {
                            span: i,
                            offset_ns: adjust.saturating_neg(),
                        });
                        shift.get_or_insert_with(|| vec![0; n].into_boxed_slice());
                    }
                    let mine = match &mut shift {
                        Some(shift) => {
                            shift[i] = shift[p].saturating_add(adjust);
                            shift[i]
                        }
                        None => 0,
                    };
                    let (ss, se) = (
                        s.start_ns.saturating_add_signed(mine),
                        s.end_ns.saturating_add_signed(mine),
                    );
                    window[p].and_then(|(ps, pe)| {
                        let (cs, ce) = (ss.max(ps), se.min(pe));
                        (cs <= ce && ss <= pe && se >= ps).then_some((cs, ce))
                    })
                }
            };
        }
        for i in 0..n {
            children
                .of_mut(i)
                .sort_by_key(|&c| (window[c].map_or(0, |w| w.1), spans[c].span_id, c));
        }
        let root_stage = match &spans[root].business.stage {
            Some(_) => None,
            None => Some(plain_stage_name(&spans[root])),
        };
        Self {
            spans,
            root,
            parent,
            children,
            window,
            root_stage,
            tolerance_ns,
            skews,
            shift,
        }
    }

    /// Span `i`'s start on the trace's corrected clock (its own start unless
    /// it or an ancestor was moved for skew).
    pub(crate) fn start_ns(&self, i: usize) -> u64 {
        let s = self.spans[i].start_ns;
        self.shift
            .as_ref()
            .map_or(s, |v| s.saturating_add_signed(v[i]))
    }

    /// Span `i`'s end on the trace's corrected clock.
    pub(crate) fn end_ns(&self, i: usize) -> u64 {
        let e = self.spans[i].end_ns;
        self.shift
            .as_ref()
            .map_or(e, |v| e.saturating_add_signed(v[i]))
    }

    /// The spans whose clocks were corrected for skew (see
    /// [`skew_adjustment`]), with the offset estimated for each.
    pub(crate) fn skews(&self) -> &[Skew] {
        &self.skews
    }

    /// The root span's index.
    pub(crate) fn root(&self) -> usize {
        self.root
    }

    /// The spans, as given.
    pub(crate) fn spans(&self) -> &'a [Span] {
        self.spans
    }

    /// The tree parent of span `i` (after orphans were re-hung).
    pub(crate) fn parent(&self, i: usize) -> Option<usize> {
        self.parent[i]
    }

    /// The critical path from the root's end back to its start, latest first.
    #[cfg(test)]
    pub(crate) fn critical_path(&self) -> Vec<Segment> {
        let mut segments = Vec::new();
        let root_end = self.window[self.root].map_or(0, |w| w.1);
        self.walk(vec![self.frame(self.root, root_end, None)], &mut segments);
        segments
    }

    /// The critical path that ends at span `from` (rather than at the root's
    /// end), and not after `until`: the work `from`'s end waited on, then
    /// what its ancestors did before starting the branch that led to it.
    /// Used for flows whose next trace was triggered from `from`.
    ///
    /// Returns the time the walk starts from (`from`'s end, clipped to the
    /// tree and to `until`) and the segments, which cover from there back to
    /// the root's start.
    pub(crate) fn critical_path_to(&self, from: usize, until: u64) -> (u64, Vec<Segment>) {
        // The first ancestor-or-self on the tree's timeline that had begun
        // by `from`'s end: the walk continues there (a span that ended
        // before its parent began hands on to an ancestor that had).
        let mut t = self.end_ns(from).min(until);
        let mut anchor = from;
        loop {
            match self.window[anchor] {
                Some((ws, we)) if ws <= t => {
                    t = t.min(we);
                    break;
                }
                _ => match self.parent[anchor] {
                    Some(p) => anchor = p,
                    None => return (until, Vec::new()),
                },
            }
        }
        // Ancestors resume from the start of the branch that leads to `from`.
        let mut chain = vec![anchor];
        while let Some(p) = self.parent[*chain.last().unwrap_or(&anchor)] {
            chain.push(p);
        }
        let mut frames: Vec<Frame> = Vec::with_capacity(chain.len() + 8);
        for pair in chain.windows(2).rev() {
            let (child, ancestor) = (pair[0], pair[1]);
            let resume = self.window[child].map_or(t, |w| w.0);
            frames.push(self.frame(ancestor, resume, Some(child)));
        }
        frames.push(self.frame(anchor, t, None));
        let mut segments = Vec::with_capacity(self.spans.len() + 1);
        self.walk(frames, &mut segments);
        (t, segments)
    }

    /// Critical-path time of each span (its own work on the path), indexed
    /// like the spans. Sums to the root's duration.
    #[cfg(test)]
    pub(crate) fn critical_path_by_span(&self) -> Vec<u64> {
        let mut by_span = vec![0; self.spans.len()];
        for s in self.critical_path() {
            by_span[s.span] += s.end_ns - s.start_ns;
        }
        by_span
    }

    fn frame(&self, span: usize, t: u64, skip: Option<usize>) -> Frame {
        Frame {
            span,
            t,
            next: self.children.of(span).len(),
            skip,
        }
    }

    fn walk(&self, mut stack: Vec<Frame>, segments: &mut Vec<Segment>) {
        while let Some(frame) = stack.last_mut() {
            let Some((ws, _)) = self.window[frame.span] else {
                stack.pop();
                continue;
            };
            let children = self.children.of(frame.span);
            // The child that finished last at or before `t`, or within the
            // clock tolerance after it (then taken as ending at `t`).
            let limit = frame.t.saturating_add(self.tolerance_ns);
            let mut found = None;
            while frame.next > 0 && frame.t > ws {
                frame.next -= 1;
                let c = children[frame.next];
                if Some(c) == frame.skip {
                    continue;
                }
                if let Some((cs, ce)) = self.window[c]
                    && ce <= limit
                    && (ce <= frame.t || cs < frame.t)
                {
                    found = Some((c, cs, ce.min(frame.t)));
                    break;
                }
            }
            match found {
                Some((c, cs, ce)) => {
                    if frame.t > ce {
                        segments.push(Segment {
                            span: frame.span,
                            start_ns: ce,
                            end_ns: frame.t,
                        });
                    }
                    frame.t = cs;
                    let child = self.frame(c, ce, None);
                    stack.push(child);
                }
                None => {
                    if frame.t > ws {
                        segments.push(Segment {
                            span: frame.span,
                            start_ns: ws,
                            end_ns: frame.t,
                        });
                    }
                    stack.pop();
                }
            }
        }
    }

    /// The nearest ancestor-or-self of each span for which `is_stage` holds;
    /// the root always counts as a stage.
    pub(crate) fn nearest_stage(&self, is_stage: impl Fn(usize) -> bool) -> Vec<usize> {
        let n = self.spans.len();
        let mut nearest = vec![usize::MAX; n];
        let mut path = Vec::new();
        // Parents before children: resolve along each span's ancestor path.
        for i in 0..n {
            if nearest[i] != usize::MAX {
                continue;
            }
            path.clear();
            let mut cur = i;
            let found = loop {
                if nearest[cur] != usize::MAX {
                    break nearest[cur];
                }
                if cur == self.root || is_stage(cur) {
                    nearest[cur] = cur;
                    break cur;
                }
                path.push(cur);
                match self.parent[cur] {
                    Some(p) => cur = p,
                    None => break self.root,
                }
            };
            for &p in &path {
                nearest[p] = found;
            }
        }
        nearest
    }

    /// Self time of each stage span: its duration minus the union of its
    /// children's intervals (clipped to it), whatever the children are.
    /// Indexed like the spans; 0 for spans that are not stages.
    pub(crate) fn stage_self_time(&self, nearest_stage: &[usize]) -> Vec<u64> {
        let mut intervals: Vec<(u64, u64)> = Vec::new();
        (0..self.spans.len())
            .map(|i| {
                if nearest_stage[i] != i {
                    return 0;
                }
                let (ss, se) = (self.start_ns(i), self.end_ns(i));
                intervals.clear();
                intervals.extend(self.children.of(i).iter().filter_map(|&c| {
                    let (cs, ce) = (self.start_ns(c).max(ss), self.end_ns(c).min(se));
                    (cs < ce).then_some((cs, ce))
                }));
                self.spans[i].duration_ns() - union_length(&mut intervals)
            })
            .collect()
    }

    /// The stage name of span `i`: its `paytrace.stage`, or for a span
    /// without one (the root, an auto-instrumented server span),
    /// `"{service.name} {operation}"` where the HTTP or RPC attributes name
    /// the operation (`"payment POST /pay"`), else `"{service.name} {span name}"`.
    pub(crate) fn stage_name(&self, i: usize) -> Arc<str> {
        let s = &self.spans[i];
        match (&s.business.stage, &self.root_stage) {
            (Some(stage), _) => stage.clone(),
            (None, Some(root_stage)) if i == self.root => root_stage.clone(),
            (None, _) => plain_stage_name(s),
        }
    }
}

/// The stage name of a span without `paytrace.stage`.
fn plain_stage_name(s: &Span) -> Arc<str> {
    let operation = s.business.operation.as_deref().unwrap_or(&s.name);
    format!("{} {operation}", s.service).into()
}

#[derive(Debug)]
struct Frame {
    span: usize,
    /// The walk's current time in this span: everything after it is done.
    t: u64,
    /// Children at indices `next..` were already considered.
    next: usize,
    /// A child to pass over (the branch a resumed ancestor came from).
    skip: Option<usize>,
}

/// Pre-order walk from `start` over spans not yet reached.
/// The children of every span in one allocation: span `i`'s are
/// `list[offsets[i]..offsets[i + 1]]`, in index order until sorted.
#[derive(Debug)]
struct Children {
    offsets: Vec<usize>,
    list: Vec<usize>,
}

impl Children {
    fn from_parents(parent: &[Option<usize>]) -> Self {
        let n = parent.len();
        let mut offsets = vec![0; n + 1];
        for &p in parent.iter().flatten() {
            offsets[p + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut list = vec![0; offsets[n]];
        // Fill each span's range from its start, moving the start along:
        // afterwards each start is where the next span's range begins, so
        // shifting the offsets by one puts them back.
        for (i, p) in parent.iter().enumerate() {
            if let Some(p) = *p {
                list[offsets[p]] = i;
                offsets[p] += 1;
            }
        }
        offsets.copy_within(0..n, 1);
        offsets[0] = 0;
        Self { offsets, list }
    }

    fn of(&self, i: usize) -> &[usize] {
        &self.list[self.offsets[i]..self.offsets[i + 1]]
    }

    fn of_mut(&mut self, i: usize) -> &mut [usize] {
        &mut self.list[self.offsets[i]..self.offsets[i + 1]]
    }
}

fn visit(start: usize, children: &Children, reached: &mut [bool], order: &mut Vec<usize>) {
    let mut stack = vec![start];
    reached[start] = true;
    while let Some(s) = stack.pop() {
        order.push(s);
        for &c in children.of(s) {
            if !reached[c] {
                reached[c] = true;
                stack.push(c);
            }
        }
    }
}

/// The index of the span [`Tree::new`] takes as the root of `spans`: the
/// earliest-starting span without a parent id (the longest on ties), else
/// the earliest-starting span; 0 for no spans.
pub(crate) fn choose_root(spans: &[Span]) -> usize {
    let best = |candidates: &mut dyn Iterator<Item = (usize, &Span)>| {
        candidates
            .min_by_key(|(i, s)| (s.start_ns, std::cmp::Reverse(s.end_ns), s.span_id, *i))
            .map(|(i, _)| i)
    };
    best(
        &mut spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.parent_span_id.is_none()),
    )
    .or_else(|| best(&mut spans.iter().enumerate()))
    .unwrap_or(0)
}

/// Total length covered by `intervals` (sorted in place).
fn union_length(intervals: &mut [(u64, u64)]) -> u64 {
    intervals.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u64, u64)> = None;
    for &(s, e) in intervals.iter() {
        match current {
            Some((cs, ce)) if s <= ce => current = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                current = Some((s, e));
            }
            None => current = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{child, numbered, span, with_parent_id};

    fn cp(spans: &[Span]) -> Vec<u64> {
        Tree::new(&numbered(spans.to_vec())).critical_path_by_span()
    }

    #[test]
    fn parallel_children_only_the_last_finisher_blocks() {
        // root 0..100; a 10..50 and b 10..80 in parallel; then c 80..95.
        let spans = vec![
            span("root", 0, 100),
            child("a", 1, 10, 50),
            child("b", 1, 10, 80),
            child("c", 1, 80, 95),
        ];
        // root: 0..10 and 95..100; b 10..80; c 80..95; a is hidden by b.
        assert_eq!(cp(&spans), vec![15, 0, 70, 15]);
    }

    #[test]
    fn nested_children_are_followed_down() {
        let spans = vec![
            span("root", 0, 100),
            child("mid", 1, 10, 90),
            child("leaf", 2, 20, 60),
        ];
        // mid: 10..20 and 60..90.
        assert_eq!(cp(&spans), vec![20, 40, 40]);
    }

    #[test]
    fn a_child_outliving_its_parent_is_clipped() {
        // The child runs 50..150 but the root ends at 100.
        let spans = vec![span("root", 0, 100), child("late", 1, 50, 150)];
        assert_eq!(cp(&spans), vec![50, 50]);
        // A child that starts after its parent ended is off the path.
        let spans = vec![span("root", 0, 100), child("after", 1, 120, 150)];
        assert_eq!(cp(&spans), vec![100, 0]);
    }

    #[test]
    fn clock_skew_is_clipped_to_the_parent() {
        // The callee's clock runs 30 ahead: it appears at 40..110 inside a
        // client span at 10..90.
        let spans = vec![
            span("root", 0, 100),
            child("client", 1, 10, 90),
            child("server", 2, 40, 110),
        ];
        assert_eq!(cp(&spans), vec![20, 30, 50]);
        assert_eq!(cp(&spans).iter().sum::<u64>(), 100);
    }

    #[test]
    fn orphans_hang_off_the_root() {
        let mut orphan = child("orphan", 1, 30, 70);
        orphan = with_parent_id(orphan, 0xdead);
        let spans = numbered(vec![span("root", 0, 100), orphan]);
        let tree = Tree::new(&spans);
        assert_eq!(tree.parent(1), Some(0));
        assert_eq!(tree.critical_path_by_span(), vec![60, 40]);
    }

    #[test]
    fn zero_length_spans_are_harmless() {
        let spans = vec![
            span("root", 0, 100),
            child("instant", 1, 50, 50),
            child("zero-root-child", 1, 100, 100),
            span("empty-root", 0, 0),
        ];
        let cp = cp(&spans);
        assert_eq!(cp.iter().sum::<u64>(), 100);
        let alone = vec![span("only", 5, 5)];
        assert_eq!(Tree::new(&alone).critical_path_by_span(), vec![0]);
    }

    #[test]
    fn a_parent_cycle_is_broken() {
        // 1 and 2 name each other as parents.
        let spans = numbered(vec![
            span("root", 0, 100),
            with_parent_id(child("x", 1, 10, 20), 3),
            with_parent_id(child("y", 1, 30, 40), 2),
        ]);
        let tree = Tree::new(&spans);
        assert_eq!(tree.critical_path_by_span().iter().sum::<u64>(), 100);
    }

    #[test]
    fn a_deep_chain_needs_no_deep_stack() {
        let depth = 10_000u64;
        let mut spans = vec![span("root", 0, 2 * depth + 2)];
        for d in 1..=depth {
            spans.push(child("link", d as usize, d, 2 * depth + 2 - d));
        }
        let by_span = cp(&spans);
        assert_eq!(by_span.iter().sum::<u64>(), 2 * depth + 2);
        assert_eq!(by_span[depth as usize], 2);
    }

    #[test]
    fn self_time_subtracts_the_union_of_the_children() {
        // stage A 0..100 has a plain span P 10..90 under it, and two stages
        // B 20..50 and C 40..70 under P. A's self time is outside P.
        let mut spans = numbered(vec![
            span("A", 0, 100),
            child("P", 1, 10, 90),
            child("B", 2, 20, 50),
            child("C", 2, 40, 70),
        ]);
        for i in [0, 2, 3] {
            let name = spans[i].name.clone();
            spans[i].business.stage = Some(name);
        }
        let tree = Tree::new(&spans);
        let nearest = tree.nearest_stage(|i| spans[i].business.stage.is_some());
        assert_eq!(nearest, vec![0, 0, 2, 3]);
        assert_eq!(tree.stage_self_time(&nearest), vec![20, 0, 30, 30]);
        // Overlapping children count once: a stage over B and C only.
        let spans = numbered(vec![
            crate::testing::stage(span("A", 0, 100)),
            child("B", 1, 20, 50),
            child("C", 1, 40, 70),
        ]);
        let tree = Tree::new(&spans);
        let nearest = tree.nearest_stage(|i| spans[i].business.stage.is_some());
        assert_eq!(tree.stage_self_time(&nearest)[0], 50);
    }

    #[test]
    fn the_path_to_a_span_resumes_its_ancestors_before_the_branch() {
        // root 0..100: a 10..30, then b 40..90 containing x 50..60.
        // The path to x: x itself, b 40..50, root 30..40, a, root 0..10.
        let spans = numbered(vec![
            span("root", 0, 100),
            child("a", 1, 10, 30),
            child("b", 1, 40, 90),
            child("x", 3, 50, 60),
        ]);
        let tree = Tree::new(&spans);
        let mut by_span = [0u64; 4];
        for s in tree.critical_path_to(3, u64::MAX).1 {
            by_span[s.span] += s.end_ns - s.start_ns;
        }
        assert_eq!(by_span, [20, 20, 10, 10]);
        assert_eq!(by_span.iter().sum::<u64>(), 60);
    }

    #[test]
    fn root_waits_on_a_then_b() {
        use crate::testing::{child, numbered, span};
        use crate::tree::Tree;

        // root 0..100 waits on a (10..40) then b (40..90).
        let spans = numbered(vec![
            span("root", 0, 100),
            child("a", 1, 10, 40),
            child("b", 1, 40, 90),
        ]);
        let tree = Tree::new(&spans);
        let cp = tree.critical_path_by_span();
        assert_eq!(cp, vec![20, 30, 50]);
    }

    #[test]
    fn tolerance_moves_the_walk_to_the_later_child() {
        use crate::testing::{child, numbered, span};
        use crate::tree::Tree;

        // a ends 400 ns after b started, as millisecond clocks make it look.
        let spans = numbered(vec![
            span("root", 0, 1000),
            child("a", 1, 0, 500),
            child("b", 1, 100, 1000),
        ]);
        assert_eq!(Tree::new(&spans).critical_path_by_span(), vec![100, 0, 900]);
        assert_eq!(
            Tree::with_tolerance(&spans, 500).critical_path_by_span(),
            vec![0, 100, 900]
        );
    }
}
