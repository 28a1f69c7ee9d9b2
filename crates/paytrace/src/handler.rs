//! The `/metrics` endpoint.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use prometheus::{Encoder, Registry, TextEncoder};

/// A `GET` route that renders `registry` in the Prometheus text format.
///
/// Pass `Metrics::registry().clone()` for paytrace's registry, or your own
/// registry if you registered paytrace's families in it with
/// [`crate::Metrics::register`].
///
/// ```
/// use axum::Router;
///
/// let svc = paytrace::Service::new("order", "1.0.0");
/// let app: Router = Router::new()
///     .route("/metrics", paytrace::metrics_route(svc.metrics().registry().clone()));
/// ```
pub fn metrics_route<S>(registry: Registry) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    get(move || {
        let registry = registry.clone();
        async move { render(&registry) }
    })
}

fn render(registry: &Registry) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => ([(CONTENT_TYPE, encoder.format_type().to_owned())], body).into_response(),
        Err(e) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response(),
    }
}
