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
//! The analysis itself is the `paytrace-analysis` crate, free of I/O (its
//! `decode`, `span`, `config`, `assembler` and `breakdown` are re-exported
//! here): `decode` → `assembler` (spans into traces) → `flows` (traces
//! stitched into flows) → `critical_path` (per-stage duration, self time
//! and critical path) → `breakdown` (per-minute windows), TCC transactions
//! replayed beside. This crate is the server around it: [`pipeline`] runs
//! the analysis core and keeps the Prometheus series of what it reports,
//! `forward` sends kept flows on, [`receiver`] takes OTLP in, `api` and
//! `page` serve the answers, [`cluster`] merges replicas', [`state`] writes
//! snapshots in the analysis crate's versioned formats.

pub mod analyze;
pub(crate) mod api;
pub mod auth;
pub mod cluster;
pub mod forward;
pub mod infra;
pub(crate) mod page;
pub mod pipeline;
pub mod receiver;
pub mod server;
pub mod state;
pub mod tls;

#[cfg(any(test, feature = "testing"))]
pub use paytrace_analysis::testing;
pub use paytrace_analysis::{Business, Link, Span, SpanId, Tcc, TraceId};
pub use paytrace_analysis::{assembler, breakdown, config, decode, span};
