//! The SQL fence (`SqlFence`) in a real database's transaction, the same
//! suite on SQLite (embedded), PostgreSQL (`apt-get install postgresql`)
//! and MariaDB (`apt-get install mariadb-server`), each server started
//! here on a private port and data directory.
//!
//! The participant is a stock ledger: `stock` (on hand, reserved) and one
//! `reservations` row per branch (`reserved`, `sold`, `released`). Every
//! test ends by checking that the ledger and the fence's rows agree:
//! - a branch whose fence row is `tried` has a `reserved` reservation,
//!   `confirmed` a `sold` one, `cancelled` a `released` one, and a branch
//!   `rolled_back_empty` or without a row has none;
//! - `stock.reserved` counts the `reserved` rows and `stock.on_hand` fell
//!   by the `sold` ones.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

use paytrace::tcc::{Anomaly, BranchError, BranchKey, BranchOutcome, Decision, FenceError, Phase};
use paytrace::tcc::{BranchState, decide};

/// Units of stock the ledger starts with.
const ON_HAND: i64 = 1_000;

/// Why a ledger handler failed.
#[derive(Debug)]
enum LedgerError {
    Db(sqlx::Error),
    /// No stock left to reserve.
    Insufficient,
    /// Phase two found no reservation in the state it needs.
    NoReservation,
    /// A handler told to fail after its writes.
    Injected,
}

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Db(e) => write!(f, "the ledger's database failed: {e}"),
            Self::Insufficient => f.write_str("no stock left"),
            Self::NoReservation => f.write_str("no reservation in the state phase two needs"),
            Self::Injected => f.write_str("the test made the handler fail"),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

fn branch(xid: &str) -> BranchKey {
    BranchKey {
        xid: xid.to_owned(),
        branch_id: "inventory".to_owned(),
    }
}

/// Polls `fut` until it has been pending `n` times, then drops it; its
/// output if it finished first. Sweeping `n` from 0 drops the call at each
/// await point where it actually waited.
async fn drop_after_pending<F: Future>(fut: F, n: usize) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut pending = 0;
    poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending if pending == n => Poll::Ready(None),
        Poll::Pending => {
            pending += 1;
            Poll::Pending
        }
    })
    .await
}

/// `url` (a database server's, on 127.0.0.1) through a relay that holds
/// each of the server's answers 1 ms before passing it on: a network a
/// little slower than loopback. On loopback an answer can be there before
/// the client reads it, and the call then does not wait at that await
/// point; through the relay every round trip waits, so that the drop sweep
/// reaches each one. A URL that names no TCP server (SQLite's) is returned
/// as it is.
async fn through_slow_link(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((head, rest)) = url.split_once("@127.0.0.1:") else {
        return url.to_owned();
    };
    let (port, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("a port");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a relay port");
    let relay = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_in, mut client_out) = client.into_split();
                let (mut server_in, mut server_out) = server.into_split();
                let requests = async {
                    let _ = tokio::io::copy(&mut client_in, &mut server_out).await;
                    // The client hung up: so does its session, and the
                    // server rolls back what it had open.
                    let _ = server_out.shutdown().await;
                };
                let answers = async {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = server_in.read(&mut buf).await {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        if client_out.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_out.shutdown().await;
                };
                tokio::join!(requests, answers);
            });
        }
    });
    format!("{head}@127.0.0.1:{relay}{tail}")
}

/// What a call answered, as the fence's decision it stands for.
fn as_decision<T, E: std::fmt::Debug>(r: &Result<BranchOutcome<T>, BranchError<E>>) -> Decision {
    match r {
        Ok(BranchOutcome::Ran(_)) => Decision::Run,
        Ok(BranchOutcome::Skipped(a)) => Decision::Skip(*a),
        Err(BranchError::Rejected(a)) => Decision::Reject(*a),
        Err(e) => panic!("the call failed: {e:?}"),
    }
}

