//! The participants' ledgers on real databases: SQLite (a file) and
//! PostgreSQL (a server started here; `apt-get install postgresql`).
//!
//! - Many checkouts at the last unit of stock, from two pools at once (two
//!   inventory processes): exactly one reserves it, the database's
//!   conditional update decides, and the refused Trys leave nothing behind
//!   (their Cancels are empty rollbacks, a late Try after one is refused).
//! - A demo run on PostgreSQL with TCC faults: every branch's business row
//!   and its fence row agree, the stock adds up, and the rows the fences
//!   wrote for the injected faults are as many as the faults.

use std::collections::BTreeMap;
use std::time::Duration;

use paytrace::tcc::{BranchError, BranchKey, BranchOutcome, Phase};
use paytrace_demo::ledger::{Hold, Ledger, LedgerError};
use paytrace_testkit::PostgresServer;

mod monitoring;

/// An SQLite file under the temp dir, removed (with its WAL) when dropped.
struct SqliteFile(std::path::PathBuf);

impl SqliteFile {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("paytrace-ledger-{name}-{}.db", std::process::id())))
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn key(i: usize) -> BranchKey {
    BranchKey {
        xid: format!("ord_{i:04}"),
        branch_id: format!("ord_{i:04}-inventory"),
    }
}

const ONE_UNIT: Hold = Hold {
    sku: Some(42),
    amount: 1,
};

