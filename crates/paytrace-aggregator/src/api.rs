//! The JSON API, `/metrics`, and the health endpoints.
//!
//! - `GET /api/v1/flows?window=5m`
//! - `GET /api/v1/breakdown?flow=F&window=5m[&payment_method=M][&payment_channel=C]`
//! - `GET /api/v1/traces/slow?flow=F[&stage=S][&limit=N]`
//! - `GET /api/v1/tcc/anomalies[?kind=K][&resource=R][&limit=N]`: newest first
//! - `GET /api/v1/tcc/unfinished[?limit=N]`: transactions waiting past the
//!   TCC timeout, oldest first
//! - `GET /api/v1/timeseries?flow=F&window=1h[&payment_method=M][&payment_channel=C]`:
//!   end-to-end p50/p99 per minute
//! - `GET /metrics`, `GET /healthz`, `GET /readyz`

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use serde::Deserialize;

use crate::pipeline::{Now, Pipeline, WINDOWS_MINUTES};

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

async fn flows(State(p): State<Arc<Pipeline>>, Query(q): Query<WindowQuery>) -> Response {
    let minutes = match window(q.window.as_deref()) {
        Ok(m) => m,
        Err(e) => return bad_request(e),
    };
    Json(serde_json::json!({
        "window_seconds": minutes * 60,
        "flows": p.flows(minutes, Now::current().minute()),
    }))
    .into_response()
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

async fn breakdown(State(p): State<Arc<Pipeline>>, Query(q): Query<BreakdownQuery>) -> Response {
    let s = match q.checked() {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let b = p.breakdown(&s);
    Json(b).into_response()
}

async fn timeseries(State(p): State<Arc<Pipeline>>, Query(q): Query<BreakdownQuery>) -> Response {
    let s = match q.checked() {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let points = p.timeseries(&s);
    Json(serde_json::json!({ "flow": s.flow, "points": points })).into_response()
}

async fn slow(State(p): State<Arc<Pipeline>>, Query(q): Query<SlowQuery>) -> Response {
    let Some(flow) = q.flow.filter(|f| !f.is_empty()) else {
        return bad_request("the flow parameter is required, e.g. ?flow=checkout".to_owned());
    };
    let limit = q.limit.unwrap_or(20).clamp(1, 200);
    Json(serde_json::json!({
        "flow": flow,
        "stage": q.stage,
        "traces": p.slow(&flow, q.stage.as_deref(), limit),
    }))
    .into_response()
}

async fn tcc_anomalies(State(p): State<Arc<Pipeline>>, Query(q): Query<AnomalyQuery>) -> Response {
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
    Json(serde_json::json!({
        "counts": p.tcc_anomaly_counts(),
        "anomalies": p.tcc_anomalies(kind, resource, limit),
    }))
    .into_response()
}

async fn tcc_unfinished(State(p): State<Arc<Pipeline>>, Query(q): Query<LimitQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Json(serde_json::json!({ "unfinished": p.tcc_unfinished(limit, Now::current()) }))
        .into_response()
}

async fn metrics(State(p): State<Arc<Pipeline>>) -> Response {
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

async fn ready(State(p): State<Arc<Pipeline>>) -> Response {
    if p.near_capacity() {
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

/// The API; its data routes behind `guard`, `/metrics` and the probes open
/// (protect them by network policy: Prometheus and the kubelet present no
/// token).
pub(crate) fn router(pipeline: Arc<Pipeline>, guard: Guard) -> Router {
    Router::new()
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/breakdown", get(breakdown))
        .route("/api/v1/traces/slow", get(slow))
        .route("/api/v1/timeseries", get(timeseries))
        .route("/api/v1/tcc/anomalies", get(tcc_anomalies))
        .route("/api/v1/tcc/unfinished", get(tcc_unfinished))
        .route_layer(axum::middleware::from_fn_with_state(guard, authenticate))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(pipeline)
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
