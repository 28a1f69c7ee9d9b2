//! [`RedisFence`]: the TCC fence in Redis, shared by every process of a
//! participant. The transition table stays in Rust ([`decide`]); Redis only
//! compares and sets each branch's state atomically, so concurrent Confirm
//! and Cancel of one branch, from any process, let exactly one win.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::ConnectionManager;

use crate::tcc::{
    BoxFuture, BranchKey, BranchState, Decision, FenceError, FenceStore, Phase, decide,
};

/// Sets `KEYS[1]`'s state to `ARGV[2]` if it is `ARGV[1]` ('' = absent);
/// keeps the pending set `KEYS[2]` in step; returns
/// `{swapped, current, pending, oldest_ms}`.
const COMPARE_AND_SET: &str = r"
local current = redis.call('HGET', KEYS[1], 'state') or ''
if current ~= ARGV[1] then return {0, current, 0, ''} end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[5])
else
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'since', ARGV[3])
  if ARGV[2] == 'tried' then
    redis.call('PERSIST', KEYS[1])
    redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
  else
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    redis.call('ZREM', KEYS[2], ARGV[5])
  end
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {1, current, redis.call('ZCARD', KEYS[2]), oldest[2] or ''}
";

fn encode(state: Option<BranchState>) -> &'static str {
    match state {
        None => "",
        Some(BranchState::Tried) => "tried",
        Some(BranchState::Confirmed) => "confirmed",
        Some(BranchState::Cancelled) => "cancelled",
        Some(BranchState::RolledBackEmpty) => "rolled_back_empty",
    }
}

fn parse(state: &str) -> Option<BranchState> {
    match state {
        "tried" => Some(BranchState::Tried),
        "confirmed" => Some(BranchState::Confirmed),
        "cancelled" => Some(BranchState::Cancelled),
        "rolled_back_empty" => Some(BranchState::RolledBackEmpty),
        _ => None,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn store_error(e: redis::RedisError) -> FenceError {
    FenceError::Store(e.to_string())
}

/// A branch's state before and after a `Run` decision.
type Transition = (Option<BranchState>, Option<BranchState>);

/// The fence in Redis. Finished records expire after the retention period;
/// tried records never expire (they are the frozen branches).
///
/// ```no_run
/// # async fn demo() -> Result<(), paytrace::tcc::FenceError> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use paytrace::tcc::RedisFence;
///
/// let fence = RedisFence::connect("redis://127.0.0.1:6379/", "inventory", Duration::from_secs(600)).await?;
/// let svc = paytrace::ServiceTelemetry::new("inventory", "1.0.0");
/// let stock = svc.tcc("inventory", Arc::new(fence));
/// # Ok(()) }
/// ```
pub struct RedisFence {
    conn: ConnectionManager,
    prefix: String,
    retention: Duration,
    script: Script,
    /// What each branch was before a `Run`, until `finish`.
    before_run: Mutex<HashMap<(BranchKey, Phase), Transition>>,
    /// (pending, oldest since, ms) as of the last write.
    pending: Mutex<(usize, Option<u64>)>,
}

impl std::fmt::Debug for RedisFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFence")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisFence {
    /// Connects to the Redis at `url`; records go under `{prefix}:fence:`.
    pub async fn connect(url: &str, prefix: &str, retention: Duration) -> Result<Self, FenceError> {
        let client = redis::Client::open(url).map_err(store_error)?;
        let conn = ConnectionManager::new(client).await.map_err(store_error)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            retention,
            script: Script::new(COMPARE_AND_SET),
            before_run: Mutex::new(HashMap::new()),
            pending: Mutex::new((0, None)),
        })
    }

    fn record_key(&self, key: &BranchKey) -> String {
        format!("{}:fence:{}:{}", self.prefix, key.xid, key.branch_id)
    }

    fn pending_key(&self) -> String {
        format!("{}:fence:pending", self.prefix)
    }

    async fn current(&self, key: &BranchKey) -> Result<Option<BranchState>, FenceError> {
        let state: Option<String> = redis::cmd("HGET")
            .arg(self.record_key(key))
            .arg("state")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(state.as_deref().and_then(parse))
    }

    /// Compare-and-set; `Ok(false)` when the state was not `expected`.
    async fn swap(
        &self,
        key: &BranchKey,
        expected: Option<BranchState>,
        next: Option<BranchState>,
    ) -> Result<bool, FenceError> {
        let member = format!("{}:{}", key.xid, key.branch_id);
        let (swapped, _current, pending, oldest): (i64, String, i64, String) = self
            .script
            .key(self.record_key(key))
            .key(self.pending_key())
            .arg(encode(expected))
            .arg(encode(next))
            .arg(now_ms())
            .arg(self.retention.as_secs().max(1))
            .arg(member)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        if swapped == 1 {
            *crate::sync::lock(&self.pending) = (
                usize::try_from(pending).unwrap_or(0),
                oldest.parse::<f64>().ok().map(|v| v as u64),
            );
        }
        Ok(swapped == 1)
    }
}

impl FenceStore for RedisFence {
    fn begin<'a>(
        &'a self,
        key: &'a BranchKey,
        phase: Phase,
    ) -> BoxFuture<'a, Result<Decision, FenceError>> {
        Box::pin(async move {
            // Optimistic: read, decide, compare-and-set; a concurrent change
            // makes the swap fail and the decision is taken again.
            for _ in 0..16 {
                let previous = self.current(key).await?;
                let (decision, next) = decide(previous, phase);
                if next == previous {
                    return Ok(decision);
                }
                if self.swap(key, previous, next).await? {
                    if decision == Decision::Run {
                        crate::sync::lock(&self.before_run)
                            .insert((key.clone(), phase), (previous, next));
                    }
                    return Ok(decision);
                }
            }
            Err(FenceError::Store(format!(
                "branch {}/{} kept changing under contention",
                key.xid, key.branch_id
            )))
        })
    }

    fn finish<'a>(
        &'a self,
        key: &'a BranchKey,
        phase: Phase,
        succeeded: bool,
    ) -> BoxFuture<'a, Result<(), FenceError>> {
        Box::pin(async move {
            let recorded = crate::sync::lock(&self.before_run).remove(&(key.clone(), phase));
            if let (false, Some((previous, set))) = (succeeded, recorded) {
                // Only undo our own transition.
                self.swap(key, set, previous).await?;
            }
            Ok(())
        })
    }

    fn pending_now(&self) -> (usize, Duration) {
        let (count, oldest) = *crate::sync::lock(&self.pending);
        let age = oldest.map_or(Duration::ZERO, |ms| {
            Duration::from_millis(now_ms().saturating_sub(ms))
        });
        (count, age)
    }
}
