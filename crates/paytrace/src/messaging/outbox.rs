//! Reliable publishing: an outbox table written in the business
//! transaction, a relay that publishes what was committed, and an inbox
//! that applies each message once (features `sqlx-postgres`, `sqlx-mysql`,
//! `sqlx-sqlite`).
//!
//! # The rules
//!
//! 1. **Written with the business change.** [`Outbox::enqueue`] inserts the
//!    message into the outbox table through the caller's transaction (the
//!    one a [`crate::tcc::SqlFence`] handler gets, or any of your own): it
//!    commits with the business change or not at all. The current trace
//!    context and baggage are stored with it.
//! 2. **Published at least once, in order.** [`OutboxRelay::publish_batch`]
//!    reads committed, unsent messages in the order they were written, and
//!    for each calls your publish function inside the context stored with
//!    it (so the PRODUCER span continues the business trace and flow), then
//!    marks it sent. A message is marked only after its publish returned
//!    `Ok`; a relay killed or dropped in between publishes it again when it
//!    runs next. A failed publish stops the batch (later messages wait: the
//!    order holds). Several relays on one outbox stay correct but publish
//!    duplicates: run one.
//! 3. **Applied once.** [`Inbox::run`] records the message id in the
//!    consumer's inbox table in the same transaction as the message's
//!    effects; a message whose id is there already is a duplicate (counted
//!    in `paytrace_inbox_duplicates_total`) and its handler does not run.
//!    Acknowledge the message after `run` returned: a consumer killed
//!    between commit and acknowledgement sees it again, as a duplicate.
//!    Dropped before it committed, `run` rolls back (the connection is
//!    closed, as the fence's are).
//!
//! Sent rows stay until [`OutboxRelay::clean`] deletes those older than a
//! retention you choose; inbox rows until [`Inbox::clean`] does (keep them
//! longer than any redelivery can come).
//!
//! ```no_run
//! # #[cfg(feature = "sqlx-sqlite")]
//! # async fn demo(producer: paytrace::messaging::Producer) -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::HashMap;
//! use paytrace::messaging::outbox::Outbox;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite://shop.db?mode=rwc").await?;
//! let svc = paytrace::ServiceTelemetry::new("payment", "1.0.0");
//! let outbox = Outbox::new(&svc, "payment_outbox")?;
//! outbox.create_table(&pool).await?;
//!
//! // The business change and the message, committed together.
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE payments SET state = 'paid' WHERE id = 1").execute(&mut *tx).await?;
//! outbox.enqueue(&mut tx, "payment.notifications", "ntf_1", b"{\"payment\":1}").await?;
//! tx.commit().await?;
//!
//! // The relay, in a task of its own, publishes what was committed.
//! let relay = outbox.relay(pool.clone());
//! relay
//!     .publish_batch(|message| {
//!         let producer = producer.clone();
//!         async move {
//!             producer.send(Some(&message.message_id), HashMap::new(), |_headers| async {
//!                 Ok::<_, std::io::Error>(()) // hand message.payload to the broker here
//!             }).await
//!         }
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::trace::FutureExt as _;
use prometheus::{Gauge, IntCounter, IntGauge};

use super::Carrier;
use super::carrier::{Extract, Inject};
use crate::cardinality::OTHER;
use crate::propagation::{ambient, extract_from, inject_into};
use crate::service::ServiceTelemetry;
use crate::tcc::{BoxFuture, FenceDatabase, FenceError};
use crate::tcc_sql::{Checkout, Dialect, Table, now_ms};

/// Longest message id the tables take (characters).
pub const MAX_MESSAGE_ID_LEN: usize = 128;

/// Why an outbox or inbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The database failed; nothing of this call was committed.
    #[error("the outbox's database: {0}")]
    Store(#[from] sqlx::Error),
    /// A name or an id the tables cannot hold.
    #[error("{0}")]
    Invalid(String),
    /// The publish function failed for the message with this id; it and the
    /// ones after it stay unsent.
    #[error("publishing outbox message {message_id} failed: {error}")]
    Publish {
        /// The message that was not published.
        message_id: String,
        /// What the publish function said.
        error: String,
    },
}

