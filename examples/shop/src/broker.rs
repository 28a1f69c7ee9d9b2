//! `--broker`: the payment's notifications to the order service through a
//! real message broker, Redis Streams (`redis://…`) or RabbitMQ
//! (`amqp://…`), instead of an HTTP call.
//!
//! The payment service writes each notification into its outbox in the
//! transaction of the payment's Confirm; a relay in the same process
//! publishes what was committed; the order service consumes it (a CONSUMER
//! span, stage `order.paid`, linked to the send) and runs phase two once
//! per notification through its inbox.

use std::sync::Arc;
use std::time::Duration;

use paytrace::ServiceTelemetry;
use paytrace::messaging::amqp::{
    AmqpConsumer, AmqpConsumerConfig, AmqpProducer, AmqpQueue, ManagementApi,
};
use paytrace::messaging::outbox::{Applied, Inbox, InboxError, Outbox};
use paytrace::messaging::redis_streams::{StreamConsumer, StreamConsumerConfig, StreamProducer};
use paytrace_demo::ledger::Ledger;
use paytrace_semconv::stage;

/// The destination of the payment's notifications: a Redis stream, a
/// RabbitMQ queue.
pub const NOTIFICATIONS: &str = "payment.notifications";

/// The outbox table of the payment service.
pub const OUTBOX_TABLE: &str = "payment_outbox";

/// The order service's inbox table and its consumer's name.
const INBOX_TABLE: &str = "order_inbox";

/// How often the relay looks for new messages when none was waiting, and
/// how often the broker's view of the queue is read.
const IDLE: Duration = Duration::from_millis(20);
const OBSERVE_EVERY: Duration = Duration::from_secs(5);

/// A message broker, by its URL's scheme.
#[derive(Clone, Debug)]
pub enum Broker {
    /// Redis Streams.
    Redis(String),
    /// RabbitMQ: the AMQP URL, and its management API if given as
    /// `amqp://…#http://host:15672`.
    Amqp {
        /// `amqp://user:pass@host:5672/%2f`.
        url: String,
        /// The management API's base URL, for the queue's gauges.
        management: Option<String>,
    },
}

impl Broker {
    /// The broker `url` names.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(Self::Redis(url.to_owned()))
        } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
            let (url, management) = match url.split_once('#') {
                Some((u, m)) => (u.to_owned(), Some(m.to_owned())),
                None => (url.to_owned(), None),
            };
            Ok(Self::Amqp { url, management })
        } else {
            Err(format!(
                "--broker {url}: use redis://host:6379/ (Redis Streams) or amqp://user:pass@host:5672/%2f (RabbitMQ)"
            ))
        }
    }
}

/// A payload of one notification: the order it is for.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Notification {
    /// The order (and the TCC transaction) that was paid.
    pub order_id: String,
}

