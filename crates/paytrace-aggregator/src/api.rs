//! The JSON API, `/metrics`, and the health endpoints.
//!
//! - `GET /api/v1/flows?window=5m`
//! - `GET /api/v1/breakdown?flow=F&window=5m[&payment_method=M][&payment_channel=C]`
//! - `GET /api/v1/traces/slow?flow=F[&stage=S][&limit=N]`
//! - `GET /api/v1/tcc/anomalies[?kind=K][&resource=R][&limit=N]`: newest first
//! - `GET /api/v1/tcc/unfinished[?limit=N]`: transactions waiting past the
//!   TCC timeout, oldest first
//! - `GET /api/v1/tcc/shadow[?resource=R][&limit=N]`: what the TCC fence
//!   would have prevented at participants that run without it (the fence's
//!   anomaly kinds found where no span carried the `tcc.fence` event), by
//!   resource and kind, with recent examples
//! - `GET /api/v1/timeseries?flow=F&window=1h[&payment_method=M][&payment_channel=C]`:
//!   end-to-end p50/p99 per minute
//! - `GET /api/v1/changes?flow=F[&window=5m][&baseline=preceding|FROM-TO]`:
//!   what changed in the last `window` (1 to 30 minutes) against the rest
//!   of the hour before it, or the minutes from Unix second `FROM` to `TO`
//!   (see [`crate::pipeline::Changes`])
//! - `GET /metrics`, `GET /healthz`, `GET /readyz`
//!
//! With peers (`serve --peer`), every data route answers for the whole
//! cluster (see [`crate::cluster`]) and adds `"partial"` and
//! `"missing_peers"`; `?local=true` answers for this replica alone, and
//! `GET /api/v1/internal/windows?window=5m&now_minute=M[&flow=F][&collapse=true]`
//! hands a peer this replica's minutes (only flow `F`'s; merged into one
//! minute with `collapse`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use serde::Deserialize;

use crate::cluster::{Gathered, Peers, Shape, join_lists, sum_counts};
use crate::pipeline::{Baseline, ChangeQuery, Now, Pipeline, WINDOWS_MINUTES, Windows};

/// What the API reads: this replica's pipeline, and its peers if any.
#[derive(Clone, Debug)]
pub(crate) struct ApiState {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) peers: Option<Arc<Peers>>,
    /// Where the USE signals of `/api/v1/changes` come from.
    pub(crate) prometheus: Option<Arc<crate::infra::Prometheus>>,
}

/// `?local=true`: this replica's answer alone (what a peer asks for).
#[derive(Debug, Default, Deserialize)]
struct Local {
    #[serde(default)]
    local: bool,
}

impl ApiState {
    /// The peers to ask, unless the request wants this replica alone.
    fn peers(&self, local: &Local) -> Option<&Peers> {
        self.peers.as_deref().filter(|_| !local.local)
    }

    /// This replica's windows merged with every peer's that answered;
    /// `shape` says how much of them the answer needs.
    async fn windows(
        &self,
        local: &Local,
        window_minutes: u64,
        now_minute: u64,
        shape: Shape<'_>,
    ) -> (Windows, Option<Vec<String>>) {
        let mut windows = self.pipeline.windows(window_minutes, now_minute);
        let Some(peers) = self.peers(local) else {
            return (windows, None);
        };
        let Gathered { parts, missing } = peers.windows(window_minutes, now_minute, shape).await;
        for part in parts {
            windows.merge(part);
        }
        (windows, Some(missing))
    }
}

/// `answer` with `"partial"` and `"missing_peers"` when peers were asked.
fn with_peers(mut answer: serde_json::Value, missing: Option<Vec<String>>) -> Response {
    if let (Some(missing), Some(object)) = (missing, answer.as_object_mut()) {
        object.insert("partial".to_owned(), (!missing.is_empty()).into());
        object.insert("missing_peers".to_owned(), missing.into());
    }
    Json(answer).into_response()
}

