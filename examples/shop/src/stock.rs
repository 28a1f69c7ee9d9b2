//! Stock levels: available, reserved (by TCC branch) and sold, kept in
//! memory or in Redis. Reservation is atomic in both: concurrent checkouts
//! never oversell, and `available + reserved + sold` stays the initial stock.
//!
//! In Redis each transition is one Lua script, so several inventory
//! processes can share the stock.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::Script;
use redis::aio::ConnectionManager;

/// Why a stock operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The levels of one item.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Levels {
    /// Units that can still be reserved.
    pub available: i64,
    /// Units reserved by tried, not yet confirmed or cancelled, branches.
    pub reserved: i64,
    /// Units confirmed.
    pub sold: i64,
}

#[derive(Debug, Default)]
struct Item {
    levels: Levels,
    reservations: HashMap<String, i64>,
}

/// Stock of every item, in memory or in Redis.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), paytrace_demo::stock::StockError> {
/// use paytrace_demo::stock::StockStore;
/// let stock = StockStore::memory(10);
/// assert!(stock.reserve(1, "xid-1", 4).await?);
/// assert!(!stock.reserve(1, "xid-2", 7).await?, "only 6 left");
/// assert!(stock.commit(1, "xid-1").await?);
/// let l = stock.levels(1).await?;
/// assert_eq!((l.available, l.reserved, l.sold), (6, 0, 4));
/// # Ok(()) }
/// ```
pub struct StockStore(Backend);

enum Backend {
    /// In this process.
    Memory {
        /// Units of every item at start.
        initial: i64,
        /// The items seen so far.
        items: Mutex<HashMap<u32, Item>>,
    },
    /// In Redis, shared by every process using the same prefix.
    Redis {
        /// Units of every item at start.
        initial: i64,
        /// The connection.
        conn: ConnectionManager,
        /// Key prefix.
        prefix: String,
    },
}

impl std::fmt::Debug for StockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Backend::Memory { initial, .. } => write!(f, "StockStore::Memory({initial})"),
            Backend::Redis { prefix, .. } => write!(f, "StockStore::Redis({prefix})"),
        }
    }
}

/// Reserves `args[2]` units for branch `args[1]` (`keys`: stock,
/// reservations, sold; `args[3]` the initial stock): `'ok'`, also when the
/// branch holds its reservation already, or `'no stock'` with nothing
/// written. The body of a Lua function `effect(keys, args)`: the
/// participant's effect in [`paytrace::tcc::RedisEffect`], and wrapped by
/// [`StockStore::reserve`].
pub const RESERVE_EFFECT: &str = r"
if redis.call('HEXISTS', keys[2], args[1]) == 1 then return 'ok' end
redis.call('SET', keys[1], args[3], 'NX')
local available = tonumber(redis.call('GET', keys[1]))
local qty = tonumber(args[2])
if available < qty then return 'no stock' end
redis.call('DECRBY', keys[1], qty)
redis.call('HSET', keys[2], args[1], qty)
return 'ok'
";

/// Moves branch `args[1]`'s reservation (`keys[2]`) to `keys[3]`: the
/// sold counter on commit, the stock on release. `'ok'`, or `'no
/// reservation'` with nothing written.
pub const SETTLE_EFFECT: &str = r"
local qty = redis.call('HGET', keys[2], args[1])
if not qty then return 'no reservation' end
redis.call('HDEL', keys[2], args[1])
redis.call('INCRBY', keys[3], qty)
return 'ok'
";

/// `body` as a script answering 1 when the effect answered `'ok'`, else 0.
fn standalone(body: &str) -> Script {
    Script::new(&format!(
        "local function effect(keys, args)\n{body}\nend\nif effect(KEYS, ARGV) == 'ok' then return 1 end\nreturn 0"
    ))
}

impl StockStore {
    /// Stock in memory, `initial` units of every item.
    pub fn memory(initial: i64) -> Self {
        Self(Backend::Memory {
            initial,
            items: Mutex::new(HashMap::new()),
        })
    }

