//! [`RedisFence`]: the TCC fence in Redis, shared by every process of a
//! participant. The transition table stays in Rust ([`decide`]); Redis only
//! compares and sets each branch's state atomically, so concurrent Confirm
//! and Cancel of one branch, from any process, let exactly one win.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::ConnectionManager;

use crate::tcc::{
    BoxFuture, BranchKey, BranchState, Decision, FenceError, FenceStore, Phase, RunId, decide,
};

/// Puts a branch back as it was before a hold: `restore(record, pending,
/// previous, previous_since, member, retention_seconds)`. Shared by the
/// scripts below.
const RESTORE: &str = r"
local function restore(record, pending, previous, since, member, retention)
  if previous == '' then
    redis.call('DEL', record)
    redis.call('ZREM', pending, member)
    return
  end
  redis.call('HSET', record, 'state', previous, 'since', since)
  redis.call('HDEL', record, 'held')
  if previous == 'tried' then
    redis.call('PERSIST', record)
    redis.call('ZADD', pending, since, member)
  else
    redis.call('EXPIRE', record, retention)
    redis.call('ZREM', pending, member)
  end
end
local function hold_parts(held)
  return string.match(held, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
end
local function pending_now(pending)
  local oldest = redis.call('ZRANGE', pending, 0, 0, 'WITHSCORES')
  return {redis.call('ZCARD', pending), oldest[2] or ''}
end
";

/// Reads `KEYS[1]`'s state for a decision: `{state, busy_phase}`. A hold
/// whose lease ended before `ARGV[1]` (now, ms) is a holder that died: the
/// branch is put back first. `ARGV[2]` is the branch's member of the
/// pending set `KEYS[2]`, `ARGV[3]` the retention in seconds.
const READ: &str = r"
local state = redis.call('HGET', KEYS[1], 'state') or ''
local held = redis.call('HGET', KEYS[1], 'held') or ''
if held == '' then return {state, ''} end
local phase, previous, since, lease = hold_parts(held)
if tonumber(lease) > tonumber(ARGV[1]) then return {state, phase} end
restore(KEYS[1], KEYS[2], previous, since, ARGV[2], ARGV[3])
return {previous, ''}
";

/// Sets `KEYS[1]`'s state to `ARGV[2]` if it is `ARGV[1]` ('' = absent)
/// and no call holds it; with `ARGV[6]` (a phase) not empty, holds it for
/// token `ARGV[8]` until `ARGV[7]` (ms): `held` is `phase|previous|previous
/// since|lease end|token`. Keeps the pending set `KEYS[2]` in step; returns
/// `{swapped, pending, oldest_ms}`.
const COMPARE_AND_SET: &str = r"
local current = redis.call('HGET', KEYS[1], 'state') or ''
local held = redis.call('HGET', KEYS[1], 'held') or ''
if current ~= ARGV[1] or held ~= '' then return {0, 0, ''} end
local since = redis.call('HGET', KEYS[1], 'since') or ARGV[3]
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[5])
else
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'since', ARGV[3])
  if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], 'held', table.concat({ARGV[6], current, since, ARGV[7], ARGV[8]}, '|'))
  end
  if ARGV[2] == 'tried' then
    redis.call('PERSIST', KEYS[1])
    redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
  else
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    redis.call('ZREM', KEYS[2], ARGV[5])
  end
end
local p = pending_now(KEYS[2])
return {1, p[1], p[2]}
";

/// Releases the hold on `KEYS[1]` if token `ARGV[1]` still holds it: keeps
/// the new state when `ARGV[2]` is '1', else puts the branch back. `ARGV[3]`
/// is the pending member, `ARGV[4]` the retention. Returns `{released,
/// pending, oldest_ms}`.
const RELEASE: &str = r"
local held = redis.call('HGET', KEYS[1], 'held') or ''
local phase, previous, since, lease, token = hold_parts(held)
if token ~= ARGV[1] then
  local p = pending_now(KEYS[2])
  return {0, p[1], p[2]}
end
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[1], 'held')
else
  restore(KEYS[1], KEYS[2], previous, since, ARGV[3], ARGV[4])
end
local p = pending_now(KEYS[2])
return {1, p[1], p[2]}
";

