//! Grouping spans into traces, and traces into flow instances: traces joined
//! by span links, or sharing a `paytrace.flow_id`, are one flow.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::span::{Span, TraceId};

/// The spans of each trace.
///
/// ```
/// use paytrace_aggregator::stitch::group_traces;
/// use paytrace_aggregator::testing::span;
/// assert_eq!(group_traces(vec![span("a", 0, 1), span("b", 1, 2)]).len(), 1);
/// ```
pub fn group_traces(spans: Vec<Span>) -> BTreeMap<TraceId, Vec<Span>> {
    let mut traces: BTreeMap<TraceId, Vec<Span>> = BTreeMap::new();
    for span in spans {
        traces.entry(span.trace_id).or_default().push(span);
    }
    traces
}

/// Groups traces into flow instances: a link from one trace to another, or
/// a shared flow id, puts them in one flow. Flows come out in the order of
/// their first trace id.
pub fn group_flows(traces: BTreeMap<TraceId, Vec<Span>>) -> Vec<Vec<Vec<Span>>> {
    let ids: Vec<TraceId> = traces.keys().copied().collect();
    let index: HashMap<TraceId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut sets = DisjointSets::new(ids.len());
    let mut by_flow_id: HashMap<Arc<str>, usize> = HashMap::new();
    for (i, spans) in traces.values().enumerate() {
        for span in spans {
            for link in &span.links {
                if let Some(&j) = index.get(&link.trace_id) {
                    sets.union(i, j);
                }
            }
            if let Some(flow_id) = &span.business.flow_id {
                let first = *by_flow_id.entry(flow_id.clone()).or_insert(i);
                sets.union(i, first);
            }
        }
    }
    let mut flows: BTreeMap<usize, Vec<Vec<Span>>> = BTreeMap::new();
    for (i, (_, spans)) in traces.into_iter().enumerate() {
        flows.entry(sets.find(i)).or_default().push(spans);
    }
    flows.into_values().collect()
}

/// Union-find with path halving and union by size.
#[derive(Debug)]
pub(crate) struct DisjointSets {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl DisjointSets {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    pub(crate) fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    pub(crate) fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a;
        self.size[a] += self.size[b];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Link;
    use crate::testing::span;

    fn in_trace(mut s: Span, id: u8) -> Span {
        s.trace_id = TraceId([id; 16]);
        s
    }

    #[test]
    fn links_and_flow_ids_join_traces() {
        let a = in_trace(span("a", 0, 1), 1);
        let mut b = in_trace(span("b", 2, 3), 2);
        b.links.push(Link {
            trace_id: a.trace_id,
            span_id: a.span_id,
        });
        let mut c = in_trace(span("c", 0, 1), 3);
        c.business.flow_id = Some("ord_1".into());
        let mut d = in_trace(span("d", 5, 6), 4);
        d.business.flow_id = Some("ord_1".into());
        let e = in_trace(span("e", 0, 1), 5);
        let flows = group_flows(group_traces(vec![a, b, c, d, e]));
        let sizes: Vec<usize> = flows.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }
}
