//! Answering for the whole cluster (`serve --peer URL`, repeated): each
//! replica holds the flows a Collector routed to it; its API asks its peers
//! for their part and merges.
//!
//! - The windows (breakdown, flows overview, series) merge exactly: each
//!   peer sends its per-minute sketches and counts
//!   (`GET /api/v1/internal/windows`), which add up to what one process
//!   holding every flow would have ([`Windows::merge`]).
//! - The lists (slowest instances, TCC anomalies, unfinished transactions)
//!   are each peer's own answer (`?local=true`), joined and cut to the limit:
//!   the top N of the union is in the union of each replica's top N.
//!
//! A peer that does not answer within the timeout is left out: the answer
//! says `"partial": true` and lists it in `"missing_peers"`, and
//! `paytrace_aggregator_peer_requests_failed_total{peer}` counts it. Peer
//! requests carry the first token of `--api-token-file`, since every replica
//! takes the same tokens.
//!
//! With `--peers-dns URL` the peers are every address the URL's host name
//! resolves to (a Kubernetes headless Service), looked up again at most every
//! 5 s. That list includes this replica: every API response names its
//! replica (`x-paytrace-replica`), and an answer from this one is skipped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;

use crate::auth::Tokens;
use crate::pipeline::{Pipeline, Windows};

/// Where the other replicas are and how to reach them.
///
/// ```
/// let peers = paytrace_aggregator::cluster::PeerSettings::new(vec![
///     "http://aggregator-1:8686".to_owned(),
///     "http://aggregator-2:8686".to_owned(),
/// ]);
/// assert_eq!(peers.timeout, std::time::Duration::from_secs(2));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PeerSettings {
    /// The peers' API base URLs (`http://host:8686`, or `https://` with
    /// [`PeerSettings::ca`]).
    pub urls: Vec<String>,
    /// A URL whose host name resolves to every replica's address
    /// (`http://paytrace-aggregator-headless.monitoring.svc:8686`), looked up
    /// again at most every 5 s; this replica among them is skipped.
    pub dns: Option<String>,
    /// How long a peer may take to answer before the answer goes on
    /// without it.
    pub timeout: Duration,
    /// The CA certificates (PEM) that `https://` peers' certificates chain
    /// to; the system's roots when `None`.
    pub ca: Option<PathBuf>,
}

impl PeerSettings {
    /// `urls`, a 2 s timeout, the system's roots.
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            dns: None,
            timeout: Duration::from_secs(2),
            ca: None,
        }
    }
}

/// What the peers answered, and which did not.
#[derive(Debug)]
pub(crate) struct Gathered<T> {
    pub(crate) parts: Vec<T>,
    pub(crate) missing: Vec<String>,
}

/// How much of a peer's windows an answer needs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shape<'a> {
    /// Only this flow's groups (a breakdown, a series).
    pub(crate) flow: Option<&'a str>,
    /// The minutes merged into one (a breakdown, the overview; not a series).
    pub(crate) collapse: bool,
}

/// The response header naming the replica that answered.
pub(crate) const REPLICA_HEADER: &str = "x-paytrace-replica";
/// How long a DNS answer about the peers is used.
const DNS_TTL: Duration = Duration::from_secs(5);

/// A random name for this process, to tell its own answers apart.
pub(crate) fn replica_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Where the peers are found.
#[derive(Debug)]
enum Source {
    Static(Vec<String>),
    Dns {
        scheme: String,
        host: String,
        port: u16,
        resolved: std::sync::Mutex<Option<(std::time::Instant, Vec<String>)>>,
    },
}

/// The peers of this replica.
#[derive(Debug)]
pub(crate) struct Peers {
    source: Source,
    /// This replica's name, in [`REPLICA_HEADER`].
    id: String,
    client: reqwest::Client,
    tokens: Option<Arc<Tokens>>,
    failed: IntCounterVec,
}