/// 24 checkouts at once for the last unit of SKU 42, half through each of
/// two pools on `url`.
async fn last_unit(url: &str) {
    let svc =
        paytrace::ServiceTelemetry::with_metrics("inventory", "test", &paytrace::Metrics::new());
    let fence = svc.tcc_sql("inventory");
    let a = Ledger::open(url, 4).await.expect("the database opens");
    let b = Ledger::open(url, 4).await.expect("the database opens");
    a.create(&fence, 1).await.expect("the tables");
    b.create(&fence, 1)
        .await
        .expect("creating again changes nothing");

    let mut tries = tokio::task::JoinSet::new();
    for i in 0..24 {
        let ledger = if i % 2 == 0 { a.clone() } else { b.clone() };
        let fence = fence.clone();
        tries.spawn(async move {
            let answer = ledger
                .fenced(
                    &fence,
                    Phase::Try,
                    &key(i),
                    ONE_UNIT,
                    Duration::from_millis(2),
                )
                .await;
            (i, answer)
        });
    }
    let mut won = Vec::new();
    while let Some(done) = tries.join_next().await {
        let (i, answer) = done.expect("no panic");
        match answer {
            Ok(BranchOutcome::Ran(())) => won.push(i),
            Err(BranchError::Handler(LedgerError::Insufficient)) => {}
            other => panic!("branch {i}: {other:?}"),
        }
    }
    assert_eq!(won.len(), 1, "one unit, one reservation: {won:?}");
    let levels = a.levels(42).await.expect("levels");
    assert_eq!(
        (levels.available, levels.reserved, levels.sold),
        (0, 1, 0),
        "{levels:?}"
    );

    // The coordinator cancels every branch: the winner's reservation goes
    // back; the refused Trys committed nothing, so theirs are empty
    // rollbacks.
    let mut released = 0;
    for i in 0..24 {
        let ledger = if i % 2 == 0 { &a } else { &b };
        match ledger
            .fenced(&fence, Phase::Cancel, &key(i), ONE_UNIT, Duration::ZERO)
            .await
        {
            Ok(BranchOutcome::Ran(())) => {
                assert_eq!(i, won[0], "only the winner held stock");
                released += 1;
            }
            Ok(BranchOutcome::Skipped(_)) => assert_ne!(i, won[0]),
            other => panic!("cancel of branch {i}: {other:?}"),
        }
    }
    assert_eq!(released, 1);
    let levels = b.levels(42).await.expect("levels");
    assert_eq!(
        (levels.available, levels.reserved, levels.sold),
        (1, 0, 0),
        "{levels:?}"
    );
    // A Try that arrives after its empty rollback is refused, though the
    // unit is free again.
    let loser = (0..24).find(|i| *i != won[0]).expect("a loser");
    let late = a
        .fenced(&fence, Phase::Try, &key(loser), ONE_UNIT, Duration::ZERO)
        .await;
    assert!(matches!(late, Err(BranchError::Rejected(_))), "{late:?}");
    assert_eq!(a.levels(42).await.expect("levels").available, 1);
    let holds = a.holds().await.expect("holds");
    assert_eq!(
        holds,
        vec![(
            key(won[0]).xid,
            key(won[0]).branch_id,
            "released".to_owned()
        )]
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sells_the_last_unit_once() {
    let file = SqliteFile::new("last-unit");
    last_unit(&file.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sells_the_last_unit_once() {
    let server = PostgresServer::start().await;
    last_unit(server.url()).await;
}

/// What a business row's state must be beside its fence row's.
fn expected_hold(fence_state: &str) -> Option<&'static str> {
    match fence_state {
        "tried" => Some("held"),
        "confirmed" => Some("done"),
        "cancelled" => Some("released"),
        // rolled_back_empty: the Cancel found nothing to release.
        _ => None,
    }
}

#[test]
fn a_demo_run_on_postgres_keeps_business_rows_and_fences_in_step() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let server = runtime.block_on(PostgresServer::start());
    let doc = monitoring::demo_report(
        "postgres",
        &[
            "--duration",
            "12s",
            "--rps",
            "8",
            "--port-base",
            "9600",
            "--database-url",
            server.url(),
            "--chaos",
            "empty-rollback,cancel-after-confirm,confirm-network-failure",
        ],
        &[],
    );
    let ok = doc["requests"]["ok"].as_u64().unwrap_or(0);
    assert!(ok >= 40, "{}", doc["requests"]);

    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(server.url()).await.expect("connects");
        let fence: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT xid, branch_id, resource, state FROM paytrace_tcc_fence",
        )
        .fetch_all(&pool)
        .await
        .expect("the fence's rows");
        let holds: BTreeMap<(String, String), String> =
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT xid, branch_id, state FROM shop_holds",
            )
            .fetch_all(&pool)
            .await
            .expect("the business rows")
            .into_iter()
            .map(|(x, b, s)| ((x, b), s))
            .collect();

        // Every branch's business row agrees with its fence row, and no
        // business row exists without one.
        let mut by_resource: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (xid, branch_id, resource, state) in &fence {
            let found = holds.get(&(xid.clone(), branch_id.clone())).map(String::as_str);
            assert_eq!(
                found,
                expected_hold(state),
                "{resource} branch {xid}/{branch_id}: the fence says {state}"
            );
            *by_resource
                .entry((resource.clone(), state.clone()))
                .or_default() += 1;
        }
        assert_eq!(holds.len(), fence.iter().filter(|f| expected_hold(&f.3).is_some()).count());
        // All four participants kept their rows here.
        for resource in ["inventory", "coupon", "points", "payment"] {
            assert!(
                by_resource.get(&(resource.to_owned(), "confirmed".to_owned())).copied().unwrap_or(0) > 0,
                "{resource} confirmed nothing: {by_resource:?}"
            );
        }
        // Each injected early Cancel left one empty-rollback row in
        // inventory; the fences counted the same.
        let count = |r: &str, s: &str| by_resource.get(&(r.to_owned(), s.to_owned())).copied().unwrap_or(0);
        let injected = doc["injected"]["empty_rollback"].as_u64().unwrap_or(0);
        assert!(injected > 0, "{}", doc["injected"]);
        assert_eq!(count("inventory", "rolled_back_empty"), injected, "{by_resource:?}");
        assert_eq!(doc["anomalies"]["empty_rollback"].as_u64(), Some(injected));

        // The stock adds up: what is reserved is what inventory's tried
        // branches hold, what is sold what its confirmed ones took.
        let (initial, available, reserved, sold): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT SUM(initial)::BIGINT, SUM(available)::BIGINT, SUM(reserved)::BIGINT, SUM(sold)::BIGINT FROM shop_stock",
        )
        .fetch_one(&pool)
        .await
        .expect("the stock");
        assert_eq!(available + reserved + sold, initial);
        assert_eq!(reserved, i64::try_from(count("inventory", "tried")).unwrap_or(-1));
        assert_eq!(sold, i64::try_from(count("inventory", "confirmed")).unwrap_or(-1));
        pool.close().await;
    });
}
