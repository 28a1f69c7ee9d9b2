//! RabbitMQ over AMQP 0-9-1, traced: [`AmqpProducer`], [`AmqpConsumer`],
//! the queue's topology ([`AmqpQueue`]) and the broker's view of it through
//! the management API ([`ManagementApi`]) (feature `amqp`, over `lapin`).
//!
//! # The message
//!
//! The body is the payload; the W3C `traceparent`, `tracestate` and
//! `baggage` travel as AMQP headers (long strings), which is where the
//! OpenTelemetry instrumentations of other languages (`amqplib` for
//! Node.js, `pika` for Python) read and write them. The `message_id`
//! property holds the application's id, `timestamp` the send's second (the
//! management API's age of the oldest message reads it), and messages are
//! persistent.
//!
//! # The delivery rule: at least once
//!
//! - [`AmqpProducer::send`] publishes on a channel in confirm mode with
//!   `mandatory` set and returns once the broker confirmed: `Ok` means the
//!   queue has the message; a nack or an unroutable message (no queue bound)
//!   is an error, never a silent loss.
//! - [`AmqpQueue::declare`] makes a durable quorum queue whose delivery limit
//!   is `max_deliveries`, dead-lettering to `<queue>.dead` through the
//!   default exchange: a message whose consumers keep crashing is moved by
//!   the broker itself.
//! - [`AmqpConsumer::handle`] processes one delivery as a CONSUMER span;
//!   `Ok` acknowledges it; an error returns it to the queue (`nack` with
//!   requeue), or, at its `max_deliveries`-th delivery, rejects it to the
//!   dead-letter queue (counted in `paytrace_broker_dead_lettered_total`).
//! - Dropping `handle`'s future before the processing ended returns the
//!   message to the queue (a `nack` sent from the drop); if even that
//!   cannot be sent, the broker returns it when the channel closes. So a
//!   message may be processed more than once, never zero times: make the
//!   processing idempotent by message id.
//!
//! ```no_run
//! # async fn demo() -> Result<(), paytrace::messaging::amqp::AmqpError> {
//! use paytrace::messaging::amqp::{AmqpConsumer, AmqpConsumerConfig, AmqpProducer, AmqpQueue};
//!
//! let connection = lapin::Connection::connect(
//!     "amqp://guest:guest@127.0.0.1:5672/%2f",
//!     lapin::ConnectionProperties::default(),
//! )
//! .await?;
//! AmqpQueue::new("payment.notifications").declare(&connection).await?;
//!
//! let payment = paytrace::ServiceTelemetry::new("payment", "1.0.0");
//! let producer = AmqpProducer::to_queue(&payment, &connection, "payment.notifications").await?;
//! producer.send("ntf_1", b"{\"order\":\"ord_1\"}").await?;
//!
//! let order = paytrace::ServiceTelemetry::new("order", "1.0.0");
//! let mut consumer = AmqpConsumer::connect(
//!     &order, &connection, "payment.notifications", AmqpConsumerConfig::default(),
//! )
//! .await?;
//! while let Some(message) = consumer.next().await {
//!     let done = consumer.handle(message?, async { Ok::<_, std::io::Error>(()) }).await?;
//!     done.ok(); // a failed message goes back to the queue
//! }
//! # Ok(()) }
//! # use paytrace::lapin;
//! ```

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_core::Stream;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use paytrace_semconv::messaging_system::RABBITMQ;

use super::{BrokerMetrics, Carrier, Consumer, Delivery, Producer, QueueState};
use crate::service::ServiceTelemetry;

/// Why a RabbitMQ operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The connection, the channel or the broker failed.
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message (a negative publisher confirm).
    #[error(
        "RabbitMQ refused the message (nack): the queue may be full or the node short of disk or memory"
    )]
    Nacked,
    /// No queue took the message: the exchange has no binding for its
    /// routing key (a misspelt queue, a queue not declared yet).
    #[error(
        "no queue is bound for routing key {routing_key:?} on exchange {exchange:?}: declare the queue (AmqpQueue::declare) before sending"
    )]
    Unroutable {
        /// The exchange sent to (`""` is the default exchange).
        exchange: String,
        /// The routing key sent with.
        routing_key: String,
    },
    /// A name or message id longer than AMQP's 255 bytes.
    #[error("{what} is {len} bytes long; AMQP allows at most 255")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

fn short(what: &'static str, s: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(s).map_err(|_| AmqpError::TooLong { what, len: s.len() })
}