impl From<FenceError> for OutboxError {
    fn from(e: FenceError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// A message waiting in, or read from, the outbox.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OutboxMessage {
    /// The outbox's sequence number (the order of writing).
    pub sequence: i64,
    /// The application's id, the key the consumer deduplicates by.
    pub message_id: String,
    /// Where the relay should send it.
    pub destination: String,
    /// The body.
    pub payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

impl Carrier for OutboxMessage {
    fn get(&self, key: &str) -> Option<&str> {
        self.headers.get(key).map(String::as_str)
    }
    fn set(&mut self, key: &str, value: String) {
        self.headers.insert(key.to_owned(), value);
    }
}

/// Headers as stored: one `key=value` per line (W3C values hold no newline).
fn encode_headers(headers: &BTreeMap<String, String>) -> String {
    headers
        .iter()
        .filter(|(k, v)| !k.contains(['=', '\n']) && !v.contains('\n'))
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect()
}

fn decode_headers(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn check_message_id(id: &str) -> Result<(), OutboxError> {
    let n = id.chars().count();
    if n == 0 || n > MAX_MESSAGE_ID_LEN {
        return Err(OutboxError::Invalid(format!(
            "a message id must be 1 to {MAX_MESSAGE_ID_LEN} characters, not {n}"
        )));
    }
    Ok(())
}

/// An outbox table of one service: messages written with business changes,
/// published by an [`OutboxRelay`]. See the module's rules.
#[derive(Clone, Debug)]
pub struct Outbox {
    table: Table,
    pending: IntGauge,
    oldest: Gauge,
}

impl Outbox {
    /// The outbox in table `table` (`name` or `schema.name`), whose gauges
    /// carry `outbox="<table>"`.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Invalid`] when `table` is not a plain SQL identifier.
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::with_metrics("payment", "1.0.0", &paytrace::Metrics::new());
    /// assert!(paytrace::messaging::outbox::Outbox::new(&svc, "payment_outbox").is_ok());
    /// assert!(paytrace::messaging::outbox::Outbox::new(&svc, "x; DROP TABLE y").is_err());
    /// ```
    pub fn new(service: &ServiceTelemetry, table: &str) -> Result<Self, OutboxError> {
        let table = Table::parse(table)?;
        let families = service.families();
        let label = families
            .admit(service.name(), |g| &g.queue, table.name())
            .unwrap_or(OTHER);
        let m = &families.messaging;
        Ok(Self {
            pending: m.outbox_pending.with_label_values(&[service.name(), label]),
            oldest: m.outbox_oldest.with_label_values(&[service.name(), label]),
            table,
        })
    }

    /// The statements that create the outbox table on database `DB`, for a
    /// migration of your own.
    pub fn ddl<DB: OutboxDatabase>(&self) -> Vec<String> {
        outbox_ddl(DB::DIALECT, &self.table)
    }

    /// Creates the table and its index if they do not exist.
    pub async fn create_table<DB: OutboxDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<(), OutboxError> {
        for statement in self.ddl::<DB>() {
            DB::execute(pool, statement).await?;
        }
        Ok(())
    }

    /// Writes a message for `destination` through `tx`, with the current
    /// trace context and baggage: it is sent once `tx` commits, never if it
    /// rolls back.
    pub async fn enqueue<DB: OutboxDatabase>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        destination: &str,
        message_id: &str,
        payload: &[u8],
    ) -> Result<(), OutboxError> {
        check_message_id(message_id)?;
        if destination.is_empty() || destination.chars().count() > 255 {
            return Err(OutboxError::Invalid(format!(
                "a destination must be 1 to 255 characters, not {}",
                destination.chars().count()
            )));
        }
        let mut headers = BTreeMap::new();
        inject_into(&ambient(), &mut Inject(&mut headers));
        let row = NewMessage {
            table: &self.table,
            message_id,
            destination,
            payload,
            headers: encode_headers(&headers),
            created_ms: now_ms(),
        };
        DB::insert_message(&mut **tx, row).await?;
        Ok(())
    }

    /// A relay publishing this outbox's messages from `pool`.
    pub fn relay<DB: OutboxDatabase>(&self, pool: sqlx::Pool<DB>) -> OutboxRelay<DB> {
        OutboxRelay {
            outbox: self.clone(),
            pool,
            batch: 100,
        }
    }
}

/// Publishes an [`Outbox`]'s committed messages, in order, at least once.
#[derive(Debug)]
pub struct OutboxRelay<DB: OutboxDatabase> {
    outbox: Outbox,
    pool: sqlx::Pool<DB>,
    batch: u32,
}

impl<DB: OutboxDatabase> OutboxRelay<DB> {
    /// Reads at most `n` messages per batch (default 100).
    pub fn batch(mut self, n: u32) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Publishes the next unsent messages, oldest first, each through
    /// `publish` inside the trace context stored with it, marking each sent
    /// once `publish` returned `Ok`. Returns how many it published; 0 when
    /// none was waiting.
    ///
    /// `publish` gets each message by value and returns a future that owns
    /// what it needs, so the relay can run in a spawned task.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Publish`] when `publish` failed (that message and the
    /// later ones stay unsent); [`OutboxError::Store`] when the database
    /// failed.
    pub async fn publish_batch<P, Fut, E>(&self, mut publish: P) -> Result<usize, OutboxError>
    where
        P: FnMut(OutboxMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let table = &self.outbox.table;
        let messages = DB::unsent(&self.pool, table, self.batch).await?;
        let mut published = 0;
        for message in messages {
            let stored = extract_from(&Extract(&message));
            let (sequence, message_id) = (message.sequence, message.message_id.clone());
            if let Err(e) = publish(message).with_context(stored).await {
                self.observe().await?;
                return Err(OutboxError::Publish {
                    message_id,
                    error: e.to_string(),
                });
            }
            DB::mark_sent(&self.pool, table, sequence, now_ms()).await?;
            published += 1;
        }
        self.observe().await?;
        Ok(published)
    }

    /// Publishes batch after batch, waiting `idle` whenever nothing was
    /// waiting and `retry` after a failure, until the future is dropped
    /// (which loses nothing: rule 2).
    pub async fn run<P, Fut, E>(&self, mut publish: P, idle: Duration, retry: Duration)
    where
        P: FnMut(OutboxMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        loop {
            match self.publish_batch(&mut publish).await {
                Ok(0) => tokio::time::sleep(idle).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(target: "paytrace::outbox", error = %e, "outbox relay");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    /// Counts the unsent messages and the oldest one's age, and sets
    /// `paytrace_outbox_pending_messages` and
    /// `paytrace_outbox_oldest_pending_seconds`.
    pub async fn observe(&self) -> Result<(u64, Option<Duration>), OutboxError> {
        let (count, oldest) = DB::unsent_summary(&self.pool, &self.outbox.table).await?;
        let age = oldest.map(|ms| {
            Duration::from_millis(u64::try_from(now_ms().saturating_sub(ms)).unwrap_or(0))
        });
        let count = u64::try_from(count).unwrap_or(0);
        self.outbox
            .pending
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.outbox.oldest.set(age.map_or(0.0, |a| a.as_secs_f64()));
        Ok((count, age))
    }

    /// Deletes sent messages older than `retention`, `batch` rows per
    /// statement; returns how many.
    pub async fn clean(&self, retention: Duration, batch: u32) -> Result<u64, OutboxError> {
        let before =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let batch = batch.max(1);
        let mut deleted = 0;
        loop {
            let n = DB::delete_sent(&self.pool, &self.outbox.table, before, batch).await?;
            deleted += n;
            if n < u64::from(batch) {
                return Ok(deleted);
            }
        }
    }
}

/// What [`Inbox::run`] did with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied<T> {
    /// The handler ran and its writes committed with the inbox row.
    Now(T),
    /// The message was applied before: nothing ran.
    Before,
}

/// Why [`Inbox::run`] applied nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError<E> {
    /// The handler failed: nothing committed; the message may come again.
    #[error("the message's handler failed")]
    Handler(E),
    /// The database failed or the id was invalid: nothing committed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// The consumer side's record of the messages it applied: each message id
/// once, in the transaction of the message's effects. See the module's
/// rules.
#[derive(Clone, Debug)]
pub struct Inbox {
    table: Table,
    consumer: String,
    duplicates: IntCounter,
}

impl Inbox {
    /// The inbox of `consumer` (several consumers may share a table) in
    /// table `table`.
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::with_metrics("order", "1.0.0", &paytrace::Metrics::new());
    /// let inbox = paytrace::messaging::outbox::Inbox::new(&svc, "order_inbox", "payment-notifications").unwrap();
    /// # drop(inbox);
    /// ```
    pub fn new(
        service: &ServiceTelemetry,
        table: &str,
        consumer: &str,
    ) -> Result<Self, OutboxError> {
        let table = Table::parse(table)?;
        check_message_id(consumer)?;
        let families = service.families();
        let label = families
            .admit(service.name(), |g| &g.queue, consumer)
            .unwrap_or(OTHER);
        Ok(Self {
            duplicates: families
                .messaging
                .inbox_duplicates
                .with_label_values(&[service.name(), label]),
            table,
            consumer: consumer.to_owned(),
        })
    }

    /// The statements that create the inbox table on database `DB`.
    pub fn ddl<DB: OutboxDatabase>(&self) -> Vec<String> {
        inbox_ddl(DB::DIALECT, &self.table)
    }

    /// Creates the table if it does not exist.
    pub async fn create_table<DB: OutboxDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<(), OutboxError> {
        for statement in self.ddl::<DB>() {
            DB::execute(pool, statement).await?;
        }
        Ok(())
    }

    /// Applies message `message_id` once: in one new transaction of `pool`,
    /// records the id and runs `handler` with the transaction, committing
    /// both; a message recorded before is [`Applied::Before`] and runs
    /// nothing.
    pub async fn run<DB, T, E, F>(
        &self,
        pool: &sqlx::Pool<DB>,
        message_id: &str,
        handler: F,
    ) -> Result<Applied<T>, InboxError<E>>
    where
        DB: OutboxDatabase,
        F: AsyncFnOnce(&mut sqlx::Transaction<'_, DB>) -> Result<T, E>,
    {
        check_message_id(message_id)?;
        let mut checkout = Checkout {
            conn: pool.acquire().await.map_err(OutboxError::from)?,
            settled: false,
        };
        let mut tx = DB::begin(&mut checkout.conn)
            .await
            .map_err(OutboxError::from)?;
        let fresh = DB::record_once(&mut tx, &self.table, &self.consumer, message_id, now_ms())
            .await
            .map_err(OutboxError::from)?;
        let answer = if !fresh {
            tx.rollback().await.map_err(OutboxError::from)?;
            self.duplicates.inc();
            Ok(Applied::Before)
        } else {
            match handler(&mut tx).await {
                Ok(value) => {
                    tx.commit().await.map_err(OutboxError::from)?;
                    Ok(Applied::Now(value))
                }
                Err(e) => {
                    tx.rollback().await.map_err(OutboxError::from)?;
                    Err(InboxError::Handler(e))
                }
            }
        };
        checkout.settled = true;
        answer
    }

    /// Deletes inbox rows older than `retention`, `batch` rows per
    /// statement; returns how many.
    pub async fn clean<DB: OutboxDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
        retention: Duration,
        batch: u32,
    ) -> Result<u64, OutboxError> {
        let before =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let batch = batch.max(1);
        let mut deleted = 0;
        loop {
            let n = DB::delete_recorded(pool, &self.table, before, batch).await?;
            deleted += n;
            if n < u64::from(batch) {
                return Ok(deleted);
            }
        }
    }
}

/// A message to insert.
#[doc(hidden)]
#[derive(Debug)]
pub struct NewMessage<'a> {
    table: &'a Table,
    message_id: &'a str,
    destination: &'a str,
    payload: &'a [u8],
    headers: String,
    created_ms: i64,
}

fn outbox_ddl(dialect: Dialect, table: &Table) -> Vec<String> {
    let t = table.name();
    let index = format!("{}_unsent", table.bare());
    let (id, blob) = match dialect {
        Dialect::Postgres => ("BIGSERIAL PRIMARY KEY", "BYTEA"),
        Dialect::MySql => ("BIGINT AUTO_INCREMENT PRIMARY KEY", "LONGBLOB"),
        Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
    };
    let columns = format!(
        "    sequence    {id},\n    \
         message_id  VARCHAR(128) NOT NULL,\n    \
         destination VARCHAR(255) NOT NULL,\n    \
         payload     {blob} NOT NULL,\n    \
         headers     TEXT NOT NULL,\n    \
         created_ms  BIGINT NOT NULL,\n    \
         sent_ms     BIGINT NULL"
    );
    match dialect {
        Dialect::MySql => vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n{columns},\n    KEY {index} (sent_ms, sequence)\n) ENGINE=InnoDB"
        )],
        Dialect::Postgres | Dialect::Sqlite => vec![
            format!("CREATE TABLE IF NOT EXISTS {t} (\n{columns}\n)"),
            format!("CREATE INDEX IF NOT EXISTS {index} ON {t} (sent_ms, sequence)"),
        ],
    }
}

