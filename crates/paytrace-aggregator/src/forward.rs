//! Flow-aware tail sampling: the flows worth keeping, forwarded whole to a
//! trace store over OTLP/HTTP (`serve --forward-otlp`), and nothing else.
//!
//! The decision is made once a flow is final, over all its traces (the
//! request, the channel's callback, the queue consumer), with its critical
//! path known: a flow is kept when it failed, when a TCC branch of it has an
//! anomaly, when it is slower than its flow's threshold, or as a sample of
//! the normal ones ([`KeepPolicy`]). A Collector's tail sampling decides per
//! trace and cannot see the callback that came in another trace.
//!
//! Kept flows wait in a bounded queue for the forwarder task, which spends
//! a budget of spans per second and posts them as they were sent, each span
//! with `paytrace.kept` added. A trace store that is slow or down never
//! blocks the pipeline: a full queue, a spent budget and a failed request
//! drop whole flows, each counted by reason in
//! `paytrace_aggregator_flows_forward_dropped_total`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paytrace_semconv::{attr, forward_drop_reason, keep_reason};
use prometheus::IntCounterVec;
use prost::encoding::{WireType, encode_key, encode_varint};
use tokio::sync::{mpsc, watch};

use crate::span::{AsSent, Span};

pub use paytrace_analysis::core::KeepPolicy;

/// Where and how fast kept flows go.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ForwardSettings {
    /// The trace store's OTLP/HTTP endpoint: a base URL
    /// (`http://tempo:4318`, to which `/v1/traces` is added) or the full
    /// traces URL.
    pub url: String,
    /// Which flows are kept.
    pub policy: KeepPolicy,
    /// Spans forwarded per second at most; a burst of up to a second's
    /// worth passes at once.
    pub max_spans_per_second: f64,
    /// Kept flows waiting for the forwarder at most.
    pub queue_flows: usize,
    /// How long the trace store may take to answer a request.
    pub timeout: Duration,
}

impl ForwardSettings {
    /// Forwarding to `url` with the defaults: 1% of normal flows, 2,000
    /// spans a second, 10,000 flows queued, 10 s per request.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            policy: KeepPolicy::default().keep_normal(0.01),
            max_spans_per_second: 2_000.0,
            queue_flows: 10_000,
            timeout: Duration::from_secs(10),
        }
    }

    fn traces_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

/// A flow on its way to the trace store.
#[derive(Debug)]
pub(crate) struct KeptFlow {
    pub(crate) reason: &'static str,
    pub(crate) spans: Vec<Arc<AsSent>>,
}

/// The pipeline's end of the queue to the forwarder.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pub(crate) policy: KeepPolicy,
    queue: mpsc::Sender<KeptFlow>,
    counts: Counts,
}

/// The forwarding counters.
#[derive(Clone, Debug)]
pub(crate) struct Counts {
    forwarded: IntCounterVec,
    dropped: IntCounterVec,
}

impl Counts {
    /// The two families, registered in `registry`, every series at zero.
    pub(crate) fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        use paytrace_semconv::{label, metric};
        let family = |name: &str, help: &str| {
            let counters = IntCounterVec::new(prometheus::Opts::new(name, help), &[label::REASON])?;
            registry.register(Box::new(counters.clone()))?;
            Ok::<_, prometheus::Error>(counters)
        };
        let counts = Self {
            forwarded: family(
                metric::AGGREGATOR_FLOWS_FORWARDED_TOTAL,
                "Flows forwarded whole to the trace store, by why they were kept.",
            )?,
            dropped: family(
                metric::AGGREGATOR_FLOWS_FORWARD_DROPPED_TOTAL,
                "Flows kept but not forwarded, by reason.",
            )?,
        };
        for r in keep_reason::ALL {
            counts.forwarded.with_label_values(&[r]);
        }
        for r in forward_drop_reason::ALL {
            counts.dropped.with_label_values(&[r]);
        }
        Ok(counts)
    }

    fn dropped(&self, reason: &str, flows: u64) {
        self.dropped.with_label_values(&[reason]).inc_by(flows);
    }
}

impl Forwarder {
    /// The queue's sending end, and what the forwarder task reads.
    pub(crate) fn new(
        settings: &ForwardSettings,
        counts: Counts,
    ) -> (Self, mpsc::Receiver<KeptFlow>) {
        let (queue, rx) = mpsc::channel(settings.queue_flows.max(1));
        (
            Self {
                policy: settings.policy.clone(),
                queue,
                counts,
            },
            rx,
        )
    }

