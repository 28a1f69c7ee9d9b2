//! The Redis fence against a real redis-server (started here;
//! `apt-get install redis-server`): the transition rules, failure rollback,
//! expiry of finished records, and concurrent Confirm/Cancel from two
//! "processes" (two fences on their own connections) with exactly one winner.

use std::sync::Arc;
use std::time::Duration;

use paytrace::tcc::{Anomaly, BranchKey, Decision, FenceStore, Phase, RedisFence};
use paytrace_testkit::RedisServer;

fn key(b: usize) -> BranchKey {
    BranchKey {
        xid: "ord".into(),
        branch_id: format!("b{b}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_rollback_and_expiry_hold_in_redis() {
    let server = RedisServer::start().await;
    let fence = RedisFence::connect(server.url(), "t1", Duration::from_secs(60))
        .await
        .expect("connects");

    assert_eq!(
        fence.begin(&key(1), Phase::Cancel).await,
        Ok(Decision::Skip(Some(Anomaly::EmptyRollback)))
    );
    assert_eq!(
        fence.begin(&key(1), Phase::Try).await,
        Ok(Decision::Reject(Anomaly::HangingTry))
    );

    assert_eq!(fence.begin(&key(2), Phase::Try).await, Ok(Decision::Run));
    fence
        .finish(&key(2), Phase::Try, false)
        .await
        .expect("recorded");
    assert_eq!(
        fence.begin(&key(2), Phase::Try).await,
        Ok(Decision::Run),
        "a failed Try can run again"
    );
    fence
        .finish(&key(2), Phase::Try, true)
        .await
        .expect("recorded");
    assert_eq!(fence.pending_now().0, 1);
    assert_eq!(
        fence.begin(&key(2), Phase::Confirm).await,
        Ok(Decision::Run)
    );
    fence
        .finish(&key(2), Phase::Confirm, true)
        .await
        .expect("recorded");
    assert_eq!(
        fence.begin(&key(2), Phase::Confirm).await,
        Ok(Decision::Skip(Some(Anomaly::DuplicateConfirm)))
    );
    assert_eq!(
        fence.begin(&key(2), Phase::Cancel).await,
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
    assert_eq!(fence.begin(&key(3), Phase::Try).await, Ok(Decision::Run));
    fence
        .finish(&key(3), Phase::Try, true)
        .await
        .expect("recorded");
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
        assert_eq!(a.begin(&key(i), Phase::Try).await, Ok(Decision::Run));
        a.finish(&key(i), Phase::Try, true).await.expect("recorded");
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
                if fence.begin(&key(i), phase).await == Ok(Decision::Run) {
                    fence.finish(&key(i), phase, true).await.expect("recorded");
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
        if fence.begin(k, *phase).await.expect("store answers") == Decision::Run {
            fence.finish(k, *phase, true).await.expect("recorded");
        }
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
                let got = store.begin(&k, phase).await.expect("store answers");
                assert_eq!(got, expected, "{name}: {phase:?} on {state:?}");
            }
        }
    }
}
