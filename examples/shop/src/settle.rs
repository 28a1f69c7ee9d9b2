//! Waiting, after the load stops, until the shop has finished what it
//! started.
//!
//! When the last checkout answers, work it caused is still under way: a
//! channel's callback scheduled seconds later (five times later for a late
//! one), a confirmation in payment's queue, a coordinator retrying a
//! Confirm, the late Cancel the `cancel-after-confirm` chaos sends after
//! it. Counts read from the fences before that work ends disagree with the
//! spans exported after it (a late Cancel the aggregator saw and the
//! fence's count, read too early, had not). A fixed pause cannot know how
//! long is enough on a loaded machine.
//!
//! The rule: the demo reads every service's `/metrics` every
//! [`POLL`]; the shop is **idle** when one reading finds nothing in
//! progress (each gauge in [`IN_PROGRESS`] at zero, in every service) and
//! the next reading finds the same again with the same counts of finished
//! work ([`FINISHED`]): the hand-offs between the gauges (a callback
//! answered and its message queued, a message taken and its stage begun)
//! take microseconds, and one that fell between the readings shows in the
//! counts. Work that no gauge covers (a message in transit inside a
//! broker) is not waited for beyond that second reading.
//!
//! Waiting stops at a limit; the report then says the shop was still busy,
//! and with what, so a test that compares counts fails with that message.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paytrace_semconv::metric;
use prometheus::{IntGauge, IntGaugeVec};
use serde::Serialize;

use crate::exposition::{self, Sample};
use crate::plan::{Plan, Role};

/// How often the services are read while waiting.
pub const POLL: Duration = Duration::from_millis(100);

/// The demo's own gauge of work in hand that paytrace's families do not
/// cover: callbacks a mock channel has scheduled, a confirmation payment's
/// consumer has taken from its queue.
pub const WORK_IN_HAND: &str = "paytrace_demo_work_in_hand";

/// Gauges that count work in progress: the shop is idle when all are zero.
pub const IN_PROGRESS: [&str; 6] = [
    metric::HTTP_SERVER_ACTIVE_REQUESTS,
    metric::RPC_SERVER_ACTIVE_CALLS,
    metric::STAGE_ACTIVE,
    metric::QUEUE_DEPTH,
    metric::OUTBOX_PENDING_MESSAGES,
    WORK_IN_HAND,
];

/// Counters of finished work: two idle readings agree when these, and the
/// counts of [`FINISHED_HISTOGRAMS`], did not move.
pub const FINISHED: [&str; 2] = [metric::TCC_PHASE_TOTAL, metric::QUEUE_MESSAGES_TOTAL];

/// Histograms whose `_count` counts finished requests and calls.
pub const FINISHED_HISTOGRAMS: [&str; 2] = [
    metric::HTTP_SERVER_REQUEST_DURATION_SECONDS,
    metric::RPC_SERVER_CALL_DURATION_SECONDS,
];

/// What waiting found.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Settled {
    /// Whether the shop became idle before the limit.
    pub idle: bool,
    /// How long the demo waited, milliseconds.
    pub waited_ms: u64,
    /// When not idle: what was still in progress at the last reading
    /// (`service family value`).
    pub busy: Vec<String>,
}

/// One reading of every service.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    /// `service family` of each in-progress gauge above zero, with its sum.
    busy: BTreeMap<String, f64>,
    /// `service family` of each finished-work counter, with its sum.
    finished: BTreeMap<String, f64>,
}

