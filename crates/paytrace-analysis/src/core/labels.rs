//! Bounded label values: every flow, stage, method, channel and TCC
//! resource name used as a metric label or a key, up to a limit per label,
//! `other` past it.

use std::sync::Arc;

use paytrace_semconv::OVERFLOW_LABEL_VALUE;

use crate::critical_path::FlowAnalysis;

/// The distinct values seen per metric label, up to the label limit. Every
/// bounded value is the one `Arc` kept here, so its pointer identifies it.
#[derive(Debug)]
pub(crate) struct LabelValues {
    pub(crate) flow: crate::FastSet<Arc<str>>,
    pub(crate) payment_method: crate::FastSet<Arc<str>>,
    pub(crate) payment_channel: crate::FastSet<Arc<str>>,
    pub(crate) stage: crate::FastSet<Arc<str>>,
    /// TCC resources.
    pub(crate) resource: crate::FastSet<Arc<str>>,
    /// Services whose clocks were corrected.
    pub(crate) service: crate::FastSet<Arc<str>>,
    pub(crate) overflow: Arc<str>,
}

impl Default for LabelValues {
    fn default() -> Self {
        Self {
            flow: Default::default(),
            payment_method: Default::default(),
            payment_channel: Default::default(),
            stage: Default::default(),
            resource: Default::default(),
            service: Default::default(),
            overflow: Arc::from(OVERFLOW_LABEL_VALUE),
        }
    }
}

impl LabelValues {
    /// The kept copy of `value` in `set`, or `other` once the set holds
    /// `limit` values; a fold counts in `overflowed`.
    fn bounded(
        set: &mut crate::FastSet<Arc<str>>,
        overflow: &Arc<str>,
        value: &Arc<str>,
        limit: usize,
        overflowed: &mut u64,
    ) -> Arc<str> {
        if let Some(v) = set.get(value) {
            return v.clone();
        }
        if set.len() < limit {
            set.insert(value.clone());
            value.clone()
        } else {
            *overflowed += 1;
            overflow.clone()
        }
    }

    /// The bounded copy of a TCC resource name.
    pub(crate) fn resource(
        &mut self,
        value: &Arc<str>,
        limit: usize,
        overflowed: &mut u64,
    ) -> Arc<str> {
        Self::bounded(&mut self.resource, &self.overflow, value, limit, overflowed)
    }

    /// The bounded copy of a service name.
    pub(crate) fn service(
        &mut self,
        value: &Arc<str>,
        limit: usize,
        overflowed: &mut u64,
    ) -> Arc<str> {
        Self::bounded(&mut self.service, &self.overflow, value, limit, overflowed)
    }

    /// Bounds every name of `a` used as a label or key: its flow, payment
    /// method and channel, and its stages (stages folded into `other`
    /// become one stage of the flow).
    pub(crate) fn bound(&mut self, a: &mut FlowAnalysis, limit: usize, overflowed: &mut u64) {
        let overflow = self.overflow.clone();
        a.flow = Self::bounded(&mut self.flow, &overflow, &a.flow, limit, overflowed);
        if let Some(m) = &a.payment_method {
            a.payment_method = Some(Self::bounded(
                &mut self.payment_method,
                &overflow,
                m,
                limit,
                overflowed,
            ));
        }
        if let Some(c) = &a.payment_channel {
            a.payment_channel = Some(Self::bounded(
                &mut self.payment_channel,
                &overflow,
                c,
                limit,
                overflowed,
            ));
        }
        let mut folded = false;
        for st in &mut a.stages {
            let bounded = Self::bounded(&mut self.stage, &overflow, &st.stage, limit, overflowed);
            folded |= Arc::ptr_eq(&bounded, &overflow);
            st.stage = bounded;
        }
        if folded {
            let mut merged: Vec<crate::critical_path::StageTimes> =
                Vec::with_capacity(a.stages.len());
            for st in a.stages.drain(..) {
                match merged.iter_mut().find(|m| m.stage == st.stage) {
                    Some(m) => {
                        m.spans += st.spans;
                        m.duration_ns += st.duration_ns;
                        m.self_ns += st.self_ns;
                        m.critical_path_ns += st.critical_path_ns;
                    }
                    None => merged.push(st),
                }
            }
            a.stages = merged;
        }
    }
}