fn inbox_ddl(dialect: Dialect, table: &Table) -> Vec<String> {
    let t = table.name();
    let columns = "    consumer     VARCHAR(128) NOT NULL,\n    \
                   message_id   VARCHAR(128) NOT NULL,\n    \
                   processed_ms BIGINT NOT NULL,\n    \
                   PRIMARY KEY (consumer, message_id)";
    match dialect {
        Dialect::MySql => vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n{columns}\n) ENGINE=InnoDB"
        )],
        Dialect::Postgres | Dialect::Sqlite => {
            vec![format!("CREATE TABLE IF NOT EXISTS {t} (\n{columns}\n)")]
        }
    }
}

/// The statements, per dialect.
mod sql {
    use super::{Dialect, Table};

    pub(super) fn insert_message(d: Dialect, t: &Table) -> String {
        let values: Vec<String> = (1..=5).map(|n| d.p(n)).collect();
        format!(
            "INSERT INTO {} (message_id, destination, payload, headers, created_ms) VALUES ({})",
            t.name(),
            values.join(", ")
        )
    }

    pub(super) fn unsent(d: Dialect, t: &Table) -> String {
        format!(
            "SELECT sequence, message_id, destination, payload, headers FROM {} \
             WHERE sent_ms IS NULL ORDER BY sequence LIMIT {}",
            t.name(),
            d.p(1)
        )
    }

