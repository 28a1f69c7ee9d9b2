//! Business stages: a span and a latency histogram for one named step of a flow.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use opentelemetry::trace::FutureExt as _;
use paytrace_semconv::{attr, outcome};
use prometheus::IntGauge;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::propagation::{Flow, ambient};
use crate::redact::redact;
use crate::service::Service;

/// How a stage ended: the `outcome` label and `paytrace.outcome` attribute.
///
/// ```
/// assert_eq!(paytrace::Outcome::Timeout.as_str(), "timeout");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The stage succeeded.
    Ok,
    /// The stage failed.
    Error,
    /// The stage's deadline passed.
    Timeout,
    /// Business rules refused it (insufficient stock, a fence rejection).
    Rejected,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => outcome::OK,
            Self::Error => outcome::ERROR,
            Self::Timeout => outcome::TIMEOUT,
            Self::Rejected => outcome::REJECTED,
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
/// Made by [`Service::stage`]. The flow, payment method and channel come from
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
/// let payment = paytrace::Service::new("payment", "1.0.0");
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
    service: Service,
    name: Cow<'static, str>,
    flow: Flow,
    attributes: Vec<(Cow<'static, str>, String)>,
}

impl Stage {
    pub(crate) fn new(service: Service, name: Cow<'static, str>) -> Self {
        Self {
            service,
            name,
            flow: Flow::default(),
            attributes: Vec::new(),
        }
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

    /// Runs `work` as this stage; the outcome is `ok` for `Ok`, `error` for `Err`.
    pub async fn run<T, E, F>(self, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut guard = self.start();
        let span = guard.span.clone();
        let cx = guard.context.clone();
        let result = work.instrument(span).with_context(cx).await;
        guard.set_outcome(if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
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
        let span = guard.span.clone();
        let cx = guard.context.clone();
        let timed = tokio::time::timeout(deadline, work.instrument(span).with_context(cx)).await;
        let (result, outcome) = match timed {
            Ok(Ok(v)) => (Ok(v), Outcome::Ok),
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
    /// let svc = paytrace::Service::with_metrics("points", "1.0.0", &paytrace::Metrics::new());
    /// let mut stage = svc.stage("points.try").start();
    /// let enough = false;
    /// if !enough {
    ///     stage.set_outcome(paytrace::Outcome::Rejected);
    /// }
    /// drop(stage);
    /// assert!(svc.metrics().render().contains(r#"outcome="rejected""#));
    /// ```
    pub fn start(self) -> StageGuard {
        let ambient = ambient();
        let from_baggage = Flow::from_context(&ambient);
        let pick = |own: Option<String>, inherited: Option<String>| own.or(inherited);
        let flow = Flow {
            flow: pick(self.flow.flow, from_baggage.flow),
            flow_id: pick(self.flow.flow_id, from_baggage.flow_id),
            payment_method: pick(self.flow.payment_method, from_baggage.payment_method),
            payment_channel: pick(self.flow.payment_channel, from_baggage.payment_channel),
        };
        let service = self.service;
        let labels = StageLabels {
            flow: service
                .admit(|g| &g.flow, flow.flow.as_deref().unwrap_or(""))
                .to_owned(),
            stage: service.admit(|g| &g.stage, &self.name).to_owned(),
            payment_method: service
                .admit(|g| &g.payment_method, flow.payment_method.as_deref().unwrap_or(""))
                .to_owned(),
            payment_channel: service
                .admit(
                    |g| &g.payment_channel,
                    flow.payment_channel.as_deref().unwrap_or(""),
                )
                .to_owned(),
        };

        let span = tracing::info_span!(
            target: "paytrace::stage",
            "stage",
            otel.name = %self.name,
            otel.status_code = Empty,
            paytrace.stage = %self.name,
            paytrace.flow = Empty,
            paytrace.flow_id = Empty,
            paytrace.outcome = Empty,
            payment.method = Empty,
            payment.channel = Empty,
        );
        let record = |key: &str, value: &Option<String>| {
            if let Some(v) = value {
                span.record(key, redact(v).as_ref());
            }
        };
        record(attr::FLOW, &flow.flow);
        record(attr::FLOW_ID, &flow.flow_id);
        record(attr::PAYMENT_METHOD, &flow.payment_method);
        record(attr::PAYMENT_CHANNEL, &flow.payment_channel);
        // Parent on the ambient context so that baggage a `Flow::scope` added
        // after the enclosing span started is inherited too.
        let _ = span.set_parent(flow.merge_into(&ambient));
        for (key, value) in self.attributes {
            span.set_attribute(key, value);
        }

        let active = service.families().stage_active.with_label_values(&[
            service.name(),
            labels.flow.as_str(),
            labels.stage.as_str(),
        ]);
        active.inc();
        let context = flow.merge_into(&ambient);
        StageGuard {
            service,
            labels,
            active,
            span,
            context,
            start: Instant::now(),
            outcome: None,
        }
    }
}

#[derive(Debug)]
struct StageLabels {
    flow: String,
    stage: String,
    payment_method: String,
    payment_channel: String,
}

/// A stage in progress; records its duration and outcome when dropped.
///
/// Made by [`Stage::start`]. [`StageGuard::span`] is the stage's span: enter
/// it (or `instrument` work with it) so that child spans nest under the stage.
#[derive(Debug)]
pub struct StageGuard {
    service: Service,
    labels: StageLabels,
    active: IntGauge,
    span: tracing::Span,
    context: opentelemetry::Context,
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
                l.flow.as_str(),
                l.stage.as_str(),
                l.payment_method.as_str(),
                l.payment_channel.as_str(),
                outcome.as_str(),
            ])
            .observe(self.start.elapsed().as_secs_f64());
        self.active.dec();
        self.span.record(attr::OUTCOME, outcome.as_str());
        if matches!(outcome, Outcome::Error | Outcome::Timeout) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}
