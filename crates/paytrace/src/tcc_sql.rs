//! [`SqlFence`]: the TCC fence as a row in the participant's own database,
//! written in the same transaction as the business update (sqlx; features
//! `sqlx-postgres`, `sqlx-mysql`, `sqlx-sqlite`).
//!
//! # The rules
//!
//! 1. **One transaction.** [`SqlFence::run`] begins a transaction, decides
//!    the phase on the branch's row ([`decide`], unchanged), runs the
//!    handler with that transaction, and commits both together. A handler
//!    that fails rolls both back; so does a call whose future is dropped
//!    (sqlx rolls back a transaction dropped uncommitted) and a process
//!    that dies (the database does). "Done" is answered only after the
//!    commit: a repeat that finds the branch's new state finds the
//!    business effect committed with it.
//! 2. **The database orders concurrent calls.** The row's primary key and
//!    the database's row lock, not an application lock: a Try and a Cancel
//!    of one branch from two processes both insert the row; one insert
//!    waits for the other's transaction and then sees its row. Calls for a
//!    branch whose row another transaction holds wait for it (up to the
//!    database's lock timeout), then decide on what it committed.
//! 5. **A dropped call closes its connection.** Dropped before its
//!    transaction was settled, a call closes the connection it took from the
//!    pool rather than returning it (the server rolls back), so that no
//!    half-begun transaction is handed to the next borrower.
//! 3. **Empty rollbacks are remembered.** A Cancel with no row commits a
//!    `rolled_back_empty` row (and skips the handler), so that a late Try is
//!    refused as `hanging_try` until the cleaner removes the row.
//! 4. **Retention.** [`SqlFence::clean`] deletes rows of finished branches
//!    at least the age you give it, in batches; tried branches stay (they
//!    are frozen, and `paytrace_tcc_pending` counts them). Keep finished
//!    rows longer than any Try can be delayed, or a very late Try runs.
//!
//! On SQLite the transaction begins with `BEGIN IMMEDIATE` (it takes the
//! write lock first, so that the read-then-write cannot fail with a busy
//! snapshot); PostgreSQL and MySQL use their default isolation (the row is
//! read with `SELECT … FOR UPDATE`, which reads the latest committed row at
//! any level). A deadlock or a lock timeout reported by the database is
//! [`FenceError::Busy`]: retry the phase.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::tcc::{
    BoxFuture, BranchError, BranchKey, BranchOutcome, BranchState, Decision, FenceError, Meter,
    Phase, decide,
};

/// Longest transaction id or branch id the table takes (characters).
pub const MAX_ID_LEN: usize = 128;

/// The fence's table name unless [`SqlFence::table`] sets another.
pub const DEFAULT_TABLE: &str = "paytrace_tcc_fence";

/// A TCC resource whose fence is a row in the participant's database,
/// committed with the business update. Made by
/// [`crate::ServiceTelemetry::tcc_sql`].
///
/// ```no_run
/// # #[cfg(feature = "sqlx-sqlite")]
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use paytrace::tcc::{BranchKey, BranchOutcome, Phase};
///
/// let pool = sqlx::SqlitePool::connect("sqlite://shop.db?mode=rwc").await?;
/// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
/// let inventory = svc.tcc_sql("inventory");
/// inventory.create_table(&pool).await?;
///
/// let branch = BranchKey { xid: "ord_1".into(), branch_id: "inventory".into() };
/// let reserved = inventory
///     .run(&pool, Phase::Try, &branch, async |tx| {
///         // The business update, in the fence's transaction.
///         sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE sku = 1 AND reserved < on_hand")
///             .execute(&mut **tx)
///             .await
///     })
///     .await?;
/// assert!(matches!(reserved, BranchOutcome::Ran(_)));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqlFence {
    meter: Meter,
    table: Table,
    /// Tried branches and the oldest one's age, as the last
    /// [`SqlFence::clean`] counted them (the pending gauge reads this).
    pending: Arc<Mutex<(usize, Duration)>>,
    /// Where each call's wait for a connection is recorded, if anywhere.
    pool_metrics: Option<crate::ResourceMetrics>,
}

