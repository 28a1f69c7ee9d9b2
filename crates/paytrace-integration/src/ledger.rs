//! The stock ledger the SQL fence's tests and `fence_load` run their
//! phases against, one module per database (`sqlite`, `postgres`, `mysql`).
//!
//! `stock` holds one SKU (on hand, reserved) and `reservations` one row
//! per branch (`reserved`, `sold`, `released`). A Try reserves a unit (a
//! conditional update: never more than on hand) and books the branch, a
//! Confirm sells it, a Cancel releases it. [`sqlite::consistency`] (and
//! its twins) check that the ledger and the fence's rows agree:
//! - a branch whose fence row is `tried` has a `reserved` reservation,
//!   `confirmed` a `sold` one, `cancelled` a `released` one, and a branch
//!   `rolled_back_empty` or without a row has none;
//! - `stock.reserved` counts the `reserved` rows and `stock.on_hand` fell
//!   by the `sold` ones: a reservation made twice or lost shows there.

use std::collections::BTreeMap;

use paytrace::tcc::BranchKey;

/// Why a ledger handler failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database failed.
    Db(sqlx::Error),
    /// No stock left to reserve.
    Insufficient,
    /// Phase two found no reservation in the state it needs.
    NoReservation,
    /// A handler told to fail after its writes.
    Injected,
}

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Db(e) => write!(f, "the ledger's database failed: {e}"),
            Self::Insufficient => f.write_str("no stock left"),
            Self::NoReservation => f.write_str("no reservation in the state phase two needs"),
            Self::Injected => f.write_str("the test made the handler fail"),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// The inventory branch of global transaction `xid`.
pub fn branch(xid: &str) -> BranchKey {
    BranchKey {
        xid: xid.to_owned(),
        branch_id: "inventory".to_owned(),
    }
}

/// What a fenced ledger call answered.
pub type Answer = Result<paytrace::tcc::BranchOutcome<()>, paytrace::tcc::BranchError<LedgerError>>;

/// The fence's rows and the ledger's disagree, or the stock's counters
/// do not add up.
fn check(
    fence: Vec<(String, String, String)>,
    reservations: Vec<(String, String, String)>,
    stock: (i64, i64),
    on_hand_at_start: i64,
) -> Result<BTreeMap<String, i64>, String> {
    let fence: BTreeMap<_, _> = fence.into_iter().map(|(x, b, s)| ((x, b), s)).collect();
    let booked: BTreeMap<_, _> = reservations
        .into_iter()
        .map(|(x, b, s)| ((x, b), s))
        .collect();
    for (key, state) in &fence {
        let expected = match state.as_str() {
            "tried" => Some("reserved"),
            "confirmed" => Some("sold"),
            "cancelled" => Some("released"),
            _ => None,
        };
        let found = booked.get(key).map(String::as_str);
        if found != expected {
            return Err(format!(
                "{key:?}: the fence says {state}, the ledger {found:?}"
            ));
        }
    }
    if let Some(key) = booked.keys().find(|k| !fence.contains_key(*k)) {
        return Err(format!("{key:?} booked without a fence row"));
    }
    let mut by_state = BTreeMap::new();
    for s in booked.values() {
        *by_state.entry(s.clone()).or_insert(0) += 1;
    }
    let count = |s: &str| by_state.get(s).copied().unwrap_or(0);
    let (on_hand, reserved) = stock;
    if reserved != count("reserved") || on_hand != on_hand_at_start - count("sold") {
        return Err(format!(
            "stock on hand {on_hand} reserved {reserved}, started with {on_hand_at_start}, \
             reservations {by_state:?}"
        ));
    }
    Ok(by_state)
}