impl Peers {
    /// A client for `settings`, its failures counted in `pipeline`'s registry.
    pub(crate) fn new(
        settings: &PeerSettings,
        tokens: Option<Arc<Tokens>>,
        pipeline: &Pipeline,
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder().timeout(settings.timeout);
        if let Some(ca) = &settings.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read the peers' CA {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{} holds no PEM certificate: {e}", ca.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the peers' HTTP client: {e}"))?;
        let failed = pipeline
            .register_counters(
                paytrace_semconv::metric::AGGREGATOR_PEER_REQUESTS_FAILED_TOTAL,
                "Requests to peer replicas that failed or timed out; the answers went on without them.",
                &[paytrace_semconv::label::PEER],
            )
            .map_err(|e| e.to_string())?;
        let source = match &settings.dns {
            Some(url) => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| format!("--peers-dns {url:?} is not a URL: {e}"))?;
                let host = parsed
                    .host_str()
                    .ok_or_else(|| format!("--peers-dns {url:?} names no host"))?
                    .to_owned();
                Source::Dns {
                    scheme: parsed.scheme().to_owned(),
                    port: parsed.port_or_known_default().unwrap_or(8686),
                    host,
                    resolved: std::sync::Mutex::new(None),
                }
            }
            None => {
                let urls: Vec<String> = settings
                    .urls
                    .iter()
                    .map(|u| u.trim_end_matches('/').to_owned())
                    .collect();
                for url in &urls {
                    failed.with_label_values(&[url.as_str()]);
                }
                Source::Static(urls)
            }
        };
        Ok(Self {
            source,
            id: replica_id(),
            client,
            tokens,
            failed,
        })
    }

    /// This replica's name, for [`REPLICA_HEADER`].
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The peers' base URLs now (for DNS, this replica's own address among
    /// them).
    async fn urls(&self) -> Vec<String> {
        let (scheme, host, port, resolved) = match &self.source {
            Source::Static(urls) => return urls.clone(),
            Source::Dns {
                scheme,
                host,
                port,
                resolved,
            } => (scheme, host, *port, resolved),
        };
        if let Some((at, urls)) = &*resolved.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < DNS_TTL
        {
            return urls.clone();
        }
        let urls: Vec<String> = match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addresses) => {
                let mut urls: Vec<String> = addresses.map(|a| format!("{scheme}://{a}")).collect();
                urls.sort();
                urls.dedup();
                urls
            }
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "cannot resolve the peers: answering alone");
                Vec::new()
            }
        };
        *resolved.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), urls.clone()));
        urls
    }

    /// Every peer's windows of the last `window_minutes` up to `now_minute`,
    /// as much of them as `shape` says.
    pub(crate) async fn windows(
        &self,
        window_minutes: u64,
        now_minute: u64,
        shape: Shape<'_>,
    ) -> Gathered<Windows> {
        let mut query = vec![
            ("window".to_owned(), format!("{window_minutes}m")),
            ("now_minute".to_owned(), now_minute.to_string()),
            ("collapse".to_owned(), shape.collapse.to_string()),
        ];
        query.extend(shape.flow.map(|f| ("flow".to_owned(), f.to_owned())));
        self.get("/api/v1/internal/windows", query, |body| {
            Windows::from_message(body).map_err(|e| e.to_string())
        })
        .await
    }

    /// Every peer's own answer to `path?query&local=true`.
    pub(crate) async fn local_answers(
        &self,
        path: &str,
        mut query: Vec<(String, String)>,
    ) -> Gathered<serde_json::Value> {
        query.push(("local".to_owned(), "true".to_owned()));
        self.get(path, query, |body| {
            serde_json::from_slice(body).map_err(|e| format!("its answer is not JSON: {e}"))
        })
        .await
    }

    /// Asks every peer for `path?query`; `read` turns an answer's body
    /// into what the caller needs, or says why it cannot (a peer whose
    /// answer cannot be read is a peer that did not answer).
    async fn get<U>(
        &self,
        path: &str,
        query: Vec<(String, String)>,
        read: fn(&[u8]) -> Result<U, String>,
    ) -> Gathered<U> {
        let token = self.tokens.as_ref().and_then(|t| t.first());
        let urls = self.urls().await;
        let mut asked = tokio::task::JoinSet::new();
        for (i, base) in urls.iter().enumerate() {
            let mut request = self.client.get(format!("{base}{path}")).query(&query);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let own = self.id.clone();
            asked.spawn(async move {
                let answer = async {
                    let response = request.send().await?.error_for_status()?;
                    let from_self = response
                        .headers()
                        .get(REPLICA_HEADER)
                        .is_some_and(|id| id.as_bytes() == own.as_bytes());
                    if from_self {
                        return Ok(None);
                    }
                    response.bytes().await.map(Some)
                }
                .await;
                (i, answer)
            });
        }
        let mut answers: Vec<(usize, U)> = Vec::with_capacity(urls.len());
        let mut missing = Vec::new();
        while let Some(joined) = asked.join_next().await {
            let failed = match joined {
                Ok((i, Ok(Some(answer)))) => match read(&answer) {
                    Ok(answer) => {
                        answers.push((i, answer));
                        None
                    }
                    Err(why) => Some((i, why)),
                },
                Ok((_, Ok(None))) => None,
                Ok((i, Err(e))) => Some((i, e.to_string())),
                Err(e) => {
                    tracing::error!(error = %e, "a peer request task failed");
                    None
                }
            };
            if let Some((i, why)) = failed {
                let url = &urls[i];
                tracing::warn!(peer = %url, error = %why, "a peer did not answer: the answer is partial");
                self.failed.with_label_values(&[url.as_str()]).inc();
                missing.push(url.clone());
            }
        }
        answers.sort_by_key(|(i, _)| *i);
        missing.sort();
        Gathered {
            parts: answers.into_iter().map(|(_, a)| a).collect(),
            missing,
        }
    }
}

