//! The infrastructure next to the business symptom: for each stage that
//! [`Changes`] names, the USE signals of the service that runs it, read
//! from Prometheus' HTTP API (`serve --prometheus URL`) at the end of the
//! baseline and now, kept when they moved with the change: a pool's wait
//! and utilisation, a queue's oldest message, the runtime's busy ratio, and
//! restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::pipeline::{Changes, InfraSignal};

/// One signal: its query for a service (`{service}`; `{range}` the
/// window's length in seconds), and how much it must move to count.
struct Spec {
    signal: &'static str,
    query: &'static str,
    /// The least rise that counts, in its unit.
    floor: f64,
    unit: Unit,
    what: &'static str,
}

#[derive(Clone, Copy)]
enum Unit {
    Seconds,
    Ratio,
    Count,
}

const SIGNALS: [Spec; 5] = [
    Spec {
        signal: "pool_wait_p99",
        query: r#"histogram_quantile(0.99, sum by (service_name, resource, le) (rate(paytrace_resource_wait_seconds_bucket{service_name="{service}"}[5m])))"#,
        floor: 0.010,
        unit: Unit::Seconds,
        what: "pool wait p99",
    },
    Spec {
        signal: "pool_utilisation",
        query: r#"max by (service_name, resource) (paytrace_resource_in_use{service_name="{service}"} / paytrace_resource_capacity{service_name="{service}"})"#,
        floor: 0.2,
        unit: Unit::Ratio,
        what: "pool in use",
    },
    Spec {
        signal: "queue_oldest_age",
        query: r#"max by (service_name, queue) (paytrace_queue_oldest_age_seconds{service_name="{service}"})"#,
        floor: 1.0,
        unit: Unit::Seconds,
        what: "oldest queued message",
    },
    Spec {
        signal: "runtime_busy_ratio",
        query: r#"max by (service_name) (paytrace_runtime_worker_busy_ratio{service_name="{service}"})"#,
        floor: 0.2,
        unit: Unit::Ratio,
        what: "tokio workers busy",
    },
    Spec {
        signal: "restarts",
        query: r#"sum by (service_name, instance) (changes(process_start_time_seconds[{range}s]) * on (job, instance) group_left (service_name) max by (job, instance, service_name) (paytrace_build_info{service_name="{service}"}))"#,
        floor: 1.0,
        unit: Unit::Count,
        what: "restarts",
    },
];

/// A Prometheus to read the signals from.
///
/// ```
/// let p = paytrace_aggregator::infra::Prometheus::new("http://prometheus:9090").unwrap();
/// # drop(p);
/// ```
#[derive(Clone, Debug)]
pub struct Prometheus {
    url: String,
    client: reqwest::Client,
}

/// Why no HTTP client for Prometheus could be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for Prometheus: {0}")]
pub struct ClientError(String);

impl Prometheus {
    /// Prometheus' base URL (`http://prometheus:9090`); queries time out
    /// after 5 s.
    ///
    /// # Errors
    ///
    /// When no HTTP client can be built (the system's TLS roots cannot be
    /// loaded).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError(e.to_string()))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// The instant vector `promql` at `at` (Unix seconds): labels and value.
    async fn query(
        &self,
        promql: &str,
        at: f64,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> {
        let answer: serde_json::Value = self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql), ("time", &format!("{at:.3}"))])
            .send()
            .await
            .map_err(|e| format!("Prometheus at {} does not answer: {e}", self.url))?
            .json()
            .await
            .map_err(|e| format!("Prometheus at {} answered no JSON: {e}", self.url))?;
        if answer["status"] != "success" {
            return Err(format!("Prometheus refused {promql}: {}", answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let labels = serde_json::from_value(s["metric"].clone()).ok()?;
                let value: f64 = s["value"][1].as_str()?.parse().ok()?;
                value.is_finite().then_some((labels, value))
            })
            .collect())
    }
}

/// Adds to each latency finding of `changes` the USE signals of the
/// services that run its stage (`services(stage)`) that moved between the
/// end of the baseline and now; returns why Prometheus could not be read,
/// if so (the findings stand without it).
pub async fn add_infrastructure(
    changes: &mut Changes,
    prometheus: &Prometheus,
    services: impl Fn(&str) -> Vec<String>,
) -> Option<String> {
    // The window ends with its minute; its signals are read now, not past it.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let now = (changes.current.to_unix_seconds as f64).min(wall);
    let before = changes.baseline.to_unix_seconds as f64;
    let range = (changes.current.to_unix_seconds - changes.current.from_unix_seconds).max(60);
    let mut cache: BTreeMap<String, Vec<InfraSignal>> = BTreeMap::new();
    let mut problem = None;
    for finding in &mut changes.latency {
        for service in services(&finding.stage) {
            if !cache.contains_key(&service) {
                match moved(prometheus, &service, before, now, range).await {
                    Ok(signals) => {
                        cache.insert(service.clone(), signals);
                    }
                    Err(e) => {
                        problem.get_or_insert(e);
                        cache.insert(service.clone(), Vec::new());
                    }
                }
            }
            finding
                .infrastructure
                .extend(cache.get(&service).into_iter().flatten().cloned());
        }
    }
    problem
}

/// The signals of `service` that rose between `before` and `now`.
async fn moved(
    prometheus: &Prometheus,
    service: &str,
    before: f64,
    now: f64,
    range: u64,
) -> Result<Vec<InfraSignal>, String> {
    let mut out = Vec::new();
    for spec in &SIGNALS {
        let query = spec
            .query
            .replace(
                "{service}",
                &service.replace('\\', "\\\\").replace('"', "\\\""),
            )
            .replace("{range}", &range.to_string());
        let then = prometheus.query(&query, before).await?;
        let current = prometheus.query(&query, now).await?;
        for (labels, value) in current {
            let was = then
                .iter()
                .find(|(l, _)| *l == labels)
                .map_or(0.0, |(_, v)| *v);
            let rose = value - was >= spec.floor && (was <= 0.0 || value >= 1.5 * was);
            if !rose {
                continue;
            }
            let mut labels = labels;
            labels.remove("service_name");
            let named: Vec<&str> = ["resource", "queue", "instance"]
                .iter()
                .filter_map(|k| labels.get(*k).map(String::as_str))
                .collect();
            let show = |v: f64| match spec.unit {
                Unit::Seconds if v < 1.0 => format!("{:.0} ms", v * 1000.0),
                Unit::Seconds => format!("{v:.2} s"),
                Unit::Ratio => format!("{:.0}%", v * 100.0),
                Unit::Count => format!("{v:.0}"),
            };
            let summary = format!(
                "{service}{}{} {}: {} → {}",
                if named.is_empty() { "" } else { " " },
                named.join(" "),
                spec.what,
                show(was),
                show(value),
            );
            out.push(InfraSignal {
                signal: spec.signal,
                service: service.to_owned(),
                labels,
                baseline: was,
                current: value,
                summary,
            });
        }
    }
    Ok(out)
}
