//! The `/metrics` endpoint.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use prometheus::Registry;

/// A `GET` route that renders `registry` in the Prometheus text format.
///
/// Pass `Metrics::registry().clone()` for paytrace's registry, or your own
/// registry if you registered paytrace's families in it with
/// [`crate::Metrics::register`].
///
/// ```
/// use axum::Router;
///
/// let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
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
    match crate::metrics::encode_text(registry) {
        Ok(body) => ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response(),
    }
}
