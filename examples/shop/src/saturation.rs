//! Whether the demo measured itself overloaded.
//!
//! A demo driven faster than its slowest part keeps up with measures its own
//! queue, not the checkout: the payment-confirmation consumer is one task,
//! and past its rate `async:payment.confirm` grows without bound while flows
//! are cut at the end of the run. So while the load runs, the demo reads
//! every service's `/metrics` once a second and the load driver's count, and
//! names each saturation it saw in its report (`saturation`). A test that
//! reads figures from the report fails on an entry the chaos did not inject,
//! with the entry's message, instead of on a wrong figure.
//!
//! Saturated means, at any one reading:
//! - a queue's oldest message waited longer than [`QUEUE_AGE_LIMIT`];
//! - a pool refused an acquisition for timing out;
//! - the load driver had started fewer than [`LOAD_BEHIND_SHARE`] of the
//!   checkouts its rate asks for (the machine could not even send them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paytrace_semconv::metric;
use serde::Serialize;

use crate::chaos::Fault;
use crate::exposition::{self, Sample};
use crate::load::Counters;
use crate::plan::{Plan, Role};

/// A queue whose oldest message waited longer is saturated: the demo's
/// consumer takes about 20 ms a message, and at any rate it keeps up with
/// (up to 40 a second on 2 cores, BENCHMARKS.md) the mean wait stays under
/// 50 ms; past its rate the wait grows by the second (325 ms mean after
/// 25 s at 55 a second).
pub const QUEUE_AGE_LIMIT: Duration = Duration::from_secs(1);

/// A load driver that started less than this share of what its rate asks
/// for (after its first second) fell behind.
pub const LOAD_BEHIND_SHARE: f64 = 0.9;

/// One saturation the demo saw.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Saturated {
    /// What saturated: `queue payment/payment_callbacks`,
    /// `pool inventory/stock_db`, `load driver`.
    pub what: String,
    /// What was seen, and what to do.
    pub message: String,
    /// Whether the demo's chaos caused it on purpose (`queue-backlog`,
    /// `confirm-network-failure` or `pool-exhausted` for the payment queue,
    /// `pool-exhausted` for the pools).
    pub injected: bool,
}

/// What the watcher keeps between readings.
#[derive(Debug, Default)]
struct Seen {
    /// Per `service/queue`: the oldest age seen, seconds.
    queue_age: BTreeMap<String, f64>,
    /// Per `service/resource`: acquisitions that timed out, at the first
    /// reading and the last.
    pool_timeouts: BTreeMap<String, (f64, f64)>,
    /// The lowest share of the asked-for checkouts started.
    load_share: Option<f64>,
}

/// Reads the services and the load driver once a second until `stop`
/// turns true, then says what saturated.
///
/// `injected` lists the faults the demo's chaos injects, whose saturation
/// is on purpose.
pub async fn watch(
    plan: Plan,
    rps: f64,
    counters: Arc<Counters>,
    injected: Vec<Fault>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Saturated> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let started = Instant::now();
    let mut seen = Seen::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed >= 2.0 && rps > 0.0 {
            // The driver's first tick is at once; it is a second in.
            let asked = (elapsed - 1.0) * rps;
            let share = counters.snapshot().checkouts as f64 / asked;
            seen.load_share = Some(seen.load_share.map_or(share, |s: f64| s.min(share)));
        }
        for role in Role::ALL {
            if let Ok(text) = exposition::scrape(&client, plan, role).await {
                read(role.name(), &text, &mut seen);
            }
        }
    }
    judge(&seen, rps, &injected)
}

/// Adds one service's exposition to `seen`.
fn read(service: &str, text: &str, seen: &mut Seen) {
    for Sample {
        family,
        labels,
        value,
    } in exposition::samples(text)
    {
        let label = |name| exposition::label(labels, name).unwrap_or_default();
        if family == metric::QUEUE_OLDEST_AGE_SECONDS {
            let key = format!("{service}/{}", label("queue"));
            let age = seen.queue_age.entry(key).or_default();
            *age = age.max(value);
        } else if family == metric::RESOURCE_ERRORS_TOTAL && label("kind") == "timeout" {
            let key = format!("{service}/{}", label("resource"));
            seen.pool_timeouts
                .entry(key)
                .and_modify(|(_, last)| *last = value)
                .or_insert((value, value));
        }
    }
}

