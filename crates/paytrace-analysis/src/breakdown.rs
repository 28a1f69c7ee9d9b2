//! Per-stage latency breakdowns: flow analyses accumulated in mergeable
//! sketches, and the BREAKDOWN object the API, `analyze --format json` and
//! the demo report share.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use sketches_ddsketch::{Config, DDSketch};

use crate::critical_path::FlowAnalysis;

/// A distribution kept as a DDSketch (1% relative error on quantiles,
/// mergeable across windows and replicas).
#[derive(Clone)]
pub(crate) struct Distribution {
    sketch: DDSketch,
}

impl std::fmt::Debug for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distribution")
            .field("count", &self.count())
            .field("sum", &self.sum())
            .finish()
    }
}

impl Default for Distribution {
    fn default() -> Self {
        Self {
            sketch: DDSketch::new(Config::defaults()),
        }
    }
}

impl Distribution {
    /// Records one value, in seconds.
    pub(crate) fn add(&mut self, seconds: f64) {
        self.sketch.add(seconds);
    }

    /// Adds everything `other` recorded.
    pub(crate) fn merge(&mut self, other: &Distribution) {
        // Sketches built with the same config always merge.
        let _ = self.sketch.merge(&other.sketch);
    }

    /// How many values.
    pub(crate) fn count(&self) -> u64 {
        self.sketch.count() as u64
    }

    /// Their sum, in seconds.
    pub(crate) fn sum(&self) -> f64 {
        self.sketch.sum().unwrap_or(0.0)
    }

    /// The `q` quantile (0 to 1); 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        self.sketch
            .quantile(q)
            .ok()
            .flatten()
            .unwrap_or(0.0)
            .max(0.0)
    }

    /// Mean, p50, p90, p99.
    pub(crate) fn summary(&self) -> Summary {
        let count = self.count();
        Summary {
            mean: if count == 0 {
                0.0
            } else {
                self.sum() / count as f64
            },
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
        }
    }
}

/// Mean and quantiles of a distribution, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// End-to-end figures: a [`Summary`] with its count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EndToEnd {
    /// Flow instances.
    pub count: u64,
    /// Mean, in seconds.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Critical-path figures of a stage: a [`Summary`] plus its share.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CriticalPath {
    /// Mean, in seconds, over the flows that had the stage.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The stage's total critical-path time over the flows' total
    /// end-to-end time.
    pub share: f64,
}

/// One stage's line of a breakdown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageBreakdown {
    /// The stage.
    pub stage: String,
    /// Flow instances that had the stage.
    pub count: u64,
    /// Per flow instance, the stage spans' total duration.
    pub duration: Summary,
    /// Per flow instance, the stage spans' total self time.
    #[serde(rename = "self")]
    pub self_time: Summary,
    /// Per flow instance, the stage's critical-path time.
    pub critical_path: CriticalPath,
}

/// Where a flow's time goes, per stage: the BREAKDOWN object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Breakdown {
    /// The flow.
    pub flow: String,
    /// The payment method, when the breakdown is for one.
    pub payment_method: Option<String>,
    /// The payment channel, when the breakdown is for one.
    pub payment_channel: Option<String>,
    /// The window covered, `None` for a whole file.
    pub window_seconds: Option<u64>,
    /// Flow instances seen (a stitched flow counts once).
    pub traces: u64,
    /// Flow instances they stand for: each instance weighs the inverse of
    /// the probability it was sampled with (`th` of its `tracestate`, or the
    /// configured default). Equal to `traces` without sampling; an estimate
    /// with it.
    pub estimated_flows: f64,
    /// End-to-end durations. Percentiles and means are of the instances
    /// seen: with one sampling probability per flow, as head sampling gives,
    /// they estimate the population's.
    pub end_to_end: EndToEnd,
    /// Stages, largest critical-path share first.
    pub stages: Vec<StageBreakdown>,
}

/// Count, sum and sum of squares of values: their mean and variance,
/// exactly, and mergeable (what a test of a change in the mean needs, which
/// a sketch's quantiles do not give).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Moments {
    /// Values.
    pub(crate) n: u64,
    /// Their sum.
    pub(crate) sum: f64,
    /// The sum of their squares.
    pub(crate) sum_sq: f64,
}

impl Moments {
    /// Records one value.
    pub(crate) fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    /// Adds everything `other` recorded.
    pub(crate) fn merge(&mut self, other: &Moments) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    /// The mean; 0 without values.
    pub(crate) fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// The sample variance; `None` under two values.
    pub(crate) fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| {
            let n = self.n as f64;
            ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
        })
    }
}