/// `T` as JSON, or `null` (what a view type always serialises to).
fn json<T: serde::Serialize>(value: T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// A window such as `5m` or `1h`, in minutes; one of [`WINDOWS_MINUTES`].
pub(crate) fn parse_window(s: &str) -> Result<u64, String> {
    let minutes = match s {
        "1m" => 1,
        "5m" => 5,
        "15m" => 15,
        "1h" | "60m" => 60,
        _ => 0,
    };
    if WINDOWS_MINUTES.contains(&minutes) {
        Ok(minutes)
    } else {
        Err(format!("window {s:?} is not one of 1m, 5m, 15m, 1h"))
    }
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct WindowQuery {
    window: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BreakdownQuery {
    flow: Option<String>,
    window: Option<String>,
    payment_method: Option<String>,
    payment_channel: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SlowQuery {
    flow: Option<String>,
    stage: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct AnomalyQuery {
    kind: Option<String>,
    resource: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

fn window(w: Option<&str>) -> Result<u64, String> {
    parse_window(w.unwrap_or("5m"))
}

async fn flows(
    State(api): State<ApiState>,
    Query(q): Query<WindowQuery>,
    Query(local): Query<Local>,
) -> Response {
    let minutes = match window(q.window.as_deref()) {
        Ok(m) => m,
        Err(e) => return bad_request(e),
    };
    let now_minute = Now::current().minute();
    let shape = Shape {
        flow: None,
        collapse: true,
    };
    let (windows, missing) = api.windows(&local, minutes, now_minute, shape).await;
    with_peers(
        serde_json::json!({
            "window_seconds": minutes * 60,
            "flows": windows.flows(minutes, now_minute),
        }),
        missing,
    )
}

#[derive(Debug, Deserialize)]
struct InternalWindowsQuery {
    window: Option<String>,
    now_minute: u64,
    flow: Option<String>,
    #[serde(default)]
    collapse: bool,
}

/// This replica's minutes, for a peer to merge: only `flow`'s when given,
/// merged into one minute with `collapse=true`.
async fn internal_windows(
    State(api): State<ApiState>,
    Query(q): Query<InternalWindowsQuery>,
) -> Response {
    let minutes = match window(q.window.as_deref()) {
        Ok(m) => m,
        Err(e) => return bad_request(e),
    };
    let mut windows = api.pipeline.windows(minutes, q.now_minute);
    if let Some(flow) = q.flow.as_deref().filter(|f| !f.is_empty()) {
        windows.retain_flow(flow);
    }
    if q.collapse {
        windows = windows.collapse(q.now_minute);
    }
    Json(windows.to_message()).into_response()
}

impl BreakdownQuery {
    /// The selection as of now: the flow (required), the window in
    /// minutes, and the method and channel when given and not empty; what
    /// is wrong otherwise.
    fn checked(&self) -> Result<crate::pipeline::Query<'_>, String> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|s| !s.is_empty())
        }
        let flow =
            given(&self.flow).ok_or("the flow parameter is required, e.g. ?flow=checkout")?;
        let minutes = window(self.window.as_deref())?;
        Ok(
            crate::pipeline::Query::new(flow, minutes, Now::current().minute())
                .payment_method(given(&self.payment_method))
                .payment_channel(given(&self.payment_channel)),
        )
    }
}

async fn breakdown(
    State(api): State<ApiState>,
    Query(q): Query<BreakdownQuery>,
    Query(local): Query<Local>,
) -> Response {
    let s = match q.checked() {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let shape = Shape {
        flow: Some(s.flow),
        collapse: true,
    };
    let (windows, missing) = api
        .windows(&local, s.window_minutes, s.now_minute, shape)
        .await;
    with_peers(json(windows.breakdown(&s)), missing)
}

async fn timeseries(
    State(api): State<ApiState>,
    Query(q): Query<BreakdownQuery>,
    Query(local): Query<Local>,
) -> Response {
    let s = match q.checked() {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let shape = Shape {
        flow: Some(s.flow),
        collapse: false,
    };
    let (windows, missing) = api
        .windows(&local, s.window_minutes, s.now_minute, shape)
        .await;
    with_peers(
        serde_json::json!({ "flow": s.flow, "points": windows.timeseries(&s) }),
        missing,
    )
}

#[derive(Debug, Deserialize)]
struct ChangesQuery {
    flow: Option<String>,
    window: Option<String>,
    baseline: Option<String>,
}

/// A window of `1m` to `30m` for a comparison with the rest of the hour.
fn change_window(w: Option<&str>) -> Result<u64, String> {
    let w = w.unwrap_or("5m");
    w.strip_suffix('m')
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| (1..=30).contains(n))
        .ok_or_else(|| format!("window {w:?} is not 1m to 30m"))
}

/// `preceding`, or `FROM-TO` in Unix seconds (minutes of the last hour).
fn change_baseline(b: Option<&str>) -> Result<Baseline, String> {
    match b.unwrap_or("preceding") {
        "preceding" => Ok(Baseline::Preceding),
        range => {
            let parsed = range
                .split_once('-')
                .and_then(|(f, t)| Some((f.parse::<u64>().ok()?, t.parse::<u64>().ok()?)));
            match parsed {
                Some((from, to)) if from < to => Ok(Baseline::Minutes {
                    from: from / 60,
                    to: (to - 1) / 60,
                }),
                _ => Err(format!(
                    "baseline {range:?} is neither `preceding` nor FROM-TO in Unix seconds"
                )),
            }
        }
    }
}

async fn changes(
    State(api): State<ApiState>,
    Query(q): Query<ChangesQuery>,
    Query(local): Query<Local>,
) -> Response {
    let Some(flow) = q.flow.as_deref().filter(|f| !f.is_empty()) else {
        return bad_request("the flow parameter is required, e.g. ?flow=checkout".to_owned());
    };
    let (window_minutes, baseline) = match (
        change_window(q.window.as_deref()),
        change_baseline(q.baseline.as_deref()),
    ) {
        (Ok(w), Ok(b)) => (w, b),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let now_minute = Now::current().minute();
    let shape = Shape {
        flow: Some(flow),
        collapse: false,
    };
    let (windows, missing) = api.windows(&local, 60, now_minute, shape).await;
    let mut found = windows.changes(&ChangeQuery {
        flow,
        window_minutes,
        now_minute,
        baseline,
    });
    if let Some(prometheus) = &api.prometheus {
        let pipeline = api.pipeline.clone();
        found.infrastructure_error =
            crate::infra::add_infrastructure(&mut found, prometheus, |stage| {
                pipeline.stage_services(flow, stage)
            })
            .await;
    }
    with_peers(json(found), missing)
}

async fn slow(
    State(api): State<ApiState>,
    Query(q): Query<SlowQuery>,
    Query(local): Query<Local>,
) -> Response {
    let Some(flow) = q.flow.filter(|f| !f.is_empty()) else {
        return bad_request("the flow parameter is required, e.g. ?flow=checkout".to_owned());
    };
    let limit = q.limit.unwrap_or(20).clamp(1, 200);
    let mine = json(api.pipeline.slow(&flow, q.stage.as_deref(), limit));
    let (traces, missing) = match api.peers(&local) {
        None => (mine, None),
        Some(peers) => {
            let mut query = vec![
                ("flow".to_owned(), flow.clone()),
                ("limit".to_owned(), limit.to_string()),
            ];
            query.extend(q.stage.clone().map(|s| ("stage".to_owned(), s)));
            let Gathered { parts, missing } =
                peers.local_answers("/api/v1/traces/slow", query).await;
            let joined = join_lists(
                serde_json::json!({ "traces": mine }),
                &parts,
                "traces",
                "duration_seconds",
                limit,
            );
            (joined.into(), Some(missing))
        }
    };
    with_peers(
        serde_json::json!({ "flow": flow, "stage": q.stage, "traces": traces }),
        missing,
    )
}

async fn tcc_anomalies(
    State(api): State<ApiState>,
    Query(q): Query<AnomalyQuery>,
    Query(local): Query<Local>,
) -> Response {
    let kind = q.kind.as_deref().filter(|k| !k.is_empty());
    if let Some(k) = kind
        && !paytrace_semconv::tcc::GLOBAL_ANOMALY_KINDS.contains(&k)
    {
        return bad_request(format!(
            "kind {k:?} is not one of {}",
            paytrace_semconv::tcc::GLOBAL_ANOMALY_KINDS.join(", ")
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let resource = q.resource.as_deref().filter(|r| !r.is_empty());
    let mine = serde_json::json!({
        "counts": api.pipeline.tcc_anomaly_counts(),
        "anomalies": api.pipeline.tcc_anomalies(kind, resource, limit),
    });
    let Some(peers) = api.peers(&local) else {
        return Json(mine).into_response();
    };
    let mut query = vec![("limit".to_owned(), limit.to_string())];
    query.extend(kind.map(|k| ("kind".to_owned(), k.to_owned())));
    query.extend(resource.map(|r| ("resource".to_owned(), r.to_owned())));
    let Gathered { parts, missing } = peers.local_answers("/api/v1/tcc/anomalies", query).await;
    let anomalies = join_lists(
        mine.clone(),
        &parts,
        "anomalies",
        "time_unix_seconds",
        limit,
    );
    with_peers(
        serde_json::json!({
            "counts": sum_counts(mine, &parts, "counts"),
            "anomalies": anomalies,
        }),
        Some(missing),
    )
}

#[derive(Debug, Deserialize)]
struct ShadowQuery {
    resource: Option<String>,
    limit: Option<usize>,
}

/// What the TCC fence would have prevented at participants without it:
/// counts by resource and kind, and the most recent examples with their
/// traces.
/// The services whose clocks the analysis corrected, as this replica saw
/// them (each replica sees the flows routed to it).
async fn clock_skew(State(api): State<ApiState>) -> Response {
    Json(serde_json::json!({ "services": api.pipeline.clock_skew() })).into_response()
}

async fn tcc_shadow(
    State(api): State<ApiState>,
    Query(q): Query<ShadowQuery>,
    Query(local): Query<Local>,
) -> Response {
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let resource = q.resource.as_deref().filter(|r| !r.is_empty());
    let counts: Vec<_> = api
        .pipeline
        .tcc_shadow_counts()
        .into_iter()
        .filter(|c| resource.is_none_or(|r| c.resource == r))
        .collect();
    let mine = serde_json::json!({
        "counts": counts,
        "examples": api.pipeline.tcc_shadow_examples(resource, limit),
    });
    let Some(peers) = api.peers(&local) else {
        return Json(mine).into_response();
    };
    let mut query = vec![("limit".to_owned(), limit.to_string())];
    query.extend(resource.map(|r| ("resource".to_owned(), r.to_owned())));
    let Gathered { parts, missing } = peers.local_answers("/api/v1/tcc/shadow", query).await;
    let examples = join_lists(mine.clone(), &parts, "examples", "time_unix_seconds", limit);
    with_peers(
        serde_json::json!({
            "counts": sum_counts(mine, &parts, "counts"),
            "examples": examples,
        }),
        Some(missing),
    )
}

async fn tcc_unfinished(
    State(api): State<ApiState>,
    Query(q): Query<LimitQuery>,
    Query(local): Query<Local>,
) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mine = serde_json::json!({
        "unfinished": api.pipeline.tcc_unfinished(limit, Now::current()),
    });
    let Some(peers) = api.peers(&local) else {
        return Json(mine).into_response();
    };
    let query = vec![("limit".to_owned(), limit.to_string())];
    let Gathered { parts, missing } = peers.local_answers("/api/v1/tcc/unfinished", query).await;
    let unfinished = join_lists(mine, &parts, "unfinished", "age_seconds", limit);
    with_peers(
        serde_json::json!({ "unfinished": unfinished }),
        Some(missing),
    )
}

async fn metrics(State(api): State<ApiState>) -> Response {
    let p = &api.pipeline;
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&p.registry().gather(), &mut body) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn ready(State(api): State<ApiState>) -> Response {
    if api.pipeline.near_capacity() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "assembly buffer near its byte budget",
        )
            .into_response()
    } else {
        "ready".into_response()
    }
}

/// The API router.
/// Who may read the API: the tokens, and where refusals are counted.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    pub(crate) tokens: Option<Arc<crate::auth::Tokens>>,
    pub(crate) receiver: crate::receiver::Receiver,
}

/// Answers 401 to a request without a token of `--api-token-file`, counted.
async fn authenticate(
    State(guard): State<Guard>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes);
    if guard.tokens.as_ref().is_none_or(|t| t.admits(presented)) {
        return next.run(request).await;
    }
    guard.receiver.refuse_api_unauthenticated();
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({
            "error": "send `Authorization: Bearer <token>` with a token of the aggregator's --api-token-file"
        })),
    )
        .into_response()
}

/// Names this replica on every response (see [`crate::cluster`]): a
/// replica that finds itself among its peers skips its own answer.
async fn name_replica(
    State(api): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    if let Some(id) = api
        .peers
        .as_ref()
        .and_then(|p| axum::http::HeaderValue::from_str(p.id()).ok())
    {
        response
            .headers_mut()
            .insert(crate::cluster::REPLICA_HEADER, id);
    }
    response
}

/// The API; its data routes behind `guard`, `/metrics` and the probes open
/// (protect them by network policy: Prometheus and the kubelet present no
/// token).
pub(crate) fn router(api: ApiState, guard: Guard) -> Router {
    Router::new()
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/internal/windows", get(internal_windows))
        .route("/api/v1/breakdown", get(breakdown))
        .route("/api/v1/traces/slow", get(slow))
        .route("/api/v1/timeseries", get(timeseries))
        .route("/api/v1/changes", get(changes))
        .route("/api/v1/tcc/anomalies", get(tcc_anomalies))
        .route("/api/v1/tcc/unfinished", get(tcc_unfinished))
        .route("/api/v1/tcc/shadow", get(tcc_shadow))
        .route("/api/v1/clock-skew", get(clock_skew))
        .route_layer(axum::middleware::from_fn_with_state(guard, authenticate))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            name_replica,
        ))
        .with_state(api)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_window_takes_the_kept_windows() {
        use crate::api::parse_window;
        assert_eq!(parse_window("15m"), Ok(15));
        assert_eq!(parse_window("1h"), Ok(60));
        assert!(parse_window("2m").is_err());
    }
}
