//! What changed: a window of a flow compared with a baseline, each
//! (payment method × channel × stage) ranked by its contribution to the
//! change in end-to-end latency, and each (method × channel) by its
//! contribution to the change in error share. Only changes that are both
//! significant (a Welch t test on the critical-path means, a two-proportion
//! z test on the error shares) and large enough to matter are reported, so
//! that noise does not rank.
//!
//! The contributions add up: a flow's end-to-end time is the sum of its
//! stages' critical-path times, so the change in the mean end-to-end time
//! per flow is the sum, over groups and stages, of the change in their
//! critical-path seconds per flow of the whole population.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::minutes::Minute;
use crate::breakdown::{Accumulator, GroupKey, Moments};

/// Fewer flow instances than this on either side: no comparison.
pub(crate) const MIN_FLOWS: u64 = 20;
/// The t (or z) statistic a change must reach. With a few dozen groups and
/// stages compared at once, 5 keeps the chance of one false finding per
/// comparison far under one in a thousand, even for skewed latencies.
pub(crate) const MIN_STATISTIC: f64 = 5.0;
/// A latency change must also be at least this many seconds per instance…
pub(crate) const MIN_LATENCY_CHANGE: f64 = 0.010;
/// …and this share of the baseline's mean.
pub(crate) const MIN_RELATIVE_CHANGE: f64 = 0.2;
/// An error-share change must be at least this many points.
pub(crate) const MIN_ERROR_SHARE_CHANGE: f64 = 0.02;

/// What the baseline is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// The minutes of the hour kept before the window.
    Preceding,
    /// The minutes from `from` to `to` (minutes since the epoch, both
    /// included), which must end before the window.
    Minutes {
        /// The first minute.
        from: u64,
        /// The last minute.
        to: u64,
    },
}

/// A comparison to make.
///
/// ```
/// use paytrace_analysis::core::{Baseline, ChangeQuery};
/// let q = ChangeQuery { flow: "checkout", window_minutes: 5, now_minute: 29_000_000, baseline: Baseline::Preceding };
/// assert_eq!(q.current_minutes(), (28_999_996, 29_000_000));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ChangeQuery<'a> {
    /// The flow.
    pub flow: &'a str,
    /// The window compared: the last `window_minutes`, the current one
    /// included.
    pub window_minutes: u64,
    /// The minute the window ends at.
    pub now_minute: u64,
    /// What it is compared with.
    pub baseline: Baseline,
}

impl ChangeQuery<'_> {
    /// The first and last minute of the window.
    pub fn current_minutes(&self) -> (u64, u64) {
        (
            self.now_minute + 1 - self.window_minutes.max(1),
            self.now_minute,
        )
    }

    /// The first and last minute of the baseline.
    pub fn baseline_minutes(&self) -> (u64, u64) {
        let (first, _) = self.current_minutes();
        match self.baseline {
            Baseline::Preceding => (self.now_minute.saturating_sub(59), first.saturating_sub(1)),
            Baseline::Minutes { from, to } => (from, to.min(first.saturating_sub(1))),
        }
    }
}

/// One side of the comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Side {
    /// First minute, Unix seconds.
    pub from_unix_seconds: u64,
    /// End of the last minute, Unix seconds.
    pub to_unix_seconds: u64,
    /// Flow instances seen.
    pub flows: u64,
    /// Mean end-to-end time, seconds.
    pub mean: f64,
    /// 99th percentile of the end-to-end time, seconds.
    pub p99: f64,
    /// Share of the instances that failed.
    pub error_share: f64,
}

/// A stage of a group whose critical path grew.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyFinding {
    /// The stage.
    pub stage: String,
    /// The payment method of the group, if any.
    pub payment_method: Option<String>,
    /// The payment channel of the group, if any.
    pub payment_channel: Option<String>,
    /// Mean critical-path seconds per instance that had the stage, before.
    pub baseline_mean: f64,
    /// The same, in the window.
    pub current_mean: f64,
    /// Their 99th percentiles, before and now.
    pub baseline_p99: f64,
    /// See `baseline_p99`.
    pub current_p99: f64,
    /// Seconds of the flow's mean end-to-end time it adds, over all flows.
    pub contribution: f64,
    /// `contribution` over the change of the mean end-to-end time (`None`
    /// when that did not grow).
    pub share_of_change: Option<f64>,
    /// Welch's t of the change in the mean.
    pub statistic: f64,
    /// The first minute of the window whose mean was past halfway from the
    /// baseline's to the window's, Unix seconds.
    pub since_unix_seconds: Option<u64>,
    /// The finding in a sentence.
    pub summary: String,
    /// The USE signals of the service running the stage that moved with it
    /// (filled by `paytrace-aggregator serve --prometheus`).
    pub infrastructure: Vec<InfraSignal>,
}