/// The ledger on one database: `$db` its sqlx type, `$numbered` whether
/// parameters are `$1` (PostgreSQL) rather than `?`.
macro_rules! ledger_on {
    ($name:ident, $db:ty, $numbered:expr) => {
        /// The ledger on this database.
        pub mod $name {
            use std::collections::BTreeMap;

            use paytrace::tcc::{BranchKey, BranchState, Phase, SqlFence};

            use super::{Answer, LedgerError};

            /// The sqlx database.
            pub type Db = $db;
            /// A pool of it.
            pub type Pool = sqlx::Pool<Db>;
            /// One connection of it.
            pub type Conn = <Db as sqlx::Database>::Connection;

            /// `sql` with its `?` parameters numbered when the database wants it.
            pub fn q(sql: &str) -> sqlx::AssertSqlSafe<String> {
                if !$numbered {
                    return sqlx::AssertSqlSafe(sql.to_owned());
                }
                let mut out = String::new();
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        out.push_str(&format!("${n}"));
                    } else {
                        out.push(c);
                    }
                }
                sqlx::AssertSqlSafe(out)
            }

            /// A pool of at most `connections` connections to `url`.
            ///
            /// # Panics
            ///
            /// When the database cannot be reached.
            pub async fn connect(url: &str, connections: u32) -> Pool {
                sqlx::pool::PoolOptions::<Db>::new()
                    .max_connections(connections)
                    .connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
            }

            /// Creates the fence's table, the ledger's and `notes` (a table
            /// for the application's own writes), with `on_hand` units.
            ///
            /// # Panics
            ///
            /// When a statement fails.
            pub async fn create(pool: &Pool, fence: &SqlFence, on_hand: i64) {
                fence.create_table(pool).await.expect("the fence's table");
                for ddl in [
                    "CREATE TABLE stock (sku INTEGER PRIMARY KEY, on_hand BIGINT NOT NULL, reserved BIGINT NOT NULL)",
                    "CREATE TABLE reservations (xid VARCHAR(128) NOT NULL, branch_id VARCHAR(128) NOT NULL, \
                     state VARCHAR(16) NOT NULL, PRIMARY KEY (xid, branch_id))",
                    "CREATE TABLE notes (n INTEGER NOT NULL)",
                ] {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
                        .execute(pool)
                        .await
                        .expect("the ledger's tables");
                }
                sqlx::query(q("INSERT INTO stock (sku, on_hand, reserved) VALUES (1, ?, 0)"))
                    .bind(on_hand)
                    .execute(pool)
                    .await
                    .expect("the stock row");
            }

            /// The business side of `phase` for `key`, on the fence's
            /// transaction's connection; `fail` makes it fail after its writes.
            ///
            /// # Errors
            ///
            /// [`LedgerError`]: no stock, no reservation, the database, or `fail`.
            pub async fn business(
                tx: &mut Conn,
                phase: Phase,
                key: &BranchKey,
                fail: bool,
            ) -> Result<(), LedgerError> {
                match phase {
                    Phase::Try => {
                        let reserved = sqlx::query(q(
                            "UPDATE stock SET reserved = reserved + 1 WHERE sku = 1 AND on_hand - reserved >= 1",
                        ))
                        .execute(&mut *tx)
                        .await?;
                        if reserved.rows_affected() != 1 {
                            return Err(LedgerError::Insufficient);
                        }
                        sqlx::query(q(
                            "INSERT INTO reservations (xid, branch_id, state) VALUES (?, ?, 'reserved')",
                        ))
                        .bind(&key.xid)
                        .bind(&key.branch_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Phase::Confirm | Phase::Cancel => {
                        let (to, stock) = if phase == Phase::Confirm {
                            ("sold", "UPDATE stock SET on_hand = on_hand - 1, reserved = reserved - 1 WHERE sku = 1")
                        } else {
                            ("released", "UPDATE stock SET reserved = reserved - 1 WHERE sku = 1")
                        };
                        let moved = sqlx::query(q(
                            "UPDATE reservations SET state = ? WHERE xid = ? AND branch_id = ? AND state = 'reserved'",
                        ))
                        .bind(to)
                        .bind(&key.xid)
                        .bind(&key.branch_id)
                        .execute(&mut *tx)
                        .await?;
                        if moved.rows_affected() != 1 {
                            return Err(LedgerError::NoReservation);
                        }
                        sqlx::query(q(stock)).execute(&mut *tx).await?;
                    }
                }
                if fail {
                    return Err(LedgerError::Injected);
                }
                Ok(())
            }

            /// `phase` of `key` through `fence` on `pool`, the ledger's side as
            /// its handler.
            pub async fn call(
                fence: &SqlFence,
                pool: &Pool,
                phase: Phase,
                key: &BranchKey,
                fail: bool,
            ) -> Answer {
                fence
                    .run(pool, phase, key, async |tx: &mut sqlx::Transaction<'_, Db>| {
                        business(tx, phase, key, fail).await
                    })
                    .await
            }

            /// The state of `key`'s fence row.
            ///
            /// # Panics
            ///
            /// When the database fails or the row holds no state.
            pub async fn fence_state(pool: &Pool, key: &BranchKey) -> Option<BranchState> {
                let s: Option<String> = sqlx::query_scalar(q(
                    "SELECT state FROM paytrace_tcc_fence WHERE xid = ? AND branch_id = ?",
                ))
                .bind(&key.xid)
                .bind(&key.branch_id)
                .fetch_optional(pool)
                .await
                .expect("the fence row");
                s.map(|s| s.parse().expect("a state the fence writes"))
            }

            /// Whether the ledger and the fence agree (the module's
            /// invariants); the reservations by state.
            ///
            /// # Errors
            ///
            /// What disagrees.
            ///
            /// # Panics
            ///
            /// When the database fails.
            pub async fn consistency(pool: &Pool, on_hand_at_start: i64) -> Result<BTreeMap<String, i64>, String> {
                let fence: Vec<(String, String, String)> =
                    sqlx::query_as(q("SELECT xid, branch_id, state FROM paytrace_tcc_fence"))
                        .fetch_all(pool)
                        .await
                        .expect("fence rows");
                let reservations: Vec<(String, String, String)> =
                    sqlx::query_as(q("SELECT xid, branch_id, state FROM reservations"))
                        .fetch_all(pool)
                        .await
                        .expect("reservations");
                let stock: (i64, i64) =
                    sqlx::query_as(q("SELECT on_hand, reserved FROM stock WHERE sku = 1"))
                        .fetch_one(pool)
                        .await
                        .expect("the stock row");
                super::check(fence, reservations, stock, on_hand_at_start)
            }
        }
    };
}

ledger_on!(sqlite, sqlx::Sqlite, false);
ledger_on!(postgres, sqlx::Postgres, true);
ledger_on!(mysql, sqlx::MySql, false);