/// A validated table name: `name` or `schema.name`, each part letters,
/// digits and `_`, not starting with a digit.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table(String);

impl Table {
    pub(crate) fn parse(name: &str) -> Result<Self, FenceError> {
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 63
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() <= 2 && parts.iter().all(|p| part_ok(p)) {
            Ok(Self(name.to_owned()))
        } else {
            Err(FenceError::Invalid(format!(
                "{name:?} is not a table name: use letters, digits and _, optionally schema.table"
            )))
        }
    }

    /// The name as given (`table` or `schema.table`).
    pub(crate) fn name(&self) -> &str {
        &self.0
    }

    /// The name without its schema, for the index's name.
    pub(crate) fn bare(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or(&self.0)
    }
}

impl SqlFence {
    pub(crate) fn new(meter: Meter) -> Self {
        let pending: Arc<Mutex<(usize, Duration)>> = Arc::default();
        let weak = Arc::downgrade(&pending);
        meter.sample_pending(move || {
            weak.upgrade()
                .map(|p| *p.lock().unwrap_or_else(|e| e.into_inner()))
        });
        Self {
            meter,
            table: Table(DEFAULT_TABLE.to_owned()),
            pending,
            pool_metrics: None,
        }
    }

    /// Records how long each call waited for a connection of its pool
    /// (`paytrace_resource_wait_seconds`) and counts acquisitions that
    /// timed out (`paytrace_resource_errors_total{kind="timeout"}`) or
    /// could not connect (`kind="connect"`) as `metrics`', the pool's
    /// resource from [`crate::ServiceTelemetry::sqlx_pool`].
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
    /// let fence = svc.tcc_sql("inventory").pool_metrics(svc.resource("inventory_db"));
    /// # drop(fence);
    /// ```
    pub fn pool_metrics(mut self, metrics: crate::ResourceMetrics) -> Self {
        self.pool_metrics = Some(metrics);
        self
    }

    /// Keeps the rows in `name` (`table` or `schema.table`) instead of
    /// [`DEFAULT_TABLE`].
    ///
    /// # Errors
    ///
    /// [`FenceError::Invalid`] when `name` is not a plain SQL identifier.
    ///
    /// ```
    /// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
    /// let fence = svc.tcc_sql("inventory").table("shop.tcc_fence").unwrap();
    /// assert!(svc.tcc_sql("inventory").table("fence; DROP TABLE stock").is_err());
    /// # drop(fence);
    /// ```
    pub fn table(mut self, name: &str) -> Result<Self, FenceError> {
        self.table = Table::parse(name)?;
        Ok(self)
    }

    /// The statements that create the fence's table and its index on
    /// database `DB`, for a migration of your own.
    ///
    /// ```
    /// # #[cfg(feature = "sqlx-postgres")] {
    /// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
    /// let ddl = svc.tcc_sql("inventory").ddl::<sqlx::Postgres>();
    /// assert!(ddl[0].starts_with("CREATE TABLE IF NOT EXISTS paytrace_tcc_fence"));
    /// # }
    /// ```
    pub fn ddl<DB: FenceDatabase>(&self) -> Vec<String> {
        DB::DIALECT.ddl(&self.table)
    }

    /// Creates the table and its index if they do not exist.
    ///
    /// # Errors
    ///
    /// [`FenceError::Store`] when the database refuses a statement.
    pub async fn create_table<DB: FenceDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<(), FenceError> {
        for statement in self.ddl::<DB>() {
            DB::execute(pool, statement).await.map_err(store_error)?;
        }
        Ok(())
    }

    /// The stage of `phase` of `branch` on this resource, named `name`; run
    /// the phase inside it (see [`crate::tcc::TccResource::stage`]).
    pub fn stage(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        phase: Phase,
        branch: &BranchKey,
    ) -> crate::Stage {
        self.meter.stage(name, phase, branch)
    }

