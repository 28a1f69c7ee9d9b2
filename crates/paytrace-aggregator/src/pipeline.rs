//! The pipeline the server runs: the analysis core (free of I/O) behind a
//! lock, with what it reports turned into Prometheus series and kept flows
//! handed to the forwarder.
//!
//! - `families`: the Prometheus families and the cached histogram handles;
//! - `weighted`: histograms whose observations carry a weight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use paytrace_semconv::DEFAULT_LATENCY_BUCKETS;
use prometheus::Registry;

mod families;
mod weighted;

use families::{Metrics, SeriesCache};

use crate::breakdown::Breakdown;
use crate::decode::Decoded;
use crate::span::Span;
pub use paytrace_analysis::core::{
    AnomalyCount, Baseline, ChangeQuery, Changes, ClockSkewSeen, ErrorFinding, FlowSummary,
    GlobalAnomaly, InfraSignal, LatencyFinding, MinutePoint, Now, PathStep, PipelineConfig, Query,
    Side, SlowFlow, SpanView, Unfinished, WINDOWS_MINUTES, Windows,
};
use paytrace_analysis::core::{Core, Observer, RecordedFlow, View};

/// How spans reached the aggregator: the `protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    HttpProtobuf,
    /// OTLP/HTTP with a JSON body.
    HttpJson,
}

impl Protocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http_protobuf",
            Self::HttpJson => "http_json",
        }
    }
}

/// What the lock guards: the core, and the histogram handles the
/// Prometheus side caches.
struct Locked {
    core: Core,
    series: SeriesCache,
}

/// What the core hears, as Prometheus series and forwarded flows.
struct PrometheusObserver<'a> {
    metrics: &'a Metrics,
    series: &'a mut SeriesCache,
    forwarder: Option<&'a crate::forward::Forwarder>,
}

impl Observer for PrometheusObserver<'_> {
    fn spans_dropped(&mut self, reason: &'static str, spans: u64) {
        self.metrics
            .spans_dropped
            .with_label_values(&[reason])
            .inc_by(spans);
    }

    fn trace_completed(&mut self, evicted: Option<&'static str>) {
        self.metrics.traces_completed.inc();
        if let Some(reason) = evicted {
            self.metrics
                .traces_evicted
                .with_label_values(&[reason])
                .inc();
        }
    }

    fn series_overflow(&mut self, n: u64) {
        self.metrics.series_overflow.inc_by(n);
    }

    fn tcc_resource(&mut self, resource: &str) {
        // A resource's anomaly series start at zero when it is first seen,
        // before any anomaly of it can be counted.
        for kind in paytrace_semconv::tcc::GLOBAL_ANOMALY_KINDS {
            self.metrics
                .tcc_anomalies
                .with_label_values(&[resource, *kind]);
        }
    }

    fn tcc_anomalies(&mut self, resource: &str, kind: &str, n: u64) {
        self.metrics
            .tcc_anomalies
            .with_label_values(&[resource, kind])
            .inc_by(n);
    }

    fn tcc_unfinished(&mut self, transactions: usize, oldest_seconds: f64) {
        self.metrics
            .tcc_unfinished
            .set(i64::try_from(transactions).unwrap_or(i64::MAX));
        self.metrics.tcc_unfinished_oldest.set(oldest_seconds);
    }

    fn clock_skew(&mut self, service: &str, offset_seconds: f64) {
        self.metrics
            .clock_skew_adjusted
            .with_label_values(&[service])
            .inc();
        self.metrics
            .clock_skew
            .with_label_values(&[service])
            .set(offset_seconds);
    }

    fn flow_finished(&mut self, flow: &str, sampled_inconsistently: bool, split: bool) {
        if sampled_inconsistently {
            self.metrics
                .flows_sampled_inconsistently
                .with_label_values(&[flow])
                .inc();
        }
        // Made at zero with the flow's first instance, so `rate()` sees the
        // first split.
        let flows_split = self.metrics.flows_split.with_label_values(&[flow]);
        if split {
            flows_split.inc();
        }
    }

    fn flow_incomplete(&mut self, flow: &str, reason: &'static str, whole: u64) {
        self.metrics
            .flows_incomplete
            .with_label_values(&[flow, reason])
            .inc_by(whole);
    }

    fn flow_recorded(&mut self, flow: &RecordedFlow<'_>) {
        self.metrics.observe(self.series, flow.analysis, flow.whole);
    }

    fn flow_kept(&mut self, reason: &'static str, traces: &[Vec<Span>]) {
        if let Some(forwarder) = self.forwarder {
            forwarder.offer(reason, traces);
        }
    }
}