/// Joins the arrays under `key` of `local` and `peers`, largest `order_by`
/// first (a number field of each item), cut to `limit`.
pub(crate) fn join_lists(
    local: serde_json::Value,
    peers: &[serde_json::Value],
    key: &str,
    order_by: &str,
    limit: usize,
) -> Vec<serde_json::Value> {
    let mut all: Vec<serde_json::Value> = std::iter::once(&local)
        .chain(peers)
        .filter_map(|answer| answer.get(key)?.as_array().cloned())
        .flatten()
        .collect();
    let number = |v: &serde_json::Value| v.get(order_by).and_then(serde_json::Value::as_f64);
    all.sort_by(|a, b| {
        number(b)
            .partial_cmp(&number(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    all.truncate(limit);
    all
}

/// Adds up `{resource, kind, count}` items of `local` and `peers` under
/// `key` by their other fields.
pub(crate) fn sum_counts(
    local: serde_json::Value,
    peers: &[serde_json::Value],
    key: &str,
) -> Vec<serde_json::Value> {
    let mut totals: std::collections::BTreeMap<(String, String), u64> =
        std::collections::BTreeMap::new();
    for answer in std::iter::once(&local).chain(peers) {
        for item in answer
            .get(key)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = |f: &str| {
                item.get(f)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned()
            };
            let count = item
                .get("count")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            *totals.entry((text("resource"), text("kind"))).or_default() += count;
        }
    }
    totals
        .into_iter()
        .map(|((resource, kind), count)| {
            serde_json::json!({ "resource": resource, "kind": kind, "count": count })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_join_largest_first_and_cut_to_the_limit() {
        let local = json!({"traces": [{"d": 1.0}, {"d": 5.0}]});
        let peers = [json!({"traces": [{"d": 3.0}]}), json!({"error": "no list"})];
        let joined = join_lists(local, &peers, "traces", "d", 2);
        assert_eq!(joined, [json!({"d": 5.0}), json!({"d": 3.0})]);
    }

    #[test]
    fn counts_add_up_by_resource_and_kind() {
        let local = json!({"counts": [{"resource": "inventory", "kind": "frozen", "count": 2}]});
        let peers = [json!({"counts": [
            {"resource": "inventory", "kind": "frozen", "count": 3},
            {"resource": "points", "kind": "empty_rollback", "count": 1}
        ]})];
        assert_eq!(
            sum_counts(local, &peers, "counts"),
            [
                json!({"resource": "inventory", "kind": "frozen", "count": 5}),
                json!({"resource": "points", "kind": "empty_rollback", "count": 1})
            ]
        );
    }
}
