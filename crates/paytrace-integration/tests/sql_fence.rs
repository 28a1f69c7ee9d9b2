//! The SQL fence (`SqlFence`) in a real database's transaction, the same
//! suite on SQLite (embedded), PostgreSQL (`apt-get install postgresql`)
//! and MariaDB (`apt-get install mariadb-server`), each server started
//! here on a private port and data directory.
//!
//! The participant is `paytrace_integration::ledger`, a stock ledger; every
//! test ends by checking that the ledger and the fence's rows agree (its
//! `consistency`).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

use paytrace::tcc::{Anomaly, BranchError, BranchOutcome, Decision, FenceError, Phase};
use paytrace::tcc::{BranchState, decide};
use paytrace_integration::ledger::{Answer, LedgerError, branch};

/// Units of stock the ledger starts with.
const ON_HAND: i64 = 1_000;

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
/// `$ledger` the ledger's module for it,
/// `$waits` the fewest await points a call must have been dropped at.
macro_rules! sql_fence_suite {
    ($name:ident, $ledger:ident, $waits:expr, $start:expr) => {
        mod $name {
            use super::*;
            use paytrace_integration::ledger::$ledger::{Db, Pool, business, fence_state as state_of, q};

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
                paytrace_integration::ledger::$ledger::create(&pool, &fence, ON_HAND).await;
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
                paytrace_integration::ledger::$ledger::connect(url, connections).await
            }


            async fn call(l: &Ledger, pool: &Pool, phase: Phase, key: &paytrace::tcc::BranchKey, fail: bool) -> Answer {
                paytrace_integration::ledger::$ledger::call(&l.fence, pool, phase, key, fail).await
            }

            /// Calls until the database lets the call through (a deadlock or lock
            /// timeout answers Busy: the coordinator retries).
            async fn call_until_decided(l: &Ledger, pool: &Pool, phase: Phase, key: &paytrace::tcc::BranchKey) -> Answer {
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

            async fn fence_state(l: &Ledger, key: &paytrace::tcc::BranchKey) -> Option<BranchState> {
                state_of(&l.pool, key).await
            }

            /// The ledger and the fence agree; the reservations by state.
            async fn assert_consistent(l: &Ledger) -> std::collections::BTreeMap<String, i64> {
                paytrace_integration::ledger::$ledger::consistency(&l.pool, ON_HAND)
                    .await
                    .unwrap_or_else(|e| panic!("the ledger and the fence disagree: {e}"))
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

            /// A participant process under a load of Try, Confirm and Cancel
            /// (repeats, reorderings, concurrent calls for one branch; see
            /// `fence_load`) killed with SIGKILL twenty times at different
            /// moments, then the coordinator's decisions carried out: every
            /// branch's ledger rows and fence row agree, and the stock's
            /// counters match the reservations (none lost, none made twice).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_participant_killed_under_load_leaves_the_ledger_and_the_fence_agreeing() {
                use std::io::BufRead;
                const XIDS: u32 = 200;
                const ROUNDS: usize = 20;
                let l = ledger().await;
                let mut progress = 0;
                for round in 0..ROUNDS {
                    let mut participant = paytrace_testkit::Process::spawn(
                        std::process::Command::new(env!("CARGO_BIN_EXE_fence_load"))
                            .args([l.url.as_str(), &round.to_string(), &XIDS.to_string()])
                            .stdout(std::process::Stdio::piped()),
                        "cargo build -p paytrace-integration",
                    );
                    let stdout = participant.child().stdout.take().expect("piped stdout");
                    // A different moment each round: after 1 to 5 reports of
                    // ten calls from any of its four workers, and 0 to 5 ms
                    // into whatever calls are running then.
                    let wanted = 1 + (round * 3) % 5;
                    let (read, pipe) = tokio::task::spawn_blocking(move || {
                        let mut lines = std::io::BufReader::new(stdout).lines();
                        let read = lines.by_ref().take(wanted).map_while(Result::ok).count();
                        // Kept open until the kill: a closed pipe would stop
                        // the workers before it.
                        (read, lines)
                    })
                    .await
                    .expect("joined");
                    assert_eq!(read, wanted, "the participant stopped before it was killed");
                    progress += read;
                    let into = std::time::Duration::from_micros((round as u64 * 1_700) % 5_000);
                    tokio::time::sleep(into).await;
                    drop(participant); // SIGKILL to its group, mid-load
                    drop(pipe);
                }
                // The coordinator carries out its decisions: an even
                // transaction commits, an odd one rolls back.
                let mut finished = 0;
                for i in 0..XIDS {
                    let key = branch(&format!("ord_{i}"));
                    if fence_state(&l, &key).await != Some(BranchState::Tried) {
                        continue;
                    }
                    let decision = if i % 2 == 0 { Phase::Confirm } else { Phase::Cancel };
                    let answer = call_until_decided(&l, &l.pool, decision, &key).await;
                    assert!(matches!(answer, Ok(BranchOutcome::Ran(()))), "{key:?}: {answer:?}");
                    finished += 1;
                }
                let by_state = assert_consistent(&l).await;
                assert_eq!(by_state.get("reserved"), None, "{by_state:?}");
                let n = |s: &str| by_state.get(s).copied().unwrap_or(0);
                assert!(n("sold") + n("released") > 0, "{by_state:?}");
                eprintln!(
                    "{ROUNDS} kills after {progress} reports of 10 calls; {finished} tried branches finished \
                     after; reservations {by_state:?}"
                );
            }

            /// The pool's USE comes from sqlx itself: capacity and connections
            /// checked out at each scrape, the fence's waits for a connection,
            /// and an acquisition that timed out counted, its call refused
            /// with nothing committed.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_pools_use_is_read_from_sqlx_and_a_timed_out_acquisition_is_counted() {
                use paytrace_testkit::sample_value;
                let l = ledger().await;
                let metrics = paytrace::Metrics::new();
                let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &metrics);
                let pool = sqlx::pool::PoolOptions::<Db>::new()
                    .max_connections(2)
                    .acquire_timeout(std::time::Duration::from_millis(300))
                    .connect(&l.url)
                    .await
                    .expect("a pool of two");
                let fence = svc
                    .tcc_sql("inventory")
                    .pool_metrics(svc.sqlx_pool("inventory_db", &pool));
                let series = |name: &str| format!(r#"{name}{{resource="inventory_db",service_name="inventory"}}"#);
                let held = [pool.acquire().await.expect("one"), pool.acquire().await.expect("two")];
                let text = metrics.render();
                assert_eq!(sample_value(&text, &series("paytrace_resource_capacity")), 2.0, "{text}");
                assert_eq!(sample_value(&text, &series("paytrace_resource_in_use")), 2.0, "{text}");

                let key = branch("pool-timeout");
                let starved = l_call(&fence, &pool, Phase::Try, &key).await;
                assert!(
                    matches!(starved, Err(BranchError::Fence(FenceError::Store(_)))),
                    "{starved:?}"
                );
                let timeouts = r#"paytrace_resource_errors_total{kind="timeout",resource="inventory_db",service_name="inventory"}"#;
                assert_eq!(sample_value(&metrics.render(), timeouts), 1.0);
                assert_eq!(fence_state(&l, &key).await, None, "nothing committed");

                drop(held);
                let answer = l_call(&fence, &pool, Phase::Try, &key).await;
                assert!(matches!(answer, Ok(BranchOutcome::Ran(()))), "{answer:?}");
                let text = metrics.render();
                assert_eq!(
                    sample_value(&text, &series("paytrace_resource_wait_seconds_count")),
                    1.0,
                    "the one acquisition that got a connection: {text}"
                );
                // sqlx hands a connection back to the pool on a task of its own.
                paytrace_testkit::eventually(
                    "both connections back in the pool",
                    std::time::Duration::from_secs(10),
                    || (sample_value(&metrics.render(), &series("paytrace_resource_in_use")) == 0.0).then_some(()),
                )
                .await;
            }

            async fn l_call(
                fence: &paytrace::tcc::SqlFence,
                pool: &Pool,
                phase: Phase,
                key: &paytrace::tcc::BranchKey,
            ) -> Answer {
                paytrace_integration::ledger::$ledger::call(fence, pool, phase, key, false).await
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
sql_fence_suite!(sqlite, sqlite, 3, {
    let dir = paytrace_testkit::temp_file("sql-fence-dir", "");
    let path = dir.with_file_name(format!("ledger-{}.db", paytrace_testkit::free_port()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let guard: Box<dyn std::any::Any + Send> = Box::new(());
    (guard, url)
});

// Over the slow link, the begin, the fence's statements, the handler's two
// and the commit each wait.
sql_fence_suite!(postgres, postgres, 5, {
    let server = paytrace_testkit::PostgresServer::start().await;
    let url = server.url().to_owned();
    let guard: Box<dyn std::any::Any + Send> = Box::new(server);
    (guard, url)
});

sql_fence_suite!(mariadb, mysql, 5, {
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
