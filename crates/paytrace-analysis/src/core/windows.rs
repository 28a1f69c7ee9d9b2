//! What the rolling windows answer (a flow's breakdown, the flows overview,
//! the per-minute series), computed from a list of minutes: this process's
//! own, or the merge of every replica's.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::minutes::{Minute, in_window};
use super::{ChangeQuery, Changes, FlowSummary, MinutePoint, Query};
use crate::breakdown::{Accumulator, Breakdown};

/// Why a peer's windows cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowsError {
    /// The body is not a JSON object with a version.
    #[error("its windows are not a JSON object with a version: {0}")]
    NotJson(String),
    /// A format version this build does not read.
    #[error(
        "the peer sends windows in format version {found}, and this build reads version \
         {reads}: run the same version on every replica (or upgrade this one)"
    )]
    Version {
        /// The version the peer sent.
        found: u32,
        /// The version this build reads.
        reads: u32,
    },
    /// The version is right and its content does not parse.
    #[error("its version-1 windows do not parse: {0}")]
    Invalid(String),
}

/// The minutes of a window as one replica holds them: per-minute sketches
/// and counts, which merge exactly with other replicas' (sketches add their
/// buckets, counts add), so that the merged answer is the one a single
/// process holding every flow would give.
///
/// ```
/// use paytrace_analysis::core::{Core, Now, PipelineConfig, Windows};
/// let replica = Core::new(&PipelineConfig::default());
/// let mut all = Windows::default();
/// all.merge(replica.view(Now::current()).windows(5, 29_000_000));
/// assert!(all.flows(5, 29_000_000).is_empty());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Windows {
    /// Oldest first, one per minute.
    minutes: Vec<Minute>,
}

impl Windows {
    pub(crate) fn from_minutes(minutes: Vec<Minute>) -> Self {
        Self { minutes }
    }

    /// Adds `other`'s minutes: a minute both hold is merged, one only
    /// `other` holds is taken.
    pub fn merge(&mut self, other: Windows) {
        for theirs in other.minutes {
            match self
                .minutes
                .binary_search_by_key(&theirs.minute, |m| m.minute)
            {
                Ok(at) => self.minutes[at].merge(&theirs),
                Err(at) => self.minutes.insert(at, theirs),
            }
        }
    }

    /// The breakdown [`Query`] asks for.
    pub fn breakdown(&self, q: &Query<'_>) -> Breakdown {
        breakdown(&self.within(q.window_minutes, q.now_minute), q)
    }

    /// The flows overview of the last `window_minutes`.
    pub fn flows(&self, window_minutes: u64, now_minute: u64) -> Vec<FlowSummary> {
        flows(&self.within(window_minutes, now_minute))
    }

    /// The per-minute series [`Query`] asks for.
    pub fn timeseries(&self, q: &Query<'_>) -> Vec<MinutePoint> {
        timeseries(&self.within(q.window_minutes, q.now_minute), q)
    }

    /// What changed in a flow between a baseline and a window
    /// ([`ChangeQuery`]); needs the minutes of both (the whole hour, not
    /// collapsed).
    pub fn changes(&self, q: &ChangeQuery<'_>) -> Changes {
        super::changes::changes(&self.minutes, q)
    }

    /// Only what concerns `flow`: the groups, errors and incomplete counts
    /// of the other flows are dropped (what a peer sends for a breakdown).
    pub fn retain_flow(&mut self, flow: &str) {
        for m in &mut self.minutes {
            m.groups.retain_flow(flow);
            m.errors.retain(|f, _| &**f == flow);
            m.incomplete.retain(|f, _| &**f == flow);
        }
    }

    /// The minutes merged into one, dated `minute`: enough for a breakdown
    /// or the flows overview of the window (not for the per-minute series),
    /// and a fraction of the bytes to send.
    pub fn collapse(self, minute: u64) -> Windows {
        let mut one = Minute {
            minute,
            ..Minute::default()
        };
        for m in &self.minutes {
            one.merge(m);
        }
        Windows { minutes: vec![one] }
    }

    /// The message a peer sends: these minutes in the windows format this
    /// build writes ([`crate::format`]).
    pub fn to_message(&self) -> crate::format::WindowsMessage {
        crate::format::WindowsMessage(crate::format::v1::Windows {
            version: crate::format::WINDOWS_VERSION,
            minutes: self.minutes.iter().map(Into::into).collect(),
        })
    }