#[derive(Clone, Debug, Default)]
struct StageAccumulator {
    duration: Distribution,
    self_time: Distribution,
    critical_path: Distribution,
    /// Σ weight × critical-path seconds: the share's numerator.
    weighted_critical_path: f64,
    /// The critical-path times again, as moments (absent from snapshots
    /// written before they were kept: zero there).
    critical_path_moments: Moments,
}

/// Flow analyses of one group (flow, method, channel), accumulated.
#[derive(Clone, Debug, Default)]
pub(crate) struct Accumulator {
    end_to_end: Distribution,
    stages: BTreeMap<Arc<str>, StageAccumulator>,
    /// Σ weight: the flows the instances stand for.
    estimated: f64,
    /// Σ weight × end-to-end seconds: the shares' denominator.
    weighted_end_to_end: f64,
    /// End-to-end times as moments (zero in older snapshots).
    end_to_end_moments: Moments,
    /// Instances that failed (a root ended in error), unweighted.
    failed: u64,
}

const NS: f64 = 1e9;

impl Accumulator {
    /// Records one flow instance that stands for `weight` flows.
    pub(crate) fn add(&mut self, flow: &FlowAnalysis, weight: f64) {
        let end_to_end = flow.duration_ns() as f64 / NS;
        self.end_to_end.add(end_to_end);
        self.end_to_end_moments.add(end_to_end);
        self.failed += u64::from(flow.is_error);
        self.estimated += weight;
        self.weighted_end_to_end += weight * end_to_end;
        for s in &flow.stages {
            let acc = self.stages.entry(s.stage.clone()).or_default();
            let critical_path = s.critical_path_ns as f64 / NS;
            acc.duration.add(s.duration_ns as f64 / NS);
            acc.self_time.add(s.self_ns as f64 / NS);
            acc.critical_path.add(critical_path);
            acc.critical_path_moments.add(critical_path);
            acc.weighted_critical_path += weight * critical_path;
        }
    }

    /// Adds everything `other` recorded.
    pub(crate) fn merge(&mut self, other: &Accumulator) {
        self.end_to_end.merge(&other.end_to_end);
        self.end_to_end_moments.merge(&other.end_to_end_moments);
        self.failed += other.failed;
        self.estimated += other.estimated;
        self.weighted_end_to_end += other.weighted_end_to_end;
        for (stage, acc) in &other.stages {
            let mine = self.stages.entry(stage.clone()).or_default();
            mine.duration.merge(&acc.duration);
            mine.self_time.merge(&acc.self_time);
            mine.critical_path.merge(&acc.critical_path);
            mine.critical_path_moments.merge(&acc.critical_path_moments);
            mine.weighted_critical_path += acc.weighted_critical_path;
        }
    }

    /// End-to-end times: their moments and their 99th percentile.
    pub(crate) fn end_to_end(&self) -> (Moments, f64) {
        (self.end_to_end_moments, self.end_to_end.quantile(0.99))
    }

    /// Instances that failed.
    pub(crate) fn failed(&self) -> u64 {
        self.failed
    }

    /// Per stage, the critical-path times: their moments and 99th percentile.
    pub(crate) fn critical_paths(&self) -> impl Iterator<Item = (&Arc<str>, Moments, f64)> {
        self.stages.iter().map(|(stage, acc)| {
            (
                stage,
                acc.critical_path_moments,
                acc.critical_path.quantile(0.99),
            )
        })
    }

    /// Flow instances recorded.
    pub(crate) fn flows(&self) -> u64 {
        self.end_to_end.count()
    }

    /// The BREAKDOWN object of what was recorded.
    pub(crate) fn breakdown(
        &self,
        flow: &str,
        payment_method: Option<&str>,
        payment_channel: Option<&str>,
        window_seconds: Option<u64>,
    ) -> Breakdown {
        let e2e = self.end_to_end.summary();
        // Shares weigh each instance by what it stands for.
        let total = self.weighted_end_to_end;
        let mut stages: Vec<StageBreakdown> = self
            .stages
            .iter()
            .map(|(stage, acc)| {
                let cp = acc.critical_path.summary();
                StageBreakdown {
                    stage: stage.to_string(),
                    count: acc.duration.count(),
                    duration: acc.duration.summary(),
                    self_time: acc.self_time.summary(),
                    critical_path: CriticalPath {
                        mean: cp.mean,
                        p50: cp.p50,
                        p90: cp.p90,
                        p99: cp.p99,
                        share: if total > 0.0 {
                            acc.weighted_critical_path / total
                        } else {
                            0.0
                        },
                    },
                }
            })
            .collect();
        stages.sort_by(|a, b| {
            b.critical_path
                .share
                .total_cmp(&a.critical_path.share)
                .then_with(|| a.stage.cmp(&b.stage))
        });
        Breakdown {
            flow: flow.to_owned(),
            payment_method: payment_method.map(str::to_owned),
            payment_channel: payment_channel.map(str::to_owned),
            window_seconds,
            traces: self.end_to_end.count(),
            estimated_flows: self.estimated,
            end_to_end: EndToEnd {
                count: self.end_to_end.count(),
                mean: e2e.mean,
                p50: e2e.p50,
                p90: e2e.p90,
                p99: e2e.p99,
            },
            stages,
        }
    }
}

