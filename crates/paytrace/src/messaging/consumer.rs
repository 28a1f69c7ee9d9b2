//! The receiving side: a CONSUMER span per message processed, continuing
//! the producer's flow in a trace of its own.

use std::borrow::Cow;
use std::future::Future;
use std::time::Instant;

use opentelemetry::trace::{FutureExt as _, TraceContextExt};
use paytrace_semconv::{attr, messaging_error};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::carrier::{Carrier, Extract};
use crate::cardinality::OTHER;
use crate::propagation::{Flow, baggage_only, extract_from};
use crate::service::ServiceTelemetry;
use crate::stage::Outcome;

/// Processes messages of one destination, each as a CONSUMER span that
/// starts a new trace linked to the producer's span and carries the
/// producer's flow.
///
/// Why a new trace and not a child of the producer: a message may wait
/// minutes or be delivered again hours later; the aggregator stitches the
/// two traces by the link and the flow id and reports the time between as
/// `async:<stage>`, the consumer's stage (see [`Consumer::stage`]).
///
/// Made by [`ServiceTelemetry::consumer`]; cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::collections::HashMap;
/// use paytrace::messaging::Delivery;
///
/// let svc = paytrace::ServiceTelemetry::with_metrics("order", "1.0.0", &paytrace::Metrics::new());
/// let consumer = svc.consumer("redis", "payment.notifications").group("order").stage("order.paid");
/// let headers: HashMap<String, String> = HashMap::new(); // as the message arrived
/// let result = consumer
///     .process(&headers, Delivery::new().message_id("ntf_1"), async { Err::<(), _>("no such order") })
///     .await;
/// assert!(result.is_err());
/// let text = svc.metrics().render();
/// assert!(text.contains(r#"messaging_process_duration_seconds_count{error_type="failed""#));
/// assert!(text.contains(r#"stage="order.paid""#));
/// # }
/// ```
///
/// [`ServiceTelemetry::consumer`]: crate::ServiceTelemetry::consumer
#[derive(Clone, Debug)]
pub struct Consumer {
    service: ServiceTelemetry,
    system: Cow<'static, str>,
    destination: String,
    destination_label: String,
    group: Option<String>,
    group_label: String,
    stage: Option<Cow<'static, str>>,
    /// `"process {destination}"`, made once, not per message.
    span_name: String,
}

/// What the broker says of one delivery.
///
/// ```
/// let delivery = paytrace::messaging::Delivery::new().message_id("ntf_1").delivery_count(2);
/// assert!(delivery.is_redelivery());
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Delivery {
    /// The application's id of the message (`messaging.message.id`).
    pub message_id: Option<String>,
    /// How many times the broker delivered it, this delivery included, when
    /// the broker says (`paytrace.messaging.delivery_count`).
    pub delivery_count: Option<u64>,
}

impl Delivery {
    /// A delivery the broker says nothing more of.
    pub fn new() -> Self {
        Self::default()
    }

    /// With the application's message id.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// With the broker's delivery count (1 for a first delivery).
    pub fn delivery_count(mut self, count: u64) -> Self {
        self.delivery_count = Some(count);
        self
    }

    /// Whether the broker delivered this message before.
    pub fn is_redelivery(&self) -> bool {
        self.delivery_count.is_some_and(|c| c > 1)
    }
}

impl Consumer {
    pub(crate) fn new(service: &ServiceTelemetry, system: &str, destination: &str) -> Self {
        let destination_label = service
            .families()
            .admit(service.name(), |g| &g.destination, destination)
            .unwrap_or(OTHER)
            .to_owned();
        Self {
            service: service.clone(),
            system: Cow::Owned(system.to_owned()),
            destination: destination.to_owned(),
            span_name: format!("process {destination}"),
            destination_label,
            group: None,
            group_label: String::new(),
            stage: None,
        }
    }

    /// The consumer group (`messaging.consumer.group.name`), where the
    /// broker has them (Redis Streams, Kafka).
    pub fn group(mut self, group: &str) -> Self {
        self.group_label = self
            .service
            .families()
            .admit(self.service.name(), |g| &g.consumer_group, group)
            .unwrap_or(OTHER)
            .to_owned();
        self.group = Some(group.to_owned());
        self
    }