/// The live pipeline; share it behind an `Arc`.
///
/// Ingest and the clock's ticks take turns on the core; queries never
/// take part: they read the view published after the last tick (so an
/// answer is at most a tick old), and neither a burst of spans nor a slow
/// query holds the other up.
pub struct Pipeline {
    state: Mutex<Locked>,
    /// What queries read, replaced after every tick.
    view: RwLock<Arc<View>>,
    /// Where kept flows go (`serve --forward-otlp`), once set.
    forwarder: std::sync::OnceLock<crate::forward::Forwarder>,
    metrics: Metrics,
    buffered_bytes: AtomicUsize,
    max_bytes: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A pipeline with `config`.
    pub fn new(config: PipelineConfig) -> Self {
        Self {
            forwarder: std::sync::OnceLock::new(),
            buffered_bytes: AtomicUsize::new(0),
            max_bytes: config.assembler.max_bytes,
            metrics: Metrics::new(config.buckets.as_deref().unwrap_or(DEFAULT_LATENCY_BUCKETS))
                .expect("the aggregator's families are distinct and their buckets checked"),
            state: Mutex::new(Locked {
                core: Core::new(&config),
                series: SeriesCache::default(),
            }),
            view: RwLock::new(Arc::new(View::default())),
        }
    }

    fn state(&self) -> MutexGuard<'_, Locked> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the core with the observer that records what it hears,
    /// then publishes the assembler's size and, at `publish`, the view
    /// queries read.
    fn run(&self, publish: Option<Now>, f: impl FnOnce(&mut Core, &mut PrometheusObserver<'_>)) {
        let mut guard = self.state();
        let Locked { core, series } = &mut *guard;
        let mut observer = PrometheusObserver {
            metrics: &self.metrics,
            series,
            forwarder: self.forwarder.get(),
        };
        f(core, &mut observer);
        self.publish_size(core);
        if let Some(now) = publish {
            let view = Arc::new(core.view(now));
            // The old view is dropped outside both locks (a reader may
            // still hold it; the last one frees it).
            let old = std::mem::replace(
                &mut *self.view.write().unwrap_or_else(|e| e.into_inner()),
                view,
            );
            drop(guard);
            drop(old);
        }
    }

    /// The view published last.
    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A counter family registered in [`Pipeline::registry`], for the parts
    /// around the pipeline (receivers, listeners, snapshots).
    pub(crate) fn register_counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<prometheus::IntCounterVec> {
        let counters = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), labels)?;
        self.registry().register(Box::new(counters.clone()))?;
        Ok(counters)
    }

    /// The registry holding the aggregator's metrics.
    pub fn registry(&self) -> &Registry {
        &self.metrics.registry
    }

    /// Buffers the spans of one decoded request that arrived at `now`.
    pub fn ingest(&self, protocol: Protocol, decoded: Decoded, now: Instant) {
        let received = decoded.spans.len() as u64 + decoded.rejected;
        self.metrics
            .spans_received
            .with_label_values(&[protocol.as_str()])
            .inc_by(received);
        for (kind, n) in crate::decode::Truncation::ALL.iter().zip(decoded.truncated) {
            if n > 0 {
                self.metrics
                    .spans_truncated
                    .with_label_values(&[kind.as_str()])
                    .inc_by(n);
            }
        }
        self.run(None, |core, out| core.ingest(decoded, now, out));
    }

    /// Moves time forward: completes idle traces, finishes idle flows,
    /// records them. Call it about once a second.
    pub fn tick(&self, now: Now) {
        self.run(Some(now), |core, out| core.tick(now, out));
    }

    /// Finishes everything buffered now (at shutdown, at the end of the
    /// `analyze` input, or in tests).
    pub fn flush(&self, now: Now) {
        self.run(Some(now), |core, out| core.flush(now, out));
    }

    /// A copy of everything a restart would otherwise lose, to write with
    /// [`crate::state::StateDir`]: the windows, the recent flows, the traces
    /// assembling, the flows waiting and the TCC transactions.
    pub(crate) fn snapshot(&self, now: Now) -> paytrace_analysis::format::Snapshot {
        self.state().core.snapshot(now)
    }

    /// Takes back a snapshot into this (new, empty) pipeline, the process
    /// having been down for `down`.
    pub(crate) fn restore(
        &self,
        snapshot: paytrace_analysis::format::Snapshot,
        now: Now,
        down: std::time::Duration,
    ) {
        self.run(Some(now), |core, out| {
            core.restore(snapshot, now, down, out);
        });
    }

    /// What the fence would have prevented at participants without it, by
    /// resource and kind, since start (the shadow fence report's counts).
    pub fn tcc_shadow_counts(&self) -> Vec<AnomalyCount> {
        self.view().tcc_shadow_counts()
    }

    /// The most recent anomalies the fence would have prevented, newest
    /// first (the shadow fence report's examples).
    pub fn tcc_shadow_examples(&self, resource: Option<&str>, limit: usize) -> Vec<GlobalAnomaly> {
        self.view().tcc_shadow_examples(resource, limit)
    }

    /// TCC anomalies counted since start, by resource and kind (what
    /// `paytrace_tcc_global_anomalies_total` holds).
    pub fn tcc_anomaly_counts(&self) -> Vec<AnomalyCount> {
        self.view().tcc_anomaly_counts()
    }

    /// The most recent TCC anomalies, newest first, that match the filters.
    pub fn tcc_anomalies(
        &self,
        kind: Option<&str>,
        resource: Option<&str>,
        limit: usize,
    ) -> Vec<GlobalAnomaly> {
        self.view().tcc_anomalies(kind, resource, limit)
    }

    /// Forwards the kept flows to `forwarder` from now on.
    pub(crate) fn forward_to(&self, forwarder: crate::forward::Forwarder) {
        let policy = forwarder.policy.clone();
        if self.forwarder.set(forwarder).is_err() {
            tracing::warn!("the pipeline already forwards: the second forwarder is ignored");
            return;
        }
        self.state().core.keep(policy);
    }

    /// The services whose spans were stage `stage` in the recent instances
    /// of `flow` (the service that runs a stage, for its USE signals).
    pub fn stage_services(&self, flow: &str, stage: &str) -> Vec<String> {
        self.view().stage_services(flow, stage)
    }

    /// The services whose clocks the analysis corrected (spans that lay
    /// outside their caller's span of another service), by name.
    pub fn clock_skew(&self) -> Vec<ClockSkewSeen> {
        self.view().clock_skew()
    }

    /// TCC transactions waiting past the timeout, oldest first.
    pub fn tcc_unfinished(&self, limit: usize, now: Now) -> Vec<Unfinished> {
        self.view().tcc_unfinished(limit, now)
    }

    /// The breakdown of `flow` over the last `window_minutes` (the current
    /// minute and the whole minutes before it), optionally for one method
    /// and channel.
    pub fn breakdown(&self, q: &Query<'_>) -> Breakdown {
        self.view().breakdown(q)
    }

    /// Every flow with traffic in the window.
    pub fn flows(&self, window_minutes: u64, now_minute: u64) -> Vec<FlowSummary> {
        self.view().flows(window_minutes, now_minute)
    }

    /// The slowest recent instances of `flow`, by end-to-end time, or by
    /// `stage`'s critical-path time when given.
    pub fn slow(&self, flow: &str, stage: Option<&str>, limit: usize) -> Vec<SlowFlow> {
        self.view().slow(flow, stage, limit)
    }

    /// End-to-end latency of `flow` per minute over the window, oldest first.
    pub fn timeseries(&self, q: &Query<'_>) -> Vec<MinutePoint> {
        self.view().timeseries(q)
    }

    /// The minutes of the last `window_minutes` up to `now_minute`, to
    /// merge with other replicas' ([`Windows::merge`]).
    pub fn windows(&self, window_minutes: u64, now_minute: u64) -> Windows {
        self.view().windows(window_minutes, now_minute)
    }

    /// Whether the assembly buffer is within 10% of its byte budget: new
    /// requests should be told to retry later. Reads a copy kept up to date
    /// by every change, so receivers do not take the pipeline's lock for it.
    pub fn near_capacity(&self) -> bool {
        self.buffered_bytes.load(Ordering::Relaxed) >= self.max_bytes / 10 * 9
    }

    /// Publishes the assembler's size: the live-traces gauge and the byte
    /// count [`Pipeline::near_capacity`] reads.
    fn publish_size(&self, core: &Core) {
        self.metrics.traces_live.set(core.live_traces() as i64);
        self.buffered_bytes
            .store(core.buffered_bytes(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {

    /// The start of minute `m` since the epoch, on both clocks.
    fn at_minute(m: u64) -> Now {
        Now::at(
            Instant::now(),
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(m * 60),
        )
    }
    use super::*;
    use crate::decode::Decoded;
    use crate::span::TraceId;
    use crate::testing::{numbered, span, stage};
    use std::sync::Arc;

    fn one_trace(id: u8, flow: &str, ms: u64) -> Decoded {
        let mut spans = numbered(vec![stage(span(flow, 0, ms * 1_000_000))]);
        spans[0].trace_id = TraceId([id; 16]);
        spans[0].business.flow = Some(Arc::from(flow));
        Decoded {
            spans,
            ..Decoded::default()
        }
    }

    /// The settings of the snapshot scenarios (trace idle 5 s, flow idle
    /// 30 s, TCC settle 1 s, timeout 60 s) and their clock: `at(s)` is `s`
    /// seconds past minute 100, on both clocks.
    fn scenario_settings() -> (PipelineConfig, impl Fn(u64) -> Now + Copy) {
        use std::time::{Duration, UNIX_EPOCH};
        let mut config = PipelineConfig::default();
        config.assembler.trace_idle = Duration::from_secs(5);
        config.flows.flow_idle = Duration::from_secs(30);
        config.tcc.settle = Duration::from_secs(1);
        config.tcc.timeout = Duration::from_secs(60);
        let t0 = Instant::now();
        let wall0 = UNIX_EPOCH + Duration::from_secs(100 * 60);
        let at = move |s: u64| Now::at(t0 + Duration::from_secs(s), wall0 + Duration::from_secs(s));
        (config, at)
    }

    #[test]
    fn a_pipeline_restored_from_a_snapshot_answers_as_the_one_that_went_on() {
        use std::time::Duration;
        let (config, at) = scenario_settings();
        let t0 = at(0).instant;
        let wall_ns = |s: u64| at(s).wall_ns();

        let went_on = Pipeline::new(config.clone());
        // Finished at once: no flow id.
        went_on.ingest(Protocol::Grpc, one_trace(1, "checkout", 40), t0);
        // Waits for a callback: it has a flow id.
        let mut waiting = one_trace(2, "checkout", 80);
        waiting.spans[0].business.flow_id = Some(Arc::from("ord_1"));
        went_on.ingest(Protocol::Grpc, waiting, t0);
        // A Try of a transaction nobody decides.
        let tried = crate::testing::tcc_phase(3, "ord_7", "points", "try", wall_ns(0), wall_ns(1));
        went_on.ingest(
            Protocol::Grpc,
            Decoded {
                spans: vec![tried],
                ..Decoded::default()
            },
            t0,
        );
        went_on.tick(at(6));
        // Still assembling when the snapshot is taken.
        went_on.ingest(
            Protocol::Grpc,
            one_trace(4, "checkout", 120),
            t0 + Duration::from_secs(6),
        );

        let snapshot = went_on.snapshot(at(7));
        let bytes = serde_json::to_vec(&snapshot).expect("serialises");
        let read_back: paytrace_analysis::format::Snapshot =
            serde_json::from_slice(&bytes).expect("reads back");
        let restored = Pipeline::new(config);
        restored.restore(read_back, at(7), Duration::ZERO);

        let answers = |p: &Pipeline, now: Now| {
            serde_json::json!({
                "breakdown": p.breakdown(&Query::new("checkout", 5, now.minute())),
                "slow": p.slow("checkout", None, 10),
                "anomalies": p.tcc_anomalies(None, None, 10),
                "unfinished": p.tcc_unfinished(10, now),
                "live": p.near_capacity(),
            })
        };
        let mut traces_seen = Vec::new();
        for s in [7, 12, 40, 70] {
            went_on.tick(at(s));
            restored.tick(at(s));
            let expected = answers(&went_on, at(s));
            assert_eq!(answers(&restored, at(s)), expected, "at {s} s");
            traces_seen.push(expected["breakdown"]["traces"].clone());
        }
        // The clock moved each part on as designed: the assembling trace
        // completes at 12 s, the waiting flow at 40 s.
        assert_eq!(traces_seen, [1, 2, 3, 3]);
        let frozen = restored.tcc_anomalies(Some("frozen"), None, 10);
        assert_eq!(
            frozen.len(),
            1,
            "the branch tried before the snapshot is frozen"
        );
        assert_eq!(frozen[0].resource, "points");
    }

    /// The pipeline the format fixtures were written from
    /// (`tests/fixtures/README.md`), as of 7 s past minute 100: checkouts
    /// of 40 ms (alipay; its root sampled at 25%, threshold `c`) and of
    /// 30 ms (failed) finished, one of 80 ms waiting for its callback
    /// (flow id `ord_1`), one of 120 ms still assembling (linked to the
    /// waiting one); TCC: a Try of `ord_7` at `points` nobody decides, a
    /// Try of `ord_8` at `coupon` decided `confirm` and not confirmed, a
    /// Cancel of `ord_9` at `inventory` with no Try. Settings: trace idle
    /// 5 s, flow idle 30 s, TCC settle 1 s, timeout 60 s.
    pub(crate) fn fixture_scenario() -> (Pipeline, PipelineConfig, impl Fn(u64) -> Now) {
        let (config, at) = scenario_settings();
        let p = Pipeline::new(config.clone());
        let mut finished = one_trace(1, "checkout", 40);
        finished.spans[0].sampling_threshold = Some("c".parse().expect("a threshold"));
        finished.spans[0].business.payment_method = Some(Arc::from("alipay"));
        p.ingest(Protocol::Grpc, finished, at(0).instant);
        let mut waiting = one_trace(2, "checkout", 80);
        waiting.spans[0].business.flow_id = Some(Arc::from("ord_1"));
        p.ingest(Protocol::Grpc, waiting, at(0).instant);
        let tried = crate::testing::tcc_phase(
            3,
            "ord_7",
            "points",
            "try",
            at(0).wall_ns(),
            at(1).wall_ns(),
        );
        p.ingest(
            Protocol::Grpc,
            Decoded {
                spans: vec![tried],
                ..Decoded::default()
            },
            at(0).instant,
        );
        // ord_8: coupon tried, the coordinator decided to confirm, no
        // Confirm yet (a pending branch); ord_9: a Cancel at inventory
        // that no Try preceded (an empty rollback).
        let tcc = vec![
            crate::testing::tcc_phase(
                5,
                "ord_8",
                "coupon",
                "try",
                at(0).wall_ns(),
                at(1).wall_ns(),
            ),
            crate::testing::tcc_decision(6, "ord_8", "confirm", at(1).wall_ns(), at(2).wall_ns()),
            crate::testing::tcc_phase(
                7,
                "ord_9",
                "inventory",
                "cancel",
                at(0).wall_ns(),
                at(1).wall_ns(),
            ),
        ];
        for span in tcc {
            let decoded = Decoded {
                spans: vec![span],
                ..Decoded::default()
            };
            p.ingest(Protocol::Grpc, decoded, at(0).instant);
        }
        let mut failed = one_trace(8, "checkout", 30);
        failed.spans[0].is_error = true;
        p.ingest(Protocol::Grpc, failed, at(0).instant);
        p.tick(at(6));
        let mut assembling = one_trace(4, "checkout", 120);
        assembling.spans[0].links.push(crate::span::Link {
            trace_id: TraceId([2; 16]),
            span_id: crate::span::SpanId([2; 8]),
        });
        p.ingest(Protocol::Grpc, assembling, at(6).instant);
        // The TCC replay runs: the spans it follows arrived (their traces
        // completed) at 6 s.
        p.tick(at(7));
        (p, config, at)
    }

    /// Writes the format fixtures of the versions this build writes; run by
    /// hand, once, when a version is added (`tests/fixtures/README.md`). A
    /// fixture already there is never overwritten.
    #[test]
    #[ignore = "writes the fixtures of a new format version; run by hand"]
    fn write_format_fixtures() {
        use paytrace_analysis::format::{SNAPSHOT_VERSION, WINDOWS_VERSION};
        let (p, _, at) = fixture_scenario();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let snapshot = dir.join(format!("snapshot-v{SNAPSHOT_VERSION}.json.gz"));
        let windows = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../paytrace-analysis/tests/fixtures")
            .join(format!("windows-v{WINDOWS_VERSION}.json"));
        for path in [&snapshot, &windows] {
            assert!(
                !path.exists(),
                "{} exists: a released fixture is never rewritten",
                path.display()
            );
        }
        let state = crate::state::StateDir::open(&dir).expect("the fixtures directory");
        state
            .save(&p.snapshot(at(7)), at(7).wall)
            .expect("the snapshot is written");
        std::fs::rename(state.snapshot_path(), &snapshot).expect("renamed");
        let message =
            serde_json::to_vec(&p.windows(60, at(7).minute()).to_message()).expect("serialises");
        std::fs::write(&windows, message).expect("written");
    }

    /// The version-1 snapshot fixture, written by the build before the
    /// formats had types of their own, restored: what it held is there,
    /// and the clock moves each part on as it would have.
    #[test]
    fn a_version_1_snapshot_fixture_is_still_read() {
        let (_, config, at) = fixture_scenario();
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let dir = std::env::temp_dir().join(format!("paytrace-v1-fixture-{}", std::process::id()));
        let state = crate::state::StateDir::open(&dir).expect("a state dir");
        std::fs::copy(fixtures.join("snapshot-v1.json.gz"), state.snapshot_path())
            .expect("the fixture is copied");
        let (snapshot, down) = state
            .load::<paytrace_analysis::format::Snapshot>(at(7).wall)
            .expect("version 1 is read")
            .expect("the snapshot is there");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            down,
            std::time::Duration::ZERO,
            "written at 7 s past minute 100"
        );
        let p = Pipeline::new(config);
        p.restore(snapshot, at(7), down);

        // Finished before the snapshot: the 40 ms alipay checkout, sampled
        // at 25% (it stands for 4), and the failed 30 ms one.
        let b = p.breakdown(&Query::new("checkout", 5, at(7).minute()));
        assert_eq!(b.traces, 2);
        assert!(
            (b.estimated_flows - 5.0).abs() < 1e-9,
            "{}",
            b.estimated_flows
        );
        let alipay = Query {
            payment_method: Some("alipay"),
            ..Query::new("checkout", 5, at(7).minute())
        };
        assert_eq!(p.breakdown(&alipay).traces, 1);
        let overview = p.flows(5, at(7).minute());
        let checkout = overview.iter().find(|f| f.flow == "checkout");
        assert_eq!(
            checkout.map(|f| (f.traces, f.payment_methods.clone(), f.error_share > 0.0)),
            Some((2, vec!["alipay".to_owned()], true)),
            "the failed instance is counted"
        );
        let slow: Vec<u64> = p
            .slow("checkout", None, 10)
            .iter()
            .map(|f| (f.duration_seconds * 1e3).round() as u64)
            .collect();
        assert_eq!(slow, [40, 30]);
        // The TCC replay's findings and counts went on.
        let listed: Vec<(String, &str)> = p
            .tcc_anomalies(None, None, 10)
            .into_iter()
            .map(|a| (a.resource, a.kind))
            .collect();
        assert_eq!(listed, [("inventory".to_owned(), "empty_rollback")]);
        assert_eq!(p.tcc_anomaly_counts().len(), 1);
        assert_eq!(p.tcc_anomaly_counts()[0].count, 1);
        assert_eq!(p.tcc_shadow_counts()[0].count, 1);

        // The trace assembling completes after its idle time (5 s after
        // 6 s) and joins the waiting flow it links to, which finishes 30 s
        // after that: one more instance, of both traces.
        p.tick(at(12));
        assert_eq!(
            p.breakdown(&Query::new("checkout", 5, at(12).minute()))
                .traces,
            2
        );
        p.tick(at(45));
        assert_eq!(
            p.breakdown(&Query::new("checkout", 5, at(45).minute()))
                .traces,
            3
        );
        let joined = p.slow("checkout", None, 1);
        assert_eq!(joined[0].trace_ids.len(), 2, "{joined:?}");
        assert_eq!(joined[0].flow_id.as_deref(), Some("ord_1"));
        // The Tries nobody confirmed are frozen once the timeout (60 s)
        // passed: ord_7 at points (undecided), ord_8 at coupon (decided).
        p.tick(at(70));
        let mut frozen: Vec<String> = p
            .tcc_anomalies(Some("frozen"), None, 10)
            .into_iter()
            .map(|a| format!("{} {}", a.xid, a.resource))
            .collect();
        frozen.sort();
        assert_eq!(frozen, ["ord_7 points", "ord_8 coupon"]);
    }

    #[test]
    fn queries_answer_from_the_last_tick_without_waiting_for_the_core() {
        let p = Arc::new(Pipeline::new(PipelineConfig::default()));
        p.ingest(Protocol::Grpc, one_trace(1, "checkout", 40), Instant::now());
        p.flush(at_minute(100));
        p.ingest(Protocol::Grpc, one_trace(2, "checkout", 80), Instant::now());
        let held = p.state();
        let (tx, rx) = std::sync::mpsc::channel();
        let asker = {
            let p = p.clone();
            std::thread::spawn(move || {
                let _ = tx.send((
                    p.breakdown(&Query::new("checkout", 5, 100)).traces,
                    p.slow("checkout", None, 10).len(),
                    p.flows(5, 100).len(),
                    p.tcc_anomalies(None, None, 10).len(),
                ));
            })
        };
        // Answered while the core is held: 10 s only bounds a failure.
        let answered = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the queries answered while the core was held");
        assert_eq!(answered, (1, 1, 1, 0), "the last tick's view: one instance");
        drop(held);
        asker.join().expect("no panic");
        p.flush(at_minute(100));
        assert_eq!(p.breakdown(&Query::new("checkout", 5, 100)).traces, 2);
    }

    #[test]
    fn windows_cover_the_last_minutes_only() {
        let p = Pipeline::new(PipelineConfig::default());
        p.ingest(
            Protocol::Grpc,
            one_trace(1, "checkout", 100),
            Instant::now(),
        );
        p.flush(at_minute(100));
        p.ingest(
            Protocol::Grpc,
            one_trace(2, "checkout", 300),
            Instant::now(),
        );
        p.flush(at_minute(110));
        assert_eq!(p.breakdown(&Query::new("checkout", 5, 110)).traces, 1);
        assert_eq!(p.breakdown(&Query::new("checkout", 15, 110)).traces, 2);
        assert_eq!(
            p.breakdown(&Query::new("checkout", 60, 170)).traces,
            0,
            "an hour later"
        );
        let flows = p.flows(15, 110);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].traces, 2);
    }

    #[test]
    fn flow_and_stage_names_past_the_limit_fold_into_other() {
        let mut config = PipelineConfig::default();
        config.label_limit = Some(2);
        let p = Pipeline::new(config);
        for i in 0..5u8 {
            p.ingest(
                Protocol::Grpc,
                one_trace(i + 1, &format!("flow{i}"), 10),
                Instant::now(),
            );
        }
        p.flush(at_minute(1));
        let names: Vec<String> = p.flows(1, 1).into_iter().map(|f| f.flow).collect();
        assert_eq!(names, vec!["flow0", "flow1", "other"]);
        let other = p.breakdown(&Query::new("other", 1, 1));
        assert_eq!(other.traces, 3);
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &p.registry().gather(),
                &mut buf,
            )
            .expect("encodes");
            String::from_utf8(buf).expect("utf-8")
        };
        assert!(
            text.contains("paytrace_aggregator_series_overflow_total 6"),
            "3 flows and 3 stages folded:\n{text}"
        );
    }
}
