//! paytrace-analysis: where a checkout's time goes, computed from
//! OpenTelemetry spans, with no I/O.
//!
//! The data path, each step a module:
//!
//! ```text
//! OTLP bytes ─decode─▶ spans ─assembler─▶ traces ─flows─▶ flows ─critical_path─▶ per-stage times
//!                                                                  │            │
//!                                      tcc (transactions replayed) ┘            ▼
//!                                                         breakdown: windows of sketches ─▶ answers
//! ```
//!
//! [`core::Core`] runs that path as a state machine: decoded spans and the
//! clock's ticks in; what happens (spans dropped and why, flows recorded
//! and kept, TCC anomalies) told to an [`core::Observer`] you pass; the
//! answers (breakdowns, slow flows, per-minute series, TCC findings) read
//! from the [`core::View`] it gives after a tick. It reads no clock, opens
//! no socket, spawns nothing and writes no metric: `paytrace-aggregator`
//! wraps it with receivers, Prometheus series, an API and a page.
//!
//! ```
//! use paytrace_analysis::core::{Core, Now, PipelineConfig, Query};
//! use paytrace_analysis::decode::Decoded;
//! use paytrace_analysis::testing::{child, numbered, span, stage};
//!
//! // A checkout of 100 ms: 30 ms of inventory.try, then 60 ms of channel.request.
//! let ms = 1_000_000;
//! let spans = numbered(vec![
//!     stage(span("checkout", 0, 100 * ms)),
//!     stage(child("inventory.try", 1, 5 * ms, 35 * ms)),
//!     stage(child("channel.request", 1, 35 * ms, 95 * ms)),
//! ]);
//! let mut core = Core::new(&PipelineConfig::default());
//! let now = Now::current();
//! core.ingest(Decoded { spans, ..Decoded::default() }, now.instant, &mut ());
//! core.flush(now, &mut ());
//!
//! let breakdown = core.view(now).breakdown(&Query::new("checkout", 5, now.minute()));
//! let top = &breakdown.stages[0];
//! assert_eq!((top.stage.as_str(), breakdown.traces), ("channel.request", 1));
//! assert!((top.critical_path.share - 0.6).abs() < 1e-9);
//! ```
//!
//! Where to start:
//! - [`decode`]: OTLP requests into spans, rejecting invalid ones one by one
//!   (protobuf bytes straight from the wire, or OTLP messages); [`config`]:
//!   the flows and the rules that name the stages of plain spans.
//! - [`span`]: the compact span model decoded from OTLP.
//! - [`core`]: the state machine, its settings, its observer and its view;
//!   [`breakdown`]: what a breakdown answers.
//! - [`assembler`]: the bounds on the spans held; [`format`](mod@format): the versioned
//!   formats of what leaves a process (snapshots, windows for peers).
//! - `testing` (feature `testing`): builders for hand-made spans.

pub(crate) mod ages;
pub mod assembler;
pub(crate) mod attribute;
pub mod breakdown;
pub mod config;
pub mod core;
pub mod critical_path;
#[cfg(test)]
mod critical_path_cases;
pub mod decode;
pub(crate) mod flows;
pub mod format;
#[cfg(test)]
mod properties;
pub mod span;
pub(crate) mod tcc;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub(crate) mod tree;

pub use flows::FlowSettings;
pub use span::{Business, Link, Span, SpanId, Tcc, TraceId};
pub use tcc::{GlobalAnomaly, TccSettings, Unfinished};

/// Hash maps and sets on the hot path: foldhash, seeded per process (cheap
/// for the short keys used here, and not predictable by whoever sends spans).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
