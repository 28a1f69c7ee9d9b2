//! SLOs as code: a YAML spec in, Prometheus multi-window multi-burn-rate
//! recording and alerting rules out (`paytrace-slo generate`).
//!
//! For each SLO and each window (5m, 30m, 1h, 2h, 6h, 1d, 3d and the budget
//! period) two recording rules, labelled `slo="<name>"` and kept per
//! `cluster`, `namespace`, `job` and the SLO's `by` labels:
//! - `slo:requests:rate<w>`: events per second;
//! - `slo:sli_error:ratio_rate<w>`: the share of bad events;
//!
//! The short windows (to 6h) read the raw series, in a group evaluated every
//! 30 s; the long ones (1d, 3d, the period) sum the recorded 5-minute rates
//! (`slo:sli_errors:rate5m` over `slo:requests:rate5m`, Sloth's method
//! weighted by traffic) in a group evaluated every 5 minutes, instead of a
//! `rate()` over days of every raw series (BENCHMARKS.md has the cost).
//!
//! and `slo:objective:ratio`, `slo:error_budget_remaining:ratio` (1 = untouched,
//! 0 = spent, below 0 = overspent over the period). Two alerts per SLO, as in
//! the SRE Workbook, with a minimum-traffic guard:
//! - `<Alert>BurnRateFast` (`severity="critical"`, `burn_tier="page"`):
//!   14.4× over 1h and 5m, or 6× over 6h and 30m;
//! - `<Alert>BurnRateSlow` (`severity="warning"`, `burn_tier="ticket"`):
//!   3× over 1d and 2h, or 1× over 3d and 6h.
//!
//! Their value is the burn rate of the long window. Alertmanager inhibits
//! the slow alert of an SLO while its fast one fires (`equal: [slo]`).
//!
//! ```
//! use paytrace_slo::{Spec, generate};
//! let spec: Spec = serde_yaml_ng::from_str(r#"
//! slos:
//!   - name: checkout_availability
//!     alert: CheckoutAvailability
//!     objective: 0.999
//!     summary: Checkout requests fail
//!     sli:
//!       errors:
//!         metric: http_server_request_duration_seconds_count
//!         selector: 'service_name="gateway",http_route="/checkout"'
//!         bad: 'http_response_status_code=~"5.."'
//! "#).unwrap();
//! let rules = generate(&spec).unwrap();
//! assert!(rules.contains("alert: CheckoutAvailabilityBurnRateFast"));
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole spec file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Where runbooks live; an alert's `runbook_url` is this followed by
    /// `<AlertName>.md`. Make it an absolute URL (`https://…/docs/runbooks/`):
    /// a pager or a chat message cannot open a relative path.
    #[serde(default = "default_runbook_base")]
    pub runbook_base: String,
    /// Matchers added to every metric selector of every rule, without
    /// braces (`job=~"payments-.*"`): which targets this rule set watches.
    /// Empty for all.
    #[serde(default)]
    pub selector: String,
    /// The aggregator page's URL (`https://paytrace.example.com/`): the
    /// alerts of an SLO with a `flow` get a `changes_url` annotation, the
    /// page's "What changed" panel for that flow. None: no such annotation.
    #[serde(default)]
    pub page_base: Option<String>,
    /// The SLOs.
    pub slos: Vec<Slo>,
}

fn default_runbook_base() -> String {
    "docs/runbooks/".to_owned()
}

