//! The pipeline's inputs from outside: the time it runs at, and what a
//! reader asks of its windows.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One moment in both clocks the pipeline reads: the monotonic one for idle
/// periods, the wall one for minutes and for comparing with span
/// timestamps. Passed in, never read inside, so that tests and `analyze`
/// set the time.
///
/// ```
/// use paytrace_analysis::core::Now;
/// let now = Now::at(std::time::Instant::now(), std::time::UNIX_EPOCH + std::time::Duration::from_secs(120));
/// assert_eq!(now.minute(), 2);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// The monotonic clock.
    pub instant: Instant,
    /// The wall clock.
    pub wall: SystemTime,
}

impl Now {
    /// Both clocks now.
    pub fn current() -> Self {
        Self::at(Instant::now(), SystemTime::now())
    }

    /// The moment `instant` on the monotonic clock and `wall` on the wall clock.
    pub fn at(instant: Instant, wall: SystemTime) -> Self {
        Self { instant, wall }
    }

    /// Minutes since the epoch: the slot of the rolling windows.
    pub fn minute(&self) -> u64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60)
    }

    /// Nanoseconds since the epoch.
    pub fn wall_ns(&self) -> u64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// What to read of a flow's windows: the flow, the last `window_minutes` up
/// to `now_minute`, and optionally one payment method and one channel.
///
/// ```
/// use paytrace_analysis::core::Query;
/// let q = Query::new("checkout", 5, 29_000_000).payment_method(Some("alipay"));
/// assert_eq!((q.flow, q.payment_method, q.payment_channel), ("checkout", Some("alipay"), None));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query<'a> {
    /// The flow.
    pub flow: &'a str,
    /// How many minutes back, the current one included.
    pub window_minutes: u64,
    /// The minute the window ends at (see [`Now::minute`]).
    pub now_minute: u64,
    /// Only this payment method.
    pub payment_method: Option<&'a str>,
    /// Only this payment channel.
    pub payment_channel: Option<&'a str>,
}

impl<'a> Query<'a> {
    /// All of `flow` over the last `window_minutes` up to `now_minute`.
    pub fn new(flow: &'a str, window_minutes: u64, now_minute: u64) -> Self {
        Self {
            flow,
            window_minutes,
            now_minute,
            payment_method: None,
            payment_channel: None,
        }
    }

    /// Only `method` (all when `None`).
    pub fn payment_method(mut self, method: Option<&'a str>) -> Self {
        self.payment_method = method;
        self
    }

    /// Only `channel` (all when `None`).
    pub fn payment_channel(mut self, channel: Option<&'a str>) -> Self {
        self.payment_channel = channel;
        self
    }
}