/// The saturations in `seen`.
fn judge(seen: &Seen, rps: f64, injected: &[Fault]) -> Vec<Saturated> {
    let mut out = Vec::new();
    for (queue, age) in &seen.queue_age {
        if *age > QUEUE_AGE_LIMIT.as_secs_f64() {
            out.push(Saturated {
                what: format!("queue {queue}"),
                message: format!(
                    "the queue {queue}'s oldest message waited {age:.1} s (limit {:?}): its consumer \
                     does not keep up with {rps} checkouts/s on this machine; lower --rps",
                    QUEUE_AGE_LIMIT
                ),
                // The consumer stalls by design under queue-backlog, waits
                // out the coordinator's 1 s Confirm timeout and its retries
                // under confirm-network-failure, and under pool-exhausted
                // its Confirms queue for inventory's one connection left
                // (beside another test, a callback waited 1.7 s so).
                injected: injected.contains(&Fault::QueueBacklog)
                    || injected.contains(&Fault::ConfirmNetworkFailure)
                    || injected.contains(&Fault::PoolExhausted),
            });
        }
    }
    for (pool, (first, last)) in &seen.pool_timeouts {
        let timeouts = last - first;
        if timeouts > 0.0 {
            out.push(Saturated {
                what: format!("pool {pool}"),
                message: format!(
                    "the pool {pool} timed out {timeouts} acquisitions: it is exhausted at \
                     {rps} checkouts/s; lower --rps"
                ),
                injected: injected.contains(&Fault::PoolExhausted),
            });
        }
    }
    if let Some(share) = seen.load_share
        && share < LOAD_BEHIND_SHARE
    {
        out.push(Saturated {
            what: "load driver".to_owned(),
            message: format!(
                "the load driver started only {:.0}% of the {rps} checkouts/s asked for: the \
                 machine is too busy to send them; lower --rps",
                share * 100.0
            ),
            injected: false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE paytrace_queue_oldest_age_seconds gauge\n\
        paytrace_queue_oldest_age_seconds{queue=\"payment_callbacks\",service_name=\"payment\"} 4.6\n\
        paytrace_resource_errors_total{kind=\"timeout\",resource=\"stock_db\",service_name=\"inventory\"} 3\n";

    #[test]
    fn an_old_message_and_pool_timeouts_are_saturation() {
        let mut seen = Seen::default();
        read("payment", PAGE, &mut seen);
        read(
            "payment",
            &PAGE.replace("} 3\n", "} 7\n").replace("4.6", "0.1"),
            &mut seen,
        );
        let found = judge(&seen, 50.0, &[]);
        let whats: Vec<&str> = found.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            whats,
            ["queue payment/payment_callbacks", "pool payment/stock_db"]
        );
        assert!(found[0].message.contains("4.6 s"), "{}", found[0].message);
        assert!(
            found[1].message.contains("timed out 4"),
            "{}",
            found[1].message
        );
        assert!(found.iter().all(|s| !s.injected));
    }

    #[test]
    fn injected_faults_are_marked_and_a_quiet_run_has_none() {
        let mut seen = Seen::default();
        read("payment", PAGE, &mut seen);
        read("payment", &PAGE.replace("} 3\n", "} 5\n"), &mut seen);
        let found = judge(&seen, 10.0, &[Fault::QueueBacklog, Fault::PoolExhausted]);
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|s| s.injected));
        // Slow Confirms hold the one consumer too.
        let slow_confirms = judge(&seen, 10.0, &[Fault::ConfirmNetworkFailure]);
        assert_eq!(
            slow_confirms.iter().map(|s| s.injected).collect::<Vec<_>>(),
            [true, false],
            "the queue is injected, the pool is not"
        );
        // Confirms wait for inventory's one connection left.
        let starved = judge(&seen, 10.0, &[Fault::PoolExhausted]);
        assert!(starved.iter().all(|s| s.injected), "{starved:?}");

        let mut quiet = Seen::default();
        let calm = PAGE.replace("4.6", "0.02");
        read("payment", &calm, &mut quiet);
        read("payment", &calm, &mut quiet);
        quiet.load_share = Some(0.99);
        assert_eq!(judge(&quiet, 10.0, &[]), []);
    }

    #[test]
    fn a_driver_behind_its_rate_is_saturation() {
        let seen = Seen {
            load_share: Some(0.5),
            ..Seen::default()
        };
        let found = judge(&seen, 50.0, &[]);
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("50%"), "{}", found[0].message);
    }
}