    pub(super) fn mark_sent(d: Dialect, t: &Table) -> String {
        format!(
            "UPDATE {} SET sent_ms = {} WHERE sequence = {}",
            t.name(),
            d.p(1),
            d.p(2)
        )
    }

    pub(super) fn unsent_summary(t: &Table) -> String {
        format!(
            "SELECT COUNT(*), MIN(created_ms) FROM {} WHERE sent_ms IS NULL",
            t.name()
        )
    }

    pub(super) fn delete_sent(d: Dialect, t: &Table) -> String {
        let (before, limit, t) = (d.p(1), d.p(2), t.name());
        match d {
            Dialect::MySql => {
                format!("DELETE FROM {t} WHERE sent_ms <= {before} LIMIT {limit}")
            }
            Dialect::Postgres | Dialect::Sqlite => format!(
                "DELETE FROM {t} WHERE sequence IN \
                 (SELECT sequence FROM {t} WHERE sent_ms <= {before} LIMIT {limit})"
            ),
        }
    }

    pub(super) fn record_once(d: Dialect, t: &Table) -> String {
        let values = format!("{}, {}, {}", d.p(1), d.p(2), d.p(3));
        let t = t.name();
        match d {
            Dialect::MySql => format!(
                "INSERT IGNORE INTO {t} (consumer, message_id, processed_ms) VALUES ({values})"
            ),
            Dialect::Postgres | Dialect::Sqlite => format!(
                "INSERT INTO {t} (consumer, message_id, processed_ms) VALUES ({values}) \
                 ON CONFLICT (consumer, message_id) DO NOTHING"
            ),
        }
    }