    /// Queues the kept flow of `traces`; never waits. A flow with a span not
    /// kept as sent, or that finds the queue full, is counted dropped.
    pub(crate) fn offer(&self, reason: &'static str, traces: &[Vec<Span>]) {
        let spans: Option<Vec<Arc<AsSent>>> =
            traces.iter().flatten().map(|s| s.as_sent.clone()).collect();
        let Some(spans) = spans else {
            self.counts.dropped(forward_drop_reason::NOT_AS_SENT, 1);
            return;
        };
        if self.queue.try_send(KeptFlow { reason, spans }).is_err() {
            self.counts.dropped(forward_drop_reason::QUEUE_FULL, 1);
        }
    }
}

/// Spans per second, with a burst of a second's worth.
struct Budget {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: rate.max(1.0),
            at: Instant::now(),
        }
    }

    /// Takes `n` spans' worth if there is that much.
    fn take(&mut self, n: usize) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate.max(1.0));
        self.at = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// Most spans in one request to the trace store.
const BATCH_SPANS: usize = 1_000;
/// How long a batch waits for more flows.
const BATCH_WAIT: Duration = Duration::from_millis(200);

/// The forwarder task: takes kept flows off the queue, spends the budget,
/// and posts them in batches until `shutdown` (then what is queued).
pub(crate) async fn run(
    mut queue: mpsc::Receiver<KeptFlow>,
    settings: ForwardSettings,
    counts: Counts,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the forwarder's HTTP client: nothing is forwarded");
            return;
        }
    };
    let url = settings.traces_url();
    let mut budget = Budget::new(settings.max_spans_per_second);
    let mut batch = Batch::default();
    loop {
        let next = tokio::select! {
            flow = queue.recv() => flow,
            _ = shutdown.changed() => None,
            () = tokio::time::sleep(BATCH_WAIT), if !batch.flows.is_empty() => {
                post(&client, &url, batch.take(), &counts).await;
                continue;
            }
        };
        let Some(flow) = next else {
            // Stopping: what is queued goes too (the final flush's flows).
            while let Ok(flow) = queue.try_recv() {
                if let Some(full) = batch.add(flow, &mut budget, &counts) {
                    post(&client, &url, full, &counts).await;
                }
            }
            if !batch.flows.is_empty() {
                post(&client, &url, batch.take(), &counts).await;
            }
            return;
        };
        if let Some(full) = batch.add(flow, &mut budget, &counts) {
            post(&client, &url, full, &counts).await;
        }
    }
}

/// Flows waiting to be posted together.
#[derive(Default)]
struct Batch {
    flows: Vec<KeptFlow>,
    spans: usize,
}

impl Batch {
    /// Adds `flow` if the budget allows (else counts it dropped); returns
    /// the batch when it is full.
    fn add(
        &mut self,
        flow: KeptFlow,
        budget: &mut Budget,
        counts: &Counts,
    ) -> Option<Vec<KeptFlow>> {
        if !budget.take(flow.spans.len()) {
            counts.dropped(forward_drop_reason::BUDGET, 1);
            return None;
        }
        self.spans += flow.spans.len();
        self.flows.push(flow);
        (self.spans >= BATCH_SPANS).then(|| self.take())
    }

    fn take(&mut self) -> Vec<KeptFlow> {
        self.spans = 0;
        std::mem::take(&mut self.flows)
    }
}

async fn post(client: &reqwest::Client, url: &str, flows: Vec<KeptFlow>, counts: &Counts) {
    let body = request_bytes(&flows);
    let sent = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await;
    let failure = match sent {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => Some(format!("HTTP {}", r.status())),
        Err(e) => Some(e.to_string()),
    };
    match failure {
        None => {
            for f in &flows {
                counts.forwarded.with_label_values(&[f.reason]).inc();
            }
        }
        Some(why) => {
            tracing::warn!(url, flows = flows.len(), error = %why, "the trace store did not take the kept flows");
            counts.dropped(forward_drop_reason::EXPORT_FAILED, flows.len() as u64);
        }
    }
}

