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
//! Where to start:
//! - [`decode`]: OTLP requests into spans, rejecting invalid ones one by one:
//!   protobuf bytes straight from the wire ([`decode::decode_protobuf`], what
//!   the receivers use), or OTLP messages (JSON, files);
//!   [`config`]: rules that name the stages of plain OpenTelemetry spans.
//! - [`span`]: the compact span model decoded from OTLP.
//! - [`assembler`]: spans into complete traces, within bounded memory.
//! - [`tree`]: one trace as a tree; its critical path and self times.
//! - [`analysis`]: one flow instance (one trace, or traces stitched across
//!   async hops): per-stage duration, self time and critical-path time.
//! - [`flows`]: completed traces waiting, bounded, for the rest of their
//!   flow: the one stitcher, for `serve` and `analyze` alike.
//! - [`breakdown`]: flow analyses accumulated into per-stage breakdowns.
//! - [`tcc`]: global TCC transactions followed across services, and their
//!   anomalies.
//! - [`pipeline`]: the pipeline (what `serve` runs live and [`analyze`]
//!   runs over files); [`receiver`]: OTLP in; [`api`]: JSON out;
//!   [`page`]: the web page; [`server`]: all of it on sockets.
//! - [`testing`]: builders for hand-made spans.

pub mod analysis;
pub mod analyze;
pub mod api;
pub mod assembler;
pub mod attribute;
pub mod breakdown;
pub mod config;
pub mod decode;
pub mod flows;
pub mod page;
pub mod pipeline;
pub mod receiver;
pub mod server;
pub mod span;
pub mod tcc;
pub mod testing;
pub mod tree;

pub use span::{Business, Link, Span, SpanId, Tcc, TraceId};

/// Hash maps and sets on the hot path: foldhash, seeded per process (cheap
/// for the short keys used here, and not predictable by whoever sends spans).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