/// One service level objective.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// `[a-z][a-z0-9_]*`: the `slo` label of every generated series.
    pub name: String,
    /// CamelCase prefix of the alert names.
    pub alert: String,
    /// The share of good events, in (0, 1): `0.999`.
    pub objective: f64,
    /// The error-budget period (`30d`, `28d`).
    #[serde(default = "default_period", with = "humantime_serde_compat")]
    pub period: Duration,
    /// Labels the SLO is kept per (`[payment_channel]`): one alert each.
    #[serde(default)]
    pub by: Vec<String>,
    /// Below this many events per second over the long window the alerts stay
    /// quiet: a handful of failures at night is not a burn.
    #[serde(default = "default_min_rate")]
    pub min_rate: f64,
    /// The `layer` label of the alerts.
    #[serde(default = "default_layer")]
    pub layer: String,
    /// A `service_name` label for the alerts, so that Alertmanager can
    /// inhibit them while a critical infra alert of that service fires.
    #[serde(default)]
    pub service_name: Option<String>,
    /// One line: what is wrong, for the alert's `summary`.
    pub summary: String,
    /// More: the user impact, for the alert's `description`.
    #[serde(default)]
    pub description: String,
    /// How bad events are counted.
    pub sli: Sli,
    /// The paytrace flow the SLO watches (`checkout`): with the spec's
    /// `page_base`, its alerts link to what changed in that flow.
    #[serde(default)]
    pub flow: Option<String>,
}

fn default_period() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_min_rate() -> f64 {
    0.01
}

fn default_layer() -> String {
    "business".to_owned()
}

/// How an SLO counts good and bad events: in YAML, a map with one key,
/// `errors` or `latency`.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "SliSpec")]
pub enum Sli {
    /// Bad events are a subset of a counter's series.
    Errors {
        /// A counter (or a histogram's `_count`).
        metric: String,
        /// Matchers of all events, without braces.
        selector: String,
        /// Extra matchers of the bad events.
        bad: String,
    },
    /// Bad events are observations above a threshold of a histogram.
    Latency {
        /// The histogram's name, without `_bucket`.
        histogram: String,
        /// Matchers of all events, without braces.
        selector: String,
        /// Seconds; must be one of the histogram's bucket boundaries.
        threshold: f64,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SliSpec {
    errors: Option<ErrorsSpec>,
    latency: Option<LatencySpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorsSpec {
    metric: String,
    selector: String,
    bad: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencySpec {
    histogram: String,
    selector: String,
    threshold: f64,
}

impl TryFrom<SliSpec> for Sli {
    type Error = String;

    fn try_from(s: SliSpec) -> Result<Self, String> {
        match (s.errors, s.latency) {
            (Some(e), None) => Ok(Sli::Errors {
                metric: e.metric,
                selector: e.selector,
                bad: e.bad,
            }),
            (None, Some(l)) => Ok(Sli::Latency {
                histogram: l.histogram,
                selector: l.selector,
                threshold: l.threshold,
            }),
            _ => Err("sli needs exactly one of `errors` and `latency`".to_owned()),
        }
    }
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a spec cannot be turned into rules.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// The YAML does not parse or has unknown fields.
    #[error("the SLO spec is not valid: {0}")]
    Parse(String),
    /// An SLO's field is out of range.
    #[error("SLO {slo:?}: {problem}")]
    Invalid {
        /// The SLO's name.
        slo: String,
        /// What to fix.
        problem: String,
    },
}

/// Parses a spec from YAML text.
pub fn parse(text: &str) -> Result<Spec, SpecError> {
    serde_yaml_ng::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))
}

/// The windows: (label suffix, range), short to long.
/// Windows computed from the raw series, evaluated every 30 s.
const SHORT_WINDOWS: [&str; 5] = ["5m", "30m", "1h", "2h", "6h"];
/// Windows computed from the recorded 5-minute series (Sloth's method, but
/// weighted by traffic: errors summed over requests summed), evaluated
/// every 5 minutes: a `rate()` over days of raw counters reads every sample
/// of every raw series, this reads one recorded series.
const LONG_WINDOWS: [&str; 2] = ["1d", "3d"];
/// How often the short windows and the alerts are evaluated.
const SHORT_INTERVAL: &str = "30s";
/// How often the long windows are evaluated.
const LONG_INTERVAL: &str = "5m";

/// (tier, severity, for, [(long, short, factor)], traffic window)
type Tier = (
    &'static str,
    &'static str,
    &'static str,
    [(&'static str, &'static str, f64); 2],
    &'static str,
);

const TIERS: [Tier; 2] = [
    (
        "page",
        "critical",
        "2m",
        [("1h", "5m", 14.4), ("6h", "30m", 6.0)],
        "1h",
    ),
    (
        "ticket",
        "warning",
        "15m",
        [("1d", "2h", 3.0), ("3d", "6h", 1.0)],
        "1d",
    ),
];

fn period_label(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{}m", s / 60)
    }
}

/// A number as PromQL and YAML print it: no float noise (`0.0144`, not
/// `0.014400000000000013`).
fn number(x: f64) -> String {
    let s = format!("{x:.10}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some('a'..='z' | 'A'..='Z' | '_'))
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate(slo: &Slo) -> Result<(), SpecError> {
    let invalid = |problem: String| SpecError::Invalid {
        slo: slo.name.clone(),
        problem,
    };
    let snake = slo
        .name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase())
        && slo
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !snake {
        return Err(invalid("name must be lower snake case".to_owned()));
    }
    if !slo
        .alert
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase())
        || !slo.alert.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(invalid(format!("alert {:?} must be CamelCase", slo.alert)));
    }
    if !(slo.objective > 0.0 && slo.objective < 1.0) {
        return Err(invalid(format!(
            "objective {} must be between 0 and 1, exclusive (0.999 for 99.9%)",
            slo.objective
        )));
    }
    if slo.period < Duration::from_secs(3 * 86_400) {
        return Err(invalid(
            "period must be at least 3d, the longest alert window".to_owned(),
        ));
    }
    if slo.min_rate.is_nan() || slo.min_rate < 0.0 {
        return Err(invalid("min_rate must be 0 or more".to_owned()));
    }
    if let Some(bad) = slo.by.iter().find(|l| !is_label_name(l)) {
        return Err(invalid(format!("{bad:?} in `by` is not a label name")));
    }
    if !["infra", "service", "business"].contains(&slo.layer.as_str()) {
        return Err(invalid(format!(
            "layer {:?} must be infra, service or business",
            slo.layer
        )));
    }
    use paytrace_semconv::{DEFAULT_LATENCY_BUCKETS, HTTP_LATENCY_BUCKETS};
    if let Sli::Latency { threshold, .. } = slo.sli
        && !DEFAULT_LATENCY_BUCKETS.contains(&threshold)
        && !HTTP_LATENCY_BUCKETS.contains(&threshold)
    {
        return Err(invalid(format!(
            "threshold {threshold} is not a bucket boundary (flows and stages: {DEFAULT_LATENCY_BUCKETS:?}; HTTP and RPC: {HTTP_LATENCY_BUCKETS:?}): a latency SLO counts the bucket at the threshold"
        )));
    }
    Ok(())
}

