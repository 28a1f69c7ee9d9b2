//! Redis Streams with consumer groups, traced: [`StreamProducer`] and
//! [`StreamConsumer`] (feature `redis`).
//!
//! # The message
//!
//! One stream entry: the field `payload` (the body, bytes), the field
//! `message_id` (the application's id, the key consumers deduplicate by) and
//! one field per header (`traceparent`, `tracestate`, `baggage`). A consumer
//! written in another language reads the same fields.
//!
//! # The delivery rule: at least once
//!
//! - [`StreamConsumer::next_batch`] first looks at the group's pending
//!   entries idle for longer than `claim_after` (their consumer crashed, hung
//!   or was dropped mid-way): one delivered `max_deliveries` times already is
//!   moved to the dead-letter stream and acknowledged, in one Lua script, so
//!   neither half happens alone; the others are claimed (`XCLAIM`) and
//!   delivered again, with their delivery count. Then it reads new entries
//!   (`XREADGROUP … >`), blocking at most `block`.
//! - [`StreamConsumer::handle`] processes one message as a CONSUMER span and
//!   acknowledges it (`XACK`) only when the processing returned `Ok`. A
//!   failed message stays pending and comes back after `claim_after`.
//! - Dropping any of these futures at any await point loses nothing: an
//!   entry read or claimed whose reply never arrived is pending under this
//!   consumer's name and comes back after `claim_after`; an `XACK` that did
//!   not happen means one more delivery. So an entry may be processed more
//!   than once, never zero times: make the processing idempotent by message
//!   id.
//!
//! The broker's view of the group ([`StreamConsumer::observe`]) sets
//! `paytrace_broker_*`: ready is the group's lag (entries not yet
//! delivered), unacked its pending entries, and the oldest age is read from
//! the entry ids (milliseconds of the Redis server's clock) against the
//! server's `TIME`, so the two clocks are one.
//!
//! ```no_run
//! # async fn demo() -> redis::RedisResult<()> {
//! use paytrace::messaging::redis_streams::{StreamConsumer, StreamConsumerConfig, StreamProducer};
//!
//! let client = redis::Client::open("redis://127.0.0.1/")?;
//! let payment = paytrace::ServiceTelemetry::new("payment", "1.0.0");
//! let producer = StreamProducer::connect(&payment, &client, "payment.notifications").await?;
//! producer.send("ntf_1", b"{\"order\":\"ord_1\",\"paid\":true}").await?;
//!
//! let order = paytrace::ServiceTelemetry::new("order", "1.0.0");
//! let consumer = StreamConsumer::connect(
//!     &order, &client, "payment.notifications", "order", "order-1",
//!     StreamConsumerConfig::default(),
//! ).await?;
//! for message in consumer.next_batch().await? {
//!     let done = consumer
//!         .handle(&message, async { Ok::<_, std::io::Error>(()) })
//!         .await?;
//!     done.ok(); // a failed message comes back after `claim_after`
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{
    StreamId, StreamInfoGroupsReply, StreamPendingCountReply, StreamPendingReply, StreamRangeReply,
    StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, RedisError, RedisResult, Value};

use super::{BrokerMetrics, Carrier, Consumer, Delivery, Producer, QueueState};
use crate::service::ServiceTelemetry;
use paytrace_semconv::messaging_system::REDIS;

/// The entry field that holds the message's body.
pub const PAYLOAD_FIELD: &str = "payload";
/// The entry field that holds the application's message id.
pub const MESSAGE_ID_FIELD: &str = "message_id";

/// Sends messages to one stream as PRODUCER spans (`xadd <stream>`).
///
/// Cheap to clone; the connection is multiplexed.
#[derive(Clone)]
pub struct StreamProducer {
    producer: Producer,
    conn: ConnectionManager,
    stream: String,
}

