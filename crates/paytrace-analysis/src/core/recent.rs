//! The recent instances of each flow, for the slow-flows view: the newest
//! few hundred analyses, and the spans of the slowest and newest of them.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::critical_path::FlowAnalysis;
use crate::span::Span;

const RECENT_PER_FLOW: usize = 500;
/// Recent instances per flow that keep their spans (for the waterfall):
/// the slowest, and always the newest few.
pub(crate) const HELD_PER_FLOW: usize = 100;
const NEWEST_HELD: usize = 20;
pub(crate) const RELEASE_SLACK: usize = 20;

/// The recent instances of one flow, oldest first, and how many hold spans.
#[derive(Clone, Debug, Default)]
pub(crate) struct RecentFlows {
    /// Shared with the published view ([`super::View`]): copying the list
    /// copies pointers, and an instance whose spans are let go is copied
    /// first if the view still holds it.
    pub(crate) items: VecDeque<Arc<Recent>>,
    pub(crate) held: usize,
}

/// A recent flow instance: its analysis and, while held, its spans.
#[derive(Debug)]
pub(crate) struct Recent {
    /// Shared between the copies with and without the spans.
    pub(crate) analysis: Arc<FlowAnalysis>,
    pub(crate) spans: Option<Vec<Vec<Span>>>,
}

impl RecentFlows {
    /// Keeps `analysis` (and, for now, its spans) as the newest instance.
    pub(crate) fn push(&mut self, analysis: FlowAnalysis, spans: Vec<Vec<Span>>) {
        if self.items.len() >= RECENT_PER_FLOW
            && self.items.pop_front().is_some_and(|r| r.spans.is_some())
        {
            self.held -= 1;
        }
        self.items.push_back(Arc::new(Recent {
            analysis: Arc::new(analysis),
            spans: Some(spans),
        }));
        self.held += 1;
        release_spans(self);
    }
}

/// Keeps the spans of about [`HELD_PER_FLOW`] instances: once
/// [`RELEASE_SLACK`] more hold theirs, the fastest of those that are not
/// among the newest [`NEWEST_HELD`] let go, in one pass (amortised O(1) per
/// recorded instance).
fn release_spans(recent: &mut RecentFlows) {
    if recent.held <= HELD_PER_FLOW + RELEASE_SLACK {
        return;
    }
    let older = recent.items.len().saturating_sub(NEWEST_HELD);
    let mut candidates: Vec<(u64, usize)> = recent
        .items
        .iter()
        .take(older)
        .enumerate()
        .filter(|(_, r)| r.spans.is_some())
        .map(|(i, r)| (r.analysis.duration_ns(), i))
        .collect();
    let excess = (recent.held - HELD_PER_FLOW).min(candidates.len());
    if excess == 0 {
        return;
    }
    candidates.select_nth_unstable(excess - 1);
    for &(_, i) in &candidates[..excess] {
        let item = &mut recent.items[i];
        match Arc::get_mut(item) {
            Some(only) => only.spans = None,
            // The published view still holds it: a copy without the spans
            // (`make_mut` would copy every span only to drop them).
            None => {
                *item = Arc::new(Recent {
                    analysis: Arc::clone(&item.analysis),
                    spans: None,
                });
            }
        }
    }
    recent.held -= excess;
}

impl From<&RecentFlows> for crate::format::v1::RecentFlows {
    fn from(r: &RecentFlows) -> Self {
        use crate::format::v1;
        Self {
            items: r
                .items
                .iter()
                .map(|item| v1::Recent {
                    analysis: item.analysis.as_ref().into(),
                    spans: item
                        .spans
                        .as_ref()
                        .map(|traces| traces.iter().map(|t| crate::span::to_v1(t)).collect()),
                })
                .collect(),
            held: r.held,
        }
    }
}

impl From<crate::format::v1::RecentFlows> for RecentFlows {
    fn from(r: crate::format::v1::RecentFlows) -> Self {
        Self {
            items: r
                .items
                .into_iter()
                .map(|item| {
                    Arc::new(Recent {
                        analysis: Arc::new(item.analysis.into()),
                        spans: item
                            .spans
                            .map(|traces| traces.into_iter().map(crate::span::from_v1).collect()),
                    })
                })
                .collect(),
            held: r.held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::critical_path::analyze_flow;
    use crate::testing::{numbered, span};

    fn push(recent: &mut RecentFlows, ms: u64) {
        let spans = vec![numbered(vec![span("root", 0, ms * 1_000_000)])];
        let analysis = analyze_flow(&spans).expect("one trace");
        recent.push(analysis, spans);
    }

    /// An instance the published view still holds keeps its spans there
    /// when the core lets them go, and the core's copy holds none.
    #[test]
    fn spans_let_go_stay_with_the_view_that_holds_them() {
        let mut recent = RecentFlows::default();
        // Slowest first: the oldest instances are the fastest to let go.
        for i in 0..(HELD_PER_FLOW + RELEASE_SLACK) as u64 {
            push(&mut recent, 1_000 - i);
        }
        let view = recent.clone();
        assert_eq!(recent.held, HELD_PER_FLOW + RELEASE_SLACK);
        push(&mut recent, 1);
        assert_eq!(recent.held, HELD_PER_FLOW);
        let released: Vec<usize> = (0..view.items.len())
            .filter(|&i| recent.items[i].spans.is_none())
            .collect();
        assert_eq!(released.len(), RELEASE_SLACK + 1);
        for i in released {
            assert!(
                view.items[i].spans.is_some(),
                "the view keeps instance {i}'s spans"
            );
            assert_eq!(
                recent.items[i].analysis.duration_ns(),
                view.items[i].analysis.duration_ns()
            );
        }
    }
}