/// Publishes the payment's outbox to `broker` until the process ends.
pub async fn relay(
    svc: &ServiceTelemetry,
    ledger: Ledger,
    outbox: Outbox,
    broker: &Broker,
) -> Result<(), String> {
    let sender = Arc::new(Sender::connect(svc, broker).await?);
    tokio::spawn(async move {
        loop {
            let published = ledger
                .publish_outbox(&outbox, |m| {
                    let sender = sender.clone();
                    async move { sender.send(&m.message_id, &m.payload).await }
                })
                .await;
            match published {
                Ok(0) => tokio::time::sleep(IDLE).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the outbox relay");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    Ok(())
}

/// A producer on either broker.
enum Sender {
    Redis(StreamProducer),
    Amqp {
        producer: Box<AmqpProducer>,
        // Kept open for the producer's channel.
        _connection: lapin::Connection,
    },
}

impl Sender {
    async fn connect(svc: &ServiceTelemetry, broker: &Broker) -> Result<Self, String> {
        match broker {
            Broker::Redis(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                Ok(Self::Redis(
                    StreamProducer::connect(svc, &client, NOTIFICATIONS)
                        .await
                        .map_err(|e| format!("Redis at {url}: {e}"))?,
                ))
            }
            Broker::Amqp { url, .. } => {
                let connection = amqp_connection(url).await?;
                let producer = AmqpProducer::to_queue(svc, &connection, NOTIFICATIONS)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Self::Amqp {
                    producer: Box::new(producer),
                    _connection: connection,
                })
            }
        }
    }

    async fn send(&self, id: &str, payload: &[u8]) -> Result<(), String> {
        match self {
            Self::Redis(p) => p
                .send(id, payload)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Self::Amqp { producer, .. } => {
                producer.send(id, payload).await.map_err(|e| e.to_string())
            }
        }
    }
}

async fn amqp_connection(url: &str) -> Result<lapin::Connection, String> {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ at {url}: {e}"))?;
    AmqpQueue::new(NOTIFICATIONS)
        .declare(&connection)
        .await
        .map_err(|e| format!("RabbitMQ at {url}: {e}"))?;
    Ok(connection)
}

/// Consumes the notifications in the order service: each runs `paid` (phase
/// two of its order) once, through the inbox in `ledger`; a failed one
/// comes back.
pub async fn consume<F, Fut>(
    svc: &ServiceTelemetry,
    ledger: Ledger,
    broker: &Broker,
    paid: F,
) -> Result<(), String>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let inbox = Inbox::new(svc, INBOX_TABLE, NOTIFICATIONS).map_err(|e| e.to_string())?;
    ledger
        .create_inbox(&inbox)
        .await
        .map_err(|e| format!("the order's inbox: {e}"))?;
    let apply = Arc::new(move |order_id: String, id: String| {
        let (ledger, inbox) = (ledger.clone(), inbox.clone());
        let confirmed = paid(order_id);
        async move {
            let applied = ledger
                .apply_once(&inbox, &id, async || {
                    if confirmed.await {
                        Ok(())
                    } else {
                        Err("phase two did not finish")
                    }
                })
                .await;
            match applied {
                Ok(Applied::Now(())) | Ok(Applied::Before) => Ok(()),
                Err(InboxError::Handler(e)) => Err(e.to_owned()),
                Err(e) => Err(e.to_string()),
            }
        }
    });
    match broker {
        Broker::Redis(url) => {
            let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            let mut config = StreamConsumerConfig::default();
            config.claim_after = Duration::from_secs(10);
            let consumer = StreamConsumer::connect(
                svc,
                &client,
                NOTIFICATIONS,
                "order",
                &format!("order-{}", std::process::id()),
                config,
            )
            .await
            .map_err(|e| format!("Redis at {url}: {e}"))?
            .stage(stage::ORDER_PAID);
            let consumer = Arc::new(consumer);
            let observer = consumer.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = observer.observe().await {
                        tracing::warn!(error = %e, "reading the stream's group");
                    }
                    tokio::time::sleep(OBSERVE_EVERY).await;
                }
            });
            tokio::spawn(async move {
                loop {
                    let batch = match consumer.next_batch().await {
                        Ok(batch) => batch,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the notifications");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    for message in batch {
                        let Some(work) = work_of(&message.payload, message.message_id.clone())
                        else {
                            // Not ours to read: acknowledged, not retried.
                            let _ = consumer.ack(&message).await;
                            continue;
                        };
                        let _ = consumer.handle(&message, apply(work.0, work.1)).await;
                    }
                }
            });
        }
        Broker::Amqp { url, management } => {
            let connection = amqp_connection(url).await?;
            let mut consumer = AmqpConsumer::connect(
                svc,
                &connection,
                NOTIFICATIONS,
                AmqpConsumerConfig::default(),
            )
            .await
            .map_err(|e| format!("RabbitMQ at {url}: {e}"))?
            .stage(stage::ORDER_PAID);
            let (user, password) = credentials(url);
            let api = management
                .as_deref()
                .map(|m| ManagementApi::new(m, &user, &password));
            tokio::spawn(async move {
                let _connection = connection;
                let mut observed = tokio::time::Instant::now();
                while let Some(delivery) = consumer.next().await {
                    if let (Some(api), true) = (&api, observed.elapsed() > OBSERVE_EVERY) {
                        observed = tokio::time::Instant::now();
                        if let Err(e) = consumer.observe(api).await {
                            tracing::warn!(error = %e, "reading the queue");
                        }
                    }
                    let Ok(message) = delivery else { continue };
                    let id = message.message_id().map(str::to_owned);
                    match work_of(message.payload(), id) {
                        Some((order, id)) => {
                            let _ = consumer.handle(message, apply(order, id)).await;
                        }
                        None => {
                            let _ = consumer
                                .handle(message, async { Ok::<_, String>(()) })
                                .await;
                        }
                    }
                }
            });
        }
    }
    Ok(())
}

/// The user and password of an `amqp://user:pass@host/…` URL (RabbitMQ's
/// `guest` when it names none), for its management API.
fn credentials(url: &str) -> (String, String) {
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo);
    match userinfo.and_then(|u| u.split_once(':')) {
        Some((user, password)) => (user.to_owned(), password.to_owned()),
        None => ("guest".to_owned(), "guest".to_owned()),
    }
}

/// The order id and message id of a notification; `None` when it is not
/// one.
fn work_of(payload: &[u8], message_id: Option<String>) -> Option<(String, String)> {
    let notification: Notification = serde_json::from_slice(payload).ok()?;
    Some((notification.order_id, message_id?))
}