/// A group whose error share grew.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorFinding {
    /// The payment method of the group, if any.
    pub payment_method: Option<String>,
    /// The payment channel of the group, if any.
    pub payment_channel: Option<String>,
    /// The group's share of failed instances, before.
    pub baseline_share: f64,
    /// The same, in the window.
    pub current_share: f64,
    /// Points of the flow's error share it adds, over all flows.
    pub contribution: f64,
    /// The two-proportion z of the change.
    pub statistic: f64,
    /// The first minute of the window past halfway, Unix seconds.
    pub since_unix_seconds: Option<u64>,
    /// The finding in a sentence.
    pub summary: String,
}

/// What changed in a flow between the baseline and the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Changes {
    /// The flow.
    pub flow: String,
    /// The baseline.
    pub baseline: Side,
    /// The window.
    pub current: Side,
    /// Why nothing was compared (too few instances on a side), if so.
    pub not_compared: Option<String>,
    /// Stages whose critical path grew significantly, largest
    /// contribution first.
    pub latency: Vec<LatencyFinding>,
    /// Groups whose error share grew significantly, largest contribution
    /// first.
    pub errors: Vec<ErrorFinding>,
    /// Why the infrastructure signals could not be read (with
    /// `serve --prometheus`), if so.
    pub infrastructure_error: Option<String>,
}

/// Per group, the accumulators of a span of minutes, and each minute's.
struct Span<'a> {
    merged: BTreeMap<&'a GroupKey, Accumulator>,
    per_minute: Vec<(u64, BTreeMap<&'a GroupKey, &'a Accumulator>)>,
    from: u64,
    to: u64,
}

impl<'a> Span<'a> {
    fn of(minutes: &'a [Minute], flow: &str, (from, to): (u64, u64)) -> Self {
        let mut merged: BTreeMap<&GroupKey, Accumulator> = BTreeMap::new();
        let mut per_minute = Vec::new();
        for m in minutes
            .iter()
            .filter(|m| m.minute >= from && m.minute <= to)
        {
            let mut this = BTreeMap::new();
            for (key, acc) in m.groups.iter().filter(|(k, _)| &*k.flow == flow) {
                merged.entry(key).or_default().merge(acc);
                this.insert(key, acc);
            }
            per_minute.push((m.minute, this));
        }
        Self {
            merged,
            per_minute,
            from,
            to,
        }
    }

    fn side(&self) -> Side {
        let mut all = Accumulator::default();
        for acc in self.merged.values() {
            all.merge(acc);
        }
        let (moments, p99) = all.end_to_end();
        Side {
            from_unix_seconds: self.from * 60,
            to_unix_seconds: (self.to + 1) * 60,
            flows: moments.n,
            mean: moments.mean(),
            p99,
            error_share: share(all.failed(), moments.n),
        }
    }