/// The group a flow instance is accumulated under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupKey {
    /// The flow.
    pub flow: Arc<str>,
    /// The payment method, if any.
    pub payment_method: Option<Arc<str>>,
    /// The payment channel, if any.
    pub payment_channel: Option<Arc<str>>,
}

impl GroupKey {
    /// The group of `flow`.
    pub(crate) fn of(flow: &FlowAnalysis) -> Self {
        Self {
            flow: flow.flow.clone(),
            payment_method: flow.payment_method.clone(),
            payment_channel: flow.payment_channel.clone(),
        }
    }
}

/// Accumulators per group, and the breakdowns a report lists: one per flow,
/// and one per (flow, payment method).
#[derive(Clone, Debug, Default)]
pub struct Groups {
    groups: BTreeMap<GroupKey, Accumulator>,
}

/// The accumulators in format version 1 (snapshots, peer windows).
mod v1 {
    use super::{Accumulator, Distribution, GroupKey, Groups, Moments, StageAccumulator};
    use crate::format::v1;

    impl From<&Moments> for v1::Moments {
        fn from(m: &Moments) -> Self {
            Self {
                n: m.n,
                sum: m.sum,
                sum_sq: m.sum_sq,
            }
        }
    }

    impl From<v1::Moments> for Moments {
        fn from(m: v1::Moments) -> Self {
            Self {
                n: m.n,
                sum: m.sum,
                sum_sq: m.sum_sq,
            }
        }
    }

    impl From<&Distribution> for v1::Distribution {
        fn from(d: &Distribution) -> Self {
            Self {
                sketch: v1::Sketch(d.sketch.clone()),
            }
        }
    }

    impl From<v1::Distribution> for Distribution {
        fn from(d: v1::Distribution) -> Self {
            Self { sketch: d.sketch.0 }
        }
    }

    impl From<&StageAccumulator> for v1::StageAccumulator {
        fn from(s: &StageAccumulator) -> Self {
            Self {
                duration: (&s.duration).into(),
                self_time: (&s.self_time).into(),
                critical_path: (&s.critical_path).into(),
                weighted_critical_path: s.weighted_critical_path,
                critical_path_moments: (&s.critical_path_moments).into(),
            }
        }
    }

    impl From<v1::StageAccumulator> for StageAccumulator {
        fn from(s: v1::StageAccumulator) -> Self {
            Self {
                duration: s.duration.into(),
                self_time: s.self_time.into(),
                critical_path: s.critical_path.into(),
                weighted_critical_path: s.weighted_critical_path,
                critical_path_moments: s.critical_path_moments.into(),
            }
        }
    }

    impl From<&Accumulator> for v1::Accumulator {
        fn from(a: &Accumulator) -> Self {
            Self {
                end_to_end: (&a.end_to_end).into(),
                stages: a
                    .stages
                    .iter()
                    .map(|(k, v)| (k.clone(), v.into()))
                    .collect(),
                estimated: a.estimated,
                weighted_end_to_end: a.weighted_end_to_end,
                end_to_end_moments: (&a.end_to_end_moments).into(),
                failed: a.failed,
            }
        }
    }

    impl From<v1::Accumulator> for Accumulator {
        fn from(a: v1::Accumulator) -> Self {
            Self {
                end_to_end: a.end_to_end.into(),
                stages: a.stages.into_iter().map(|(k, v)| (k, v.into())).collect(),
                estimated: a.estimated,
                weighted_end_to_end: a.weighted_end_to_end,
                end_to_end_moments: a.end_to_end_moments.into(),
                failed: a.failed,
            }
        }
    }

    impl From<&Groups> for v1::Groups {
        fn from(g: &Groups) -> Self {
            Self {
                groups: g
                    .groups
                    .iter()
                    .map(|(k, a)| {
                        let key = v1::GroupKey {
                            flow: k.flow.clone(),
                            payment_method: k.payment_method.clone(),
                            payment_channel: k.payment_channel.clone(),
                        };
                        (key, a.into())
                    })
                    .collect(),
            }
        }
    }

    impl From<v1::Groups> for Groups {
        fn from(g: v1::Groups) -> Self {
            Self {
                groups: g
                    .groups
                    .into_iter()
                    .map(|(k, a)| {
                        let key = GroupKey {
                            flow: k.flow,
                            payment_method: k.payment_method,
                            payment_channel: k.payment_channel,
                        };
                        (key, a.into())
                    })
                    .collect(),
            }
        }
    }
}