/// `le` matcher for a bucket boundary that Prometheus 2 and 3 both match:
/// Prometheus 3 prints whole numbers as `5.0`, Prometheus 2 as `5`.
fn le_matcher(threshold: f64) -> String {
    if threshold.fract() == 0.0 {
        format!("le=~\"{t}|{t}.0\"", t = number(threshold))
    } else {
        format!("le=\"{}\"", number(threshold))
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, _) => b.trim().to_owned(),
        (_, true) => a.trim().to_owned(),
        _ => format!("{},{}", a.trim(), b.trim()),
    }
}

#[derive(Serialize)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Serialize)]
struct Group {
    name: String,
    interval: &'static str,
    rules: Vec<Rule>,
}

#[derive(Serialize)]
struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<String>,
    expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

fn record(name: String, expr: String, slo: &str) -> Rule {
    Rule {
        record: Some(name),
        alert: None,
        expr,
        for_: None,
        labels: [("slo".to_owned(), slo.to_owned())].into(),
        annotations: Default::default(),
    }
}

/// The header of a generated rule file.
pub const HEADER: &str = "# Generated by `paytrace-slo` from an SLO spec: do not edit.\n# Change the spec and generate again.\n";

/// Generates the rule file for `spec`.
pub fn generate(spec: &Spec) -> Result<String, SpecError> {
    let mut groups = Vec::new();
    let mut names = std::collections::HashSet::new();
    for slo in &spec.slos {
        validate(slo)?;
        if !names.insert(&slo.name) {
            return Err(SpecError::Invalid {
                slo: slo.name.clone(),
                problem: "two SLOs have this name".to_owned(),
            });
        }
        let changes_url = spec
            .page_base
            .as_deref()
            .zip(slo.flow.as_deref())
            .map(|(base, flow)| format!("{base}?flow={flow}&changes=1"));
        groups.extend(slo_groups(
            slo,
            &spec.runbook_base,
            &spec.selector,
            changes_url.as_deref(),
        ));
    }
    let yaml = serde_yaml_ng::to_string(&RuleFile { groups })
        .map_err(|e| SpecError::Parse(e.to_string()))?;
    Ok(format!("{HEADER}{yaml}"))
}

