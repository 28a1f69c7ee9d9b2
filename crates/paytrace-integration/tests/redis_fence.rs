//! The Redis fence against a real redis-server (started here;
//! `apt-get install redis-server`): the transition rules, failure rollback,
//! expiry of finished records, and concurrent Confirm/Cancel from two
//! "processes" (two fences on their own connections) with exactly one winner.

use std::sync::Arc;
use std::time::Duration;

use paytrace::tcc::{
    Anomaly, BranchKey, Decision, FenceError, FenceStore, Phase, RedisFence, RunId,
};
use paytrace_testkit::RedisServer;

fn key(b: usize) -> BranchKey {
    BranchKey {
        xid: "ord".into(),
        branch_id: format!("b{b}"),
    }
}

/// One call through `fence`: `begin`, and on `Run` a handler that
/// `succeeded` or not, recorded by `finish`.
async fn call(
    fence: &dyn FenceStore,
    k: &BranchKey,
    phase: Phase,
    succeeded: bool,
) -> Result<Decision, FenceError> {
    let run = RunId::new();
    let decision = fence.begin(k, phase, run).await;
    if decision == Ok(Decision::Run) {
        fence
            .finish(k, phase, run, succeeded)
            .await
            .expect("recorded");
    }
    decision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_rollback_and_expiry_hold_in_redis() {
    let server = RedisServer::start().await;
    let fence = RedisFence::connect(server.url(), "t1", Duration::from_secs(60))
        .await
        .expect("connects");

    assert_eq!(
        call(&fence, &key(1), Phase::Cancel, true).await,
        Ok(Decision::Skip(Some(Anomaly::EmptyRollback)))
    );
    assert_eq!(
        call(&fence, &key(1), Phase::Try, true).await,
        Ok(Decision::Reject(Anomaly::HangingTry))
    );

    assert_eq!(
        call(&fence, &key(2), Phase::Try, false).await,
        Ok(Decision::Run)
    );
    assert_eq!(
        call(&fence, &key(2), Phase::Try, true).await,
        Ok(Decision::Run),
        "a failed Try can run again"
    );
    assert_eq!(fence.pending_now().0, 1);
    assert_eq!(
        call(&fence, &key(2), Phase::Confirm, true).await,
        Ok(Decision::Run)
    );
    assert_eq!(
        call(&fence, &key(2), Phase::Confirm, true).await,
        Ok(Decision::Skip(Some(Anomaly::DuplicateConfirm)))
    );
    assert_eq!(
        call(&fence, &key(2), Phase::Cancel, true).await,
        Ok(Decision::Reject(Anomaly::CancelAfterConfirm))
    );
    assert_eq!(fence.pending_now().0, 0);

    // Finished records expire; tried ones do not.
    let client = redis::Client::open(server.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let ttl: i64 = redis::cmd("TTL")
        .arg("t1:fence:ord:b2")
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!(ttl > 0 && ttl <= 60, "finished record expires, ttl {ttl}");
    assert_eq!(
        call(&fence, &key(3), Phase::Try, true).await,
        Ok(Decision::Run)
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg("t1:fence:ord:b3")
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert_eq!(ttl, -1, "a tried record never expires");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_confirm_and_cancel_across_processes_let_exactly_one_win() {
    let server = RedisServer::start().await;
    let a = Arc::new(
        RedisFence::connect(server.url(), "race", Duration::from_secs(60))
            .await
            .expect("connects"),
    );
    let b = Arc::new(
        RedisFence::connect(server.url(), "race", Duration::from_secs(60))
            .await
            .expect("connects"),
    );
    const BRANCHES: usize = 100;
    for i in 0..BRANCHES {
        assert_eq!(
            call(&*a, &key(i), Phase::Try, true).await,
            Ok(Decision::Run)
        );
    }
    let mut racers = tokio::task::JoinSet::new();
    for (fence, phase) in [
        (a.clone(), Phase::Confirm),
        (b.clone(), Phase::Cancel),
        (b, Phase::Confirm),
        (a, Phase::Cancel),
    ] {
        racers.spawn(async move {
            let mut runs = 0;
            for i in 0..BRANCHES {
                if call(&*fence, &key(i), phase, true).await == Ok(Decision::Run) {
                    runs += 1;
                }
            }
            runs
        });
    }
    let mut runs = 0;
    while let Some(n) = racers.join_next().await {
        runs += n.expect("no panic");
    }
    assert_eq!(runs, BRANCHES, "one phase two per branch");
}

/// Brings a fresh branch to `state` through legal calls.
async fn reach(fence: &dyn FenceStore, k: &BranchKey, state: Option<paytrace::tcc::BranchState>) {
    use paytrace::tcc::BranchState::*;
    let calls: &[Phase] = match state {
        None => &[],
        Some(Tried) => &[Phase::Try],
        Some(Confirmed) => &[Phase::Try, Phase::Confirm],
        Some(Cancelled) => &[Phase::Try, Phase::Cancel],
        Some(RolledBackEmpty) => &[Phase::Cancel],
    };
    for phase in calls {
        call(fence, k, *phase, true).await.expect("store answers");
    }
}

/// Every cell of the transition table, in both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_in_both_stores() {
    use paytrace::tcc::BranchState::*;
    let server = RedisServer::start().await;
    let redis = RedisFence::connect(server.url(), "table", Duration::from_secs(60))
        .await
        .expect("connects");
    let memory = paytrace::tcc::MemoryFence::new(1000, Duration::from_secs(60));
    let stores: [(&str, &dyn FenceStore); 2] = [("redis", &redis), ("memory", &memory)];
    let states = [
        None,
        Some(Tried),
        Some(Confirmed),
        Some(Cancelled),
        Some(RolledBackEmpty),
    ];
    let mut case = 0;
    for (name, store) in stores {
        for state in states {
            for phase in [Phase::Try, Phase::Confirm, Phase::Cancel] {
                case += 1;
                let k = key(1000 + case);
                reach(store, &k, state).await;
                let expected = paytrace::tcc::decide(state, phase).0;
                let got = store
                    .begin(&k, phase, RunId::new())
                    .await
                    .expect("store answers");
                assert_eq!(got, expected, "{name}: {phase:?} on {state:?}");
            }
        }
    }
}

#[path = "../../paytrace/tests/common/fence.rs"]
mod cancellation;

/// The Redis fence behind a [`cancellation::Stalling`] store, in a resource.
async fn stalling_resource(
    server: &RedisServer,
    prefix: &str,
) -> (
    Arc<cancellation::Stalling<RedisFence>>,
    paytrace::tcc::TccResource,
    paytrace::ServiceTelemetry,
) {
    let fence = RedisFence::connect(server.url(), prefix, Duration::from_secs(60))
        .await
        .expect("connects");
    let store = Arc::new(cancellation::Stalling::new(fence));
    let svc =
        paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
    (store.clone(), svc.tcc("inventory", store), svc)
}

/// The cancellation rules (`paytrace::tcc`, "Holding a branch") in Redis: a
/// call dropped at any await point of `run`, its hold released in the
/// background, leaves the effect done once and never answered "done"
/// before it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_at_any_await_point_leaves_the_branch_as_it_was() {
    let server = RedisServer::start().await;
    let (store, resource, _svc) = stalling_resource(&server, "dropped").await;
    cancellation::dropped_at_every_await_point(&resource, &store, "redis").await;
}

/// While one call's handler runs, any other call for the branch is told to
/// retry; from another process's fence too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_for_a_held_branch_is_busy() {
    let server = RedisServer::start().await;
    let (_store, resource, _svc) = stalling_resource(&server, "busy").await;
    cancellation::a_held_branch_is_busy(&resource, "redis").await;
}

/// A participant killed (SIGKILL) while its Try holds a branch: the branch
/// is busy until the hold's lease ends, never "done", and then the next Try
/// runs the handler, as if the killed one had never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_is_undone_when_its_lease_ends() {
    use std::io::BufRead;
    const LEASE: Duration = Duration::from_secs(4);
    let server = RedisServer::start().await;
    let mut holder = paytrace_testkit::Process::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_hold_branch"))
            .args([
                server.url(),
                "killed",
                "ord_k",
                &LEASE.as_millis().to_string(),
            ])
            .stdout(std::process::Stdio::piped()),
        "cargo build -p paytrace-integration",
    );
    let stdout = holder.child().stdout.take().expect("piped stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .expect("joined")
    .expect("reads the holder's stdout");
    assert_eq!(line.trim(), "holding", "the holder's handler runs");
    let killed_at = std::time::Instant::now();
    drop(holder); // SIGKILL to its process group, and reaped

    let fence = RedisFence::connect(server.url(), "killed", Duration::from_secs(60))
        .await
        .expect("connects");
    let branch = BranchKey {
        xid: "ord_k".into(),
        branch_id: "b".into(),
    };
    let deadline = killed_at + LEASE + Duration::from_secs(20);
    let mut busy = 0;
    let decision = loop {
        match call(&fence, &branch, Phase::Try, true).await {
            Err(FenceError::Busy(Phase::Try)) => {
                busy += 1;
                assert!(std::time::Instant::now() < deadline, "still busy");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    assert!(busy > 0, "busy while the lease ran");
    assert!(
        killed_at.elapsed() >= LEASE - Duration::from_millis(500),
        "busy until the lease ended, not {:?}",
        killed_at.elapsed()
    );
    assert_eq!(decision, Ok(Decision::Run), "the Try runs again");
    assert_eq!(fence.pending_now().0, 1, "tried once, pending");
}

/// A Redis-only participant: the stock counter and the reservations hash
/// live in Redis, and each phase's effect runs in the fence's own script.
mod effects {
    use std::sync::Arc;
    use std::time::Duration;

    use paytrace::tcc::{
        Anomaly, BranchError, BranchKey, BranchOutcome, Phase, RedisEffect, RedisFence,
        RedisResource,
    };
    use paytrace_testkit::RedisServer;

    /// keys: stock counter, reservations hash; args: the branch's member.
    fn effect(phase: Phase) -> RedisEffect {
        RedisEffect::new(match phase {
            Phase::Try => {
                "local left = tonumber(redis.call('GET', keys[1]) or '0')
                 if left < 1 then return 'no stock' end
                 redis.call('DECR', keys[1])
                 redis.call('HSET', keys[2], args[1], 'reserved')
                 return 'ok'"
            }
            Phase::Confirm => {
                "if redis.call('HGET', keys[2], args[1]) ~= 'reserved' then return 'no reservation' end
                 redis.call('HSET', keys[2], args[1], 'sold')
                 return 'ok'"
            }
            Phase::Cancel => {
                "if redis.call('HGET', keys[2], args[1]) ~= 'reserved' then return 'no reservation' end
                 redis.call('HSET', keys[2], args[1], 'released')
                 redis.call('INCR', keys[1])
                 return 'ok'"
            }
        })
    }

    async fn resource(server: &RedisServer, prefix: &str) -> RedisResource {
        let fence = RedisFence::connect(server.url(), prefix, Duration::from_secs(600))
            .await
            .expect("connects");
        let svc = paytrace::ServiceTelemetry::with_metrics(
            "inventory",
            "1.0.0",
            &paytrace::Metrics::new(),
        );
        svc.tcc_redis("inventory", Arc::new(fence))
    }

    fn key(n: usize) -> BranchKey {
        BranchKey {
            xid: format!("ord_{n}"),
            branch_id: "inventory".into(),
        }
    }

    async fn call(
        r: &RedisResource,
        phase: Phase,
        n: usize,
    ) -> Result<BranchOutcome<()>, BranchError<String>> {
        let member = format!("ord_{n}");
        r.run(
            phase,
            &key(n),
            &effect(phase),
            &["stock", "reservations"],
            &[&member],
        )
        .await
    }

    async fn redis(server: &RedisServer) -> redis::aio::MultiplexedConnection {
        redis::Client::open(server.url())
            .expect("a client")
            .get_multiplexed_async_connection()
            .await
            .expect("connects")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_effect_is_written_with_the_branch_state_or_not_at_all() {
        let server = RedisServer::start().await;
        let mut conn = redis(&server).await;
        let _: () = redis::cmd("SET")
            .arg("stock")
            .arg(3)
            .query_async(&mut conn)
            .await
            .expect("stock");
        let r = resource(&server, "fx").await;
        // Three of five Tries find stock; the two refused write nothing,
        // not even the branch's state: their retry would run again.
        let mut ran = 0;
        for n in 0..5 {
            match call(&r, Phase::Try, n).await {
                Ok(BranchOutcome::Ran(())) => ran += 1,
                Err(BranchError::Handler(reason)) => assert_eq!(reason, "no stock"),
                other => panic!("ord_{n}: {other:?}"),
            }
        }
        assert_eq!(ran, 3);
        let stock: i64 = redis::cmd("GET")
            .arg("stock")
            .query_async(&mut conn)
            .await
            .expect("stock");
        assert_eq!(stock, 0);
        // A repeat is skipped: the effect does not run twice.
        assert_eq!(
            call(&r, Phase::Try, 0).await.ok(),
            Some(BranchOutcome::Skipped(None))
        );
        // A refused Try left no state: a Cancel of it is an empty rollback,
        // and its late Try is refused without touching the stock.
        assert_eq!(
            call(&r, Phase::Cancel, 4).await.ok(),
            Some(BranchOutcome::Skipped(Some(Anomaly::EmptyRollback)))
        );
        assert!(matches!(
            call(&r, Phase::Try, 4).await,
            Err(BranchError::Rejected(Anomaly::HangingTry))
        ));
        // Phase two: one sold, one released (stock back), a Confirm after
        // the Cancel refused.
        assert_eq!(
            call(&r, Phase::Confirm, 0).await.ok(),
            Some(BranchOutcome::Ran(()))
        );
        assert_eq!(
            call(&r, Phase::Cancel, 1).await.ok(),
            Some(BranchOutcome::Ran(()))
        );
        assert!(matches!(
            call(&r, Phase::Confirm, 1).await,
            Err(BranchError::Rejected(Anomaly::ConfirmAfterCancel))
        ));
        let booked: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg("reservations")
            .query_async(&mut conn)
            .await
            .expect("reservations");
        assert_eq!(booked.get("ord_0").map(String::as_str), Some("sold"));
        assert_eq!(booked.get("ord_1").map(String::as_str), Some("released"));
        assert_eq!(booked.get("ord_2").map(String::as_str), Some("reserved"));
        assert_eq!(booked.len(), 3);
        let stock: i64 = redis::cmd("GET")
            .arg("stock")
            .query_async(&mut conn)
            .await
            .expect("stock");
        assert_eq!(stock, 1, "the released unit is back");
    }

    /// A Try and a Cancel of one branch from two processes' fences (their
    /// own connections), forty times: one order every time, and the stock
    /// counts exactly the reservations left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_try_and_a_cancel_from_two_fences_are_ordered_once_with_their_effects() {
        let server = RedisServer::start().await;
        let mut conn = redis(&server).await;
        let _: () = redis::cmd("SET")
            .arg("stock")
            .arg(1_000)
            .query_async(&mut conn)
            .await
            .expect("stock");
        let (a, b) = (
            resource(&server, "race").await,
            resource(&server, "race").await,
        );
        for n in 0..40 {
            let (tried, cancelled) =
                tokio::join!(call(&a, Phase::Try, n), call(&b, Phase::Cancel, n));
            match (tried, cancelled) {
                (Ok(BranchOutcome::Ran(())), Ok(BranchOutcome::Ran(())))
                | (
                    Err(BranchError::Rejected(Anomaly::HangingTry)),
                    Ok(BranchOutcome::Skipped(Some(Anomaly::EmptyRollback))),
                ) => {}
                other => panic!("ord_{n}: no order explains {other:?}"),
            }
        }
        let booked: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg("reservations")
            .query_async(&mut conn)
            .await
            .expect("reservations");
        assert!(booked.values().all(|s| s == "released"), "{booked:?}");
        let stock: i64 = redis::cmd("GET")
            .arg("stock")
            .query_async(&mut conn)
            .await
            .expect("stock");
        assert_eq!(stock, 1_000, "every reservation made was released");
    }
}