    /// Runs `phase` of `branch` in one new transaction of `pool`: decides
    /// it on the branch's row, runs `handler` with the transaction when the
    /// fence allows, and commits the row with the handler's writes (the
    /// module's rules). A skipped phase commits only the fence's row (an
    /// empty rollback's); a refused one, or a failed handler, rolls back.
    ///
    /// Do the business writes through the transaction the handler gets
    /// (`&mut **tx` is the connection); writes through the pool would
    /// commit on their own, outside the fence.
    ///
    /// # Errors
    ///
    /// [`BranchError::Rejected`] when the fence refuses the phase;
    /// [`BranchError::Handler`] when the handler failed (nothing
    /// committed: retry); [`BranchError::Fence`] when the database failed
    /// or the ids are too long, [`FenceError::Busy`] on a deadlock or lock
    /// timeout (nothing committed: retry).
    pub async fn run<DB, T, E, F>(
        &self,
        pool: &sqlx::Pool<DB>,
        phase: Phase,
        branch: &BranchKey,
        handler: F,
    ) -> Result<BranchOutcome<T>, BranchError<E>>
    where
        DB: FenceDatabase,
        F: AsyncFnOnce(&mut sqlx::Transaction<'_, DB>) -> Result<T, E>,
    {
        use paytrace_semconv::tcc_phase_outcome as outcome;
        check_ids(branch)?;
        // Counts the call `cancelled` if dropped before it answered; the
        // database rolls the transaction back.
        let mut call = Unanswered {
            meter: &self.meter,
            phase,
            answered: false,
        };
        let failed = |e: FenceError| self.meter.fence_failed(phase, e);
        let asked = std::time::Instant::now();
        let acquired = pool.acquire().await;
        if let Some(m) = &self.pool_metrics {
            match &acquired {
                Ok(_) => m.observe_wait(asked.elapsed()),
                Err(sqlx::Error::PoolTimedOut) => m.error("timeout"),
                Err(_) => m.error("connect"),
            }
        }
        let mut checkout = Checkout {
            conn: acquired.map_err(|e| failed(classify(e, phase)))?,
            settled: false,
        };
        let mut tx = DB::begin(&mut checkout.conn)
            .await
            .map_err(|e| failed(classify(e, phase)))?;
        let decision = self
            .decide_in::<DB>(&mut tx, phase, branch)
            .await
            .map_err(|e| failed(classify(e, phase)))?;
        self.meter.note_decision(phase, decision);
        let answer = match decision {
            Decision::Skip(a) => {
                // An empty rollback's row must persist.
                tx.commit().await.map_err(|e| failed(classify(e, phase)))?;
                self.meter.skipped(phase, a)
            }
            Decision::Reject(a) => {
                tx.rollback()
                    .await
                    .map_err(|e| failed(classify(e, phase)))?;
                self.meter.rejected(phase, a)
            }
            Decision::Run => match handler(&mut tx).await {
                Ok(value) => {
                    tx.commit().await.map_err(|e| failed(classify(e, phase)))?;
                    self.meter.count_phase(phase, outcome::OK);
                    Ok(BranchOutcome::Ran(value))
                }
                Err(e) => {
                    tx.rollback()
                        .await
                        .map_err(|e| failed(classify(e, phase)))?;
                    self.meter.count_phase(phase, outcome::ERROR);
                    Err(BranchError::Handler(e))
                }
            },
        };
        checkout.settled = true;
        call.answered = true;
        answer
    }

    /// The decision for `phase` on `branch`'s row in `tx`, with the row
    /// inserted or updated to the state it leaves (not yet committed).
    async fn decide_in<DB: FenceDatabase>(
        &self,
        tx: &mut DB::Connection,
        phase: Phase,
        branch: &BranchKey,
    ) -> Result<Decision, sqlx::Error> {
        let now = now_ms();
        let (first, created) = decide(None, phase);
        if let Some(state) = created {
            let row = Row {
                table: &self.table,
                branch,
                resource: self.meter.resource(),
                state,
                now_ms: now,
            };
            if DB::insert_if_absent(tx, row).await? {
                return Ok(first);
            }
        }
        let current = match DB::lock_state(tx, &self.table, branch).await? {
            None => None,
            Some(s) => Some(s.parse::<BranchState>().map_err(|e| {
                sqlx::Error::Protocol(format!("the fence table {}: {e}", self.table.0))
            })?),
        };
        let (decision, next) = decide(current, phase);
        if let (Some(next), true) = (next, next != current) {
            let row = Row {
                table: &self.table,
                branch,
                resource: self.meter.resource(),
                state: next,
                now_ms: now,
            };
            DB::update_state(tx, row).await?;
        }
        Ok(decision)
    }

    /// Deletes the rows of finished branches (confirmed, cancelled, rolled
    /// back empty) last changed at least `retention` ago, `batch` rows per
    /// statement, each its own transaction; then counts the tried branches
    /// for `paytrace_tcc_pending`. Returns how many rows it deleted. Run it
    /// every minute or so from a task of your own.
    ///
    /// # Errors
    ///
    /// [`FenceError::Store`] when the database fails (the batches before
    /// stay deleted).
    pub async fn clean<DB: FenceDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
        retention: Duration,
        batch: u32,
    ) -> Result<u64, FenceError> {
        let now = now_ms();
        let before = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let batch = batch.max(1);
        let mut deleted = 0;
        loop {
            let n = DB::delete_finished(pool, &self.table, before, batch)
                .await
                .map_err(store_error)?;
            deleted += n;
            if n < u64::from(batch) {
                break;
            }
        }
        let (count, oldest) = DB::pending(pool, &self.table, self.meter.resource())
            .await
            .map_err(store_error)?;
        let age = oldest.map_or(Duration::ZERO, |ms| {
            Duration::from_millis(u64::try_from(now.saturating_sub(ms)).unwrap_or(0))
        });
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) =
            (usize::try_from(count).unwrap_or(usize::MAX), age);
        Ok(deleted)
    }

    /// What the last [`SqlFence::clean`] counted: tried branches and the
    /// oldest one's age.
    pub fn pending_now(&self) -> (usize, Duration) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection a call runs on. Dropped before the call settled its