/// Reads every service until the shop is idle (see the module's rule) or
/// `limit` has passed.
pub async fn wait_until_idle(plan: Plan, limit: Duration) -> Settled {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let started = Instant::now();
    let mut previous: Option<Reading> = None;
    loop {
        let reading = read_all(&client, plan).await;
        let idle = reading.busy.is_empty();
        if idle && previous.as_ref() == Some(&reading) {
            return Settled {
                idle: true,
                waited_ms: millis(started.elapsed()),
                busy: Vec::new(),
            };
        }
        if started.elapsed() >= limit {
            return Settled {
                idle: false,
                waited_ms: millis(started.elapsed()),
                busy: reading
                    .busy
                    .iter()
                    .map(|(what, n)| format!("{what} {n}"))
                    .collect(),
            };
        }
        previous = idle.then_some(reading);
        tokio::time::sleep(POLL).await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn read_all(client: &reqwest::Client, plan: Plan) -> Reading {
    let mut reading = Reading::default();
    for role in Role::ALL {
        match exposition::scrape(client, plan, role).await {
            Ok(text) => add(role.name(), &text, &mut reading),
            // A service that cannot be read is not known to be idle.
            Err(_) => {
                reading.busy.insert(format!("{role} /metrics"), 1.0);
            }
        }
    }
    reading
}

/// Adds one service's exposition to `reading`.
fn add(service: &str, text: &str, reading: &mut Reading) {
    for Sample { family, value, .. } in exposition::samples(text) {
        if IN_PROGRESS.contains(&family) {
            if value > 0.0 {
                *reading
                    .busy
                    .entry(format!("{service} {family}"))
                    .or_default() += value;
            }
        } else if is_finished(family) {
            *reading
                .finished
                .entry(format!("{service} {family}"))
                .or_default() += value;
        }
    }
}

/// Whether `family` counts finished work ([`FINISHED`], or the count of
/// one of the [`FINISHED_HISTOGRAMS`]).
fn is_finished(family: &str) -> bool {
    FINISHED.contains(&family)
        || family
            .strip_suffix("_count")
            .is_some_and(|h| FINISHED_HISTOGRAMS.contains(&h))
}

/// The service's [`WORK_IN_HAND`] gauge for one kind of `work`.
///
/// ```ignore
/// let callbacks = InHand::register(&svc, "callbacks");
/// let held = callbacks.hold(); // work started
/// drop(held);                  // work over, however it ended
/// ```
#[derive(Clone, Debug)]
pub struct InHand(IntGauge);

impl InHand {
    /// The gauge `paytrace_demo_work_in_hand{work}` in `svc`'s registry.
    pub fn register(svc: &paytrace::ServiceTelemetry, work: &str) -> Self {
        let family = IntGaugeVec::new(
            prometheus::Opts::new(
                WORK_IN_HAND,
                "Work a demo service has in hand that no paytrace gauge counts, by kind.",
            ),
            &["work"],
        )
        .expect("a valid family");
        if let Err(e) = svc.metrics().registry().register(Box::new(family.clone())) {
            tracing::warn!(error = %e, "cannot register the work-in-hand gauge");
        }
        Self(family.with_label_values(&[work]))
    }

    /// Counts one piece of work until the returned guard is dropped (also
    /// when its task is cancelled or panics).
    pub fn hold(&self) -> Held {
        self.0.inc();
        Held(self.0.clone())
    }
}

/// One piece of work in hand; dropping it ends the count.
#[derive(Debug)]
pub struct Held(IntGauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUSY: &str = "\
# TYPE http_server_active_requests gauge
http_server_active_requests{http_request_method=\"POST\",http_route=\"/orders/{id}/paid\",service=\"order\"} 1
http_server_active_requests{http_request_method=\"POST\",http_route=\"/checkout\",service=\"order\"} 0
paytrace_tcc_phase_total{outcome=\"ok\",phase=\"cancel\",resource=\"inventory\",service=\"inventory\"} 4
paytrace_tcc_phase_total{outcome=\"rejected\",phase=\"cancel\",resource=\"inventory\",service=\"inventory\"} 2
paytrace_demo_work_in_hand{work=\"callbacks\"} 0
";

    #[test]
    fn a_gauge_above_zero_is_busy_and_counters_add_up_by_family() {
        let mut r = Reading::default();
        add("order", BUSY, &mut r);
        assert_eq!(
            r.busy,
            BTreeMap::from([("order http_server_active_requests".to_owned(), 1.0)])
        );
        assert_eq!(
            r.finished,
            BTreeMap::from([("order paytrace_tcc_phase_total".to_owned(), 6.0)])
        );
    }

    #[test]
    fn a_family_that_only_shares_a_prefix_is_not_read() {
        let mut r = Reading::default();
        add(
            "payment",
            "paytrace_queue_depth_max{queue=\"q\"} 3\npaytrace_queue_depth{queue=\"q\"} 0\n",
            &mut r,
        );
        assert!(r.busy.is_empty(), "{r:?}");
    }

    #[test]
    fn a_held_piece_of_work_is_counted_until_dropped_even_when_its_task_is_cancelled() {
        let gauge = IntGauge::new("w", "w").expect("a gauge");
        let hand = InHand(gauge.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let held = hand.hold();
            assert_eq!(gauge.get(), 1);
            let work = async move {
                let _held = held;
                std::future::pending::<()>().await;
            };
            // Dropped at its await point by the timeout.
            let r = tokio::time::timeout(Duration::from_millis(1), work).await;
            assert!(r.is_err());
        });
        assert_eq!(gauge.get(), 0);
    }
}
