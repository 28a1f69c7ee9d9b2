//! What the broker says of a queue: the `paytrace_broker_*` families.

use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntGauge};

use crate::cardinality::OTHER;
use crate::service::ServiceTelemetry;

/// The broker-side USE metrics of one queue (a RabbitMQ queue, a Redis
/// stream's consumer group): backlog, unacknowledged messages, the oldest
/// message's age, redeliveries and dead letters, labelled with
/// `messaging_system`, `queue` and `messaging_consumer_group_name`.
///
/// Made by [`ServiceTelemetry::broker_metrics`]. The adapters
/// (`redis_streams`, `amqp`) feed it from the broker; with another broker,
/// read its queue state and call [`BrokerMetrics::observe`].
///
/// ```
/// use std::time::Duration;
/// use paytrace::messaging::QueueState;
///
/// let svc = paytrace::ServiceTelemetry::with_metrics("order", "1.0.0", &paytrace::Metrics::new());
/// let broker = svc.broker_metrics("rabbitmq", "payment.notifications", None);
/// broker.observe(&QueueState::new(12, 3, Some(Duration::from_secs(4))));
/// broker.redelivered();
/// assert!(svc.metrics().render().contains(
///     r#"paytrace_broker_messages_ready{messaging_consumer_group_name="",messaging_system="rabbitmq",queue="payment.notifications",service_name="order"} 12"#
/// ));
/// ```
///
/// [`ServiceTelemetry::broker_metrics`]: crate::ServiceTelemetry::broker_metrics
#[derive(Clone, Debug)]
pub struct BrokerMetrics {
    ready: IntGauge,
    unacked: IntGauge,
    oldest_age: Gauge,
    redeliveries: IntCounter,
    dead_lettered: IntCounter,
}

/// A queue's state as the broker reported it.
///
/// ```
/// let state = paytrace::messaging::QueueState::new(0, 0, None);
/// assert_eq!(state.ready, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueState {
    /// Messages waiting to be delivered.
    pub ready: u64,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u64,
    /// Age of the oldest message not yet acknowledged, ready or delivered;
    /// `None` when there is none.
    pub oldest_age: Option<Duration>,
}

impl QueueState {
    /// A state of `ready` and `unacked` messages, the oldest `oldest_age` old.
    pub fn new(ready: u64, unacked: u64, oldest_age: Option<Duration>) -> Self {
        Self {
            ready,
            unacked,
            oldest_age,
        }
    }
}

impl BrokerMetrics {
    pub(crate) fn new(
        service: &ServiceTelemetry,
        system: &str,
        queue: &str,
        group: Option<&str>,
    ) -> Self {
        let families = service.families();
        let queue = families
            .admit(service.name(), |g| &g.queue, queue)
            .unwrap_or(OTHER);
        let group = match group {
            None => "",
            Some(g) => families
                .admit(service.name(), |g| &g.consumer_group, g)
                .unwrap_or(OTHER),
        };
        let m = &families.messaging;
        let labels = [service.name(), system, queue, group];
        Self {
            ready: m.ready.with_label_values(&labels),
            unacked: m.unacked.with_label_values(&labels),
            oldest_age: m.oldest_age.with_label_values(&labels),
            redeliveries: m.redeliveries.with_label_values(&labels),
            dead_lettered: m.dead_lettered.with_label_values(&labels),
        }
    }

    /// Sets the gauges to what the broker reported.
    pub fn observe(&self, state: &QueueState) {
        self.ready.set(saturating_i64(state.ready));
        self.unacked.set(saturating_i64(state.unacked));
        self.oldest_age
            .set(state.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
    }

    /// Counts one delivery of a message the broker had delivered before.
    pub fn redelivered(&self) {
        self.redeliveries.inc();
    }

    /// Counts one message moved to the dead-letter destination.
    pub fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