fn encode(state: Option<BranchState>) -> &'static str {
    state.map_or("", BranchState::as_str)
}

fn parse(state: &str) -> Option<BranchState> {
    state.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn store_error(e: redis::RedisError) -> FenceError {
    FenceError::Store(e.to_string())
}

/// The fence in Redis. Finished records expire after the retention period;
/// tried records never expire (they are the frozen branches).
///
/// A run holds its branch in the branch's record (rule 1 of the
/// [module](crate::tcc)), with a lease: a process killed while its handler
/// ran leaves the branch busy until the lease ends, and the next call then
/// puts it back as it was (rule 3). Set the lease above the longest a
/// handler may take: a handler still running when its lease ends may run
/// beside the retry that took the branch over.
///
/// ```no_run
/// # async fn demo() -> Result<(), paytrace::tcc::FenceError> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use paytrace::tcc::RedisFence;
///
/// let fence = RedisFence::connect("redis://127.0.0.1:6379/", "inventory", Duration::from_secs(600))
///     .await?
///     .with_lease(Duration::from_secs(30));
/// let svc = paytrace::ServiceTelemetry::new("inventory", "1.0.0");
/// let stock = svc.tcc("inventory", Arc::new(fence));
/// # Ok(()) }
/// ```
pub struct RedisFence {
    conn: ConnectionManager,
    prefix: String,
    retention: Duration,
    lease: Duration,
    /// Tells this fence's holds from other processes' (`{instance}-{run}`).
    instance: u64,
    read: Script,
    compare_and_set: Script,
    release: Script,
    /// (pending, oldest since, ms) as of the last write.
    pending: std::sync::Arc<Mutex<(usize, Option<u64>)>>,
}

impl std::fmt::Debug for RedisFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFence")
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// The default lease of a hold: longer than any handler should run.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// What [`RedisFence::release`] needs, owned, so that it can run on its own
/// task when a dropped call abandons its hold.
#[derive(Clone)]
struct Release {
    conn: ConnectionManager,
    script: Script,
    record: String,
    pending_key: String,
    member: String,
    token: String,
    retention_seconds: u64,
    pending: std::sync::Arc<Mutex<(usize, Option<u64>)>>,
}

impl Release {
    async fn run(mut self, succeeded: bool) -> Result<bool, FenceError> {
        let (released, pending, oldest): (i64, i64, String) = self
            .script
            .key(&self.record)
            .key(&self.pending_key)
            .arg(&self.token)
            .arg(if succeeded { "1" } else { "0" })
            .arg(&self.member)
            .arg(self.retention_seconds)
            .invoke_async(&mut self.conn)
            .await
            .map_err(store_error)?;
        *crate::sync::lock(&self.pending) = (
            usize::try_from(pending).unwrap_or(0),
            oldest.parse::<f64>().ok().map(|v| v as u64),
        );
        Ok(released == 1)
    }
}

impl RedisFence {
    /// Connects to the Redis at `url`; records go under `{prefix}:fence:`.
    pub async fn connect(url: &str, prefix: &str, retention: Duration) -> Result<Self, FenceError> {
        use std::hash::{BuildHasher, Hasher};
        let client = redis::Client::open(url).map_err(store_error)?;
        let conn = ConnectionManager::new(client).await.map_err(store_error)?;
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u128(
            std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            retention,
            lease: DEFAULT_LEASE,
            instance: random.finish(),
            read: Script::new(&format!("{RESTORE}{READ}")),
            compare_and_set: Script::new(&format!("{RESTORE}{COMPARE_AND_SET}")),
            release: Script::new(&format!("{RESTORE}{RELEASE}")),
            pending: std::sync::Arc::new(Mutex::new((0, None))),
        })
    }

    /// Holds last `lease` (60 s unless set): how long a branch whose holder
    /// died stays busy before the next call puts it back.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    fn record_key(&self, key: &BranchKey) -> String {
        format!("{}:fence:{}:{}", self.prefix, key.xid, key.branch_id)
    }

    fn pending_key(&self) -> String {
        format!("{}:fence:pending", self.prefix)
    }

    fn member(key: &BranchKey) -> String {
        format!("{}:{}", key.xid, key.branch_id)
    }

    fn token(&self, run: RunId) -> String {
        format!("{:016x}-{}", self.instance, run.get())
    }

    fn retention_seconds(&self) -> u64 {
        self.retention.as_secs().max(1)
    }

    /// The state to decide on, and the phase of a live hold (a dead one is
    /// undone first).
    async fn current(
        &self,
        key: &BranchKey,
    ) -> Result<(Option<BranchState>, Option<Phase>), FenceError> {
        let (state, busy): (String, String) = self
            .read
            .key(self.record_key(key))
            .key(self.pending_key())
            .arg(now_ms())
            .arg(Self::member(key))
            .arg(self.retention_seconds())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok((parse(&state), parse_phase(&busy)))
    }

    /// Compare-and-set, holding the branch for `hold`'s run when given;
    /// `Ok(false)` when the state was not `expected` or a call holds it.
    async fn swap(
        &self,
        key: &BranchKey,
        expected: Option<BranchState>,
        next: Option<BranchState>,
        hold: Option<(Phase, RunId)>,
    ) -> Result<bool, FenceError> {
        let now = now_ms();
        let lease_end =
            now.saturating_add(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX));
        let (hold_phase, token) = hold.map_or((String::new(), String::new()), |(phase, run)| {
            (phase.as_str().to_owned(), self.token(run))
        });
        let (swapped, pending, oldest): (i64, i64, String) = self
            .compare_and_set
            .key(self.record_key(key))
            .key(self.pending_key())
            .arg(encode(expected))
            .arg(encode(next))
            .arg(now)
            .arg(self.retention_seconds())
            .arg(Self::member(key))
            .arg(hold_phase)
            .arg(lease_end)
            .arg(token)
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

    fn release(&self, key: &BranchKey, run: RunId) -> Release {
        Release {
            conn: self.conn.clone(),
            script: self.release.clone(),
            record: self.record_key(key),
            pending_key: self.pending_key(),
            member: Self::member(key),
            token: self.token(run),
            retention_seconds: self.retention_seconds(),
            pending: self.pending.clone(),
        }
    }
}

