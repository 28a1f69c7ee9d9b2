//! Messages across processes: trace context and flow in message headers,
//! PRODUCER and CONSUMER spans, the OpenTelemetry messaging metrics, and the
//! broker's own queue metrics.
//!
//! The pieces, for any broker:
//! - [`Carrier`]: how a message's headers are read and written (a map, AMQP
//!   headers, a Redis stream entry's fields). W3C `traceparent`,
//!   `tracestate` and `baggage` travel in it.
//! - [`Producer`] ([`ServiceTelemetry::producer`]): one PRODUCER span
//!   `"{operation} {destination}"` per send, the context injected into the
//!   message's headers, `messaging_client_sent_messages_total` and
//!   `messaging_client_operation_duration_seconds`.
//! - [`Consumer`] ([`ServiceTelemetry::consumer`]): one CONSUMER span
//!   `"process {destination}"` per message processed, which starts a new
//!   trace linked to the producer's span and continues the producer's flow
//!   (its baggage), so stages inside carry the flow's labels and the
//!   aggregator stitches the hop as an asynchronous wait;
//!   `messaging_client_consumed_messages_total` and
//!   `messaging_process_duration_seconds`.
//! - [`BrokerMetrics`] ([`ServiceTelemetry::broker_metrics`]): what the
//!   broker says of a queue (`paytrace_broker_*`: ready, unacknowledged,
//!   oldest message's age, redeliveries, dead letters).
//!
//! Adapters for real brokers use these: `redis_streams` (feature `redis`)
//! and `amqp` for RabbitMQ (feature `amqp`). `outbox` (features `sqlx-*`)
//! publishes messages written in the business transaction, at least once,
//! and applies each once on the consumer's side.
//!
//! # Cancellation
//!
//! A send whose future is dropped before the broker confirmed it ends its
//! span with `error.type = "cancelled"` and counts as sent with that error
//! type: the message may or may not have reached the broker (publish through
//! an outbox when that matters). A processing whose future is dropped ends
//! the same way and is measured; an adapter acknowledges a message only
//! after its processing returned, so a dropped one is delivered again.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), std::io::Error> {
//! use std::collections::HashMap;
//! use paytrace::messaging::Delivery;
//!
//! let metrics = paytrace::Metrics::new();
//! let payment = paytrace::ServiceTelemetry::with_metrics("payment", "1.0.0", &metrics);
//! let order = paytrace::ServiceTelemetry::with_metrics("order", "1.0.0", &metrics);
//!
//! // The producer hands the headers (with the trace context) to its broker.
//! let sent: HashMap<String, String> = payment
//!     .producer("redis", "payment.notifications")
//!     .send(Some("ntf_1"), HashMap::new(), |headers| async move {
//!         Ok::<_, std::io::Error>(headers) // a real adapter publishes here
//!     })
//!     .await?;
//!
//! // The consumer, in another process, continues from those headers.
//! let done = order
//!     .consumer("redis", "payment.notifications")
//!     .group("order")
//!     .process(&sent, Delivery::new().message_id("ntf_1"), async {
//!         Ok::<_, std::io::Error>("confirmed")
//!     })
//!     .await?;
//! assert_eq!(done, "confirmed");
//! assert!(metrics.render().contains("messaging_process_duration_seconds_count"));
//! # Ok(()) }
//! ```
//!
//! [`ServiceTelemetry::producer`]: crate::ServiceTelemetry::producer
//! [`ServiceTelemetry::consumer`]: crate::ServiceTelemetry::consumer
//! [`ServiceTelemetry::broker_metrics`]: crate::ServiceTelemetry::broker_metrics

#[cfg(feature = "amqp")]
pub mod amqp;
mod broker;
mod carrier;
mod consumer;
#[cfg(any(
    feature = "sqlx-postgres",
    feature = "sqlx-mysql",
    feature = "sqlx-sqlite"
))]
pub mod outbox;
mod producer;
#[cfg(feature = "redis")]
pub mod redis_streams;

pub use broker::{BrokerMetrics, QueueState};
pub use carrier::Carrier;
pub use consumer::{Consumer, Delivery};
pub use producer::Producer;
