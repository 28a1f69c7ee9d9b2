//! The aggregator's configuration file (TOML): which spans of services
//! instrumented with plain OpenTelemetry are which stages, and which stage
//! ends each flow.
//!
//! ```toml
//! # Spans that carry no `paytrace.stage` are matched against the rules in
//! # order; the first match names the stage (and the flow, if the span has
//! # none). Every condition given must hold.
//! [[rules]]
//! service = "payment-java"            # service.name, exact
//! span_name = "POST /pay*"            # glob: * and ?
//! attributes = { "http.route" = "/pay" }  # string attributes, exact
//! stage = "payment.create"
//! flow = "checkout"
//!
//! # A flow whose terminal stage has not appeared within --flow-timeout is
//! # counted incomplete (terminal_stage_missing). No flow has one by default.
//! [flows.checkout]
//! terminal_stage = "payment.confirm"
//! # With `serve --forward-otlp`, checkouts slower than this (seconds) are
//! # kept and forwarded whole; without it, those slower than the flow's
//! # p99 of the last 5 minutes.
//! keep_slower_than = 2.5
//!
//! # Bucket boundaries (seconds) of the flow and stage histograms; the
//! # default reaches 300 s (paytrace_semconv::DEFAULT_LATENCY_BUCKETS).
//! buckets = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::attribute::Attr;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with line and column.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rules: Vec<RuleEntry>,
    #[serde(default)]
    flows: BTreeMap<String, FlowEntry>,
    buckets: Option<Vec<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    service: Option<String>,
    span_name: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    stage: String,
    flow: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowEntry {
    terminal_stage: Option<String>,
    /// Seconds end to end past which a flow is kept as slow
    /// (`serve --forward-otlp`).
    keep_slower_than: Option<f64>,
}

/// One mapping rule.
#[derive(Debug, Clone)]
struct Rule {
    service: Option<String>,
    span_name: Option<glob::Pattern>,
    attributes: Vec<(String, String)>,
    stage: Arc<str>,
    flow: Option<Arc<str>>,
}

/// The rules that name stages of spans without `paytrace.stage`.
///
/// ```
/// use paytrace_analysis::config::Config;
///
/// let config = Config::from_toml("t.toml", r#"
///     [[rules]]
///     service = "payment-java"
///     span_name = "POST /pay*"
///     stage = "payment.create"
/// "#).unwrap();
/// let hit = config.rules.stage_for("payment-java", "POST /payments", &[]);
/// assert_eq!(hit.map(|(stage, _)| &**stage), Some("payment.create"));
/// assert!(config.rules.stage_for("order", "POST /payments", &[]).is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct StageRules {
    rules: Vec<Rule>,
}