    pub(super) fn delete_recorded(d: Dialect, t: &Table) -> String {
        let (before, limit, t) = (d.p(1), d.p(2), t.name());
        match d {
            Dialect::MySql => {
                format!("DELETE FROM {t} WHERE processed_ms <= {before} LIMIT {limit}")
            }
            Dialect::Postgres | Dialect::Sqlite => format!(
                "DELETE FROM {t} WHERE (consumer, message_id) IN \
                 (SELECT consumer, message_id FROM {t} WHERE processed_ms <= {before} LIMIT {limit})"
            ),
        }
    }
}

/// A database the outbox and the inbox can live in: the fence's
/// ([`FenceDatabase`]), each behind its sqlx feature. Sealed.
pub trait OutboxDatabase: FenceDatabase {
    /// Inserts a message in the caller's transaction.
    #[doc(hidden)]
    fn insert_message<'a>(
        tx: &'a mut Self::Connection,
        row: NewMessage<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Up to `limit` unsent messages, in order.
    #[doc(hidden)]
    fn unsent<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a Table,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<OutboxMessage>, sqlx::Error>>;

    /// Marks one message sent.
    #[doc(hidden)]
    fn mark_sent<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a Table,
        sequence: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Unsent messages: how many, and the oldest's `created_ms`.
    #[doc(hidden)]
    fn unsent_summary<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a Table,
    ) -> BoxFuture<'a, Result<(i64, Option<i64>), sqlx::Error>>;

    /// Deletes up to `limit` messages sent at or before `before_ms`.
    #[doc(hidden)]
    fn delete_sent<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a Table,
        before_ms: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

    /// Records `message_id` for `consumer` unless it is there; whether it
    /// was not.
    #[doc(hidden)]
    fn record_once<'a>(
        tx: &'a mut Self::Connection,
        table: &'a Table,
        consumer: &'a str,
        message_id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

    /// Deletes up to `limit` inbox rows recorded at or before `before_ms`.
    #[doc(hidden)]
    fn delete_recorded<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a Table,
        before_ms: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
}