    /// Stock in the Redis at `url`, under keys starting with `prefix`.
    pub async fn redis(url: &str, prefix: &str, initial: i64) -> Result<Self, StockError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Self(Backend::Redis {
            initial,
            conn,
            prefix: prefix.to_owned(),
        }))
    }

    /// The Redis keys of `sku`'s stock, reservations and sold counter, in
    /// the order [`RESERVE_EFFECT`] and [`SETTLE_EFFECT`] take them; `None`
    /// in memory.
    pub fn redis_keys(&self, sku: u32) -> Option<[String; 3]> {
        match &self.0 {
            Backend::Memory { .. } => None,
            Backend::Redis { prefix, .. } => Some(Self::keys(prefix, sku)),
        }
    }

    /// Units of every item at start.
    pub fn initial(&self) -> i64 {
        match &self.0 {
            Backend::Memory { initial, .. } | Backend::Redis { initial, .. } => *initial,
        }
    }

    fn keys(prefix: &str, sku: u32) -> [String; 3] {
        [
            format!("{prefix}:stock:{sku}"),
            format!("{prefix}:reserved:{sku}"),
            format!("{prefix}:sold:{sku}"),
        ]
    }

    fn with_item<T>(
        items: &Mutex<HashMap<u32, Item>>,
        initial: i64,
        sku: u32,
        f: impl FnOnce(&mut Item) -> T,
    ) -> T {
        let mut items = items.lock().unwrap_or_else(|e| e.into_inner());
        let item = items.entry(sku).or_insert_with(|| Item {
            levels: Levels {
                available: initial,
                ..Levels::default()
            },
            reservations: HashMap::new(),
        });
        f(item)
    }

    /// Reserves `qty` units of `sku` for branch `xid`; `false` when too few
    /// are available. Reserving again for the same branch changes nothing.
    pub async fn reserve(&self, sku: u32, xid: &str, qty: i64) -> Result<bool, StockError> {
        match &self.0 {
            Backend::Memory { initial, items } => {
                Ok(Self::with_item(items, *initial, sku, |item| {
                    if item.reservations.contains_key(xid) {
                        return true;
                    }
                    if item.levels.available < qty {
                        return false;
                    }
                    item.levels.available -= qty;
                    item.levels.reserved += qty;
                    item.reservations.insert(xid.to_owned(), qty);
                    true
                }))
            }
            Backend::Redis {
                initial,
                conn,
                prefix,
            } => {
                let [stock, reserved, _] = Self::keys(prefix, sku);
                let done: i64 = standalone(RESERVE_EFFECT)
                    .key(stock)
                    .key(reserved)
                    .arg(xid)
                    .arg(qty)
                    .arg(*initial)
                    .invoke_async(&mut conn.clone())
                    .await?;
                Ok(done == 1)
            }
        }
    }

    async fn settle(&self, sku: u32, xid: &str, sold: bool) -> Result<bool, StockError> {
        match &self.0 {
            Backend::Memory { initial, items } => {
                Ok(Self::with_item(items, *initial, sku, |item| {
                    let Some(qty) = item.reservations.remove(xid) else {
                        return false;
                    };
                    item.levels.reserved -= qty;
                    if sold {
                        item.levels.sold += qty;
                    } else {
                        item.levels.available += qty;
                    }
                    true
                }))
            }
            Backend::Redis { conn, prefix, .. } => {
                let [stock, reserved, sold_key] = Self::keys(prefix, sku);
                let target = if sold { sold_key } else { stock };
                let done: i64 = standalone(SETTLE_EFFECT)
                    .key(String::new())
                    .key(reserved)
                    .key(target)
                    .arg(xid)
                    .invoke_async(&mut conn.clone())
                    .await?;
                Ok(done == 1)
            }
        }
    }

    /// Turns branch `xid`'s reservation into a sale; `false` if it had none.
    pub async fn commit(&self, sku: u32, xid: &str) -> Result<bool, StockError> {
        self.settle(sku, xid, true).await
    }

    /// Gives branch `xid`'s reservation back; `false` if it had none.
    pub async fn release(&self, sku: u32, xid: &str) -> Result<bool, StockError> {
        self.settle(sku, xid, false).await
    }

    /// The levels of `sku`.
    pub async fn levels(&self, sku: u32) -> Result<Levels, StockError> {
        match &self.0 {
            Backend::Memory { initial, items } => {
                Ok(Self::with_item(items, *initial, sku, |item| item.levels))
            }
            Backend::Redis {
                initial,
                conn,
                prefix,
            } => {
                let [stock, reserved, sold] = Self::keys(prefix, sku);
                let mut conn = conn.clone();
                let (available, held, sold): (Option<i64>, Vec<i64>, Option<i64>) = redis::pipe()
                    .get(&stock)
                    .hvals(&reserved)
                    .get(&sold)
                    .query_async(&mut conn)
                    .await?;
                Ok(Levels {
                    available: available.unwrap_or(*initial),
                    reserved: held.iter().sum(),
                    sold: sold.unwrap_or(0),
                })
            }
        }
    }
}