/// transaction (committed or rolled back, and seen to), it closes the
/// connection instead of returning it to the pool: the server then rolls
/// back whatever the call began. sqlx 0.9 returns a connection whose `BEGIN`
/// was cancelled in flight to the pool still inside the transaction
/// (transact-rs/sqlx#4393, #4385), where the next borrower's writes would
/// never commit.
pub(crate) struct Checkout<DB: sqlx::Database> {
    pub(crate) conn: sqlx::pool::PoolConnection<DB>,
    pub(crate) settled: bool,
}

impl<DB: sqlx::Database> Drop for Checkout<DB> {
    fn drop(&mut self) {
        if !self.settled {
            self.conn.close_on_drop();
        }
    }
}

/// Counts a call that never answered (its future dropped) as `cancelled`.
struct Unanswered<'a> {
    meter: &'a Meter,
    phase: Phase,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.meter
                .count_phase(self.phase, paytrace_semconv::tcc_phase_outcome::CANCELLED);
        }
    }
}

fn check_ids(branch: &BranchKey) -> Result<(), FenceError> {
    for (what, id) in [("xid", &branch.xid), ("branch id", &branch.branch_id)] {
        if id.is_empty() || id.chars().count() > MAX_ID_LEN {
            return Err(FenceError::Invalid(format!(
                "the {what} must be 1 to {MAX_ID_LEN} characters, not {}",
                id.chars().count()
            )));
        }
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn store_error(e: sqlx::Error) -> FenceError {
    FenceError::Store(e.to_string())
}

/// A deadlock, a serialization failure, a lock timeout or a busy SQLite
/// database is [`FenceError::Busy`] (retry); anything else a store error.
fn classify(e: sqlx::Error, phase: Phase) -> FenceError {
    if let sqlx::Error::Database(db) = &e {
        let code = db.code().unwrap_or_default();
        let message = db.message();
        // PostgreSQL: serialization_failure, deadlock_detected,
        // lock_not_available. MySQL: deadlock (40001), lock wait timeout
        // (HY000 1205, named in the message). SQLite: BUSY (5),
        // BUSY_SNAPSHOT (517), LOCKED (6).
        let busy = matches!(&*code, "40001" | "40P01" | "55P03" | "5" | "517" | "6")
            || message.contains("Lock wait timeout");
        if busy {
            return FenceError::Busy(phase);
        }
    }
    store_error(e)
}

/// One row of the fence's table to write.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    table: &'a Table,
    branch: &'a BranchKey,
    resource: &'a str,
    state: BranchState,
    now_ms: i64,
}

/// The SQL dialects the fence speaks.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `$n` parameters, `ON CONFLICT DO NOTHING`.
    Postgres,
    /// MySQL and MariaDB: `?` parameters, `INSERT IGNORE`.
    MySql,
    /// SQLite: `?` parameters, `ON CONFLICT DO NOTHING`, no row locks.
    Sqlite,
}