/// Implements [`OutboxDatabase`] for one sqlx database.
macro_rules! outbox_database {
    ($feature:literal, $db:ty) => {
        #[cfg(feature = $feature)]
        impl OutboxDatabase for $db {
            fn insert_message<'a>(
                tx: &'a mut Self::Connection,
                row: NewMessage<'a>,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    let statement = sql::insert_message(Self::DIALECT, row.table);
                    sqlx::query(sqlx::AssertSqlSafe(statement))
                        .bind(row.message_id)
                        .bind(row.destination)
                        .bind(row.payload)
                        .bind(row.headers)
                        .bind(row.created_ms)
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            fn unsent<'a>(
                pool: &'a sqlx::Pool<Self>,
                table: &'a Table,
                limit: u32,
            ) -> BoxFuture<'a, Result<Vec<OutboxMessage>, sqlx::Error>> {
                Box::pin(async move {
                    let statement = sql::unsent(Self::DIALECT, table);
                    let rows: Vec<(i64, String, String, Vec<u8>, String)> =
                        sqlx::query_as(sqlx::AssertSqlSafe(statement))
                            .bind(i64::from(limit))
                            .fetch_all(pool)
                            .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(sequence, message_id, destination, payload, headers)| {
                            OutboxMessage {
                                sequence,
                                message_id,
                                destination,
                                payload,
                                headers: decode_headers(&headers),
                            }
                        })
                        .collect())
                })
            }

            fn mark_sent<'a>(
                pool: &'a sqlx::Pool<Self>,
                table: &'a Table,
                sequence: i64,
                now_ms: i64,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    let statement = sql::mark_sent(Self::DIALECT, table);
                    sqlx::query(sqlx::AssertSqlSafe(statement))
                        .bind(now_ms)
                        .bind(sequence)
                        .execute(pool)
                        .await?;
                    Ok(())
                })
            }

            fn unsent_summary<'a>(
                pool: &'a sqlx::Pool<Self>,
                table: &'a Table,
            ) -> BoxFuture<'a, Result<(i64, Option<i64>), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query_as(sqlx::AssertSqlSafe(sql::unsent_summary(table)))
                        .fetch_one(pool)
                        .await
                })
            }

            fn delete_sent<'a>(
                pool: &'a sqlx::Pool<Self>,
                table: &'a Table,
                before_ms: i64,
                limit: u32,
            ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    let statement = sql::delete_sent(Self::DIALECT, table);
                    let done = sqlx::query(sqlx::AssertSqlSafe(statement))
                        .bind(before_ms)
                        .bind(i64::from(limit))
                        .execute(pool)
                        .await?;
                    Ok(done.rows_affected())
                })
            }

            fn record_once<'a>(
                tx: &'a mut Self::Connection,
                table: &'a Table,
                consumer: &'a str,
                message_id: &'a str,
                now_ms: i64,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                Box::pin(async move {
                    let statement = sql::record_once(Self::DIALECT, table);
                    let done = sqlx::query(sqlx::AssertSqlSafe(statement))
                        .bind(consumer)
                        .bind(message_id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn delete_recorded<'a>(
                pool: &'a sqlx::Pool<Self>,
                table: &'a Table,
                before_ms: i64,
                limit: u32,
            ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    let statement = sql::delete_recorded(Self::DIALECT, table);
                    let done = sqlx::query(sqlx::AssertSqlSafe(statement))
                        .bind(before_ms)
                        .bind(i64::from(limit))
                        .execute(pool)
                        .await?;
                    Ok(done.rows_affected())
                })
            }
        }
    };
}