    /// The windows a peer sent (the JSON body of its answer), or why they
    /// cannot be read: the version is read first, and one this build does
    /// not read is refused, never misread.
    ///
    /// ```
    /// use paytrace_analysis::core::{Windows, WindowsError};
    /// assert!(Windows::from_message(br#"{"minutes":[]}"#).is_ok());
    /// let newer = Windows::from_message(br#"{"version":2,"minutes":"opaque"}"#);
    /// assert!(matches!(newer, Err(WindowsError::Version { found: 2, .. })));
    /// ```
    pub fn from_message(body: &[u8]) -> Result<Self, WindowsError> {
        #[derive(serde::Deserialize)]
        struct Version {
            #[serde(default = "crate::format::v1::one")]
            version: u32,
        }
        let Version { version } =
            serde_json::from_slice(body).map_err(|e| WindowsError::NotJson(e.to_string()))?;
        if version != crate::format::WINDOWS_VERSION {
            return Err(WindowsError::Version {
                found: version,
                reads: crate::format::WINDOWS_VERSION,
            });
        }
        let message: crate::format::v1::Windows =
            serde_json::from_slice(body).map_err(|e| WindowsError::Invalid(e.to_string()))?;
        Ok(Self::from_v1(message))
    }

    /// Version-1 windows as the pipeline's.
    fn from_v1(message: crate::format::v1::Windows) -> Self {
        let mut minutes: Vec<Minute> = message.minutes.into_iter().map(Into::into).collect();
        minutes.sort_by_key(|m| m.minute);
        Self { minutes }
    }

    fn within(&self, window_minutes: u64, now_minute: u64) -> Vec<&Minute> {
        in_window(&self.minutes, now_minute, window_minutes).collect()
    }
}

/// A flow's breakdown over `minutes`.
pub(crate) fn breakdown(minutes: &[&Minute], q: &Query<'_>) -> Breakdown {
    let mut acc = Accumulator::default();
    for m in minutes {
        acc.merge(&m.groups.select(q.flow, q.payment_method, q.payment_channel));
    }
    acc.breakdown(
        q.flow,
        q.payment_method,
        q.payment_channel,
        Some(q.window_minutes * 60),
    )
}

/// One line per flow seen in `minutes`.
pub(crate) fn flows(minutes: &[&Minute]) -> Vec<FlowSummary> {
    let mut names: Vec<Arc<str>> = minutes
        .iter()
        .flat_map(|m| {
            m.groups
                .flows()
                .into_iter()
                .chain(m.incomplete.keys().cloned())
        })
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|flow| {
            let mut acc = Accumulator::default();
            let mut errors = 0.0;
            let mut incomplete = 0.0;
            for m in minutes {
                acc.merge(&m.groups.select(&flow, None, None));
                errors += m.errors.get(&flow).copied().unwrap_or(0.0);
                incomplete += m.incomplete.get(&flow).copied().unwrap_or(0.0);
            }
            let b = acc.breakdown(&flow, None, None, None);
            let mut payment_methods = BTreeSet::new();
            let mut payment_channels = BTreeSet::new();
            for m in minutes {
                for key in m.groups.keys().filter(|k| k.flow == flow) {
                    payment_methods.extend(key.payment_method.as_deref().map(str::to_owned));
                    payment_channels.extend(key.payment_channel.as_deref().map(str::to_owned));
                }
            }
            FlowSummary {
                payment_methods: payment_methods.into_iter().collect(),
                payment_channels: payment_channels.into_iter().collect(),
                flow: flow.to_string(),
                traces: b.traces,
                estimated_flows: b.estimated_flows,
                p50: b.end_to_end.p50,
                p99: b.end_to_end.p99,
                error_share: if b.estimated_flows > 0.0 {
                    errors / b.estimated_flows
                } else {
                    0.0
                },
                incomplete,
            }
        })
        .collect()
}

/// End-to-end p50/p99 per minute of `minutes`.
pub(crate) fn timeseries(minutes: &[&Minute], q: &Query<'_>) -> Vec<MinutePoint> {
    minutes
        .iter()
        .map(|m| {
            let b = m
                .groups
                .select(q.flow, q.payment_method, q.payment_channel)
                .breakdown(q.flow, q.payment_method, q.payment_channel, Some(60));
            MinutePoint {
                start_unix_seconds: m.minute * 60,
                traces: b.traces,
                p50: b.end_to_end.p50,
                p99: b.end_to_end.p99,
            }
        })
        .collect()
}
