//! Stock reservation never oversells under concurrent checkouts, in memory
//! and in a real redis-server (started here; `apt-get install redis-server`);
//! and the demo's inventory on Redis stock (`--redis`), each phase's stock
//! change in the Redis fence's script, keeps the stock whole.

use std::sync::Arc;

use paytrace_demo::stock::StockStore;
use paytrace_testkit::RedisServer;

mod monitoring;

/// 60 concurrent branches each try to reserve 3 of 100 units: exactly 33
/// succeed; then half commit and half release, and nothing is lost.
async fn no_oversell(stock: Arc<StockStore>) {
    let mut tries = tokio::task::JoinSet::new();
    for i in 0..60 {
        let stock = stock.clone();
        tries.spawn(async move { (i, stock.reserve(7, &format!("xid-{i}"), 3).await) });
    }
    let mut won = Vec::new();
    while let Some(done) = tries.join_next().await {
        let (i, reserved) = done.expect("no panic");
        if reserved.expect("the store answers") {
            won.push(i);
        }
    }
    assert_eq!(won.len(), 33, "100 units hold 33 reservations of 3");
    let levels = stock.levels(7).await.expect("levels");
    assert_eq!((levels.available, levels.reserved, levels.sold), (1, 99, 0));

    // Reserving again for a branch that holds a reservation changes nothing.
    assert!(
        stock
            .reserve(7, &format!("xid-{}", won[0]), 3)
            .await
            .expect("answers")
    );
    assert_eq!(stock.levels(7).await.expect("levels"), levels);

    for (k, i) in won.iter().enumerate() {
        let xid = format!("xid-{i}");
        let settled = if k % 2 == 0 {
            stock.commit(7, &xid).await
        } else {
            stock.release(7, &xid).await
        };
        assert!(settled.expect("answers"), "{xid} had a reservation");
        // Settling twice does nothing.
        assert!(!stock.commit(7, &xid).await.expect("answers"));
    }
    let end = stock.levels(7).await.expect("levels");
    assert!(end.available >= 0);
    assert_eq!(end.reserved, 0);
    assert_eq!(end.sold, 17 * 3);
    assert_eq!(end.available + end.reserved + end.sold, 100, "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stock_never_oversells() {
    no_oversell(Arc::new(StockStore::memory(100))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stock_never_oversells_across_connections() {
    let server = RedisServer::start().await;
    // Two stores on their own connections: two inventory processes.
    let a = Arc::new(
        StockStore::redis(server.url(), "shop", 100)
            .await
            .expect("connects"),
    );
    let b = Arc::new(
        StockStore::redis(server.url(), "shop", 100)
            .await
            .expect("connects"),
    );
    let mut tries = tokio::task::JoinSet::new();
    for i in 0..60 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tries.spawn(async move { store.reserve(9, &format!("x{i}"), 3).await });
    }
    let mut won = 0;
    while let Some(done) = tries.join_next().await {
        if done.expect("no panic").expect("answers") {
            won += 1;
        }
    }
    assert_eq!(won, 33);
    let l = b.levels(9).await.expect("levels");
    assert_eq!((l.available, l.reserved), (1, 99));

    no_oversell(a).await;
}

#[test]
fn a_demo_run_with_stock_in_redis_keeps_it_whole() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let server = runtime.block_on(RedisServer::start());
    let doc = monitoring::demo_report(
        "redis-stock",
        &[
            "--duration",
            "12s",
            "--rps",
            "8",
            "--port-base",
            "9700",
            "--redis",
            server.url(),
            "--chaos",
            "empty-rollback",
        ],
        &[],
    );
    let ok = doc["requests"]["ok"].as_u64().unwrap_or(0);
    assert!(ok >= 40, "{}", doc["requests"]);
    // The fence in Redis refused each hanging Try in the script, before
    // the stock moved: it counted every injected empty rollback.
    let injected = doc["injected"]["empty_rollback"].as_u64().unwrap_or(0);
    assert!(injected > 0, "{}", doc["injected"]);
    assert_eq!(
        doc["anomalies"]["empty_rollback"].as_u64(),
        Some(injected),
        "{}",
        doc["anomalies"]
    );
    assert_eq!(
        doc["anomalies"]["hanging_try"].as_u64(),
        Some(injected),
        "{}",
        doc["anomalies"]
    );
    runtime.block_on(async {
        // The demo's item (SKU 1), as the inventory keeps it.
        let stock = StockStore::redis(server.url(), "paytrace-demo", 1_000_000)
            .await
            .expect("connects");
        let l = stock.levels(1).await.expect("levels");
        assert!(l.sold > 0, "{l:?}");
        assert_eq!(l.available + l.reserved + l.sold, 1_000_000, "{l:?}");
    });
}