impl Dialect {
    fn ddl(self, table: &Table) -> Vec<String> {
        let t = &table.0;
        let index = format!("{}_state_updated", table.bare());
        let columns = "    xid        VARCHAR(128) NOT NULL,\n    \
                       branch_id  VARCHAR(128) NOT NULL,\n    \
                       resource   VARCHAR(64)  NOT NULL,\n    \
                       state      VARCHAR(20)  NOT NULL,\n    \
                       updated_ms BIGINT       NOT NULL,\n    \
                       PRIMARY KEY (xid, branch_id)";
        match self {
            Self::MySql => vec![format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n{columns},\n    \
                 KEY {index} (state, updated_ms)\n) ENGINE=InnoDB"
            )],
            Self::Postgres | Self::Sqlite => vec![
                format!("CREATE TABLE IF NOT EXISTS {t} (\n{columns}\n)"),
                format!("CREATE INDEX IF NOT EXISTS {index} ON {t} (state, updated_ms)"),
            ],
        }
    }

    /// `$1, $2, …` or `?, ?, …` for parameter `n` (1-based).
    pub(crate) fn p(self, n: usize) -> String {
        match self {
            Self::Postgres => format!("${n}"),
            Self::MySql | Self::Sqlite => "?".to_owned(),
        }
    }

    fn insert(self, t: &Table) -> String {
        let values: Vec<String> = (1..=5).map(|n| self.p(n)).collect();
        let values = values.join(", ");
        let t = &t.0;
        match self {
            Self::MySql => format!(
                "INSERT IGNORE INTO {t} (xid, branch_id, resource, state, updated_ms) VALUES ({values})"
            ),
            Self::Postgres | Self::Sqlite => format!(
                "INSERT INTO {t} (xid, branch_id, resource, state, updated_ms) VALUES ({values}) \
                 ON CONFLICT (xid, branch_id) DO NOTHING"
            ),
        }
    }

    fn lock(self, t: &Table) -> String {
        let (a, b, t) = (self.p(1), self.p(2), &t.0);
        let lock = if self == Self::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        format!("SELECT state FROM {t} WHERE xid = {a} AND branch_id = {b}{lock}")
    }

    fn update(self, t: &Table) -> String {
        let (s, u, a, b, t) = (self.p(1), self.p(2), self.p(3), self.p(4), &t.0);
        format!("UPDATE {t} SET state = {s}, updated_ms = {u} WHERE xid = {a} AND branch_id = {b}")
    }

    fn delete_finished(self, t: &Table) -> String {
        let (before, limit, t) = (self.p(1), self.p(2), &t.0);
        let finished = "state IN ('confirmed', 'cancelled', 'rolled_back_empty')";
        match self {
            Self::MySql => {
                format!("DELETE FROM {t} WHERE {finished} AND updated_ms <= {before} LIMIT {limit}")
            }
            Self::Postgres | Self::Sqlite => format!(
                "DELETE FROM {t} WHERE (xid, branch_id) IN \
                 (SELECT xid, branch_id FROM {t} WHERE {finished} AND updated_ms <= {before} LIMIT {limit})"
            ),
        }
    }

    fn pending(self, t: &Table) -> String {
        let (r, t) = (self.p(1), &t.0);
        format!(
            "SELECT COUNT(*), MIN(updated_ms) FROM {t} WHERE resource = {r} AND state = 'tried'"
        )
    }
}