/// The suite, for one database: `$db` the sqlx database, `$start` an
/// expression giving `(guard, url)` (the guard keeps the server running),
/// `$numbered` whether parameters are `$1` (PostgreSQL) rather than `?`,
/// `$waits` the fewest await points a call must have been dropped at.
macro_rules! sql_fence_suite {
    ($name:ident, $db:ty, $numbered:expr, $waits:expr, $start:expr) => {
        mod $name {
            use super::*;

            type Db = $db;
            type Pool = sqlx::Pool<Db>;
            type Conn = <Db as sqlx::Database>::Connection;

            /// `sql` with its `?` parameters numbered when the database wants it.
            fn q(sql: &str) -> sqlx::AssertSqlSafe<String> {
                if !$numbered {
                    return sqlx::AssertSqlSafe(sql.to_owned());
                }
                let mut out = String::new();
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        out.push_str(&format!("${n}"));
                    } else {
                        out.push(c);
                    }
                }
                sqlx::AssertSqlSafe(out)
            }

            struct Ledger {
                _server: Box<dyn std::any::Any + Send>,
                pool: Pool,
                fence: paytrace::tcc::SqlFence,
                url: String,
            }

            async fn ledger() -> Ledger {
                let (server, url): (Box<dyn std::any::Any + Send>, String) = $start;
                let pool = connect(&url).await;
                let svc = paytrace::ServiceTelemetry::with_metrics(
                    "inventory",
                    "1.0.0",
                    &paytrace::Metrics::new(),
                );
                let fence = svc.tcc_sql("inventory");
                fence.create_table(&pool).await.expect("the fence's table");
                for ddl in [
                    "CREATE TABLE stock (sku INTEGER PRIMARY KEY, on_hand BIGINT NOT NULL, reserved BIGINT NOT NULL)",
                    "CREATE TABLE reservations (xid VARCHAR(128) NOT NULL, branch_id VARCHAR(128) NOT NULL, \
                     state VARCHAR(16) NOT NULL, PRIMARY KEY (xid, branch_id))",
                    "CREATE TABLE notes (n INTEGER NOT NULL)",
                ] {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
                        .execute(&pool)
                        .await
                        .expect("the ledger's tables");
                }
                sqlx::query(q("INSERT INTO stock (sku, on_hand, reserved) VALUES (1, ?, 0)"))
                    .bind(ON_HAND)
                    .execute(&pool)
                    .await
                    .expect("the stock row");
                Ledger {
                    _server: server,
                    pool,
                    fence,
                    url,
                }
            }

            async fn connect(url: &str) -> Pool {
                connect_with(url, 8).await
            }

            async fn connect_with(url: &str, connections: u32) -> Pool {
                sqlx::pool::PoolOptions::<Db>::new()
                    .max_connections(connections)
                    .connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
            }

            /// The business side of `phase` for `key`, in the fence's transaction;
            /// `fail` makes it fail after its writes.
            async fn business(
                tx: &mut Conn,
                phase: Phase,
                key: &BranchKey,
                fail: bool,
            ) -> Result<(), LedgerError> {
                match phase {
                    Phase::Try => {
                        let reserved = sqlx::query(q(
                            "UPDATE stock SET reserved = reserved + 1 WHERE sku = 1 AND on_hand - reserved >= 1",
                        ))
                        .execute(&mut *tx)
                        .await?;
                        if reserved.rows_affected() != 1 {
                            return Err(LedgerError::Insufficient);
                        }
                        sqlx::query(q(
                            "INSERT INTO reservations (xid, branch_id, state) VALUES (?, ?, 'reserved')",
                        ))
                        .bind(&key.xid)
                        .bind(&key.branch_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Phase::Confirm | Phase::Cancel => {
                        let (to, stock) = if phase == Phase::Confirm {
                            ("sold", "UPDATE stock SET on_hand = on_hand - 1, reserved = reserved - 1 WHERE sku = 1")
                        } else {
                            ("released", "UPDATE stock SET reserved = reserved - 1 WHERE sku = 1")
                        };
                        let moved = sqlx::query(q(
                            "UPDATE reservations SET state = ? WHERE xid = ? AND branch_id = ? AND state = 'reserved'",
                        ))
                        .bind(to)
                        .bind(&key.xid)
                        .bind(&key.branch_id)
                        .execute(&mut *tx)
                        .await?;
                        if moved.rows_affected() != 1 {
                            return Err(LedgerError::NoReservation);
                        }
                        sqlx::query(q(stock)).execute(&mut *tx).await?;
                    }
                }
                if fail {
                    return Err(LedgerError::Injected);
                }
                Ok(())
            }

            type Answer = Result<BranchOutcome<()>, BranchError<LedgerError>>;

            async fn call(l: &Ledger, pool: &Pool, phase: Phase, key: &BranchKey, fail: bool) -> Answer {
                l.fence
                    .run(pool, phase, key, async |tx: &mut sqlx::Transaction<'_, Db>| {
                        business(tx, phase, key, fail).await
                    })
                    .await
            }

            /// Calls until the database lets the call through (a deadlock or lock
            /// timeout answers Busy: the coordinator retries).
            async fn call_until_decided(l: &Ledger, pool: &Pool, phase: Phase, key: &BranchKey) -> Answer {
                for _ in 0..50 {
                    match call(l, pool, phase, key, false).await {
                        Err(BranchError::Fence(FenceError::Busy(_))) => {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        other => return other,
                    }
                }
                panic!("{phase:?} of {key:?} stayed busy for 50 attempts");
            }

            async fn fence_state(l: &Ledger, key: &BranchKey) -> Option<BranchState> {
                let s: Option<String> = sqlx::query_scalar(q(
                    "SELECT state FROM paytrace_tcc_fence WHERE xid = ? AND branch_id = ?",
                ))
                .bind(&key.xid)
                .bind(&key.branch_id)
                .fetch_optional(&l.pool)
                .await
                .expect("the fence row");
                s.map(|s| s.parse().expect("a state the fence writes"))
            }

            /// The ledger and the fence agree (the module's invariants); returns
            /// the reservations by state.
            async fn assert_consistent(l: &Ledger) -> std::collections::BTreeMap<String, i64> {
                let fence: Vec<(String, String, String)> =
                    sqlx::query_as(q("SELECT xid, branch_id, state FROM paytrace_tcc_fence"))
                        .fetch_all(&l.pool)
                        .await
                        .expect("fence rows");
                let reservations: Vec<(String, String, String)> =
                    sqlx::query_as(q("SELECT xid, branch_id, state FROM reservations"))
                        .fetch_all(&l.pool)
                        .await
                        .expect("reservations");
                let fence: std::collections::BTreeMap<_, _> =
                    fence.into_iter().map(|(x, b, s)| ((x, b), s)).collect();
                let booked: std::collections::BTreeMap<_, _> =
                    reservations.into_iter().map(|(x, b, s)| ((x, b), s)).collect();
                for (key, state) in &fence {
                    let expected = match state.as_str() {
                        "tried" => Some("reserved"),
                        "confirmed" => Some("sold"),
                        "cancelled" => Some("released"),
                        _ => None,
                    };
                    assert_eq!(
                        booked.get(key).map(String::as_str),
                        expected,
                        "{key:?}: the fence says {state}"
                    );
                }
                for key in booked.keys() {
                    assert!(fence.contains_key(key), "{key:?} booked without a fence row");
                }
                let mut by_state = std::collections::BTreeMap::new();
                for s in booked.values() {
                    *by_state.entry(s.clone()).or_insert(0) += 1;
                }
                let (on_hand, reserved): (i64, i64) =
                    sqlx::query_as(q("SELECT on_hand, reserved FROM stock WHERE sku = 1"))
                        .fetch_one(&l.pool)
                        .await
                        .expect("the stock row");
                let count = |s: &str| by_state.get(s).copied().unwrap_or(0);
                assert_eq!(reserved, count("reserved"), "{by_state:?}");
                assert_eq!(on_hand, ON_HAND - count("sold"), "{by_state:?}");
                by_state
            }

            /// The phases that bring a new branch to `state`.
            fn path_to(state: Option<BranchState>) -> &'static [Phase] {
                match state {
                    None => &[],
                    Some(BranchState::Tried) => &[Phase::Try],
                    Some(BranchState::Confirmed) => &[Phase::Try, Phase::Confirm],
                    Some(BranchState::Cancelled) => &[Phase::Try, Phase::Cancel],
                    Some(BranchState::RolledBackEmpty) => &[Phase::Cancel],
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_rule_holds_in_the_database_with_the_business_rows() {
                let l = ledger().await;
                let states = [
                    None,
                    Some(BranchState::Tried),
                    Some(BranchState::Confirmed),
                    Some(BranchState::Cancelled),
                    Some(BranchState::RolledBackEmpty),
                ];
                for (i, state) in states.into_iter().enumerate() {
                    for phase in [Phase::Try, Phase::Confirm, Phase::Cancel] {
                        let key = branch(&format!("rules-{i}-{}", phase.as_str()));
                        for &step in path_to(state) {
                            call(&l, &l.pool, step, &key, false).await.expect("the path");
                        }
                        assert_eq!(fence_state(&l, &key).await, state, "{key:?}");
                        let (decision, next) = decide(state, phase);
                        let answer = call(&l, &l.pool, phase, &key, false).await;
                        assert_eq!(as_decision(&answer), decision, "{phase:?} on {state:?}");
                        assert_eq!(fence_state(&l, &key).await, next, "{phase:?} on {state:?}");
                    }
                }
                assert_consistent(&l).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_failed_handler_commits_neither_its_writes_nor_the_fence_row() {
                let l = ledger().await;
                let key = branch("fails");
                let failed = call(&l, &l.pool, Phase::Try, &key, true).await;
                assert!(
                    matches!(failed, Err(BranchError::Handler(LedgerError::Injected))),
                    "{failed:?}"
                );
                assert_eq!(fence_state(&l, &key).await, None);
                assert!(assert_consistent(&l).await.is_empty());
                // The coordinator's retry runs it.
                let retried = call(&l, &l.pool, Phase::Try, &key, false).await;
                assert!(matches!(retried, Ok(BranchOutcome::Ran(()))), "{retried:?}");
                // A failed Confirm leaves the branch tried, its reservation held.
                let failed = call(&l, &l.pool, Phase::Confirm, &key, true).await;
                assert!(matches!(failed, Err(BranchError::Handler(_))), "{failed:?}");
                assert_eq!(fence_state(&l, &key).await, Some(BranchState::Tried));
                assert_eq!(assert_consistent(&l).await.get("reserved"), Some(&1));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_call_dropped_at_any_await_point_takes_effect_once_after_its_retry() {
                let l = ledger().await;
                // One connection: every call and every write below share it,
                // so a connection left inside a transaction by a dropped
                // call would swallow the next write.
                let slow = connect_with(&through_slow_link(&l.url).await, 1).await;
                let mut notes = 0;
                for phase in [Phase::Try, Phase::Confirm, Phase::Cancel] {
                    // Every n up to 16 (a call waits 5 to 9 times), whether
                    // or not a call finished at a smaller one.
                    let mut dropped_calls = 0;
                    for n in 0..16 {
                        let key = branch(&format!("drop-{}-{n}", phase.as_str()));
                        if phase != Phase::Try {
                            call(&l, &l.pool, Phase::Try, &key, false).await.expect("tried");
                        }
                        let before = fence_state(&l, &key).await;
                        let dropped = drop_after_pending(call(&l, &slow, phase, &key, false), n).await;
                        // A write of the application's own, on the connection the
                        // dropped call used, commits at once.
                        sqlx::query(q("INSERT INTO notes (n) VALUES (?)"))
                            .bind(n as i32)
                            .execute(&slow)
                            .await
                            .expect("a note");
                        notes += 1;
                        let seen: i64 = sqlx::query_scalar(q("SELECT COUNT(*) FROM notes"))
                            .fetch_one(&l.pool)
                            .await
                            .expect("the notes");
                        assert_eq!(seen, notes, "{key:?} dropped after {n} waits left its connection in a transaction");
                        // Dropped or not, the retry answers as if the first call
                        // either never happened or fully did.
                        let retry = call_until_decided(&l, &slow, phase, &key).await;
                        let expected_first = decide(before, phase);
                        match &dropped {
                            Some(first) => {
                                assert_eq!(as_decision(first), expected_first.0, "{key:?}");
                            }
                            None => {
                                dropped_calls += 1;
                                let retried = as_decision(&retry);
                                let after_commit = decide(expected_first.1, phase).0;
                                assert!(
                                    retried == expected_first.0 || retried == after_commit,
                                    "{key:?} dropped after {n} waits: the retry answered {retried:?}"
                                );
                            }
                        }
                        assert_eq!(fence_state(&l, &key).await, expected_first.1, "{key:?}");
                    }
                    assert!(
                        dropped_calls >= $waits,
                        "{phase:?} was dropped only {dropped_calls} times"
                    );
                    eprintln!("{phase:?}: dropped at {dropped_calls} await points");
                    eprintln!("{phase:?}: dropped at {dropped_calls} await points");
                }
                let by_state = assert_consistent(&l).await;
                assert!(by_state.get("sold").is_some_and(|n| *n > 0), "{by_state:?}");
                assert!(by_state.get("released").is_some_and(|n| *n > 0), "{by_state:?}");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_try_and_a_cancel_from_two_pools_are_ordered_once() {
                let l = ledger().await;
                // A second participant process: its own pool.
                let other = connect(&l.url).await;
                let mut orders = [0usize; 2];
                for i in 0..40 {
                    let key = branch(&format!("race-{i}"));
                    // The Cancel on a task of its own, as a server's handler
                    // runs it (the fenced call is `Send + 'static`).
                    let cancel = tokio::spawn({
                        let (fence, other, key) = (l.fence.clone(), other.clone(), key.clone());
                        async move {
                            fence
                                .run(&other, Phase::Cancel, &key, async |tx: &mut sqlx::Transaction<'_, Db>| {
                                    business(tx, Phase::Cancel, &key, false).await
                                })
                                .await
                        }
                    });
                    let tried = call_until_decided(&l, &l.pool, Phase::Try, &key).await;
                    let cancelled = match cancel.await.expect("the Cancel's task") {
                        Err(BranchError::Fence(FenceError::Busy(_))) => {
                            call_until_decided(&l, &other, Phase::Cancel, &key).await
                        }
                        answered => answered,
                    };
                    match (as_decision(&tried), as_decision(&cancelled)) {
                        (Decision::Run, Decision::Run) => orders[0] += 1,
                        (Decision::Reject(Anomaly::HangingTry), Decision::Skip(Some(Anomaly::EmptyRollback))) => {
                            orders[1] += 1
                        }
                        other => panic!("{key:?}: no order explains {other:?}"),
                    }
                }
                let by_state = assert_consistent(&l).await;
                assert_eq!(by_state.get("reserved"), None, "{by_state:?}");
                assert_eq!(orders[0] + orders[1], 40);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_confirm_and_a_cancel_from_two_pools_let_exactly_one_run() {
                let l = ledger().await;
                let other = connect(&l.url).await;
                for i in 0..40 {
                    let key = branch(&format!("phase-two-{i}"));
                    call(&l, &l.pool, Phase::Try, &key, false).await.expect("tried");
                    let (confirmed, cancelled) = tokio::join!(
                        call_until_decided(&l, &l.pool, Phase::Confirm, &key),
                        call_until_decided(&l, &other, Phase::Cancel, &key),
                    );
                    match (as_decision(&confirmed), as_decision(&cancelled)) {
                        (Decision::Run, Decision::Reject(Anomaly::CancelAfterConfirm))
                        | (Decision::Reject(Anomaly::ConfirmAfterCancel), Decision::Run) => {}
                        other => panic!("{key:?}: not exactly one ran: {other:?}"),
                    }
                }
                let by_state = assert_consistent(&l).await;
                let n = |s: &str| by_state.get(s).copied().unwrap_or(0);
                assert_eq!(n("sold") + n("released"), 40, "{by_state:?}");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_cleaner_deletes_only_old_finished_rows_in_batches() {
                let l = ledger().await;
                for i in 0..7 {
                    let key = branch(&format!("clean-{i}"));
                    call(&l, &l.pool, Phase::Try, &key, false).await.expect("tried");
                    if i < 5 {
                        call(&l, &l.pool, Phase::Confirm, &key, false).await.expect("confirmed");
                    }
                }
                call(&l, &l.pool, Phase::Cancel, &branch("clean-empty"), false)
                    .await
                    .expect("an empty rollback");
                // Nothing is old enough yet.
                let kept = l.fence.clean(&l.pool, std::time::Duration::from_secs(3600), 2).await;
                assert_eq!(kept, Ok(0));
                assert_eq!(l.fence.pending_now().0, 2, "two branches tried and waiting");
                // Everything finished is older than zero: six rows, three batches of two.
                let deleted = l.fence.clean(&l.pool, std::time::Duration::ZERO, 2).await;
                assert_eq!(deleted, Ok(6));
                for i in 5..7 {
                    assert_eq!(
                        fence_state(&l, &branch(&format!("clean-{i}"))).await,
                        Some(BranchState::Tried),
                        "a tried branch is never cleaned"
                    );
                }
                assert_eq!(fence_state(&l, &branch("clean-0")).await, None);
            }
        }
    };
}

// SQLite's statements run on sqlx's worker thread, which may have answered
// before the call polls: fewer waits are sure than over a network.
sql_fence_suite!(sqlite, sqlx::Sqlite, false, 3, {
    let dir = paytrace_testkit::temp_file("sql-fence-dir", "");
    let path = dir.with_file_name(format!("ledger-{}.db", paytrace_testkit::free_port()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let guard: Box<dyn std::any::Any + Send> = Box::new(());
    (guard, url)
});

// Over the slow link, the begin, the fence's statements, the handler's two
// and the commit each wait.
sql_fence_suite!(postgres, sqlx::Postgres, true, 5, {
    let server = paytrace_testkit::PostgresServer::start().await;
    let url = server.url().to_owned();
    let guard: Box<dyn std::any::Any + Send> = Box::new(server);
    (guard, url)
});

sql_fence_suite!(mariadb, sqlx::MySql, false, 5, {
    let server = paytrace_testkit::MariaDbServer::start().await;
    let url = server.url().to_owned();
    let guard: Box<dyn std::any::Any + Send> = Box::new(server);
    (guard, url)
});

/// `docs/tcc-fence.md` shows the statements `SqlFence::ddl` runs, for both
/// dialects, so that a migration copied from the page makes the same table.
#[test]
fn the_docs_show_the_ddl_the_fence_runs() {
    let docs = include_str!("../../../docs/tcc-fence.md");
    let svc =
        paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
    let fence = svc.tcc_sql("inventory");
    let postgres = fence.ddl::<sqlx::Postgres>().join(";\n") + ";";
    let sqlite = fence.ddl::<sqlx::Sqlite>().join(";\n") + ";";
    let mysql = fence.ddl::<sqlx::MySql>().join(";\n") + ";";
    assert_eq!(postgres, sqlite, "one block shows both");
    for (db, ddl) in [("PostgreSQL", postgres), ("MySQL", mysql)] {
        assert!(
            docs.contains(&format!("```sql\n{ddl}\n```")),
            "docs/tcc-fence.md does not show {db}'s DDL:\n{ddl}"
        );
    }
}