fn parse_phase(phase: &str) -> Option<Phase> {
    [Phase::Try, Phase::Confirm, Phase::Cancel]
        .into_iter()
        .find(|p| p.as_str() == phase)
}

impl FenceStore for RedisFence {
    fn begin<'a>(
        &'a self,
        key: &'a BranchKey,
        phase: Phase,
        run: RunId,
    ) -> BoxFuture<'a, Result<Decision, FenceError>> {
        Box::pin(async move {
            // Optimistic: read, decide, compare-and-set; a concurrent change
            // makes the swap fail and the decision is taken again.
            for _ in 0..16 {
                let (previous, busy) = self.current(key).await?;
                if let Some(holding) = busy {
                    return Err(FenceError::Busy(holding));
                }
                let (decision, next) = decide(previous, phase);
                if next == previous {
                    return Ok(decision);
                }
                let hold = (decision == Decision::Run).then_some((phase, run));
                if self.swap(key, previous, next, hold).await? {
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
        _phase: Phase,
        run: RunId,
        succeeded: bool,
    ) -> BoxFuture<'a, Result<(), FenceError>> {
        Box::pin(async move {
            // Only our own hold: past its lease, another call may own it.
            self.release(key, run).run(succeeded).await.map(|_| ())
        })
    }

    fn abandon(&self, key: &BranchKey, _phase: Phase, run: RunId, handler_succeeded: Option<bool>) {
        let release = self.release(key, run);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = release.run(handler_succeeded.unwrap_or(false)).await {
                        tracing::warn!(error = %e, "cannot release a dropped TCC call's hold; its lease will");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    "a TCC call was dropped outside a tokio runtime; its hold ends with its lease"
                );
            }
        }
    }

    fn pending_now(&self) -> (usize, Duration) {
        let (count, oldest) = *crate::sync::lock(&self.pending);
        let age = oldest.map_or(Duration::ZERO, |ms| {
            Duration::from_millis(now_ms().saturating_sub(ms))
        });
        (count, age)
    }
}
