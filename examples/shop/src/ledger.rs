//! The participants' ledgers in a real database (SQLite by default,
//! PostgreSQL with `--database-url postgres://…`), each phase's business
//! write in the same transaction as the TCC fence's row
//! ([`paytrace::tcc::SqlFence`]).
//!
//! Two tables, shared by every participant using the database:
//! - `shop_holds`: one row per branch, `(xid, branch_id)`, with what the
//!   Try held (`sku` for inventory, `amount`: units, cents or points) and
//!   its state: `held` after the Try, `done` after the Confirm, `released`
//!   after the Cancel.
//! - `shop_stock`: per SKU, `available`, `reserved` and `sold`. A Try
//!   reserves with one conditional update (`available >= qty` in its
//!   `WHERE`), so the database, not the application, makes overselling
//!   impossible; `available + reserved + sold` stays the initial stock.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use paytrace::tcc::{BranchKey, Phase};
//! use paytrace_demo::ledger::{Hold, Ledger};
//!
//! let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
//! let ledger = Ledger::open("sqlite:///tmp/inventory.db", 8).await?;
//! let fence = svc.tcc_sql("inventory");
//! ledger.create(&fence, 100).await?;
//! let key = BranchKey { xid: "ord_1".into(), branch_id: "ord_1-inventory".into() };
//! let hold = Hold { sku: Some(7), amount: 1 };
//! ledger.fenced(&fence, Phase::Try, &key, hold, std::time::Duration::ZERO).await?;
//! assert_eq!(ledger.levels(7).await?.reserved, 1);
//! # Ok(()) }
//! ```

use std::str::FromStr;
use std::time::Duration;

use paytrace::messaging::outbox::{Applied, Inbox, InboxError, Outbox, OutboxError, OutboxMessage};
use paytrace::tcc::{BranchError, BranchKey, BranchOutcome, Phase, SqlFence};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::stock::Levels;

/// How long a phase waits for a connection before it fails.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a ledger call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database failed, or could not be reached.
    #[error("the ledger's database failed: {0}")]
    Db(#[from] sqlx::Error),
    /// The URL names a database the demo does not run on.
    #[error(
        "{0}: the demo keeps its ledgers in SQLite (sqlite://PATH) or PostgreSQL (postgres://…)"
    )]
    UnsupportedUrl(String),
    /// The fence's table could not be created.
    #[error("the fence's table: {0}")]
    Fence(#[from] paytrace::tcc::FenceError),
    /// Too little stock left: the Try is refused.
    #[error("not enough stock")]
    Insufficient,
    /// Phase two found no held row for its branch (a fenced participant
    /// never should).
    #[error("no held row for this branch")]
    NotHeld,
    /// The outbox or the inbox failed.
    #[error("the outbox: {0}")]
    Outbox(#[from] OutboxError),
}

/// A message to write into an outbox with a phase's business change.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The outbox it goes into.
    pub outbox: &'a Outbox,
    /// Where the relay sends it.
    pub destination: &'a str,
    /// Its id, the consumer's deduplication key.
    pub id: &'a str,
    /// Its body.
    pub payload: &'a [u8],
}

/// What a Try holds: the item (inventory only) and how much of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The item reserved, for inventory; `None` for coupons, points and
    /// payments.
    pub sku: Option<u32>,
    /// Units, cents or points.
    pub amount: i64,
}

/// What a fenced call answered: the fence's outcome, or why it failed.
pub type Answer = Result<BranchOutcome<()>, BranchError<LedgerError>>;

