//! paytrace-aggregator: per-stage latency breakdowns from any OpenTelemetry traces.
//!
//! It answers the question the toolkit exists for: *in this flow, for this
//! payment method and channel, which stage does the user wait on?*
//!
//! ```
//! use paytrace_aggregator::decode::Decoded;
//! use paytrace_aggregator::pipeline::{Now, Pipeline, PipelineConfig, Protocol, Query};
//! use paytrace_aggregator::testing::{child, numbered, span, stage};
//!
//! // A checkout of 100 ms: 30 ms of inventory.try, then 60 ms of channel.request.
//! let ms = 1_000_000;
//! let spans = numbered(vec![
//!     stage(span("checkout", 0, 100 * ms)),
//!     stage(child("inventory.try", 1, 5 * ms, 35 * ms)),
//!     stage(child("channel.request", 1, 35 * ms, 95 * ms)),
//! ]);
//! let pipeline = Pipeline::new(PipelineConfig::default());
//! let now = Now::current();
//! pipeline.ingest(Protocol::Grpc, Decoded { spans, ..Decoded::default() }, now.instant);
//! pipeline.flush(now);
//!
//! let breakdown = pipeline.breakdown(&Query::new("checkout", 5, now.minute()));
//! let top = &breakdown.stages[0];
//! assert_eq!((top.stage.as_str(), breakdown.traces), ("channel.request", 1));
//! assert!((top.critical_path.share - 0.6).abs() < 1e-9);
//! ```
//!
//! `paytrace-aggregator serve` runs this pipeline behind the OTLP receivers,
//! the JSON API, the page and `/metrics`; `paytrace-aggregator analyze` runs it
//! over OTLP JSON files.
//!
//! Where to start (the public modules; the rest is how the pipeline works
//! inside, documented for contributors in `CONTRIBUTING.md`):
//! - [`decode`]: OTLP requests into spans, rejecting invalid ones one by one:
//!   protobuf bytes straight from the wire ([`decode::decode_protobuf`], what
//!   the receivers use), or OTLP messages (JSON, files);
//!   [`config`]: the flows and the rules that name the stages of plain
//!   OpenTelemetry spans.
//! - [`span`]: the compact span model decoded from OTLP.
//! - [`pipeline`]: spans in, breakdowns out: what `serve` runs live and
//!   [`analyze`] runs over files; [`breakdown`]: what it answers.
//! - [`server`]: the pipeline on sockets: [`receiver`] (OTLP in), the JSON
//!   API, the page and `/metrics`.
//! - [`assembler`]: its bounds on the spans it holds; [`auth`]: the bearer
//!   tokens a sender must present.
//! - `testing` (feature `testing`): builders for hand-made spans.
//!
//! Inside, the data flows through a core free of I/O (`core`): `decode` →
//! `assembler` (spans into traces) → `flows` (traces stitched into flows,
//! the one stitcher for `serve` and `analyze`) → `analysis` and `tree`
//! (per-stage duration, self time and critical path) → `breakdown`
//! (accumulated in per-minute windows) and `tcc` (TCC transactions
//! replayed). The core tells an observer what happens; [`pipeline`] is the
//! observer that keeps the Prometheus series and hands kept flows to
//! `forward`, and `api` and `page` serve the answers. What leaves the
//! process (snapshots, the windows replicas exchange) has versioned types
//! of its own (`format`).

pub(crate) mod analysis;
pub mod analyze;
pub(crate) mod api;
pub mod assembler;
pub(crate) mod attribute;
pub mod auth;
pub mod breakdown;
pub mod cluster;
pub mod config;
pub(crate) mod core;
#[cfg(test)]
mod critical_path_cases;
pub mod decode;
pub(crate) mod flows;
pub(crate) mod format;
pub mod forward;
pub mod infra;
pub(crate) mod page;
pub mod pipeline;
#[cfg(test)]
mod properties;
pub mod receiver;
pub mod server;
pub mod span;
pub mod state;
pub(crate) mod tcc;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub(crate) mod tree;

pub use span::{Business, Link, Span, SpanId, Tcc, TraceId};

/// Hash maps and sets on the hot path: foldhash, seeded per process (cheap
/// for the short keys used here, and not predictable by whoever sends spans).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