impl Groups {
    /// Records one flow instance that stands for `weight` flows.
    pub(crate) fn add(&mut self, flow: &FlowAnalysis, weight: f64) {
        self.groups
            .entry(GroupKey::of(flow))
            .or_default()
            .add(flow, weight);
    }

    /// The merge of every group matching the filters (`None` matches all).
    pub(crate) fn select(
        &self,
        flow: &str,
        payment_method: Option<&str>,
        payment_channel: Option<&str>,
    ) -> Accumulator {
        let mut acc = Accumulator::default();
        for (key, group) in &self.groups {
            let matches = &*key.flow == flow
                && payment_method.is_none_or(|m| key.payment_method.as_deref() == Some(m))
                && payment_channel.is_none_or(|c| key.payment_channel.as_deref() == Some(c));
            if matches {
                acc.merge(group);
            }
        }
        acc
    }

    /// Keeps the groups of `flow` only.
    pub(crate) fn retain_flow(&mut self, flow: &str) {
        self.groups.retain(|key, _| &*key.flow == flow);
    }

    /// Adds every group of `other` to this one.
    pub(crate) fn merge(&mut self, other: &Groups) {
        for (key, group) in &other.groups {
            self.groups.entry(key.clone()).or_default().merge(group);
        }
    }

    /// Flow instances recorded, over all groups.
    pub fn instances(&self) -> u64 {
        self.groups.values().map(Accumulator::flows).sum()
    }

    /// The groups with data.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &GroupKey> {
        self.groups.keys()
    }

    /// Every group with its accumulator.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&GroupKey, &Accumulator)> {
        self.groups.iter()
    }

    /// The flows seen, sorted.
    pub(crate) fn flows(&self) -> Vec<Arc<str>> {
        let mut flows: Vec<_> = self.groups.keys().map(|k| k.flow.clone()).collect();
        flows.dedup();
        flows
    }

    /// One breakdown per flow, then one per (flow, payment method) that has one.
    pub fn report(&self, window_seconds: Option<u64>) -> Vec<Breakdown> {
        let mut out = Vec::new();
        for flow in self.flows() {
            out.push(
                self.select(&flow, None, None)
                    .breakdown(&flow, None, None, window_seconds),
            );
            let mut methods: Vec<Arc<str>> = self
                .groups
                .keys()
                .filter(|k| k.flow == flow)
                .filter_map(|k| k.payment_method.clone())
                .collect();
            methods.dedup();
            for m in methods {
                out.push(self.select(&flow, Some(&m), None).breakdown(
                    &flow,
                    Some(&m),
                    None,
                    window_seconds,
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Accumulator;

    #[test]
    fn accumulates_the_critical_path_share() {
        use crate::critical_path::analyze_flow;
        use crate::testing::{child, numbered, span, stage};

        let trace = numbered(vec![
            stage(span("checkout", 0, 1_000_000_000)),
            stage(child("channel.request", 1, 0, 600_000_000)),
        ]);
        let mut acc = Accumulator::default();
        acc.add(&analyze_flow(&[trace]).expect("one flow"), 1.0);
        let b = acc.breakdown("checkout", None, None, None);
        assert_eq!(b.stages[0].stage, "channel.request");
        assert!((b.stages[0].critical_path.share - 0.6).abs() < 0.01);
    }

    #[test]
    fn sampled_instances_weigh_what_they_stand_for() {
        use crate::critical_path::analyze_flow;
        use crate::testing::{child, numbered, span, stage};
        let s = 1_000_000_000;
        // One instance sampled at 10% spends its second in x; one kept
        // whole spends its second in y.
        let at_ten_percent = numbered(vec![
            stage(span("checkout", 0, s)),
            stage(child("x", 1, 0, s)),
        ]);
        let kept = numbered(vec![
            stage(span("checkout", 0, s)),
            stage(child("y", 1, 0, s)),
        ]);
        let mut acc = Accumulator::default();
        acc.add(&analyze_flow(&[at_ten_percent]).expect("one flow"), 10.0);
        acc.add(&analyze_flow(&[kept]).expect("one flow"), 1.0);
        let b = acc.breakdown("checkout", None, None, None);
        assert_eq!(b.traces, 2);
        assert!((b.estimated_flows - 11.0).abs() < 1e-9);
        let share = |name: &str| {
            b.stages
                .iter()
                .find(|st| st.stage == name)
                .map(|st| st.critical_path.share)
                .expect("the stage")
        };
        assert!((share("x") - 10.0 / 11.0).abs() < 1e-9, "x {}", share("x"));
        assert!((share("y") - 1.0 / 11.0).abs() < 1e-9, "y {}", share("y"));
    }
}