    /// Makes each message's CONSUMER span the stage `name` (with its
    /// `paytrace_stage_duration_seconds`), so the trace is named after it
    /// and the wait between producer and consumer is `async:<name>`.
    pub fn stage(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.stage = Some(name.into());
        self
    }

    /// The destination messages are taken from.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The service the consumer records for.
    pub fn service(&self) -> &ServiceTelemetry {
        &self.service
    }

    /// Processes one message: opens the CONSUMER span (a new trace, linked to
    /// the span `headers` name, with the flow their baggage carries) and runs
    /// `work` inside it. A processing that returns an error is
    /// `error.type = "failed"`; one whose future is dropped, `cancelled`.
    ///
    /// Acknowledge the message only once this returned `Ok`.
    pub async fn process<C, F, T, E>(
        &self,
        headers: &C,
        delivery: Delivery,
        work: F,
    ) -> Result<T, E>
    where
        C: Carrier + ?Sized,
        F: Future<Output = Result<T, E>>,
    {
        let sent = extract_from(&Extract(headers));
        let producer = sent.span().span_context().clone();
        let parent = self.service.tagged(baggage_only(&sent));
        let flow = Flow::redacted_from_context(&parent);
        let span = tracing::info_span!(
            target: "paytrace::messaging",
            "message process",
            otel.name = self.span_name.as_str(),
            otel.kind = "consumer",
            otel.status_code = Empty,
            messaging.system = self.system.as_ref(),
            messaging.destination.name = self.destination.as_str(),
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.message.id = delivery.message_id.as_deref(),
            messaging.consumer.group.name = self.group.as_deref(),
            error.type = Empty,
            paytrace.flow = flow.flow.as_deref(),
            paytrace.flow_id = flow.flow_id.as_deref(),
            payment.method = flow.payment_method.as_deref(),
            payment.channel = flow.payment_channel.as_deref(),
        );
        if let Some(count) = delivery.delivery_count {
            span.set_attribute(
                attr::MESSAGING_DELIVERY_COUNT,
                i64::try_from(count).unwrap_or(i64::MAX),
            );
        }
        if producer.is_valid() {
            span.add_link(producer);
        }
        // As the HTTP layer does: with an OpenTelemetry layer the span's
        // context (its baggage included) is current whenever it is entered;
        // without one, the flow's context is attached around the work.
        let attach = match span.set_parent(parent.clone()) {
            Ok(()) => None,
            Err(_) => Some(parent),
        };
        self.count_consumed();
        let mut processing = Processing {
            consumer: self,
            span: span.clone(),
            start: Instant::now(),
            done: false,
        };
        let stage = self.stage.as_ref().map(|name| {
            let _attached = attach.as_ref().map(|cx| cx.clone().attach());
            let _in = span.enter();
            let mut guard = self.service.stage(name.clone()).start_on_current_span();
            guard.set_outcome(Outcome::Cancelled);
            guard
        });
        let result = match attach {
            Some(cx) => work.instrument(span).with_context(cx).await,
            None => work.instrument(span).await,
        };
        if let Some(mut guard) = stage {
            guard.set_outcome(match result {
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Error,
            });
        }
        processing.finish(result.as_ref().err().map(|_| messaging_error::FAILED));
        result
    }

    fn count_consumed(&self) {
        self.service
            .families()
            .messaging
            .consumed
            .with_label_values(&[
                self.service.name(),
                self.system.as_ref(),
                &self.destination_label,
                &self.group_label,
            ])
            .inc();
    }
}

/// A message being processed: its span ends and the processing is measured
/// when it finishes or is dropped.
struct Processing<'a> {
    consumer: &'a Consumer,
    span: tracing::Span,
    start: Instant,
    done: bool,
}

impl Processing<'_> {
    fn finish(&mut self, error_type: Option<&'static str>) {
        self.done = true;
        if let Some(e) = error_type {
            self.span.record("error.type", e);
            self.span.record("otel.status_code", "ERROR");
        }
        let c = self.consumer;
        c.service
            .families()
            .messaging
            .process_duration
            .with_label_values(&[
                c.service.name(),
                c.system.as_ref(),
                &c.destination_label,
                &c.group_label,
                error_type.unwrap_or(""),
            ])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Processing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Some(messaging_error::CANCELLED));
        }
    }
}
