//! Business stages: a span and a latency histogram for one named step of a flow.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use opentelemetry::trace::FutureExt as _;
use paytrace_semconv::{attr, outcome};
use pin_project_lite::pin_project;
use prometheus::IntGauge;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::cardinality::{Guards, LabelGuard, OTHER};
use crate::propagation::{Flow, ambient};
use crate::redact::redact;
use crate::service::ServiceTelemetry;

/// How a stage ended: the `outcome` label and `paytrace.outcome` attribute.
///
/// ```
/// assert_eq!(paytrace::Outcome::Timeout.as_str(), "timeout");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The stage succeeded.
    Ok,
    /// The stage failed.
    Error,
    /// The stage's deadline passed.
    Timeout,
    /// Business rules refused it (insufficient stock, a fence rejection).
    Rejected,
    /// Its future was dropped before it finished: [`Stage::run`] and
    /// [`Stage::run_with_deadline`] record this when the caller gives up on
    /// them (a client that hung up, an outer timeout, `select!`).
    Cancelled,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => outcome::OK,
            Self::Error => outcome::ERROR,
            Self::Timeout => outcome::TIMEOUT,
            Self::Rejected => outcome::REJECTED,
            Self::Cancelled => outcome::CANCELLED,
        }
    }
}

/// Why a stage run with a deadline did not return the stage's value.
///
/// ```
/// use paytrace::StageError;
/// let e: StageError<std::io::Error> = StageError::TimedOut(std::time::Duration::from_millis(5));
/// assert_eq!(e.to_string(), "stage timed out after 5ms");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum StageError<E> {
    /// The stage's own work failed.
    Failed(E),
    /// The deadline passed first; the work was cancelled.
    TimedOut(Duration),
}

impl<E: fmt::Display> fmt::Display for StageError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(e) => write!(f, "stage failed: {e}"),
            Self::TimedOut(d) => write!(f, "stage timed out after {d:?}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for StageError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed(e) => Some(e),
            Self::TimedOut(_) => None,
        }
    }
}