/// A message's AMQP headers, as a [`Carrier`]: long strings in, long or
/// short strings out.
#[derive(Clone, Debug, Default)]
pub struct AmqpHeaders(pub FieldTable);

impl Carrier for AmqpHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }
    fn set(&mut self, key: &str, value: String) {
        // W3C header names are short; a longer key cannot be an AMQP one.
        if let Ok(key) = ShortString::try_new(key) {
            self.0
                .insert(key, AMQPValue::LongString(LongString::from(value)));
        }
    }
}

/// A queue as paytrace's adapters expect it: durable, quorum, with a
/// delivery limit and a dead-letter queue `<name>.dead`.
///
/// ```
/// let queue = paytrace::messaging::amqp::AmqpQueue::new("payment.notifications").max_deliveries(3);
/// assert_eq!(queue.dead_letter_queue(), "payment.notifications.dead");
/// ```
#[derive(Clone, Debug)]
pub struct AmqpQueue {
    name: String,
    max_deliveries: u64,
}

impl AmqpQueue {
    /// The queue `name`, delivered at most 5 times.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            max_deliveries: 5,
        }
    }

    /// Deliveries after which the broker dead-letters a message that was
    /// never acknowledged (default 5). Use the same number in
    /// [`AmqpConsumerConfig::max_deliveries`].
    pub fn max_deliveries(mut self, n: u64) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.name)
    }

    /// Declares the dead-letter queue and the queue (idempotent; fails if
    /// the queue exists with other arguments).
    pub async fn declare(&self, connection: &Connection) -> Result<(), AmqpError> {
        let channel = connection.create_channel().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let dead = self.dead_letter_queue();
        let mut quorum = FieldTable::default();
        quorum.insert(
            short("queue type", "x-queue-type")?,
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(short("queue name", &dead)?, durable, quorum.clone())
            .await?;
        let mut arguments = quorum;
        // A quorum queue dead-letters a message returned more than the
        // limit times: delivered limit + 1 times in all.
        arguments.insert(
            short("argument", "x-delivery-limit")?,
            AMQPValue::LongLongInt(i64::try_from(self.max_deliveries - 1).unwrap_or(i64::MAX)),
        );
        arguments.insert(
            short("argument", "x-dead-letter-exchange")?,
            AMQPValue::LongString("".into()),
        );
        arguments.insert(
            short("argument", "x-dead-letter-routing-key")?,
            AMQPValue::LongString(dead.into()),
        );
        channel
            .queue_declare(short("queue name", &self.name)?, durable, arguments)
            .await?;
        channel.close(200, "declared".into()).await?;
        Ok(())
    }
}

/// Publishes messages as PRODUCER spans (`publish <destination>`), each
/// confirmed by the broker before [`AmqpProducer::send`] returns.
#[derive(Clone)]
pub struct AmqpProducer {
    producer: Producer,
    channel: Channel,
    exchange: ShortString,
    routing_key: ShortString,
}

impl std::fmt::Debug for AmqpProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpProducer")
            .field("exchange", &self.exchange.as_str())
            .field("routing_key", &self.routing_key.as_str())
            .finish_non_exhaustive()
    }
}

impl AmqpProducer {
    /// A producer to `exchange` with `routing_key`, on a channel of its own
    /// in confirm mode. Its destination is the exchange's name.
    pub async fn connect(
        service: &ServiceTelemetry,
        connection: &Connection,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Self, AmqpError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let destination = if exchange.is_empty() {
            routing_key
        } else {
            exchange
        };
        Ok(Self {
            producer: service.producer(RABBITMQ, destination).operation("publish"),
            channel,
            exchange: short("exchange name", exchange)?,
            routing_key: short("routing key", routing_key)?,
        })
    }

    /// A producer straight to `queue` (the default exchange): its
    /// destination is the queue's name.
    pub async fn to_queue(
        service: &ServiceTelemetry,
        connection: &Connection,
        queue: &str,
    ) -> Result<Self, AmqpError> {
        Self::connect(service, connection, "", queue).await
    }

    /// Publishes one persistent message and waits for the broker's
    /// confirmation. The current trace context and baggage travel in its
    /// headers.
    pub async fn send(&self, message_id: &str, payload: &[u8]) -> Result<(), AmqpError> {
        let id = short("message id", message_id)?;
        self.producer
            .send(
                Some(message_id),
                AmqpHeaders::default(),
                |headers| async move {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let properties = BasicProperties::default()
                        .with_headers(headers.0)
                        .with_message_id(id)
                        .with_delivery_mode(2)
                        .with_timestamp(now);
                    let options = BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    };
                    let confirm = self
                        .channel
                        .basic_publish(
                            self.exchange.clone(),
                            self.routing_key.clone(),
                            options,
                            payload,
                            properties,
                        )
                        .await?;
                    match confirm.await? {
                        Confirmation::Ack(None) => Ok(()),
                        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                            Err(AmqpError::Unroutable {
                                exchange: self.exchange.to_string(),
                                routing_key: self.routing_key.to_string(),
                            })
                        }
                        Confirmation::Nack(None) => Err(AmqpError::Nacked),
                        Confirmation::NotRequested => Ok(()),
                    }
                },
            )
            .await
    }
}

