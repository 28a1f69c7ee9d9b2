//! Running one of the shop's services in its own process.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use paytrace::ServiceTelemetry;
use paytrace::tcc::{RedisEffect, RedisFence, SqlFence};
use paytrace_demo::ledger::Ledger;
use paytrace_demo::stock::{RESERVE_EFFECT, SETTLE_EFFECT, StockStore};
use tokio::sync::watch;

use crate::chaos::{Chaos, Fault};
use crate::participant::Store;
use crate::plan::{Plan, Role};

/// How long finished TCC fence records are kept to catch repeats.
const FENCE_RETENTION: Duration = Duration::from_secs(600);

/// Units of every item the inventory starts with.
const INITIAL_STOCK: i64 = 1_000_000;

/// How often finished fence rows older than [`FENCE_RETENTION`] are
/// deleted (and `paytrace_tcc_pending` recounted).
const FENCE_CLEANING: Duration = Duration::from_secs(10);

/// The directory of the demo's SQLite ledgers for the services on `plan`.
pub fn sqlite_dir(plan: Plan) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("paytrace-demo-{}", plan.base))
}

/// `role`'s ledger: `database` when given, else its own SQLite file.
fn database_url(plan: Plan, role: Role, database: Option<String>) -> String {
    database.unwrap_or_else(|| {
        let file = sqlite_dir(plan).join(format!("{role}.db"));
        format!("sqlite://{}", file.display())
    })
}

/// `role`'s ledger in the database at `url` and its fence, whose row
/// goes in each phase's transaction; finished rows cleaned every
/// [`FENCE_CLEANING`].
async fn sql_ledger(
    svc: &ServiceTelemetry,
    role: Role,
    chaos: &Chaos,
    url: &str,
) -> Result<(Ledger, SqlFence), String> {
    // Inventory's pool: eight connections, one when exhausted from the start.
    let connections = match role {
        Role::Inventory if chaos.has(Fault::PoolExhausted) => 1,
        _ => 8,
    };
    let ledger = open_ledger(role, url, connections).await?;
    let pool = ledger.pool_metrics(svc, &format!("{role}_db"));
    let fence = svc.tcc_sql(role.name()).pool_metrics(pool);
    ledger
        .create(&fence, INITIAL_STOCK)
        .await
        .map_err(|e| format!("cannot create {role}'s tables at {url}: {e}"))?;
    let (cleaner, f) = (ledger.clone(), fence.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(FENCE_CLEANING);
        loop {
            every.tick().await;
            if let Err(e) = cleaner.clean(&f, FENCE_RETENTION).await {
                tracing::warn!(error = %e, "cannot clean the fence's table");
            }
        }
    });
    Ok((ledger, fence))
}

/// `role`'s database at `url` (its SQLite file's directory created).
async fn open_ledger(role: Role, url: &str, connections: u32) -> Result<Ledger, String> {
    if let Some(dir) = url
        .strip_prefix("sqlite://")
        .and_then(|p| std::path::Path::new(p).parent())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ledger::open(url, connections)
        .await
        .map_err(|e| format!("cannot open {role}'s ledger at {url}: {e}"))
}

/// Inventory's stock in the Redis at `url`, each phase's change in the
/// Redis fence's script.
async fn redis_store(svc: &ServiceTelemetry, role: Role, url: &str) -> Result<Store, String> {
    let fence = RedisFence::connect(url, &format!("paytrace-demo:{role}"), FENCE_RETENTION)
        .await
        .map_err(|e| format!("cannot use Redis at {url}: {e}"))?;
    let stock = StockStore::redis(url, "paytrace-demo", INITIAL_STOCK)
        .await
        .map_err(|e| format!("cannot use Redis at {url}: {e}"))?;
    Ok(Store::Redis {
        stock: Arc::new(stock),
        fence: svc.tcc_redis(role.name(), Arc::new(fence)),
        reserve: RedisEffect::new(RESERVE_EFFECT),
        settle: RedisEffect::new(SETTLE_EFFECT),
    })
}

/// Where a service keeps its state and sends its messages: `--redis`,
/// `--database-url`, `--broker`.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    /// Redis for the inventory's stock.
    pub redis: Option<String>,
    /// The database of the ledgers, outbox and inbox.
    pub database: Option<String>,
    /// The message broker of the payment's notifications.
    pub broker: Option<String>,
}

/// Serves `role` until `POST /admin/shutdown` or Ctrl-C; then flushes its spans.
pub async fn run(
    role: Role,
    plan: Plan,
    chaos: Chaos,
    without_fence: bool,
    backends: Backends,
    exit_with_parent: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let Backends {
        redis,
        database,
        broker,
    } = backends;
    let broker = broker
        .as_deref()
        .map(crate::broker::Broker::parse)
        .transpose()?;
    let telemetry = paytrace::TelemetryConfig::from_env(role.name())?
        .with_service_version(env!("CARGO_PKG_VERSION"))
        .install()?;
    let svc = ServiceTelemetry::new(role.name(), env!("CARGO_PKG_VERSION"));
    svc.monitor_runtime(&tokio::runtime::Handle::current());
    let chaos = Arc::new(chaos);

    let mut grpc = None;
    let routes: Router = match role {
        Role::Gateway => crate::gateway::router(&svc, plan),
        Role::Order => {
            let (routes, paid) = crate::order::router(&svc, plan, &chaos);
            if let Some(broker) = &broker {
                // The order's inbox, in its own database.
                let url = database_url(plan, role, database);
                let ledger = open_ledger(role, &url, 4).await?;
                crate::broker::consume(&svc, ledger, broker, paid).await?;
            }
            routes
        }
        Role::Payment => {
            let url = database_url(plan, role, database);
            let (ledger, fence) = sql_ledger(&svc, role, &chaos, &url).await?;
            let outbox = match &broker {
                Some(broker) => {
                    let outbox = paytrace::messaging::outbox::Outbox::new(
                        &svc,
                        crate::broker::OUTBOX_TABLE,
                    )?;
                    ledger
                        .create_outbox(&outbox)
                        .await
                        .map_err(|e| format!("cannot create the payment's outbox: {e}"))?;
                    crate::broker::relay(&svc, ledger.clone(), outbox.clone(), broker).await?;
                    Some(outbox)
                }
                None => None,
            };
            crate::payment::router(&svc, plan, &chaos, (ledger, fence), outbox)
        }
        Role::Inventory | Role::Coupon | Role::Points => {
            let store = match (role, &redis) {
                (Role::Inventory, Some(url)) => redis_store(&svc, role, url).await?,
                _ => {
                    let url = database_url(plan, role, database);
                    let (ledger, fence) = sql_ledger(&svc, role, &chaos, &url).await?;
                    Store::Sql { ledger, fence }
                }
            };
            let (routes, service) =
                crate::participant::participant(role.name(), &chaos, store, !without_fence);
            // The order service calls inventory's phases over gRPC.
            if role == Role::Inventory {
                grpc = Some(service);
            }
            routes
        }
        Role::Alipay | Role::WechatPay | Role::Card => {
            crate::channel::router(&svc, role, chaos.clone())
        }
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
