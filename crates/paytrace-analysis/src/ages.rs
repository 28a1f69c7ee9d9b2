//! Instants kept as ages in a snapshot: how long before it was taken, so
//! that the idle clocks run on across a restart by the time the process
//! was down.

use std::time::{Duration, Instant};

/// How long ago `then` was at `now`, in nanoseconds.
pub(crate) fn age_ns(now: Instant, then: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(then).as_nanos()).unwrap_or(u64::MAX)
}

/// Turns a snapshot's ages back into instants: as long before `now` as
/// they were before the snapshot, plus the time the process was down.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ago {
    now: Instant,
    down: Duration,
}

impl Ago {
    pub(crate) fn new(now: Instant, down: Duration) -> Self {
        Self { now, down }
    }

    /// The instant `age_ns` (plus the downtime) before now; now itself
    /// when the monotonic clock does not reach back that far.
    pub(crate) fn instant(&self, age_ns: u64) -> Instant {
        self.now
            .checked_sub(Duration::from_nanos(age_ns).saturating_add(self.down))
            .unwrap_or(self.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_reach_back_by_the_downtime_too() {
        let now = Instant::now();
        let ago = Ago::new(now, Duration::from_secs(3));
        assert_eq!(
            now.duration_since(ago.instant(2_000_000_000)),
            Duration::from_secs(5)
        );
    }
}
