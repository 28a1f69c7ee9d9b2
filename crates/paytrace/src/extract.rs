//! [`ServiceTelemetry`] as an axum extractor: a handler behind [`ServiceTelemetry::http_layer`]
//! takes the service it runs in as an argument, no clone into a closure.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::ServiceTelemetry;

/// The layer puts the [`ServiceTelemetry`] into each request's extensions; a handler
/// asks for it by type.
///
/// ```
/// use axum::{Router, routing::post};
///
/// async fn create_order(svc: paytrace::ServiceTelemetry) -> &'static str {
///     svc.stage("order.create")
///         .run(async { Ok::<_, std::io::Error>("created") })
///         .await
///         .unwrap_or("failed")
/// }
///
/// let svc = paytrace::ServiceTelemetry::new("order", env!("CARGO_PKG_VERSION"));
/// let app: Router = Router::new()
///     .route("/orders", post(create_order))
///     .layer(svc.http_layer());
/// ```
impl<S: Send + Sync> FromRequestParts<S> for ServiceTelemetry {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<ServiceTelemetry>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "paytrace::ServiceTelemetry is not in this request: this route is not behind `svc.http_layer()`. \
             `Router::layer` wraps only the routes (and nested or merged routers) added before it: \
             add this route before `.layer(svc.http_layer())`",
        ))
    }
}