/// How an [`AmqpConsumer`] takes deliveries and gives up on them.
///
/// ```
/// let mut config = paytrace::messaging::amqp::AmqpConsumerConfig::default();
/// config.prefetch = 32;
/// assert_eq!(config.max_deliveries, 5);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AmqpConsumerConfig {
    /// Deliveries the broker sends ahead of acknowledgements. Default 16.
    pub prefetch: u16,
    /// The delivery at which a failed message is dead-lettered instead of
    /// returned (the queue's [`AmqpQueue::max_deliveries`]). Default 5.
    pub max_deliveries: u64,
}

impl Default for AmqpConsumerConfig {
    fn default() -> Self {
        Self {
            prefetch: 16,
            max_deliveries: 5,
        }
    }
}

/// One delivery from an [`AmqpConsumer`].
#[derive(Debug)]
pub struct AmqpMessage {
    delivery: AmqpDelivery,
    headers: AmqpHeaders,
    delivery_count: u64,
}

impl AmqpMessage {
    fn new(delivery: AmqpDelivery) -> Self {
        let headers = AmqpHeaders(delivery.properties.headers().clone().unwrap_or_default());
        // A quorum queue counts returns in `x-delivery-count`; a classic
        // queue only says whether the message was delivered before.
        let returned = match headers.0.inner().get("x-delivery-count") {
            Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).ok(),
            Some(AMQPValue::LongInt(n)) => u64::try_from(*n).ok(),
            Some(AMQPValue::LongUInt(n)) => Some(u64::from(*n)),
            _ => None,
        };
        let delivery_count = match returned {
            Some(n) => n + 1,
            None if delivery.redelivered => 2,
            None => 1,
        };
        Self {
            delivery,
            headers,
            delivery_count,
        }
    }

    /// The body.
    pub fn payload(&self) -> &[u8] {
        &self.delivery.data
    }

    /// The `message_id` property, if the producer set one.
    pub fn message_id(&self) -> Option<&str> {
        self.delivery
            .properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// Deliveries of this message, this one included (from a quorum queue's
    /// `x-delivery-count`; a classic queue's redelivery says only "at least
    /// 2").
    pub fn delivery_count(&self) -> u64 {
        self.delivery_count
    }

    /// The message's headers.
    pub fn headers(&self) -> &AmqpHeaders {
        &self.headers
    }
}

/// Consumes one queue: each delivery processed as a CONSUMER span, then
/// acknowledged, returned or dead-lettered by the rule of the module.
pub struct AmqpConsumer {
    consumer: Consumer,
    broker: BrokerMetrics,
    deliveries: lapin::Consumer,
    queue: String,
    config: AmqpConsumerConfig,
}