/// Appends field `tag` holding `bytes` (a message or a string).
fn put(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `span` with the attribute `paytrace.kept = reason` appended: a repeated
/// field takes another element wherever it comes on the wire.
fn with_kept(span: &[u8], reason: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(reason.len() + 2);
    put(&mut value, 1, reason.as_bytes()); // AnyValue.string_value
    let mut key_value = Vec::with_capacity(attr::KEPT.len() + value.len() + 4);
    put(&mut key_value, 1, attr::KEPT.as_bytes()); // KeyValue.key
    put(&mut key_value, 2, &value); // KeyValue.value
    let mut out = Vec::with_capacity(span.len() + key_value.len() + 4);
    out.extend_from_slice(span);
    put(&mut out, 9, &key_value); // Span.attributes
    out
}

/// A resource, a scope, and the spans (with `paytrace.kept`) sent under them.
type Group<'a> = (&'a Arc<[u8]>, &'a Arc<[u8]>, Vec<Vec<u8>>);

/// An `ExportTraceServiceRequest` of `flows`: spans grouped under their
/// resource and scope as they came.
pub(crate) fn request_bytes(flows: &[KeptFlow]) -> Vec<u8> {
    // (resource, scope) → spans, in first-seen order; the same resource
    // sent in several requests is one.
    let mut groups: Vec<Group<'_>> = Vec::new();
    for flow in flows {
        for s in &flow.spans {
            let span = with_kept(&s.span, flow.reason);
            match groups
                .iter_mut()
                .find(|(r, sc, _)| **r == s.resource && **sc == s.scope)
            {
                Some((_, _, spans)) => spans.push(span),
                None => groups.push((&s.resource, &s.scope, vec![span])),
            }
        }
    }
    let mut request = Vec::new();
    for (resource, scope, spans) in groups {
        let mut scope_spans = Vec::new();
        if !scope.is_empty() {
            put(&mut scope_spans, 1, scope);
        }
        for span in &spans {
            put(&mut scope_spans, 2, span);
        }
        let mut resource_spans = Vec::new();
        if !resource.is_empty() {
            put(&mut resource_spans, 1, resource);
        }
        put(&mut resource_spans, 2, &scope_spans);
        put(&mut request, 1, &resource_spans);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
    use prost::Message;

    #[test]
    fn forwarded_spans_are_the_spans_as_sent_with_why_they_were_kept() {
        let resource: Arc<[u8]> = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("payment".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
        .into();
        let span = |id: u8| {
            Arc::new(AsSent {
                span: OtlpSpan {
                    trace_id: vec![1; 16],
                    span_id: vec![id; 8],
                    name: format!("span {id}"),
                    ..Default::default()
                }
                .encode_to_vec()
                .into(),
                resource: resource.clone(),
                scope: Arc::from(&[][..]),
            })
        };
        let flows = [
            KeptFlow {
                reason: keep_reason::SLOW,
                spans: vec![span(1), span(2)],
            },
            KeptFlow {
                reason: keep_reason::SAMPLE,
                spans: vec![span(3)],
            },
        ];
        let request = ExportTraceServiceRequest::decode(request_bytes(&flows).as_slice())
            .expect("a valid request");
        assert_eq!(request.resource_spans.len(), 1, "one resource, grouped");
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        let kept: Vec<(String, String)> = spans
            .iter()
            .map(|s| {
                let kept = s.attributes.iter().find(|kv| kv.key == attr::KEPT);
                let value = match kept.and_then(|kv| kv.value.as_ref()?.value.as_ref()) {
                    Some(any_value::Value::StringValue(v)) => v.clone(),
                    _ => String::new(),
                };
                (s.name.clone(), value)
            })
            .collect();
        assert_eq!(
            kept,
            [
                ("span 1".to_owned(), "slow".to_owned()),
                ("span 2".to_owned(), "slow".to_owned()),
                ("span 3".to_owned(), "sample".to_owned()),
            ]
        );
    }

    #[test]
    fn the_budget_lets_a_second_through_then_refills() {
        let mut b = Budget::new(100.0);
        assert!(b.take(60));
        assert!(b.take(40));
        assert!(!b.take(10), "spent");
        b.at -= Duration::from_millis(500);
        assert!(b.take(45), "half a second refills half");
        assert!(!b.take(10));
    }

    #[test]
    fn urls_get_the_traces_path_once() {
        assert_eq!(
            ForwardSettings::new("http://tempo:4318").traces_url(),
            "http://tempo:4318/v1/traces"
        );
        assert_eq!(
            ForwardSettings::new("http://c:4318/v1/traces").traces_url(),
            "http://c:4318/v1/traces"
        );
    }
}