outbox_database!("sqlx-postgres", sqlx::Postgres);
outbox_database!("sqlx-mysql", sqlx::MySql);
outbox_database!("sqlx-sqlite", sqlx::Sqlite);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_their_stored_form() {
        let mut h = BTreeMap::new();
        h.insert(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        h.insert(
            "baggage".to_owned(),
            "paytrace.flow=checkout,paytrace.flow_id=ord=1".to_owned(),
        );
        assert_eq!(decode_headers(&encode_headers(&h)), h);
    }

    #[test]
    fn message_ids_longer_than_the_column_are_refused() {
        assert!(check_message_id(&"x".repeat(MAX_MESSAGE_ID_LEN)).is_ok());
        assert!(check_message_id(&"x".repeat(MAX_MESSAGE_ID_LEN + 1)).is_err());
        assert!(check_message_id("").is_err());
    }

    #[test]
    fn each_dialect_has_its_own_insert_once() {
        let t = Table::parse("inbox").expect("a name");
        assert!(sql::record_once(Dialect::MySql, &t).starts_with("INSERT IGNORE"));
        assert!(sql::record_once(Dialect::Postgres, &t).contains("$3"));
        assert!(sql::record_once(Dialect::Sqlite, &t).ends_with("DO NOTHING"));
    }
}
