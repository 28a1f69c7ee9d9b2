//! Running one of the shop's services in its own process.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use paytrace::Service;
use tokio::sync::Notify;

use crate::chaos::Chaos;
use crate::plan::{Plan, Role};

/// Serves `role` until `POST /admin/shutdown` or Ctrl-C; then flushes its spans.
pub async fn run(role: Role, plan: Plan, chaos: Chaos) -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = paytrace::init(role.name())?;
    let svc = Service::new(role.name(), env!("CARGO_PKG_VERSION"));
    svc.monitor_runtime(&tokio::runtime::Handle::current());
    let chaos = Arc::new(chaos);

    let routes: Router = match role {
        Role::Gateway => crate::gateway::router(&svc, plan),
        Role::Order => crate::order::router(&svc, plan),
        Role::Payment => crate::payment::router(&svc, plan, &chaos),
        Role::Inventory | Role::Coupon | Role::Points => {
            crate::participant::router(&svc, role.name(), &chaos)
        }
        Role::Alipay | Role::WechatPay | Role::Card => crate::channel::router(role, chaos.clone()),
    };
    let stop = Arc::new(Notify::new());
    let admin_stop = stop.clone();
    let app = routes
        .layer(svc.http_layer().timeout(Duration::from_secs(15)))
        .route(
            "/metrics",
            paytrace::metrics_route(svc.metrics().registry().clone()),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/admin/shutdown",
            post(move || {
                admin_stop.notify_one();
                async { "stopping" }
            }),
        );
    let listener = tokio::net::TcpListener::bind(plan.addr(role)).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = stop.notified() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    // Export what is still queued before the process ends.
    tokio::task::spawn_blocking(move || drop(telemetry)).await?;
    Ok(())
}