/// The labels every aggregation keeps, so that one rule set serves many
/// clusters, namespaces and jobs (on Thanos, Mimir, or a Prometheus that
/// scrapes several environments) without mixing them.
pub const KEPT_LABELS: [&str; 3] = ["cluster", "namespace", "job"];

fn slo_groups(
    slo: &Slo,
    runbook_base: &str,
    global_selector: &str,
    changes_url: Option<&str>,
) -> [Group; 2] {
    let by = KEPT_LABELS
        .iter()
        .map(|l| (*l).to_owned())
        .chain(slo.by.iter().cloned())
        .collect::<Vec<_>>()
        .join(", ");
    let sum = |inner: String| format!("sum by ({by}) ({inner})");
    let on = {
        let mut l: Vec<String> = KEPT_LABELS.iter().map(|l| (*l).to_owned()).collect();
        l.push("slo".to_owned());
        l.extend(slo.by.iter().cloned());
        l.join(", ")
    };
    let period = period_label(slo.period);
    let sel = format!(
        "{{{}}}",
        join(global_selector, &format!("slo=\"{}\"", slo.name))
    );
    let mut rules = Vec::new();
    for w in SHORT_WINDOWS {
        let (total, bad, bad_ratio) = match &slo.sli {
            Sli::Errors {
                metric,
                selector,
                bad,
            } => {
                let selector = join(global_selector, selector);
                let total = sum(format!("rate({metric}{{{selector}}}[{w}])"));
                let bad = sum(format!("rate({metric}{{{}}}[{w}])", join(&selector, bad)));
                (total.clone(), bad.clone(), format!("{bad} / {total}"))
            }
            Sli::Latency {
                histogram,
                selector,
                threshold,
            } => {
                let total = sum(format!(
                    "rate({histogram}_count{{{}}}[{w}])",
                    join(global_selector, selector)
                ));
                let good = sum(format!(
                    "rate({histogram}_bucket{{{}}}[{w}])",
                    join(&join(global_selector, selector), &le_matcher(*threshold))
                ));
                (
                    total.clone(),
                    format!("{total} - {good}"),
                    format!("1 - {good} / {total}"),
                )
            }
        };
        rules.push(record(format!("slo:requests:rate{w}"), total, &slo.name));
        if w == "5m" {
            // Bad events per second: what the long windows sum.
            rules.push(record("slo:sli_errors:rate5m".to_owned(), bad, &slo.name));
        }
        rules.push(record(
            format!("slo:sli_error:ratio_rate{w}"),
            bad_ratio,
            &slo.name,
        ));
    }
    let mut long_windows: Vec<String> = LONG_WINDOWS.iter().map(|w| (*w).to_owned()).collect();
    if !long_windows.contains(&period) && !SHORT_WINDOWS.contains(&period.as_str()) {
        long_windows.push(period.clone());
    }
    let mut long = Vec::new();
    for w in &long_windows {
        long.push(record(
            format!("slo:requests:rate{w}"),
            format!("avg_over_time(slo:requests:rate5m{sel}[{w}])"),
            &slo.name,
        ));
        long.push(record(
            format!("slo:sli_error:ratio_rate{w}"),
            format!(
                "sum_over_time(slo:sli_errors:rate5m{sel}[{w}]) / sum_over_time(slo:requests:rate5m{sel}[{w}])"
            ),
            &slo.name,
        ));
    }
    let budget = 1.0 - slo.objective;
    rules.push(record(
        "slo:objective:ratio".to_owned(),
        format!("vector({})", number(slo.objective)),
        &slo.name,
    ));
    rules.push(record(
        "slo:error_budget_remaining:ratio".to_owned(),
        format!(
            "1 - slo:sli_error:ratio_rate{period}{sel} / {}",
            number(budget)
        ),
        &slo.name,
    ));
    for (tier, severity, for_, pairs, traffic) in TIERS {
        let burn = |w: &str| format!("slo:sli_error:ratio_rate{w}{sel} / {}", number(budget));
        let pair = |(long, short, factor): (&str, &str, f64)| {
            format!(
                "({} > {f} and on ({on}) {} > {f})",
                burn(long),
                burn(short),
                f = number(factor)
            )
        };
        let expr = format!(
            "({} or {}) and on ({on}) slo:requests:rate{traffic}{sel} >= {}",
            pair(pairs[0]),
            pair(pairs[1]),
            number(slo.min_rate)
        );
        let suffix = if tier == "page" { "Fast" } else { "Slow" };
        let name = format!("{}BurnRate{suffix}", slo.alert);
        let mut labels: std::collections::BTreeMap<String, String> = [
            ("severity", severity),
            ("layer", slo.layer.as_str()),
            ("slo", slo.name.as_str()),
            ("burn_tier", tier),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(s) = &slo.service_name {
            labels.insert(paytrace_semconv::label::SERVICE_NAME.to_owned(), s.clone());
        }
        let per = if slo.by.is_empty() {
            String::new()
        } else {
            let mut per = String::new();
            for l in &slo.by {
                let sep = if per.is_empty() { "" } else { ", " };
                let _ = write!(per, "{sep}{l}={{{{ $labels.{l} }}}}");
            }
            format!(" ({per})")
        };
        let objective_pct = number(slo.objective * 100.0);
        let windows = format!(
            "over {}× over {} and {}, or {}× over {} and {}",
            number(pairs[0].2),
            pairs[0].0,
            pairs[0].1,
            number(pairs[1].2),
            pairs[1].0,
            pairs[1].1
        );
        let annotations = [
            (
                "summary",
                format!(
                    "{}{per}: burning the error budget {{{{ $value | printf \"%.1f\" }}}}× too fast",
                    slo.summary
                ),
            ),
            (
                "description",
                format!(
                    "{} SLO {} ({objective_pct}% over {period}): burn rate {windows}. {}",
                    slo.name,
                    if tier == "page" {
                        "spends its budget in hours"
                    } else {
                        "spends its budget in days"
                    },
                    slo.description.trim()
                )
                .trim()
                .to_owned(),
            ),
            ("runbook_url", format!("{runbook_base}{name}.md")),
        ]
        .into_iter()
        .chain(changes_url.map(|url| ("changes_url", url.to_owned())))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        rules.push(Rule {
            record: None,
            alert: Some(name),
            expr,
            for_: Some(for_.to_owned()),
            labels,
            annotations,
        });
    }
    [
        Group {
            name: format!("slo:{}", slo.name),
            interval: SHORT_INTERVAL,
            rules,
        },
        Group {
            name: format!("slo:{}:long", slo.name),
            interval: LONG_INTERVAL,
            rules: long,
        },
    ]
}

/// The alert names `spec` generates, in order.
pub fn alert_names(spec: &Spec) -> Vec<String> {
    spec.slos
        .iter()
        .flat_map(|s| {
            [
                format!("{}BurnRateFast", s.alert),
                format!("{}BurnRateSlow", s.alert),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Result<String, SpecError> {
        let text = format!(
            r#"
slos:
  - name: channel_latency
    alert: ChannelLatency
    objective: 0.99
    summary: The channel is slow
    by: [payment_channel]
    sli:
      latency:
        histogram: paytrace_stage_duration_seconds
        selector: 'stage="channel.request"'
        threshold: 0.5
{extra}"#
        );
        generate(&parse(&text)?)
    }

    #[test]
    fn alerts_link_to_what_changed_in_their_flow_when_the_page_is_known() {
        let with = |top: &str, flow: &str| {
            let text = format!(
                "{top}slos:\n  - name: checkout_latency\n    alert: CheckoutLatency\n    objective: 0.99\n    summary: Slow\n{flow}    sli:\n      latency:\n        histogram: paytrace_flow_duration_seconds\n        selector: 'flow=\"checkout\"'\n        threshold: 2.5\n"
            );
            generate(&parse(&text).expect("a spec")).expect("rules")
        };
        let linked = with(
            "page_base: https://paytrace.example.com/\n",
            "    flow: checkout\n",
        );
        assert_eq!(
            linked
                .matches("changes_url: https://paytrace.example.com/?flow=checkout&changes=1")
                .count(),
            2,
            "both burn alerts link: {linked}"
        );
        assert!(!with("", "    flow: checkout\n").contains("changes_url"));
        assert!(!with("page_base: https://paytrace.example.com/\n", "").contains("changes_url"));
    }

    #[test]
    fn numbers_print_without_float_noise() {
        assert_eq!(number(14.4 * (1.0 - 0.999)), "0.0144");
        assert_eq!(number(6.0), "6");
        assert_eq!(number(0.001), "0.001");
    }

    #[test]
    fn a_latency_slo_counts_the_bucket_at_its_threshold_per_label() {
        let rules = spec("").expect("valid");
        assert!(rules.contains(
            r#"1 - sum by (cluster, namespace, job, payment_channel) (rate(paytrace_stage_duration_seconds_bucket{stage="channel.request",le="0.5"}[5m]))"#
        ), "{rules}");
        assert!(rules.contains("and on (cluster, namespace, job, slo, payment_channel)"));
        assert!(rules.contains("slo:sli_error:ratio_rate30d"), "the period");
        assert!(rules.contains(r#"runbook_url: docs/runbooks/ChannelLatencyBurnRateFast.md"#));
    }

    #[test]
    fn whole_second_thresholds_match_both_prometheus_spellings() {
        assert_eq!(le_matcher(5.0), r#"le=~"5|5.0""#);
        assert_eq!(le_matcher(2.5), r#"le="2.5""#);
    }

    #[test]
    fn bad_specs_say_what_to_fix() {
        let bad = |field: &str, value: &str| {
            let text = format!(
                "slos:\n  - name: x\n    alert: X\n    objective: 0.99\n    summary: s\n    sli: {{errors: {{metric: m, selector: 'a=\"b\"', bad: 'c=\"d\"'}}}}\n    {field}: {value}\n"
            );
            match parse(&text).and_then(|s| generate(&s)) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{field}: {value} accepted"),
            }
        };
        assert!(bad("period", "1d").contains("at least 3d"));
        assert!(bad("layer", "web").contains("infra, service or business"));
        assert!(bad("by", "[\"a-b\"]").contains("not a label name"));
        assert!(bad("colour", "red").contains("unknown field"));
        let threshold = spec("").map(|_| ()).and_then(|()| {
            generate(&parse(
                "slos:\n  - name: x\n    alert: X\n    objective: 0.99\n    summary: s\n    sli: {latency: {histogram: h, selector: '', threshold: 0.3}}\n",
            )?)
        });
        assert!(
            matches!(threshold, Err(SpecError::Invalid { problem, .. }) if problem.contains("bucket boundary"))
        );
        let objective = generate(
            &parse("slos:\n  - name: x\n    alert: X\n    objective: 99.9\n    summary: s\n    sli: {errors: {metric: m, selector: '', bad: 'a=\"b\"'}}\n")
                .expect("parses"),
        );
        assert!(
            matches!(objective, Err(SpecError::Invalid { problem, .. }) if problem.contains("0.999 for 99.9%"))
        );
    }
}