/// A business stage about to run: `inventory.try`, `channel.request`, …
///
/// Made by [`ServiceTelemetry::stage`]. The flow, payment method and channel come from
/// the request's baggage (see [`Flow`]) unless set here. Finish it with
/// [`Stage::run`] (async, outcome from the `Result`), [`Stage::run_with_deadline`]
/// (adds `timeout`), or [`Stage::start`] (a guard for synchronous code).
///
/// Each stage is a child span named after the stage with the `paytrace.*` and
/// `payment.*` attributes, one observation of `paytrace_stage_duration_seconds`
/// and, while it runs, one unit of `paytrace_stage_active`.
///
/// ```
/// # async fn demo() -> Result<(), paytrace::StageError<std::io::Error>> {
/// use std::time::Duration;
///
/// let payment = paytrace::ServiceTelemetry::new("payment", "1.0.0");
/// let receipt = payment
///     .stage("channel.request")
///     .payment_channel("wxpay")
///     .attribute("channel.request_id", "req-123")
///     .run_with_deadline(Duration::from_secs(3), async {
///         Ok::<_, std::io::Error>("receipt")
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a stage does nothing until it is run or started"]
#[derive(Debug)]
pub struct Stage {
    service: ServiceTelemetry,
    name: Cow<'static, str>,
    flow: Flow,
    attributes: Vec<(Cow<'static, str>, String)>,
    links: Vec<opentelemetry::trace::SpanContext>,
}

impl Stage {
    pub(crate) fn new(service: ServiceTelemetry, name: Cow<'static, str>) -> Self {
        Self {
            service,
            name,
            flow: Flow::default(),
            attributes: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Links the stage's span to `producer`, the span whose work it
    /// continues asynchronously (a queue message's sender, a callback's
    /// request). The aggregator follows links to stitch flows across traces.
    ///
    /// ```
    /// # async fn demo(producer: opentelemetry::trace::SpanContext) {
    /// let payment = paytrace::ServiceTelemetry::new("payment", "1.0.0");
    /// let _ = payment
    ///     .stage("payment.confirm")
    ///     .link(producer)
    ///     .run(async { Ok::<_, std::io::Error>(()) })
    ///     .await;
    /// # }
    /// ```
    pub fn link(mut self, producer: opentelemetry::trace::SpanContext) -> Self {
        self.links.push(producer);
        self
    }

    /// Links this stage to a span of an earlier trace given as a W3C
    /// `traceparent` value (what a callback or a queue message carries);
    /// a value that is not a valid `traceparent` is ignored, so a sender
    /// that sent none still gets its stage.
    ///
    /// ```
    /// # async fn demo() {
    /// let payment = paytrace::ServiceTelemetry::new("payment", "1.0.0");
    /// let _ = payment
    ///     .stage("channel.callback")
    ///     .link_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    ///     .run(async { Ok::<_, std::io::Error>(()) })
    ///     .await;
    /// # }
    /// ```
    pub fn link_traceparent(self, traceparent: &str) -> Self {
        self.link_trace_context(traceparent, None)
    }

    /// [`Stage::link_traceparent`] with the `tracestate` that travelled with
    /// it ([`crate::current_tracestate`] where the message was sent): a stage
    /// that starts a trace then samples as the linked trace did, even when
    /// that one decided by its flow id (see [`crate::FlowSampler`]).
    ///
    /// ```
    /// # async fn demo() {
    /// let payment = paytrace::ServiceTelemetry::new("payment", "1.0.0");
    /// let _ = payment
    ///     .stage("payment.confirm")
    ///     .link_trace_context(
    ///         "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ///         Some("ot=th:e666;rv:0123456789abcd"),
    ///     )
    ///     .run(async { Ok::<_, std::io::Error>(()) })
    ///     .await;
    /// # }
    /// ```
    pub fn link_trace_context(self, traceparent: &str, tracestate: Option<&str>) -> Self {
        match crate::propagation::span_context_of(traceparent, tracestate) {
            Some(producer) => self.link(producer),
            None => self,
        }
    }

    /// Marks the stage as phase `phase` of the TCC branch `branch` of
    /// `resource`: the `tcc.*` attributes the aggregator follows global
    /// transactions by. [`crate::tcc::TccResource::stage`] fills them for a
    /// fenced participant.
    ///
    /// ```
    /// use paytrace::tcc::{BranchKey, Phase};
    /// let payment = paytrace::ServiceTelemetry::new("payment", "1.0.0");
    /// let branch = BranchKey { xid: "ord_1".into(), branch_id: "payment".into() };
    /// let stage = payment.stage("payment.create").tcc(&branch, "payment", Phase::Try);
    /// # drop(stage);
    /// ```
    pub fn tcc(
        self,
        branch: &crate::tcc::BranchKey,
        resource: &str,
        phase: crate::tcc::Phase,
    ) -> Self {
        use paytrace_semconv::attr;
        self.attribute(attr::TCC_XID, &branch.xid)
            .attribute(attr::TCC_BRANCH_ID, &branch.branch_id)
            .attribute(attr::TCC_RESOURCE, resource)
            .attribute(attr::TCC_PHASE, phase.as_str())
    }

    /// Marks the stage as the coordinator's decision `decision` (Confirm or
    /// Cancel) on the global transaction `xid`.
    pub fn tcc_decision(self, xid: &str, decision: crate::tcc::Phase) -> Self {
        use paytrace_semconv::attr;
        self.attribute(attr::TCC_XID, xid)
            .attribute(attr::TCC_DECISION, decision.as_str())
    }

    /// Sets the flow instead of taking it from baggage.
    pub fn flow(mut self, flow: impl Into<String>) -> Self {
        self.flow.flow = Some(flow.into());
        self
    }

    /// Sets the flow id instead of taking it from baggage.
    pub fn flow_id(mut self, id: impl Into<String>) -> Self {
        self.flow.flow_id = Some(id.into());
        self
    }

    /// Sets the payment method instead of taking it from baggage.
    pub fn payment_method(mut self, method: impl Into<String>) -> Self {
        self.flow.payment_method = Some(method.into());
        self
    }

    /// Sets the payment channel instead of taking it from baggage.
    pub fn payment_channel(mut self, channel: impl Into<String>) -> Self {
        self.flow.payment_channel = Some(channel.into());
        self
    }

    /// Adds a span attribute. The value is user-supplied, so it is redacted
    /// (card numbers, phone numbers, e-mail addresses) first.
    pub fn attribute(mut self, key: impl Into<Cow<'static, str>>, value: impl AsRef<str>) -> Self {
        self.attributes
            .push((key.into(), redact(value.as_ref()).into_owned()));
        self
    }

    /// Runs `work` as this stage; the outcome is `ok` for `Ok`, `error` for
    /// `Err`, and `cancelled` when this future is dropped before `work`
    /// finished.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// let svc = paytrace::ServiceTelemetry::with_metrics("payment", "1.0.0", &paytrace::Metrics::new());
    /// let slow = svc.stage("channel.request").run(async {
    ///     tokio::time::sleep(Duration::from_secs(60)).await;
    ///     Ok::<_, std::io::Error>(())
    /// });
    /// // The caller gives up after 10 ms: the stage is recorded as cancelled, not ok.
    /// assert!(tokio::time::timeout(Duration::from_millis(10), slow).await.is_err());
    /// assert!(svc.metrics().render().contains(r#"outcome="cancelled""#));
    /// # }
    /// ```
    pub async fn run<T, E, F>(self, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut guard = self.start();
        // Until `work` returns: a drop in between records the cancellation.
        guard.set_outcome(Outcome::Cancelled);
        let attach = guard.attach.take();
        let refused = std::sync::atomic::AtomicBool::new(false);
        let work = InSpan {
            span: &guard.span,
            refused: &refused,
            inner: work,
        };
        let result = match attach {
            Some(cx) => work.with_context(cx).await,
            None => work.await,
        };
        guard.set_outcome(match (&result, refused.into_inner()) {
            (Ok(_), _) => Outcome::Ok,
            (Err(_), true) => Outcome::Rejected,
            (Err(_), false) => Outcome::Error,
        });
        result
    }

    /// Runs `work` as this stage, cancelling it when `deadline` passes first;
    /// the outcome is then `timeout`.
    pub async fn run_with_deadline<T, E, F>(
        self,
        deadline: Duration,
        work: F,
    ) -> Result<T, StageError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut guard = self.start();
        guard.set_outcome(Outcome::Cancelled);
        let attach = guard.attach.take();
        let refused = std::sync::atomic::AtomicBool::new(false);
        let work = InSpan {
            span: &guard.span,
            refused: &refused,
            inner: work,
        };
        let timed = match attach {
            Some(cx) => tokio::time::timeout(deadline, work.with_context(cx)).await,
            None => tokio::time::timeout(deadline, work).await,
        };
        let (result, outcome) = match timed {
            Ok(Ok(v)) => (Ok(v), Outcome::Ok),
            Ok(Err(e)) if refused.load(std::sync::atomic::Ordering::Relaxed) => {
                (Err(StageError::Failed(e)), Outcome::Rejected)
            }
            Ok(Err(e)) => (Err(StageError::Failed(e)), Outcome::Error),
            Err(_) => (Err(StageError::TimedOut(deadline)), Outcome::Timeout),
        };
        guard.set_outcome(outcome);
        result
    }

    /// Starts the stage now and returns a guard that finishes it when dropped
    /// (for synchronous code, or when the outcome is not a `Result`).
    ///
    /// The outcome is `ok` unless set with [`StageGuard::set_outcome`], or
    /// `error` if the guard is dropped while panicking.
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::with_metrics("points", "1.0.0", &paytrace::Metrics::new());
    /// let mut stage = svc.stage("points.try").start();
    /// let enough = false;
    /// if !enough {
    ///     stage.set_outcome(paytrace::Outcome::Rejected);
    /// }
    /// drop(stage);
    /// assert!(svc.metrics().render().contains(r#"outcome="rejected""#));
    /// ```
    pub fn start(self) -> StageGuard {
        self.begin(false)
    }

    /// Makes the current span (usually the request's server span) the
    /// stage's span instead of starting a child: it gets the `paytrace.*`
    /// attributes, the metrics are recorded as for [`Stage::start`].
    ///
    /// Use it where the request itself is the stage, so that the trace's
    /// root is named after it: a callback handler whose request starts a new
    /// trace, for example, whose wait the aggregator then reports as
    /// `async:<stage>`.
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::with_metrics("payment", "1.0.0", &paytrace::Metrics::new());
    /// drop(svc.stage("channel.callback").start_on_current_span());
    /// assert!(svc.metrics().render().contains(r#"stage="channel.callback""#));
    /// ```
    pub fn start_on_current_span(self) -> StageGuard {
        self.begin(true)
    }

    fn begin(self, on_current: bool) -> StageGuard {
        let ambient = ambient();
        let inherited = Flow::from_context(&ambient);
        let own = self.flow;
        // Rebuilding baggage costs more than the rest of the stage's set-up
        // (OpenTelemetry validates every key): only when the stage adds to
        // or changes what its context already carries.
        let adds =
            |mine: &Option<String>, theirs: &Option<String>| mine.is_some() && mine != theirs;
        // A stage of another service than its context's starts its own
        // service's spans (`crate::span_service`).
        let parent = match (adds(&own.flow, &inherited.flow)
            || adds(&own.flow_id, &inherited.flow_id)
            || adds(&own.payment_method, &inherited.payment_method)
            || adds(&own.payment_channel, &inherited.payment_channel))
        .then(|| own.merge_into(&ambient))
        {
            Some(cx) => Some(self.service.tagged(cx)),
            None => self.service.retagged(&ambient),
        };
        let flow = Flow {
            flow: own.flow.or(inherited.flow),
            flow_id: own.flow_id.or(inherited.flow_id),
            payment_method: own.payment_method.or(inherited.payment_method),
            payment_channel: own.payment_channel.or(inherited.payment_channel),
        };

        fn redacted(v: &Option<String>) -> Option<Cow<'_, str>> {
            v.as_deref().map(redact)
        }
        let (span, attach) = if on_current {
            let span = tracing::Span::current();
            span.set_attribute(attr::STAGE, self.name.to_string());
            let fields = [
                (attr::FLOW, &flow.flow),
                (attr::FLOW_ID, &flow.flow_id),
                (attr::PAYMENT_METHOD, &flow.payment_method),
                (attr::PAYMENT_CHANNEL, &flow.payment_channel),
            ];
            for (key, value) in fields {
                if let Some(v) = redacted(value) {
                    span.set_attribute(key, v.into_owned());
                }
            }
            (span, None)
        } else {
            let span = tracing::info_span!(
                target: "paytrace::stage",
                "stage",
                otel.name = self.name.as_ref(),
                otel.status_code = Empty,
                paytrace.stage = self.name.as_ref(),
                paytrace.flow = redacted(&flow.flow).as_deref(),
                paytrace.flow_id = redacted(&flow.flow_id).as_deref(),
                paytrace.outcome = Empty,
                payment.method = redacted(&flow.payment_method).as_deref(),
                payment.channel = redacted(&flow.payment_channel).as_deref(),
            );
            // A stage that adds to the flow parents on the ambient context
            // with its flow merged in, so that what runs inside sees it; without
            // an OpenTelemetry layer, that context is attached around the work
            // instead. Otherwise the layer already parents the span on the
            // ambient context (its context activation, on by default and in
            // `paytrace::layer`), baggage a `Flow::scope` added after the
            // enclosing span started included.
            let attach = parent.and_then(|parent| match span.set_parent(parent.clone()) {
                Ok(()) => None,
                Err(_) => Some(parent),
            });
            (span, attach)
        };
        for (key, value) in self.attributes {
            span.set_attribute(key, value);
        }
        for producer in self.links {
            span.add_link(producer);
        }

        let service = self.service;
        let families = service.families();
        let admit = |pick: fn(&Guards) -> &LabelGuard, value: Option<String>| match value {
            None => Cow::Borrowed(""),
            Some(v) => match families.admit(service.name(), pick, &v) {
                Some(_) => Cow::Owned(v),
                None => Cow::Borrowed(OTHER),
            },
        };
        let labels = StageLabels {
            flow: admit(|g| &g.flow, flow.flow),
            payment_method: admit(|g| &g.payment_method, flow.payment_method),
            payment_channel: admit(|g| &g.payment_channel, flow.payment_channel),
            stage: match families.admit(service.name(), |g| &g.stage, &self.name) {
                Some(_) => self.name,
                None => Cow::Borrowed(OTHER),
            },
        };
        let active = families.stage_active.with_label_values(&[
            service.name(),
            labels.flow.as_ref(),
            labels.stage.as_ref(),
        ]);
        active.inc();
        StageGuard {
            service,
            labels,
            active,
            span,
            attach,
            start: Instant::now(),
            outcome: None,
        }
    }
}

#[derive(Debug)]
struct StageLabels {
    flow: Cow<'static, str>,
    stage: Cow<'static, str>,
    payment_method: Cow<'static, str>,
    payment_channel: Cow<'static, str>,
}

thread_local! {
    /// Set by a TCC fence that refused a phase, during the poll that
    /// refused it; each stage's poll takes what was set inside it.
    static REFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the stage being polled on this thread as refused: its outcome is
/// [`Outcome::Rejected`] if it then fails, not `error`. Called by the TCC
/// fences when they refuse a phase.
pub(crate) fn note_refused() {
    REFUSED.with(|r| r.set(true));
}

pin_project! {
    /// `inner` polled inside `span`, which the stage's guard keeps: what
    /// `tracing::Instrument` does without cloning the span for the future,
    /// and without entering it again to drop a future that has finished.
    /// Notes in `refused` whether a fence refused a phase while it polled.
    struct InSpan<'a, F> {
        span: &'a tracing::Span,
        refused: &'a std::sync::atomic::AtomicBool,
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for InSpan<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        // An enclosing stage's flag is put back after this one's poll, so a
        // refusal counts for the innermost stage only.
        let outer = REFUSED.with(|r| r.replace(false));
        let polled = this.inner.poll(cx);
        if REFUSED.with(|r| r.replace(outer)) {
            this.refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

/// A stage in progress; records its duration and outcome when dropped.
///
/// Made by [`Stage::start`]. [`StageGuard::span`] is the stage's span: enter
/// it (or `instrument` work with it) so that child spans nest under the stage.
#[derive(Debug)]
pub struct StageGuard {
    service: ServiceTelemetry,
    labels: StageLabels,
    active: IntGauge,
    span: tracing::Span,
    attach: Option<opentelemetry::Context>,
    start: Instant,
    outcome: Option<Outcome>,
}

impl StageGuard {
    /// Sets how the stage ended (the default is `ok`).
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// The stage's span.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The stage span's OpenTelemetry context: what a message or callback
    /// sent from inside the stage links back to ([`Stage::link`]).
    pub fn span_context(&self) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        self.span.context().span().span_context().clone()
    }
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(if std::thread::panicking() {
            Outcome::Error
        } else {
            Outcome::Ok
        });
        let l = &self.labels;
        self.service
            .families()
            .stage_duration
            .with_label_values(&[
                self.service.name(),
                l.flow.as_ref(),
                l.stage.as_ref(),
                l.payment_method.as_ref(),
                l.payment_channel.as_ref(),
                outcome.as_str(),
            ])
            .observe(self.start.elapsed().as_secs_f64());
        self.active.dec();
        self.span.set_attribute(attr::OUTCOME, outcome.as_str());
        if matches!(outcome, Outcome::Error | Outcome::Timeout) {
            self.span
                .set_status(opentelemetry::trace::Status::error(outcome.as_str()));
        }
    }
}