/// A database the fence's row can live in: PostgreSQL, MySQL/MariaDB or
/// SQLite (`sqlx::Postgres`, `sqlx::MySql`, `sqlx::Sqlite`), each behind
/// its feature. Sealed: the statements are written per database here.
pub trait FenceDatabase: sqlx::Database + sealed::Sealed {
    /// Which SQL the statements are written in.
    #[doc(hidden)]
    const DIALECT: Dialect;

    /// Begins the transaction a phase runs in, on `conn`.
    #[doc(hidden)]
    fn begin(
        conn: &mut Self::Connection,
    ) -> BoxFuture<'_, Result<sqlx::Transaction<'_, Self>, sqlx::Error>>;

    /// Inserts the row unless one exists for the branch; whether it did.
    #[doc(hidden)]
    fn insert_if_absent<'a>(
        tx: &'a mut Self::Connection,
        row: Row<'a>,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

    /// The branch's state, its row locked until the transaction ends.
    #[doc(hidden)]
    fn lock_state<'a>(
        tx: &'a mut Self::Connection,
        table: &'a Table,
        branch: &'a BranchKey,
    ) -> BoxFuture<'a, Result<Option<String>, sqlx::Error>>;

    /// Sets the branch's state.
    #[doc(hidden)]
    fn update_state<'a>(
        tx: &'a mut Self::Connection,
        row: Row<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Deletes up to `limit` finished rows changed at or before `before_ms`.
    #[doc(hidden)]
    fn delete_finished<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a Table,
        before_ms: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

    /// Tried rows of `resource`: how many, and the oldest's `updated_ms`.
    #[doc(hidden)]
    fn pending<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a Table,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<(i64, Option<i64>), sqlx::Error>>;

    /// Runs one statement of DDL.
    #[doc(hidden)]
    fn execute(
        pool: &sqlx::Pool<Self>,
        statement: String,
    ) -> BoxFuture<'_, Result<(), sqlx::Error>>;
}

mod sealed {
    pub trait Sealed {}
}