impl std::fmt::Debug for StreamProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamProducer")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl StreamProducer {
    /// A producer for `stream` over a connection of its own to `client`.
    pub async fn connect(
        service: &ServiceTelemetry,
        client: &redis::Client,
        stream: &str,
    ) -> RedisResult<Self> {
        let conn = ConnectionManager::new(client.clone()).await?;
        Ok(Self::new(service, conn, stream))
    }

    /// A producer for `stream` over `conn`.
    pub fn new(service: &ServiceTelemetry, conn: ConnectionManager, stream: &str) -> Self {
        Self {
            producer: service.producer(REDIS, stream).operation("xadd"),
            conn,
            stream: stream.to_owned(),
        }
    }

    /// Appends one message; returns the entry's id. The current trace
    /// context and baggage travel in the entry's header fields.
    pub async fn send(&self, message_id: &str, payload: &[u8]) -> RedisResult<String> {
        let mut conn = self.conn.clone();
        self.producer
            .send(Some(message_id), BTreeMap::new(), |headers| async move {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&self.stream).arg("*");
                cmd.arg(MESSAGE_ID_FIELD).arg(message_id);
                cmd.arg(PAYLOAD_FIELD).arg(payload);
                for (key, value) in &headers {
                    cmd.arg(key).arg(value);
                }
                cmd.query_async::<String>(&mut conn).await
            })
            .await
    }
}

/// How a [`StreamConsumer`] reads, retries and gives up.
///
/// ```
/// use std::time::Duration;
/// let mut config = paytrace::messaging::redis_streams::StreamConsumerConfig::default();
/// config.claim_after = Duration::from_secs(60);
/// assert_eq!(config.max_deliveries, 5);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StreamConsumerConfig {
    /// Most entries one [`StreamConsumer::next_batch`] returns. Default 16.
    pub batch: usize,
    /// How long a read waits for new entries. Default 1 s.
    pub block: Duration,
    /// How long an entry stays unacknowledged before another delivery
    /// (longer than the slowest processing). Default 30 s.
    pub claim_after: Duration,
    /// Deliveries after which an entry goes to the dead-letter stream.
    /// Default 5.
    pub max_deliveries: u64,
    /// The dead-letter stream; default `<stream>:dead`.
    pub dead_letter_stream: Option<String>,
}

impl Default for StreamConsumerConfig {
    fn default() -> Self {
        Self {
            batch: 16,
            block: Duration::from_secs(1),
            claim_after: Duration::from_secs(30),
            max_deliveries: 5,
            dead_letter_stream: None,
        }
    }
}

/// One message as a [`StreamConsumer`] delivered it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StreamMessage {
    /// The stream entry's id (`1733200000000-0`).
    pub entry_id: String,
    /// The application's id (`message_id` field), if the producer gave one.
    pub message_id: Option<String>,
    /// The body (`payload` field); empty if the entry has none.
    pub payload: Vec<u8>,
    /// Deliveries of this entry to the group, this one included.
    pub delivery_count: u64,
    headers: BTreeMap<String, String>,
}

impl StreamMessage {
    fn from_entry(entry: StreamId, delivery_count: u64) -> Self {
        let mut message = Self {
            entry_id: entry.id,
            message_id: None,
            payload: Vec::new(),
            delivery_count,
            headers: BTreeMap::new(),
        };
        for (field, value) in entry.map {
            let bytes = match value {
                Value::BulkString(b) => b,
                Value::SimpleString(s) => s.into_bytes(),
                _ => continue,
            };
            match field.as_str() {
                PAYLOAD_FIELD => message.payload = bytes,
                MESSAGE_ID_FIELD => message.message_id = String::from_utf8(bytes).ok(),
                _ => {
                    if let Ok(text) = String::from_utf8(bytes) {
                        message.headers.insert(field, text);
                    }
                }
            }
        }
        message
    }

    /// The header fields (every field but `payload` and `message_id`).
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }
}

impl Carrier for StreamMessage {
    fn get(&self, key: &str) -> Option<&str> {
        self.headers.get(key).map(String::as_str)
    }
    fn set(&mut self, key: &str, value: String) {
        self.headers.insert(key.to_owned(), value);
    }
}

/// Reads one stream as a member of a consumer group: claims what others
/// left, dead-letters what keeps failing, processes each message as a
/// CONSUMER span and acknowledges it after. See the module's rule.
pub struct StreamConsumer {
    consumer: Consumer,
    broker: BrokerMetrics,
    /// Blocking reads, on a connection of their own.
    reads: ConnectionManager,
    /// Everything else.
    conn: ConnectionManager,
    stream: String,
    group: String,
    name: String,
    dead_letter_stream: String,
    config: StreamConsumerConfig,
}

