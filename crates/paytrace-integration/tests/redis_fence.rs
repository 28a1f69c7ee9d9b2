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