/// A connection held out of the ledger's pool (the demo's chaos holds
/// some to exhaust the pool); returned when dropped.
#[derive(Debug)]
pub enum HeldConnection {
    /// From the SQLite pool.
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    /// From the PostgreSQL pool.
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

/// A participant's ledger: a pool of its database.
#[derive(Clone, Debug)]
pub enum Ledger {
    /// SQLite, in one file (WAL, a writer at a time).
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
}

/// The ledger's statements on one database: `$numbered` whether parameters
/// are `$1` (PostgreSQL) rather than `?`.
macro_rules! ledger_on {
    ($name:ident, $db:ty, $numbered:expr) => {
        mod $name {
            use std::time::Duration;

            use paytrace::tcc::{BranchKey, Phase};

            use super::{Hold, LedgerError};
            use crate::stock::Levels;

            type Conn = <$db as sqlx::Database>::Connection;

            /// `sql` with its `?` parameters numbered when the database wants it.
            fn q(sql: &'static str) -> sqlx::AssertSqlSafe<String> {
                if !$numbered {
                    return sqlx::AssertSqlSafe(sql.to_owned());
                }
                let mut out = String::with_capacity(sql.len() + 8);
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                sqlx::AssertSqlSafe(out)
            }

            pub(super) async fn create(
                pool: &sqlx::Pool<$db>,
                initial_stock: i64,
            ) -> Result<(), sqlx::Error> {
                for ddl in [
                    "CREATE TABLE IF NOT EXISTS shop_stock (sku BIGINT PRIMARY KEY, \
                     available BIGINT NOT NULL, reserved BIGINT NOT NULL, sold BIGINT NOT NULL, \
                     initial BIGINT NOT NULL, CHECK (available >= 0 AND reserved >= 0))",
                    "CREATE TABLE IF NOT EXISTS shop_holds (xid VARCHAR(128) NOT NULL, \
                     branch_id VARCHAR(128) NOT NULL, sku BIGINT, amount BIGINT NOT NULL, \
                     state VARCHAR(16) NOT NULL, PRIMARY KEY (xid, branch_id))",
                ] {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(pool).await?;
                }
                // The stock every item starts with, for the SKUs not seen yet.
                sqlx::query(q("CREATE TABLE IF NOT EXISTS shop_settings (name VARCHAR(32) PRIMARY KEY, value BIGINT NOT NULL)"))
                    .execute(pool)
                    .await?;
                sqlx::query(q(
                    "INSERT INTO shop_settings (name, value) VALUES ('initial_stock', ?) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                ))
                .bind(initial_stock)
                .execute(pool)
                .await?;
                Ok(())
            }

            /// The business side of `phase`, in the transaction `tx`
            /// (after `think`, the time the demo's queries stand for).
            /// `Ok(false)`: nothing to do (a repeated Try, or phase two
            /// without a held row).
            pub(super) async fn business(
                tx: &mut Conn,
                phase: Phase,
                key: &BranchKey,
                hold: Hold,
                think: Duration,
            ) -> Result<bool, LedgerError> {
                tokio::time::sleep(think).await;
                match phase {
                    Phase::Try => {
                        let booked = sqlx::query(q(
                            "INSERT INTO shop_holds (xid, branch_id, sku, amount, state) \
                             VALUES (?, ?, ?, ?, 'held') ON CONFLICT (xid, branch_id) DO NOTHING",
                        ))
                        .bind(&key.xid)
                        .bind(&key.branch_id)
                        .bind(hold.sku.map(i64::from))
                        .bind(hold.amount)
                        .execute(&mut *tx)
                        .await?;
                        if booked.rows_affected() == 0 {
                            return Ok(false);
                        }
                        let Some(sku) = hold.sku else { return Ok(true) };
                        sqlx::query(q(
                            "INSERT INTO shop_stock (sku, available, reserved, sold, initial) \
                             SELECT ?, value, 0, 0, value FROM shop_settings WHERE name = 'initial_stock' \
                             ON CONFLICT (sku) DO NOTHING",
                        ))
                        .bind(i64::from(sku))
                        .execute(&mut *tx)
                        .await?;
                        let reserved = sqlx::query(q(
                            "UPDATE shop_stock SET available = available - ?, reserved = reserved + ? \
                             WHERE sku = ? AND available >= ?",
                        ))
                        .bind(hold.amount)
                        .bind(hold.amount)
                        .bind(i64::from(sku))
                        .bind(hold.amount)
                        .execute(&mut *tx)
                        .await?;
                        if reserved.rows_affected() != 1 {
                            return Err(LedgerError::Insufficient);
                        }
                        Ok(true)
                    }
                    Phase::Confirm | Phase::Cancel => {
                        let to = if phase == Phase::Confirm { "done" } else { "released" };
                        let held: Option<(Option<i64>, i64)> = sqlx::query_as(q(
                            "UPDATE shop_holds SET state = ? WHERE xid = ? AND branch_id = ? \
                             AND state = 'held' RETURNING sku, amount",
                        ))
                        .bind(to)
                        .bind(&key.xid)
                        .bind(&key.branch_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some((sku, amount)) = held else { return Ok(false) };
                        let Some(sku) = sku else { return Ok(true) };
                        let settle = if phase == Phase::Confirm {
                            "UPDATE shop_stock SET reserved = reserved - ?, sold = sold + ? WHERE sku = ?"
                        } else {
                            "UPDATE shop_stock SET reserved = reserved - ?, available = available + ? WHERE sku = ?"
                        };
                        sqlx::query(q(settle))
                            .bind(amount)
                            .bind(amount)
                            .bind(sku)
                            .execute(&mut *tx)
                            .await?;
                        Ok(true)
                    }
                }
            }

            pub(super) async fn levels(
                pool: &sqlx::Pool<$db>,
                sku: u32,
            ) -> Result<Levels, sqlx::Error> {
                let row: Option<(i64, i64, i64)> = sqlx::query_as(q(
                    "SELECT available, reserved, sold FROM shop_stock WHERE sku = ?",
                ))
                .bind(i64::from(sku))
                .fetch_optional(pool)
                .await?;
                if let Some((available, reserved, sold)) = row {
                    return Ok(Levels { available, reserved, sold });
                }
                let initial: Option<i64> = sqlx::query_scalar(q(
                    "SELECT value FROM shop_settings WHERE name = 'initial_stock'",
                ))
                .fetch_optional(pool)
                .await?;
                Ok(Levels {
                    available: initial.unwrap_or(0),
                    ..Levels::default()
                })
            }

            pub(super) async fn holds(
                pool: &sqlx::Pool<$db>,
            ) -> Result<Vec<(String, String, String)>, sqlx::Error> {
                sqlx::query_as(q("SELECT xid, branch_id, state FROM shop_holds"))
                    .fetch_all(pool)
                    .await
            }
        }
    };
}

ledger_on!(sqlite, sqlx::Sqlite, false);
ledger_on!(postgres, sqlx::Postgres, true);

/// Tries `op` until it succeeds or has failed `attempts` times: two
/// processes creating the same PostgreSQL table at once may collide on its
/// catalog row, and the loser's retry then finds it made.
async fn with_retries<F>(attempts: u32, mut op: impl FnMut() -> F) -> Result<(), LedgerError>
where
    F: Future<Output = Result<(), LedgerError>>,
{
    let mut tried = 1;
    loop {
        match op().await {
            Ok(()) => return Ok(()),
            Err(e) if tried >= attempts => return Err(e),
            Err(_) => {
                tried += 1;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(tried))).await;
            }
        }
    }
}

impl Ledger {
    /// A pool of at most `connections` connections to `url`
    /// (`sqlite://PATH`, created if missing, in WAL mode; or
    /// `postgres://…`); an acquisition waits up to [`ACQUIRE_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`LedgerError::UnsupportedUrl`] for another scheme,
    /// [`LedgerError::Db`] when the database cannot be opened.
    pub async fn open(url: &str, connections: u32) -> Result<Self, LedgerError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            Ok(Self::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            Ok(Self::Postgres(pool))
        } else {
            Err(LedgerError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Creates the fence's table and the ledger's, if missing; items not
    /// seen before start with `initial_stock` units.
    ///
    /// # Errors
    ///
    /// When a statement fails (three times).
    pub async fn create(&self, fence: &SqlFence, initial_stock: i64) -> Result<(), LedgerError> {
        with_retries(3, || async {
            match self {
                Self::Sqlite(pool) => {
                    fence.create_table(pool).await?;
                    sqlite::create(pool, initial_stock).await?;
                }
                Self::Postgres(pool) => {
                    fence.create_table(pool).await?;
                    postgres::create(pool, initial_stock).await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// USE metrics of the pool as `svc`'s resource `resource`, for
    /// [`SqlFence::pool_metrics`].
    pub fn pool_metrics(
        &self,
        svc: &paytrace::ServiceTelemetry,
        resource: &str,
    ) -> paytrace::ResourceMetrics {
        match self {
            Self::Sqlite(pool) => svc.sqlx_pool(resource, pool),
            Self::Postgres(pool) => svc.sqlx_pool(resource, pool),
        }
    }

    /// `phase` of `key` through `fence`: the fence's row and the business
    /// write in one transaction. A Try without stock is refused
    /// ([`LedgerError::Insufficient`], nothing committed).
    ///
    /// # Errors
    ///
    /// As [`SqlFence::run`]; the handler's are [`LedgerError`]s.
    pub async fn fenced(
        &self,
        fence: &SqlFence,
        phase: Phase,
        key: &BranchKey,
        hold: Hold,
        think: Duration,
    ) -> Answer {
        // Behind the fence a repeat never reaches the handler, and phase
        // two always finds the Try's row.
        let strict = |done: bool| {
            if done {
                Ok(())
            } else {
                Err(LedgerError::NotHeld)
            }
        };
        match self {
            Self::Sqlite(pool) => {
                fence
                    .run(pool, phase, key, async |tx| {
                        strict(sqlite::business(tx, phase, key, hold, think).await?)
                    })
                    .await
            }
            Self::Postgres(pool) => {
                fence
                    .run(pool, phase, key, async |tx| {
                        strict(postgres::business(tx, phase, key, hold, think).await?)
                    })
                    .await
            }
        }
    }

    /// [`Ledger::fenced`], with `message` written into its outbox in the
    /// same transaction: sent if and only if the phase committed.
    ///
    /// # Errors
    ///
    /// As [`Ledger::fenced`]; the outbox's are [`LedgerError::Outbox`].
    pub async fn fenced_with_message(
        &self,
        fence: &SqlFence,
        phase: Phase,
        key: &BranchKey,
        (hold, think): (Hold, Duration),
        message: Message<'_>,
    ) -> Answer {
        let Message {
            outbox,
            destination,
            id,
            payload,
        } = message;
        macro_rules! with_message {
            ($pool:expr, $db:ident) => {
                fence
                    .run($pool, phase, key, async |tx| {
                        if !$db::business(tx, phase, key, hold, think).await? {
                            return Err(LedgerError::NotHeld);
                        }
                        outbox.enqueue(tx, destination, id, payload).await?;
                        Ok(())
                    })
                    .await
            };
        }
        match self {
            Self::Sqlite(pool) => with_message!(pool, sqlite),
            Self::Postgres(pool) => with_message!(pool, postgres),
        }
    }

    /// Creates `outbox`'s table if missing.
    ///
    /// # Errors
    ///
    /// When the database refuses it.
    pub async fn create_outbox(&self, outbox: &Outbox) -> Result<(), LedgerError> {
        match self {
            Self::Sqlite(pool) => outbox.create_table(pool).await?,
            Self::Postgres(pool) => outbox.create_table(pool).await?,
        }
        Ok(())
    }

    /// Creates `inbox`'s table if missing.
    ///
    /// # Errors
    ///
    /// When the database refuses it.
    pub async fn create_inbox(&self, inbox: &Inbox) -> Result<(), LedgerError> {
        match self {
            Self::Sqlite(pool) => inbox.create_table(pool).await?,
            Self::Postgres(pool) => inbox.create_table(pool).await?,
        }
        Ok(())
    }

    /// Publishes `outbox`'s next committed messages through `publish` (see
    /// [`OutboxRelay::publish_batch`](paytrace::messaging::outbox::OutboxRelay::publish_batch));
    /// how many.
    ///
    /// # Errors
    ///
    /// When the database or `publish` failed.
    pub async fn publish_outbox<Fut, E: std::fmt::Display>(
        &self,
        outbox: &Outbox,
        publish: impl FnMut(OutboxMessage) -> Fut,
    ) -> Result<usize, OutboxError>
    where
        Fut: Future<Output = Result<(), E>>,
    {
        match self {
            Self::Sqlite(pool) => outbox.relay(pool.clone()).publish_batch(publish).await,
            Self::Postgres(pool) => outbox.relay(pool.clone()).publish_batch(publish).await,
        }
    }

    /// Runs `effect` for message `id` unless `inbox` recorded it before;
    /// records it when `effect` succeeded (see
    /// [`Inbox::run`]: the record commits after the effect, so an effect
    /// whose record was lost runs again; the shop's are idempotent).
    ///
    /// # Errors
    ///
    /// When `effect` or the database failed (nothing recorded).
    pub async fn apply_once<T, E>(
        &self,
        inbox: &Inbox,
        id: &str,
        effect: impl AsyncFnOnce() -> Result<T, E>,
    ) -> Result<Applied<T>, InboxError<E>> {
        match self {
            Self::Sqlite(pool) => inbox.run(pool, id, async |_tx| effect().await).await,
            Self::Postgres(pool) => inbox.run(pool, id, async |_tx| effect().await).await,
        }
    }

    /// `phase` of `key` without a fence, in a transaction of its own, as a
    /// participant that has not adopted one: a repeated Try changes
    /// nothing, phase two without a held row does nothing, and a Try after
    /// its Cancel reserves (the hanging Try the fence would refuse).
    /// Returns whether it changed anything.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Insufficient`], or the database's.
    pub async fn unfenced(
        &self,
        phase: Phase,
        key: &BranchKey,
        hold: Hold,
        think: Duration,
    ) -> Result<bool, LedgerError> {
        match self {
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let done = sqlite::business(&mut tx, phase, key, hold, think).await?;
                tx.commit().await?;
                Ok(done)
            }
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let done = postgres::business(&mut tx, phase, key, hold, think).await?;
                tx.commit().await?;
                Ok(done)
            }
        }
    }

    /// Deletes the fence's rows of branches finished `retention` ago and
    /// refreshes the pending count (see [`SqlFence::clean`]).
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn clean(
        &self,
        fence: &SqlFence,
        retention: Duration,
    ) -> Result<u64, paytrace::tcc::FenceError> {
        match self {
            Self::Sqlite(pool) => fence.clean(pool, retention, 500).await,
            Self::Postgres(pool) => fence.clean(pool, retention, 500).await,
        }
    }

    /// Holds a connection until the value is dropped.
    ///
    /// # Errors
    ///
    /// When none came free within [`ACQUIRE_TIMEOUT`].
    pub async fn hold_connection(&self) -> Result<HeldConnection, LedgerError> {
        Ok(match self {
            Self::Sqlite(pool) => HeldConnection::Sqlite(pool.acquire().await?),
            Self::Postgres(pool) => HeldConnection::Postgres(pool.acquire().await?),
        })
    }

    /// The stock levels of `sku`.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn levels(&self, sku: u32) -> Result<Levels, LedgerError> {
        Ok(match self {
            Self::Sqlite(pool) => sqlite::levels(pool, sku).await?,
            Self::Postgres(pool) => postgres::levels(pool, sku).await?,
        })
    }

    /// Every branch's row: `(xid, branch_id, state)`, the state `held`,
    /// `done` or `released`.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn holds(&self) -> Result<Vec<(String, String, String)>, LedgerError> {
        Ok(match self {
            Self::Sqlite(pool) => sqlite::holds(pool).await?,
            Self::Postgres(pool) => postgres::holds(pool).await?,
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}