impl StageRules {
    /// The stage (and flow) of the first rule matching a span, if any.
    pub fn stage_for(
        &self,
        service: &str,
        span_name: &str,
        attributes: &[Attr<'_>],
    ) -> Option<(&Arc<str>, Option<&Arc<str>>)> {
        self.rules
            .iter()
            .find(|r| {
                r.service.as_deref().is_none_or(|s| s == service)
                    && r.span_name.as_ref().is_none_or(|p| p.matches(span_name))
                    && r.attributes.iter().all(|(k, v)| {
                        attributes
                            .iter()
                            .any(|a| a.key == k.as_bytes() && a.str_value() == Some(v.as_bytes()))
                    })
            })
            .map(|r| (&r.stage, r.flow.as_ref()))
    }

    /// Whether naming a span's stage may read the attribute `key`: the
    /// paytrace attributes (`paytrace.*`, `payment.*`, `tcc.*`), the HTTP and
    /// RPC ones that name a plain span and tell a failed server span, and
    /// those the rules test. Decoders skip the values of all others.
    ///
    /// ```
    /// use paytrace_analysis::config::StageRules;
    /// let rules = StageRules::default();
    /// assert!(rules.reads(b"payment.channel") && rules.reads(b"http.route"));
    /// assert!(!rules.reads(b"url.full"));
    /// ```
    pub fn reads(&self, key: &[u8]) -> bool {
        use paytrace_semconv::attr;
        key.starts_with(b"paytrace.")
            || key.starts_with(b"payment.")
            || key.starts_with(b"tcc.")
            || ((key.starts_with(b"http.") || key.starts_with(b"rpc."))
                && [
                    attr::HTTP_REQUEST_METHOD,
                    attr::HTTP_METHOD_LEGACY,
                    attr::HTTP_ROUTE,
                    attr::HTTP_RESPONSE_STATUS_CODE,
                    attr::HTTP_STATUS_CODE_LEGACY,
                    attr::RPC_METHOD,
                    attr::RPC_SERVICE,
                ]
                .iter()
                .any(|k| k.as_bytes() == key))
            || self
                .rules
                .iter()
                .any(|r| r.attributes.iter().any(|(k, _)| k.as_bytes() == key))
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Stage mapping rules.
    pub rules: StageRules,
    /// Terminal stage per flow, on top of the defaults.
    pub terminal_stages: HashMap<String, String>,
    /// Per flow, seconds past which a flow is kept as slow.
    pub keep_slower_than: HashMap<String, f64>,
    /// How far a span may end past its next sibling's start and still
    /// precede it on the critical path (`docs/critical-path.md`); set by
    /// `--clock-tolerance`, not by the file.
    pub clock_tolerance: std::time::Duration,
    /// Bucket boundaries (seconds) of the flow and stage histograms.
    pub buckets: Vec<f64>,
    /// The sampling probability of spans whose `tracestate` names none; set
    /// by `--default-sampling-probability`, not by the file.
    pub default_sampling_probability: Option<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rules: StageRules::default(),
            terminal_stages: HashMap::new(),
            keep_slower_than: HashMap::new(),
            clock_tolerance: std::time::Duration::from_nanos(
                crate::tree::DEFAULT_CLOCK_TOLERANCE_NS,
            ),
            buckets: paytrace_semconv::DEFAULT_LATENCY_BUCKETS.to_vec(),
            default_sampling_probability: None,
        }
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&path.display().to_string(), &text)
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn from_toml(origin: &str, text: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            let span_name = r
                .span_name
                .as_deref()
                .map(glob::Pattern::new)
                .transpose()
                .map_err(|e| {
                    invalid(format!(
                        "rule {}: span_name is not a valid glob: {e}",
                        i + 1
                    ))
                })?;
            if r.stage.trim().is_empty() {
                return Err(invalid(format!("rule {}: stage must not be empty", i + 1)));
            }
            rules.push(Rule {
                service: r.service,
                span_name,
                attributes: r.attributes.into_iter().collect(),
                stage: Arc::from(r.stage),
                flow: r.flow.map(Arc::from),
            });
        }
        let mut keep_slower_than = HashMap::new();
        for (flow, f) in &file.flows {
            match f.keep_slower_than {
                Some(s) if s.is_finite() && s > 0.0 => {
                    keep_slower_than.insert(flow.clone(), s);
                }
                Some(s) => {
                    return Err(invalid(format!(
                        "flows.{flow}.keep_slower_than must be a positive number of seconds, got {s}"
                    )));
                }
                None => {}
            }
        }
        let terminal_stages = file
            .flows
            .into_iter()
            .filter_map(|(flow, f)| f.terminal_stage.map(|s| (flow, s)))
            .collect();
        let buckets = match file.buckets {
            None => paytrace_semconv::DEFAULT_LATENCY_BUCKETS.to_vec(),
            Some(b) => {
                let increasing = b.windows(2).all(|w| w[0] < w[1]);
                if b.is_empty() || !increasing || b.iter().any(|v| !v.is_finite() || *v <= 0.0) {
                    return Err(invalid(format!(
                        "buckets must be positive and strictly increasing, got {b:?}"
                    )));
                }
                b
            }
        };
        Ok(Self {
            rules: StageRules { rules },
            terminal_stages,
            keep_slower_than,
            buckets,
            ..Self::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::AttrValue;

    fn kv<'a>(k: &'a str, v: &'a str) -> Attr<'a> {
        Attr {
            key: k.as_bytes(),
            value: AttrValue::Str(v.as_bytes()),
        }
    }

    #[test]
    fn every_condition_must_hold_and_the_first_rule_wins() {
        let config = Config::from_toml(
            "t",
            r#"
            [[rules]]
            attributes = { "http.route" = "/pay", "rpc.system" = "grpc" }
            stage = "first"
            [[rules]]
            attributes = { "http.route" = "/pay" }
            stage = "second"
            flow = "pay"
            [flows.pay]
            terminal_stage = "payment.confirm"
            "#,
        )
        .expect("valid");
        let one = [kv("http.route", "/pay")];
        let both = [kv("http.route", "/pay"), kv("rpc.system", "grpc")];
        assert_eq!(
            config.rules.stage_for("s", "n", &both).map(|h| &**h.0),
            Some("first")
        );
        let hit = config
            .rules
            .stage_for("s", "n", &one)
            .expect("second matches");
        assert_eq!((&**hit.0, hit.1.map(|f| &**f)), ("second", Some("pay")));
        assert_eq!(
            config.terminal_stages.get("pay").map(String::as_str),
            Some("payment.confirm")
        );
    }

    #[test]
    fn buckets_default_to_300_seconds_and_are_checked() {
        let config = Config::from_toml("t", "").expect("empty is valid");
        assert_eq!(config.buckets.last(), Some(&300.0));
        let config = Config::from_toml("t", "buckets = [1, 10, 600]").expect("valid");
        assert_eq!(config.buckets, [1.0, 10.0, 600.0]);
        let err = Config::from_toml("t", "buckets = [1, 1, 600]").expect_err("not increasing");
        assert!(err.to_string().contains("strictly increasing"), "{err}");
    }

    #[test]
    fn mistakes_are_reported_with_their_place() {
        let err = Config::from_toml("c.toml", "[[rules]]\nstage = \"x\"\nspan = \"typo\"\n")
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.starts_with("c.toml:") && msg.contains("span"), "{msg}");
        let err = Config::from_toml("c.toml", "[[rules]]\nstage = \"x\"\nspan_name = \"[\"\n")
            .expect_err("bad glob");
        assert!(err.to_string().contains("not a valid glob"), "{err}");
    }
}
