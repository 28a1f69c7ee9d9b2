//! Running one of the shop's services in its own process.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use paytrace::ServiceTelemetry;
use paytrace::tcc::{FenceStore, MemoryFence, RedisFence};
use paytrace_demo::stock::StockStore;
use tokio::sync::watch;

use crate::chaos::Chaos;
use crate::plan::{Plan, Role};

/// How long finished TCC fence records are kept to catch repeats.
const FENCE_RETENTION: Duration = Duration::from_secs(600);

/// Units of every item the inventory starts with.
const INITIAL_STOCK: i64 = 1_000_000;

/// Serves `role` until `POST /admin/shutdown` or Ctrl-C; then flushes its spans.
pub async fn run(
    role: Role,
    plan: Plan,
    chaos: Chaos,
    without_fence: bool,
    redis: Option<String>,
    exit_with_parent: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = paytrace::TelemetryConfig::from_env(role.name())?
        .with_service_version(env!("CARGO_PKG_VERSION"))
        .install()?;
    let svc = ServiceTelemetry::new(role.name(), env!("CARGO_PKG_VERSION"));
    svc.monitor_runtime(&tokio::runtime::Handle::current());
    let chaos = Arc::new(chaos);

    let mut grpc = None;
    let routes: Router = match role {
        Role::Gateway => crate::gateway::router(&svc, plan),
        Role::Order => crate::order::router(&svc, plan, &chaos),
        Role::Payment => crate::payment::router(&svc, plan, &chaos),
        Role::Inventory | Role::Coupon | Role::Points => {
            let fence: Arc<dyn FenceStore> = match &redis {
                Some(url) => Arc::new(
                    RedisFence::connect(url, &format!("paytrace-demo:{role}"), FENCE_RETENTION)
                        .await
                        .map_err(|e| format!("cannot use Redis at {url}: {e}"))?,
                ),
                None => Arc::new(MemoryFence::new(1_000_000, FENCE_RETENTION)),
            };
            let stock = match (role, &redis) {
                (Role::Inventory, Some(url)) => Some(
                    StockStore::redis(url, "paytrace-demo", INITIAL_STOCK)
                        .await
                        .map_err(|e| format!("cannot use Redis at {url}: {e}"))?,
                ),
                (Role::Inventory, None) => Some(StockStore::memory(INITIAL_STOCK)),
                _ => None,
            };
            let (routes, service) = crate::participant::participant(
                &svc,
                role.name(),
                &chaos,
                stock.map(Arc::new),
                fence,
                !without_fence,
            );
            // The order service calls inventory's phases over gRPC.
            if role == Role::Inventory {
                grpc = Some(service);
            }
            routes
        }
        Role::Alipay | Role::WechatPay | Role::Card => crate::channel::router(role, chaos.clone()),
    };
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let admin_stop = stop.clone();
    if exit_with_parent {
        // The demo holds our stdin open; when it goes away, however it
        // ended, the pipe closes and this service stops too.
        let parent_gone = stop.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
            parent_gone.send_replace(true);
        });
    }
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    };
    let grpc_server = match grpc {
        Some(service) => {
            let listener = tokio::net::TcpListener::bind(plan.grpc_addr(role)).await?;
            let server = tonic::transport::Server::builder()
                .layer(svc.grpc_layer())
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    until_stopped(),
                );
            Some(tokio::spawn(server))
        }
        None => None,
    };
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
                admin_stop.send_replace(true);
                async { "stopping" }
            }),
        );
    let listener = tokio::net::TcpListener::bind(plan.addr(role)).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(until_stopped())
        .await?;
    if let Some(server) = grpc_server {
        server.await??;
    }
    // Export what is still queued before the process ends.
    tokio::task::spawn_blocking(move || drop(telemetry)).await?;
    Ok(())
}