/// Implements [`FenceDatabase`] for one sqlx database.
macro_rules! fence_database {
    ($feature:literal, $db:ty, $dialect:expr, $begin:expr) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for $db {}

        #[cfg(feature = $feature)]
        impl FenceDatabase for $db {
            const DIALECT: Dialect = $dialect;

            fn begin(
                conn: &mut Self::Connection,
            ) -> BoxFuture<'_, Result<sqlx::Transaction<'_, Self>, sqlx::Error>> {
                Box::pin(async move {
                    match $begin {
                        Some(statement) => sqlx::Connection::begin_with(conn, statement).await,
                        None => sqlx::Connection::begin(conn).await,
                    }
                })
            }

            fn insert_if_absent<'a>(
                tx: &'a mut Self::Connection,
                row: Row<'a>,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                Box::pin(async move {
                    let sql = Self::DIALECT.insert(row.table);
                    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(row.branch.xid.as_str())
                        .bind(row.branch.branch_id.as_str())
                        .bind(row.resource)
                        .bind(row.state.as_str())
                        .bind(row.now_ms)
                        .execute(&mut *tx)
                        .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn lock_state<'a>(
                tx: &'a mut Self::Connection,
                table: &'a Table,
                branch: &'a BranchKey,
            ) -> BoxFuture<'a, Result<Option<String>, sqlx::Error>> {
                Box::pin(async move {
                    let sql = Self::DIALECT.lock(table);
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .bind(branch.xid.as_str())
                        .bind(branch.branch_id.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                })
            }

            fn update_state<'a>(
                tx: &'a mut Self::Connection,
                row: Row<'a>,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    let sql = Self::DIALECT.update(row.table);
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(row.state.as_str())
                        .bind(row.now_ms)
                        .bind(row.branch.xid.as_str())
                        .bind(row.branch.branch_id.as_str())
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            fn delete_finished<'a>(
                pool: &'a sqlx::Pool<Self>,
                table: &'a Table,
                before_ms: i64,
                limit: u32,
            ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    let sql = Self::DIALECT.delete_finished(table);
                    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(before_ms)
                        .bind(i64::from(limit))
                        .execute(pool)
                        .await?;
                    Ok(done.rows_affected())
                })
            }

            fn pending<'a>(
                pool: &'a sqlx::Pool<Self>,
                table: &'a Table,
                resource: &'a str,
            ) -> BoxFuture<'a, Result<(i64, Option<i64>), sqlx::Error>> {
                Box::pin(async move {
                    let sql = Self::DIALECT.pending(table);
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(resource)
                        .fetch_one(pool)
                        .await
                })
            }

            fn execute(
                pool: &sqlx::Pool<Self>,
                statement: String,
            ) -> BoxFuture<'_, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                        .execute(pool)
                        .await?;
                    Ok(())
                })
            }
        }
    };
}

fence_database!(
    "sqlx-postgres",
    sqlx::Postgres,
    Dialect::Postgres,
    None::<&'static str>
);
fence_database!(
    "sqlx-mysql",
    sqlx::MySql,
    Dialect::MySql,
    None::<&'static str>
);
fence_database!(
    "sqlx-sqlite",
    sqlx::Sqlite,
    Dialect::Sqlite,
    Some("BEGIN IMMEDIATE")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for ok in ["paytrace_tcc_fence", "shop.fence", "_f1"] {
            assert!(Table::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1fence",
            "a.b.c",
            "fence;drop",
            "fen ce",
            "\"fence\"",
            "a.",
        ] {
            assert!(
                matches!(Table::parse(bad), Err(FenceError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_longer_than_the_column_are_refused_before_any_sql() {
        let long = BranchKey {
            xid: "x".repeat(MAX_ID_LEN + 1),
            branch_id: "b".into(),
        };
        assert!(matches!(check_ids(&long), Err(FenceError::Invalid(_))));
        let empty = BranchKey {
            xid: "x".into(),
            branch_id: String::new(),
        };
        assert!(matches!(check_ids(&empty), Err(FenceError::Invalid(_))));
        let at_limit = BranchKey {
            xid: "é".repeat(MAX_ID_LEN),
            branch_id: "b".into(),
        };
        assert_eq!(check_ids(&at_limit), Ok(()));
    }

    #[test]
    fn each_dialect_numbers_its_parameters_its_own_way() {
        let t = Table::parse("f").expect("a name");
        assert_eq!(
            Dialect::Postgres.update(&t),
            "UPDATE f SET state = $1, updated_ms = $2 WHERE xid = $3 AND branch_id = $4"
        );
        assert_eq!(
            Dialect::MySql.lock(&t),
            "SELECT state FROM f WHERE xid = ? AND branch_id = ? FOR UPDATE"
        );
        assert_eq!(
            Dialect::Sqlite.lock(&t),
            "SELECT state FROM f WHERE xid = ? AND branch_id = ?"
        );
    }
}