impl std::fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Moves one pending entry to the dead-letter stream and acknowledges it,
/// if it is still idle (no other consumer took it meanwhile). KEYS: stream,
/// dead-letter stream. ARGV: group, consumer, min idle ms, entry id,
/// deliveries. Returns 1 if moved, 0 if another consumer had it.
const DEAD_LETTER: &str = r"
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'JUSTID')
if #claimed == 0 then return 0 end
local entry = redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[4])
if #entry == 1 then
  local fields = entry[1][2]
  table.insert(fields, 'dead_letter_source_id')
  table.insert(fields, ARGV[4])
  table.insert(fields, 'dead_letter_deliveries')
  table.insert(fields, ARGV[5])
  redis.call('XADD', KEYS[2], '*', unpack(fields))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[4])
return 1
";

impl StreamConsumer {
    /// Joins (creating it if needed, from the stream's first entry) the
    /// group `group` of `stream` as consumer `name`, unique per process.
    pub async fn connect(
        service: &ServiceTelemetry,
        client: &redis::Client,
        stream: &str,
        group: &str,
        name: &str,
        config: StreamConsumerConfig,
    ) -> RedisResult<Self> {
        let conn = ConnectionManager::new(client.clone()).await?;
        let reads = ConnectionManager::new_with_config(
            client.clone(),
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(config.block + Duration::from_secs(5))),
        )
        .await?;
        let mut c = conn.clone();
        let created: RedisResult<()> = c.xgroup_create_mkstream(stream, group, "0").await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            consumer: service.consumer(REDIS, stream).group(group),
            broker: service.broker_metrics(REDIS, stream, Some(group)),
            reads,
            conn,
            stream: stream.to_owned(),
            group: group.to_owned(),
            name: name.to_owned(),
            dead_letter_stream: config
                .dead_letter_stream
                .clone()
                .unwrap_or_else(|| format!("{stream}:dead")),
            config,
        })
    }

    /// Names the CONSUMER spans' stage (see [`Consumer::stage`]).
    pub fn stage(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.consumer = self.consumer.stage(name);
        self
    }

    /// The dead-letter stream.
    pub fn dead_letter_stream(&self) -> &str {
        &self.dead_letter_stream
    }

    /// The next messages: entries left idle past `claim_after` (after
    /// dead-lettering those delivered `max_deliveries` times), else new ones,
    /// waiting at most `block`. Empty when nothing came.
    pub async fn next_batch(&self) -> RedisResult<Vec<StreamMessage>> {
        let reclaimed = self.reclaim().await?;
        if !reclaimed.is_empty() {
            return Ok(reclaimed);
        }
        let options = StreamReadOptions::default()
            .group(&self.group, &self.name)
            .count(self.config.batch)
            .block(millis(self.config.block));
        let mut reads = self.reads.clone();
        let reply: StreamReadReply = reads
            .xread_options(&[&self.stream], &[">"], &options)
            .await?;
        Ok(reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|entry| StreamMessage::from_entry(entry, 1))
            .collect())
    }

    async fn reclaim(&self) -> RedisResult<Vec<StreamMessage>> {
        let min_idle = millis(self.config.claim_after);
        let mut conn = self.conn.clone();
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("IDLE")
            .arg(min_idle)
            .arg("-")
            .arg("+")
            .arg(self.config.batch)
            .query_async(&mut conn)
            .await?;
        let mut again = Vec::new();
        let mut counts = BTreeMap::new();
        for p in pending.ids {
            let delivered = p.times_delivered as u64;
            if delivered >= self.config.max_deliveries {
                let moved: i64 = redis::Script::new(DEAD_LETTER)
                    .key(&self.stream)
                    .key(&self.dead_letter_stream)
                    .arg(&self.group)
                    .arg(&self.name)
                    .arg(min_idle)
                    .arg(&p.id)
                    .arg(delivered)
                    .invoke_async(&mut conn)
                    .await?;
                if moved == 1 {
                    self.broker.dead_lettered();
                }
            } else {
                counts.insert(p.id.clone(), delivered + 1);
                again.push(p.id);
            }
        }
        if again.is_empty() {
            return Ok(Vec::new());
        }
        // Entries another consumer claimed meanwhile are not returned.
        let claimed: redis::streams::StreamClaimReply = conn
            .xclaim(&self.stream, &self.group, &self.name, min_idle, &again)
            .await?;
        Ok(claimed
            .ids
            .into_iter()
            .map(|entry| {
                let count = counts.get(&entry.id).copied().unwrap_or(2);
                self.broker.redelivered();
                StreamMessage::from_entry(entry, count)
            })
            .collect())
    }

    /// Processes `message` as a CONSUMER span and acknowledges it when
    /// `work` returned `Ok`. The outer error is Redis failing the
    /// acknowledgement (the message then comes back); the inner result is
    /// the processing's.
    pub async fn handle<F, T, E>(
        &self,
        message: &StreamMessage,
        work: F,
    ) -> RedisResult<Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut delivery = Delivery::new().delivery_count(message.delivery_count);
        if let Some(id) = &message.message_id {
            delivery = delivery.message_id(id.clone());
        }
        let result = self.consumer.process(message, delivery, work).await;
        if result.is_ok() {
            self.ack(message).await?;
        }
        Ok(result)
    }

    /// Acknowledges `message`: the group will not deliver it again.
    pub async fn ack(&self, message: &StreamMessage) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .xack(&self.stream, &self.group, &[&message.entry_id])
            .await?;
        Ok(())
    }

    /// Reads the group's state from Redis and sets the `paytrace_broker_*`
    /// gauges: entries not yet delivered (the group's lag), pending ones,
    /// and the age of the oldest of either.
    pub async fn observe(&self) -> RedisResult<QueueState> {
        let state = self.read_state().await?;
        self.broker.observe(&state);
        Ok(state)
    }

    async fn read_state(&self) -> RedisResult<QueueState> {
        let mut conn = self.conn.clone();
        let groups: StreamInfoGroupsReply = conn.xinfo_groups(&self.stream).await?;
        let Some(group) = groups.groups.into_iter().find(|g| g.name == self.group) else {
            return Err(not_found(&self.stream, &self.group));
        };
        // The next entry not yet delivered to the group.
        let next: StreamRangeReply = conn
            .xrange_count(
                &self.stream,
                format!("({}", group.last_delivered_id),
                "+",
                1,
            )
            .await?;
        let ready = match group.lag {
            Some(lag) => lag as u64,
            // Redis cannot tell after deletions: count what follows.
            None => {
                let rest: StreamRangeReply = conn
                    .xrange(&self.stream, format!("({}", group.last_delivered_id), "+")
                    .await?;
                rest.ids.len() as u64
            }
        };
        let oldest_pending = match conn.xpending(&self.stream, &self.group).await? {
            StreamPendingReply::Data(d) if d.count > 0 => Some(d.start_id),
            _ => None,
        };
        let oldest_ms = [
            oldest_pending.as_deref(),
            next.ids.first().map(|e| e.id.as_str()),
        ]
        .into_iter()
        .flatten()
        .filter_map(entry_millis)
        .min();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now_ms = secs * 1000 + micros / 1000;
        Ok(QueueState::new(
            ready,
            group.pending as u64,
            oldest_ms.map(|ms| Duration::from_millis(now_ms.saturating_sub(ms))),
        ))
    }
}

/// The milliseconds part of a stream entry id (`1733200000000-0`).
fn entry_millis(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn millis(d: Duration) -> usize {
    usize::try_from(d.as_millis()).unwrap_or(usize::MAX)
}

fn not_found(stream: &str, group: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Client,
        "no such consumer group",
        format!("stream {stream} has no group {group}; StreamConsumer::connect creates it"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_give_their_milliseconds() {
        assert_eq!(entry_millis("1733200000123-7"), Some(1_733_200_000_123));
        assert_eq!(entry_millis("not-an-id"), None);
    }
}
