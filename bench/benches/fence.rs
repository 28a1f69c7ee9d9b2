//! What the TCC fence costs: one decision in memory and in Redis over
//! loopback, and its share of a whole Try call (HTTP over loopback into a
//! participant with the paytrace layer and a stage), in one run; and the SQL
//! fence against the same business transaction without it (a reservation:
//! a conditional stock update and a row), on SQLite and PostgreSQL.
//!
//! `cargo bench -p paytrace-bench --bench fence`. The Redis figures need a
//! redis-server at `PAYTRACE_BENCH_REDIS` (default `redis://127.0.0.1:6379/`;
//! `apt-get install redis-server`); without one they are left out, said so.
//! The PostgreSQL figures start a server of their own (`apt-get install
//! postgresql`); without one they are left out, said so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use criterion::{Criterion, criterion_group, criterion_main};
use paytrace::tcc::{BranchKey, FenceStore, MemoryFence, Phase, RedisFence, RunId, TccResource};
use paytrace_bench::install_tracing;
use tracing::Instrument;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A branch never seen before, so every Try is a real insert.
fn fresh_key() -> BranchKey {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    BranchKey {
        xid: format!("ord_{n}"),
        branch_id: "inventory".to_owned(),
    }
}

fn memory_fence() -> Arc<dyn FenceStore> {
    Arc::new(MemoryFence::new(10_000_000, Duration::from_secs(600)))
}

async fn redis_fence() -> Option<Arc<dyn FenceStore>> {
    let url = std::env::var("PAYTRACE_BENCH_REDIS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    match RedisFence::connect(&url, "bench", Duration::from_secs(60)).await {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            eprintln!("no Redis at {url} ({e}): Redis figures left out");
            None
        }
    }
}

/// A participant's Try route: a stage with the TCC attributes, through the
/// fence when there is one.
fn participant(fence: Option<Arc<dyn FenceStore>>) -> Router {
    let metrics = install_tracing();
    let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", metrics);
    let resource: Option<TccResource> = fence.map(|f| svc.tcc("inventory", f));
    let stage_svc = svc.clone();
    Router::new()
        .route(
            "/tcc/try",
            post(move || {
                let svc = stage_svc.clone();
                let resource = resource.clone();
                async move {
                    let key = fresh_key();
                    let guard = svc
                        .stage("inventory.try")
                        .attribute("tcc.xid", &key.xid)
                        .attribute("tcc.resource", "inventory")
                        .attribute("tcc.phase", "try")
                        .start();
                    let business = || async { Ok::<_, std::io::Error>(()) };
                    let ok = match &resource {
                        Some(r) => r
                            .run(Phase::Try, &key, business)
                            .instrument(guard.span().clone())
                            .await
                            .is_ok(),
                        None => business().instrument(guard.span().clone()).await.is_ok(),
                    };
                    if ok { "ok" } else { "refused" }
                }
            }),
        )
        .layer(svc.http_layer())
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/tcc/try")
}

fn fence(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let redis = rt.block_on(redis_fence());
    let mut group = c.benchmark_group("fence");

    let mut stores = vec![("memory", memory_fence())];
    if let Some(r) = &redis {
        stores.push(("redis", r.clone()));
    }
    for (name, store) in &stores {
        group.bench_function(format!("decision/{name}"), |b| {
            b.to_async(&rt).iter(|| {
                let store = store.clone();
                async move {
                    let (key, run) = (fresh_key(), RunId::new());
                    let d = store.begin(&key, Phase::Try, run).await.expect("decides");
                    store
                        .finish(&key, Phase::Try, run, true)
                        .await
                        .expect("records");
                    d
                }
            });
        });
    }

    let client = reqwest::Client::new();
    let mut calls: Vec<(&str, Option<Arc<dyn FenceStore>>)> =
        vec![("no_fence", None), ("memory", Some(memory_fence()))];
    if let Some(r) = &redis {
        calls.push(("redis", Some(r.clone())));
    }
    for (name, store) in calls {
        let url = rt.block_on(serve(participant(store)));
        group.bench_function(format!("try_call/{name}"), |b| {
            b.to_async(&rt).iter(|| {
                let client = client.clone();
                let url = url.clone();
                async move {
                    let r = client.post(&url).send().await.expect("answers");
                    assert!(r.status().is_success());
                    r.bytes().await.expect("body")
                }
            });
        });
    }
    group.finish();
}

/// Units of stock: more than any run reserves.
const STOCK: i64 = 1_000_000_000;

/// One Try of the ledger: in `fence`'s transaction, or in a bare one of the
/// same shape (SQLite's `BEGIN IMMEDIATE` too), both committed.
macro_rules! sql_rows {
    ($group:expr, $rt:expr, $db:ident, $pool:expr, $fence:expr, $begin:expr) => {{
        use paytrace_integration::ledger::$db as ledger;
        let (pool, fence) = ($pool, $fence);
        $group.bench_function(concat!("sql_try/", stringify!($db), "/bare"), |b| {
            b.to_async(&$rt).iter(|| async {
                let key = fresh_key();
                let mut conn = pool.acquire().await.expect("a connection");
                let mut tx = match $begin {
                    Some(statement) => sqlx::Connection::begin_with(&mut *conn, statement).await,
                    None => sqlx::Connection::begin(&mut *conn).await,
                }
                .expect("begins");
                ledger::business(&mut tx, Phase::Try, &key, false)
                    .await
                    .expect("reserves");
                tx.commit().await.expect("commits");
            });
        });
        $group.bench_function(concat!("sql_try/", stringify!($db), "/fenced"), |b| {
            b.to_async(&$rt).iter(|| async {
                let key = fresh_key();
                let answer = ledger::call(&fence, &pool, Phase::Try, &key, false).await;
                assert!(answer.is_ok(), "{answer:?}");
            });
        });
    }};
}

fn sql_fence(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", install_tracing());
    let mut group = c.benchmark_group("fence");

    let file = std::env::temp_dir().join(format!("paytrace-bench-{}.db", std::process::id()));
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let (pool, fence) = rt.block_on(async {
        let pool = paytrace_integration::ledger::sqlite::connect(&url, 4).await;
        let fence = svc.tcc_sql("inventory");
        paytrace_integration::ledger::sqlite::create(&pool, &fence, STOCK).await;
        (pool, fence)
    });
    sql_rows!(group, rt, sqlite, pool, fence, Some("BEGIN IMMEDIATE"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }

    if std::path::Path::new("/usr/lib/postgresql").exists() {
        let (server, pool, fence) = rt.block_on(async {
            let server = paytrace_testkit::PostgresServer::start().await;
            let pool = paytrace_integration::ledger::postgres::connect(server.url(), 4).await;
            let fence = svc.tcc_sql("inventory");
            paytrace_integration::ledger::postgres::create(&pool, &fence, STOCK).await;
            (server, pool, fence)
        });
        sql_rows!(group, rt, postgres, pool, fence, None::<&'static str>);
        drop(server);
    } else {
        eprintln!("no PostgreSQL (apt-get install postgresql): its figures left out");
    }
    group.finish();
}

criterion_group!(benches, fence, sql_fence);
criterion_main!(benches);