    fn flows(&self) -> u64 {
        self.merged.values().map(|a| a.end_to_end().0.n).sum()
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Welch's t for `current` against `baseline`; `None` without variances.
fn welch(baseline: &Moments, current: &Moments) -> Option<f64> {
    let (vb, vc) = (baseline.variance()?, current.variance()?);
    let se = (vb / baseline.n as f64 + vc / current.n as f64).sqrt();
    let diff = current.mean() - baseline.mean();
    Some(if se > 0.0 {
        diff / se
    } else if diff > 0.0 {
        f64::INFINITY
    } else {
        0.0
    })
}

/// The two-proportion z of `k1` of `n1` against `k0` of `n0`.
fn two_proportion(k0: u64, n0: u64, k1: u64, n1: u64) -> f64 {
    let (p0, p1) = (share(k0, n0), share(k1, n1));
    let pooled = share(k0 + k1, n0 + n1);
    let se = (pooled * (1.0 - pooled) * (1.0 / n0 as f64 + 1.0 / n1 as f64)).sqrt();
    if se > 0.0 { (p1 - p0) / se } else { 0.0 }
}

/// The group as words: `wechat_pay`, or `card via stripe`.
fn group_name(key: &GroupKey) -> String {
    match (
        key.payment_method.as_deref(),
        key.payment_channel.as_deref(),
    ) {
        (Some(m), Some(c)) if m != c => format!("{m} via {c}"),
        (Some(m), _) => m.to_owned(),
        (None, Some(c)) => c.to_owned(),
        (None, None) => "all".to_owned(),
    }
}

/// `s` seconds as `780 ms` or `1.20 s`.
fn duration(s: f64) -> String {
    if s.abs() < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// `HH:MM` (UTC) of Unix seconds.
fn clock(unix_seconds: u64) -> String {
    let minutes = unix_seconds / 60;
    format!("{:02}:{:02} UTC", (minutes / 60) % 24, minutes % 60)
}

/// Compares `q`'s window with its baseline over `minutes` (an hour of
/// them, oldest first).
pub(crate) fn changes(minutes: &[Minute], q: &ChangeQuery<'_>) -> Changes {
    let current = Span::of(minutes, q.flow, q.current_minutes());
    let baseline = Span::of(minutes, q.flow, q.baseline_minutes());
    let (cur_side, base_side) = (current.side(), baseline.side());
    let mut out = Changes {
        flow: q.flow.to_owned(),
        baseline: base_side.clone(),
        current: cur_side.clone(),
        not_compared: None,
        latency: Vec::new(),
        errors: Vec::new(),
        infrastructure_error: None,
    };
    let (n_cur, n_base) = (current.flows(), baseline.flows());
    if n_cur < MIN_FLOWS || n_base < MIN_FLOWS {
        out.not_compared = Some(format!(
            "too few flow instances to compare: {n_base} in the baseline, {n_cur} in the window (at least {MIN_FLOWS} each)"
        ));
        return out;
    }
    let e2e_change = cur_side.mean - base_side.mean;
    let empty = Accumulator::default();
    let mut keys: Vec<&GroupKey> = current.merged.keys().copied().collect();
    keys.sort();
    for key in keys {
        let cur = &current.merged[key];
        let base = baseline.merged.get(key).unwrap_or(&empty);
        let base_stages: BTreeMap<&Arc<str>, (Moments, f64)> = base
            .critical_paths()
            .map(|(s, m, p99)| (s, (m, p99)))
            .collect();
        for (stage, cur_m, cur_p99) in cur.critical_paths() {
            let (mut base_m, base_p99) = base_stages.get(stage).copied().unwrap_or_default();
            if base_m.n == 0 {
                // A stage the group's baseline instances did not have: zero
                // on their critical path, every one of them.
                base_m.n = base.end_to_end().0.n;
            }
            let Some(t) = welch(&base_m, &cur_m) else {
                continue;
            };
            let (mb, mc) = (base_m.mean(), cur_m.mean());
            let grew = mc - mb;
            if t < MIN_STATISTIC || grew < MIN_LATENCY_CHANGE || grew < MIN_RELATIVE_CHANGE * mb {
                continue;
            }
            let contribution = cur_m.sum / n_cur as f64 - base_m.sum / n_base as f64;
            let share_of_change = (e2e_change > 0.0).then(|| contribution / e2e_change);
            let halfway = (mb + mc) / 2.0;
            let since = current.per_minute.iter().find_map(|(minute, groups)| {
                let acc = groups.get(key)?;
                let (_, m, _) = acc.critical_paths().find(|(s, _, _)| *s == stage)?;
                (m.n > 0 && m.mean() >= halfway).then_some(minute * 60)
            });
            let mut summary = format!(
                "{} {stage}: critical path {}{} per {} ({} → {}",
                group_name(key),
                if grew >= 0.0 { "+" } else { "" },
                duration(grew),
                q.flow,
                duration(mb),
                duration(mc),
            );
            if base_p99 > 0.0 {
                summary.push_str(&format!(", p99 ×{:.1}", cur_p99 / base_p99));
            }
            summary.push(')');
            if let Some(since) = since {
                summary.push_str(&format!(" since {}", clock(since)));
            }
            if let Some(share) = share_of_change {
                summary.push_str(&format!(
                    ", {:.0}% of the end-to-end increase",
                    (share * 100.0).clamp(0.0, 999.0)
                ));
            }
            out.latency.push(LatencyFinding {
                stage: stage.to_string(),
                payment_method: key.payment_method.as_deref().map(str::to_owned),
                payment_channel: key.payment_channel.as_deref().map(str::to_owned),
                baseline_mean: mb,
                current_mean: mc,
                baseline_p99: base_p99,
                current_p99: cur_p99,
                contribution,
                share_of_change,
                statistic: t,
                since_unix_seconds: since,
                summary,
                infrastructure: Vec::new(),
            });
        }
        // Errors of the group.
        let (n1, k1) = (cur.end_to_end().0.n, cur.failed());
        let (n0, k0) = (base.end_to_end().0.n, base.failed());
        if n0 == 0 || n1 == 0 {
            continue;
        }
        let z = two_proportion(k0, n0, k1, n1);
        let (p0, p1) = (share(k0, n0), share(k1, n1));
        if z < MIN_STATISTIC || p1 - p0 < MIN_ERROR_SHARE_CHANGE {
            continue;
        }
        let halfway = (p0 + p1) / 2.0;
        let since = current.per_minute.iter().find_map(|(minute, groups)| {
            let acc = groups.get(key)?;
            let n = acc.end_to_end().0.n;
            (n > 0 && share(acc.failed(), n) >= halfway).then_some(minute * 60)
        });
        let mut summary = format!(
            "{}: {:.1}% of {} flows fail ({:.1}% before)",
            group_name(key),
            p1 * 100.0,
            q.flow,
            p0 * 100.0
        );
        if let Some(since) = since {
            summary.push_str(&format!(" since {}", clock(since)));
        }
        out.errors.push(ErrorFinding {
            payment_method: key.payment_method.as_deref().map(str::to_owned),
            payment_channel: key.payment_channel.as_deref().map(str::to_owned),
            baseline_share: p0,
            current_share: p1,
            contribution: share(k1, n_cur) - share(k0, n_base),
            statistic: z,
            since_unix_seconds: since,
            summary,
        });
    }
    out.latency
        .sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    out.errors
        .sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    out
}

/// A USE signal that moved with a change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InfraSignal {
    /// `pool_wait_p99`, `pool_utilisation`, `queue_oldest_age`,
    /// `runtime_busy_ratio` or `restarts`.
    pub signal: &'static str,
    /// The service it belongs to.
    pub service: String,
    /// What else names it: the pool (`resource`), the queue (`queue`), the
    /// instance.
    pub labels: BTreeMap<String, String>,
    /// Its value at the end of the baseline.
    pub baseline: f64,
    /// Its value now.
    pub current: f64,
    /// The signal in a few words.
    pub summary: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::critical_path::{FlowAnalysis, FlowSampling, StageTimes};

    const MINUTE: u64 = 29_000_000;

    /// A tiny deterministic generator (xorshift), so the tests draw the same
    /// noise every run.
    struct Noise(u64);

    impl Noise {
        /// Uniform in [0, 1).
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Log-normal around `median` seconds: latencies' usual skew.
        fn latency(&mut self, median: f64) -> f64 {
            let (u, v) = (self.next().max(1e-12), self.next());
            let normal = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            median * (0.5 * normal).exp()
        }
    }

    /// One checkout: `order.create` then `channel.request`, sequential.
    fn checkout(method: &str, order_s: f64, channel_s: f64, failed: bool) -> FlowAnalysis {
        let ns = |s: f64| (s * 1e9) as u64;
        let stage = |name: &str, s: f64| StageTimes {
            stage: Arc::from(name),
            spans: 1,
            duration_ns: ns(s),
            self_ns: ns(s),
            critical_path_ns: ns(s),
        };
        FlowAnalysis {
            flow: Arc::from("checkout"),
            flow_id: None,
            payment_method: Some(Arc::from(method)),
            payment_channel: Some(Arc::from(method)),
            start_ns: 0,
            end_ns: ns(order_s + channel_s),
            is_error: failed,
            traces: Vec::new(),
            stages: vec![
                stage("order.create", order_s),
                stage("channel.request", channel_s),
            ],
            critical_path: Vec::new(),
            sampling: FlowSampling::default(),
            clock_skew: Vec::new(),
        }
    }

    /// An hour of minutes, `per_minute` checkouts each, spread over three
    /// methods; from `slow_from` on, wechat_pay's channel takes `slow_s`
    /// instead of about 0.4 s and card fails `card_fails` of the time.
    fn hour(
        per_minute: usize,
        slow_from: u64,
        slow_s: f64,
        card_fails: f64,
        seed: u64,
    ) -> Vec<Minute> {
        let mut noise = Noise(seed);
        (MINUTE - 59..=MINUTE)
            .map(|minute| {
                let mut m = Minute {
                    minute,
                    ..Minute::default()
                };
                for i in 0..per_minute {
                    let method = ["alipay", "wechat_pay", "card"][i % 3];
                    let changed = minute >= slow_from;
                    let channel = match method {
                        "wechat_pay" if changed => noise.latency(slow_s),
                        _ => noise.latency(0.4),
                    };
                    let fails = method == "card" && changed && noise.next() < card_fails
                        || noise.next() < 0.005;
                    m.groups
                        .add(&checkout(method, noise.latency(0.05), channel, fails), 1.0);
                }
                m
            })
            .collect()
    }

    fn query(window_minutes: u64, now_minute: u64) -> ChangeQuery<'static> {
        ChangeQuery {
            flow: "checkout",
            window_minutes,
            now_minute,
            baseline: Baseline::Preceding,
        }
    }

    #[test]
    fn the_slowed_channel_ranks_first_with_most_of_the_increase() {
        let minutes = hour(60, MINUTE - 4, 1.2, 0.0, 7);
        let c = changes(&minutes, &query(5, MINUTE));
        assert_eq!(c.not_compared, None);
        let first = &c.latency[0];
        assert_eq!(first.stage, "channel.request");
        assert_eq!(first.payment_method.as_deref(), Some("wechat_pay"));
        assert!(first.statistic > MIN_STATISTIC, "{first:?}");
        let share = first.share_of_change.expect("end to end grew");
        assert!((0.8..=1.2).contains(&share), "{first:?}");
        assert!((1.0..1.5).contains(&first.current_mean), "{first:?}");
        assert!((0.3..0.55).contains(&first.baseline_mean), "{first:?}");
        assert_eq!(first.since_unix_seconds, Some((MINUTE - 4) * 60));
        assert!(
            first
                .summary
                .starts_with("wechat_pay channel.request: critical path +"),
            "{}",
            first.summary
        );
        assert!(
            first.summary.contains("of the end-to-end increase"),
            "{}",
            first.summary
        );
        // Nothing else changed.
        assert_eq!(c.latency.len(), 1, "{:#?}", c.latency);
        assert!(c.errors.is_empty(), "{:#?}", c.errors);
    }

    #[test]
    fn a_failing_group_is_found_by_its_error_share() {
        let minutes = hour(60, MINUTE - 2, 0.4, 0.3, 11);
        let c = changes(&minutes, &query(3, MINUTE));
        assert!(c.latency.is_empty(), "{:#?}", c.latency);
        let card = &c.errors[0];
        assert_eq!(card.payment_method.as_deref(), Some("card"));
        assert!((0.2..0.4).contains(&card.current_share), "{card:?}");
        assert!(card.baseline_share < 0.02, "{card:?}");
        assert!(card.summary.starts_with("card: "), "{}", card.summary);
    }

    #[test]
    fn a_stationary_flow_raises_no_false_alarm_in_twenty_windows() {
        for seed in 1..=20u64 {
            let minutes = hour(60, u64::MAX, 0.4, 0.0, seed * 7919);
            for window in [1, 5, 15] {
                let c = changes(&minutes, &query(window, MINUTE - seed % 10));
                assert_eq!(c.not_compared, None);
                assert!(
                    c.latency.is_empty() && c.errors.is_empty(),
                    "seed {seed}, window {window}: {:#?} {:#?}",
                    c.latency,
                    c.errors
                );
            }
        }
    }

    #[test]
    fn too_few_instances_are_not_compared() {
        let minutes = hour(3, MINUTE - 4, 1.2, 0.0, 3);
        let c = changes(&minutes, &query(1, MINUTE));
        assert!(c.not_compared.is_some(), "{c:?}");
        assert!(c.latency.is_empty());
    }

    #[test]
    fn an_absolute_baseline_is_cut_before_the_window() {
        let q = ChangeQuery {
            baseline: Baseline::Minutes {
                from: MINUTE - 30,
                to: MINUTE,
            },
            ..query(5, MINUTE)
        };
        assert_eq!(q.baseline_minutes(), (MINUTE - 30, MINUTE - 5));
        assert_eq!(
            query(5, MINUTE).baseline_minutes(),
            (MINUTE - 59, MINUTE - 5)
        );
    }

    #[test]
    fn moments_merge_to_the_variance_of_all_values() {
        let (mut a, mut b, mut all) = (Moments::default(), Moments::default(), Moments::default());
        for (i, x) in [0.1, 0.4, 0.35, 2.0, 0.7].into_iter().enumerate() {
            if i % 2 == 0 {
                a.add(x)
            } else {
                b.add(x)
            }
            all.add(x);
        }
        a.merge(&b);
        assert_eq!(a.n, all.n);
        let (va, vall) = (a.variance().expect("n > 1"), all.variance().expect("n > 1"));
        assert!((va - vall).abs() < 1e-12);
        // Sample variance of the five values, computed by hand: mean 0.71,
        // squared deviations summing to 2.262, over 4.
        assert!((vall - 0.5655).abs() < 1e-9, "{vall}");
    }
}