impl std::fmt::Debug for AmqpConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConsumer")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl AmqpConsumer {
    /// Starts consuming `queue` on a channel of its own.
    pub async fn connect(
        service: &ServiceTelemetry,
        connection: &Connection,
        queue: &str,
        config: AmqpConsumerConfig,
    ) -> Result<Self, AmqpError> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                short("queue name", queue)?,
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            consumer: service.consumer(RABBITMQ, queue),
            broker: service.broker_metrics(RABBITMQ, queue, None),
            deliveries,
            queue: queue.to_owned(),
            config,
        })
    }

    /// Names the CONSUMER spans' stage (see [`Consumer::stage`]).
    pub fn stage(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.consumer = self.consumer.stage(name);
        self
    }

    /// The next delivery; `None` once the consumer was cancelled or its
    /// channel closed.
    pub async fn next(&mut self) -> Option<Result<AmqpMessage, AmqpError>> {
        let mut deliveries = std::pin::Pin::new(&mut self.deliveries);
        let next = std::future::poll_fn(|cx| deliveries.as_mut().poll_next(cx)).await?;
        Some(next.map_err(AmqpError::from).map(|delivery| {
            let message = AmqpMessage::new(delivery);
            if message.delivery_count > 1 {
                self.broker.redelivered();
            }
            message
        }))
    }

    /// Processes `message` as a CONSUMER span, then acknowledges it (`Ok`),
    /// returns it to the queue (an error), or dead-letters it (an error at
    /// its `max_deliveries`-th delivery). The outer error is the broker
    /// failing the acknowledgement; the inner result is the processing's.
    pub async fn handle<F, T, E>(
        &self,
        message: AmqpMessage,
        work: F,
    ) -> Result<Result<T, E>, AmqpError>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut unsettled = Unsettled(Some(message.delivery.acker.clone()));
        let mut delivery = Delivery::new().delivery_count(message.delivery_count);
        if let Some(id) = message.message_id() {
            delivery = delivery.message_id(id);
        }
        let result = self
            .consumer
            .process(&message.headers, delivery, work)
            .await;
        let acker = unsettled.settle();
        match &result {
            Ok(_) => {
                acker.ack(BasicAckOptions::default()).await?;
            }
            Err(_) => {
                let give_up = message.delivery_count >= self.config.max_deliveries;
                acker
                    .nack(BasicNackOptions {
                        requeue: !give_up,
                        ..BasicNackOptions::default()
                    })
                    .await?;
                if give_up {
                    self.broker.dead_lettered();
                }
            }
        }
        Ok(result)
    }

    /// Reads the queue's state from the management API and sets the
    /// `paytrace_broker_*` gauges.
    pub async fn observe(&self, api: &ManagementApi) -> Result<QueueState, ManagementError> {
        let state = api.queue_state(&self.queue).await?;
        self.broker.observe(&state);
        Ok(state)
    }
}

/// A delivery whose processing has not ended: dropped so, it returns the
/// message to the queue.
struct Unsettled(Option<lapin::Acker>);

impl Unsettled {
    fn settle(&mut self) -> lapin::Acker {
        // Taken once, right after the processing; `new` put it there.
        self.0
            .take()
            .unwrap_or_else(|| unreachable!("settled twice"))
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        let (Some(acker), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current())
        else {
            // Without a runtime the channel's closing returns it.
            return;
        };
        runtime.spawn(async move {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            // On failure the channel's closing returns the message.
            let _ = acker.nack(requeue).await;
        });
    }
}

/// Why the management API gave no queue state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagementError {
    /// The request failed or the answer was not a queue's JSON.
    #[error("RabbitMQ management API at {url}: {source}")]
    Request {
        /// The URL asked.
        url: String,
        /// What failed.
        source: reqwest::Error,
    },
}

/// RabbitMQ's management HTTP API (the `rabbitmq_management` plugin), where
/// the broker tells a queue's ready and unacknowledged messages and the
/// timestamp of the oldest ready one.
///
/// ```
/// let api = paytrace::messaging::amqp::ManagementApi::new("http://127.0.0.1:15672", "guest", "guest");
/// # drop(api);
/// ```
#[derive(Clone, Debug)]
pub struct ManagementApi {
    base: String,
    vhost: String,
    user: String,
    password: String,
    client: reqwest::Client,
}

#[derive(serde::Deserialize)]
struct QueueInfo {
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
    /// Seconds since the epoch, of the head message's `timestamp` property.
    #[serde(default)]
    head_message_timestamp: Option<u64>,
}

impl ManagementApi {
    /// The API at `base` (`http://host:15672`) for the default virtual host.
    pub fn new(base: &str, user: &str, password: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            vhost: "/".to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// For the virtual host `vhost` instead of `/`.
    pub fn vhost(mut self, vhost: &str) -> Self {
        self.vhost = vhost.to_owned();
        self
    }

    /// `queue`'s ready and unacknowledged messages, and the age of the
    /// oldest ready one when the broker reports its timestamp (the age of
    /// delivered, unacknowledged messages is not reported by RabbitMQ).
    pub async fn queue_state(&self, queue: &str) -> Result<QueueState, ManagementError> {
        let encode = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let url = format!(
            "{}/api/queues/{}/{}",
            self.base,
            encode(&self.vhost),
            encode(queue)
        );
        let failed = |source| ManagementError::Request {
            url: url.clone(),
            source,
        };
        let info: QueueInfo = self
            .client
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?
            .json()
            .await
            .map_err(failed)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let oldest_age = info
            .head_message_timestamp
            .filter(|_| info.messages_ready > 0)
            .map(|t| Duration::from_secs(now.saturating_sub(t)));
        Ok(QueueState::new(
            info.messages_ready,
            info.messages_unacknowledged,
            oldest_age,
        ))
    }
}
