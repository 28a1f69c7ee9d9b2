//! The fence's guarantees under any order of calls and under races.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use paytrace::tcc::{BranchKey, Decision, MemoryFence, Phase};
use proptest::prelude::*;

fn key(b: u8) -> BranchKey {
    BranchKey {
        xid: "xid".into(),
        branch_id: format!("b{b}"),
    }
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![Just(Phase::Try), Just(Phase::Confirm), Just(Phase::Cancel)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Whatever arrives in whatever order, with business handlers failing at
    /// random: per branch, a successful Confirm and a successful Cancel never
    /// both happen; a Try never succeeds after a Cancel; each phase succeeds
    /// at most once.
    #[test]
    fn phase_two_is_decided_once(calls in proptest::collection::vec((0u8..3, phase(), any::<bool>()), 0..60)) {
        let fence = MemoryFence::new(100, Duration::from_secs(3600));
        let now = Instant::now();
        let mut succeeded: HashMap<(u8, Phase), u32> = HashMap::new();
        let mut cancel_seen: HashMap<u8, bool> = HashMap::new();
        for (b, phase, handler_ok) in calls {
            let decision = fence.begin(&key(b), phase, now).expect("room");
            if phase == Phase::Cancel && !matches!(decision, Decision::Reject(_)) {
                cancel_seen.insert(b, true);
            }
            if decision == Decision::Run {
                fence.finish(&key(b), phase, handler_ok);
                if handler_ok {
                    *succeeded.entry((b, phase)).or_default() += 1;
                    if phase == Phase::Try {
                        prop_assert!(!cancel_seen.get(&b).copied().unwrap_or(false), "a Try ran after a Cancel");
                    }
                }
            }
        }
        for b in 0u8..3 {
            let confirmed = succeeded.get(&(b, Phase::Confirm)).copied().unwrap_or(0);
            let cancelled = succeeded.get(&(b, Phase::Cancel)).copied().unwrap_or(0);
            let tried = succeeded.get(&(b, Phase::Try)).copied().unwrap_or(0);
            prop_assert!(confirmed + cancelled <= 1, "branch {b}: {confirmed} confirms, {cancelled} cancels");
            prop_assert!(tried <= 1);
            prop_assert!(confirmed + cancelled == 0 || tried == 1, "phase two ran without a Try");
        }
    }
}

/// Threads race Confirm against Cancel on the same tried branches: for each
/// branch exactly one of them runs.
#[test]
fn concurrent_confirm_and_cancel_let_exactly_one_win() {
    let fence = Arc::new(MemoryFence::new(10_000, Duration::from_secs(3600)));
    let now = Instant::now();
    const BRANCHES: u8 = 200;
    for b in 0..BRANCHES {
        assert_eq!(fence.begin(&key(b), Phase::Try, now), Ok(Decision::Run));
        fence.finish(&key(b), Phase::Try, true);
    }
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = [Phase::Confirm, Phase::Cancel, Phase::Confirm, Phase::Cancel]
        .into_iter()
        .map(|phase| {
            let (fence, barrier) = (fence.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..BRANCHES)
                    .filter(|b| {
                        let run = fence.begin(&key(*b), phase, now) == Ok(Decision::Run);
                        if run {
                            fence.finish(&key(*b), phase, true);
                        }
                        run
                    })
                    .count()
            })
        })
        .collect();
    let runs: usize = handles
        .into_iter()
        .map(|h| h.join().expect("no panic"))
        .sum();
    assert_eq!(runs, BRANCHES as usize, "one phase two per branch");
}

mod common;

fn resource_on<S: paytrace::tcc::FenceStore>(
    store: Arc<common::fence::Stalling<S>>,
) -> (paytrace::tcc::TccResource, paytrace::ServiceTelemetry) {
    let svc =
        paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
    (svc.tcc("inventory", store), svc)
}

/// The cancellation rules (`paytrace::tcc`, "Holding a branch") in memory:
/// a call dropped at any await point of `run` leaves the effect done once
/// and never answered "done" before it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_at_any_await_point_leaves_the_branch_as_it_was() {
    let store = Arc::new(common::fence::Stalling::new(MemoryFence::new(
        1000,
        Duration::from_secs(600),
    )));
    let (resource, svc) = resource_on(store.clone());
    common::fence::dropped_at_every_await_point(&resource, &store, "memory").await;
    let cancelled = phase_total(&svc, "cancelled");
    // Dropped while the handler ran (three points) or before the store held
    // the branch (one), per phase.
    assert!(
        cancelled >= 3.0 * 3.0,
        "cancelled calls counted: {cancelled}"
    );
}

/// A second call for a branch whose handler runs is told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_for_a_held_branch_is_busy() {
    let store = Arc::new(common::fence::Stalling::new(MemoryFence::new(
        1000,
        Duration::from_secs(600),
    )));
    let (resource, svc) = resource_on(store);
    common::fence::a_held_branch_is_busy(&resource, "memory").await;
    assert_eq!(phase_total(&svc, "busy"), 3.0);
}

/// `paytrace_tcc_phase_total` of the resource, every phase, with `outcome`.
fn phase_total(svc: &paytrace::ServiceTelemetry, outcome: &str) -> f64 {
    let text = svc.metrics().render();
    text.lines()
        .filter(|l| {
            l.starts_with("paytrace_tcc_phase_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
