//! The sending side: a PRODUCER span per message, the context in its
//! headers, and the send's metrics.

use std::borrow::Cow;
use std::future::Future;
use std::time::Instant;

use opentelemetry::baggage::BaggageExt;
use paytrace_semconv::messaging_error;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::carrier::{Carrier, Inject};
use crate::cardinality::OTHER;
use crate::propagation::{ambient, inject_into, outgoing};
use crate::redact::redact;
use crate::service::ServiceTelemetry;

/// Sends messages to one destination of one broker, each as a PRODUCER
/// span whose context travels in the message's headers.
///
/// Made by [`ServiceTelemetry::producer`]; cheap to clone. The broker
/// adapters (`redis_streams`, `amqp`) use one; with another broker, call
/// [`Producer::send`] around its publish.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::collections::HashMap;
///
/// let svc = paytrace::ServiceTelemetry::with_metrics("payment", "1.0.0", &paytrace::Metrics::new());
/// let producer = svc.producer("rabbitmq", "payment.notifications").operation("publish");
/// let headers = producer
///     .send(Some("ntf_1"), HashMap::new(), |headers| async move {
///         Ok::<_, std::io::Error>(headers) // publish with these headers here
///     })
///     .await
///     .unwrap();
/// assert!(svc.metrics().render().contains(
///     r#"messaging_client_sent_messages_total{error_type="",messaging_destination_name="payment.notifications",messaging_system="rabbitmq",service_name="payment"} 1"#
/// ));
/// # drop(headers); }
/// ```
///
/// [`ServiceTelemetry::producer`]: crate::ServiceTelemetry::producer
#[derive(Clone, Debug)]
pub struct Producer {
    service: ServiceTelemetry,
    system: Cow<'static, str>,
    destination: String,
    destination_label: String,
    operation: Cow<'static, str>,
    /// `"{operation} {destination}"`, made once, not per send.
    span_name: String,
}

impl Producer {
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
            destination_label,
            operation: Cow::Borrowed("send"),
            span_name: format!("send {destination}"),
        }
    }

    /// The system's own name of the send (`publish` for RabbitMQ, `xadd` for
    /// Redis Streams): `messaging.operation.name`, the span's name and the
    /// `messaging_operation_name` label. `send` by default.
    pub fn operation(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.operation = name.into();
        self.span_name = format!("{} {}", self.operation, self.destination);
        self
    }

    /// The destination messages are sent to.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Sends one message: opens the PRODUCER span under the current context,
    /// writes its context and the current baggage into `headers`, and runs
    /// `publish` with them inside the span. The send counts as failed when
    /// `publish` returns an error, as cancelled when its future is dropped
    /// first.
    ///
    /// `message_id` is the application's id of the message
    /// (`messaging.message.id`), the key a consumer deduplicates by.
    pub async fn send<C, F, Fut, T, E>(
        &self,
        message_id: Option<&str>,
        mut headers: C,
        publish: F,
    ) -> Result<T, E>
    where
        C: Carrier,
        F: FnOnce(C) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let ambient = ambient();
        let flow_id = ambient
            .baggage()
            .get(paytrace_semconv::attr::FLOW_ID)
            .map(|v| redact(v.as_str()));
        let span = tracing::info_span!(
            target: "paytrace::messaging",
            "message send",
            otel.name = self.span_name.as_str(),
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = self.system.as_ref(),
            messaging.destination.name = self.destination.as_str(),
            messaging.operation.type = "send",
            messaging.operation.name = self.operation.as_ref(),
            messaging.message.id = message_id,
            error.type = Empty,
            paytrace.flow_id = flow_id.as_deref(),
        );
        let _ = span.set_parent(self.service.tagged(ambient.clone()));
        inject_into(&outgoing(&span, &ambient), &mut Inject(&mut headers));
        let mut sending = Sending {
            producer: self,
            span: span.clone(),
            start: Instant::now(),
            done: false,
        };
        let result = publish(headers).instrument(span).await;
        sending.finish(match result {
            Ok(_) => None,
            Err(_) => Some(messaging_error::FAILED),
        });
        result
    }
}

/// A send in flight: its span ends and the send is counted when it finishes
/// or is dropped.
struct Sending<'a> {
    producer: &'a Producer,
    span: tracing::Span,
    start: Instant,
    done: bool,
}

impl Sending<'_> {
    fn finish(&mut self, error_type: Option<&'static str>) {
        self.done = true;
        if let Some(e) = error_type {
            self.span.record("error.type", e);
            self.span.record("otel.status_code", "ERROR");
        }
        let p = self.producer;
        let families = &p.service.families().messaging;
        let error_type = error_type.unwrap_or("");
        let system = p.system.as_ref();
        let destination = p.destination_label.as_str();
        families
            .sent
            .with_label_values(&[p.service.name(), system, destination, error_type])
            .inc();
        families
            .operation_duration
            .with_label_values(&[
                p.service.name(),
                system,
                destination,
                p.operation.as_ref(),
                error_type,
            ])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Some(messaging_error::CANCELLED));
        }
    }
}
