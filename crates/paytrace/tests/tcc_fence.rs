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
