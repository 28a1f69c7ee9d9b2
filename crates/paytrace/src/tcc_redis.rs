//! [`RedisFence`]: the TCC fence in Redis, shared by every process of a
//! participant. The transition table stays in Rust ([`decide`]); Redis only
//! compares and sets each branch's state atomically, so concurrent Confirm
//! and Cancel of one branch, from any process, let exactly one win.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::ConnectionManager;

use crate::tcc::{
    BoxFuture, BranchError, BranchKey, BranchOutcome, BranchState, Decision, FenceError,
    FenceStore, Phase, RunId, decide,
};

/// The functions the scripts below share: `set_state(record, pending,
/// state, since, member, retention_seconds)` records a branch's state (a
/// tried branch is pending and kept; a finished one leaves the pending set
/// and expires after the retention); `restore(..)` puts a branch back as it
/// was before a hold (`previous` '' = absent).
const RESTORE: &str = r"
local function set_state(record, pending, state, since, member, retention)
  redis.call('HSET', record, 'state', state, 'since', since)
  if state == 'tried' then
    redis.call('PERSIST', record)
    redis.call('ZADD', pending, since, member)
  else
    redis.call('EXPIRE', record, retention)
    redis.call('ZREM', pending, member)
  end
end
local function restore(record, pending, previous, since, member, retention)
  if previous == '' then
    redis.call('DEL', record)
    redis.call('ZREM', pending, member)
    return
  end
  redis.call('HDEL', record, 'held')
  set_state(record, pending, previous, since, member, retention)
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
  set_state(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[5], ARGV[4])
  if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], 'held', table.concat({ARGV[6], current, since, ARGV[7], ARGV[8]}, '|'))
  end
end
local p = pending_now(KEYS[2])
return {1, p[1], p[2]}
";

/// Decides and does in one step (after the caller's `effect` function is
/// defined before it): if `KEYS[1]`'s state is `ARGV[1]` ('' = absent) and
/// no call holds it, runs `effect(KEYS[3..], ARGV[6..])`; when that answers
/// 'ok', sets the state to `ARGV[2]` as [`COMPARE_AND_SET`] does (no hold:
/// nothing is left to finish). Returns `{1, pending, oldest_ms, ''}` when
/// done, `{2, 0, '', reason}` when the effect refused (it must not have
/// written), `{0, 0, '', ''}` when the state changed meanwhile.
const DECIDE_AND_DO: &str = r"
local current = redis.call('HGET', KEYS[1], 'state') or ''
local held = redis.call('HGET', KEYS[1], 'held') or ''
if current ~= ARGV[1] or held ~= '' then return {0, 0, '', ''} end
local effect_keys = {}
for i = 3, #KEYS do effect_keys[#effect_keys + 1] = KEYS[i] end
local effect_args = {}
for i = 6, #ARGV do effect_args[#effect_args + 1] = ARGV[i] end
local answer = effect(effect_keys, effect_args)
if answer ~= 'ok' then return {2, 0, '', tostring(answer)} end
set_state(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[5], ARGV[4])
local p = pending_now(KEYS[2])
return {1, p[1], p[2], ''}
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

/// Redis commands of a participant's own, run in the same Lua script as the
/// fence's decision ([`RedisResource::run`]): the branch's new state and the
/// effect are written together or not at all, whatever happens to the
/// caller or its process.
///
/// `body` is the body of a Lua function `effect(keys, args)`: `keys` and
/// `args` are those given to `run`. It answers `'ok'` when it did its work,
/// or any other string to refuse (no stock, …), in which case it must not
/// have written anything: check first, then write.
///
/// ```
/// use paytrace::tcc::RedisEffect;
/// // keys[1]: the stock counter; keys[2]: the reservations hash; args[1]: the branch.
/// let reserve = RedisEffect::new(r#"
///     local left = tonumber(redis.call('GET', keys[1]) or '0')
///     if left < 1 then return 'no stock' end
///     redis.call('DECR', keys[1])
///     redis.call('HSET', keys[2], args[1], 'reserved')
///     return 'ok'
/// "#);
/// # drop(reserve);
/// ```
#[derive(Clone)]
pub struct RedisEffect {
    script: Script,
}

impl std::fmt::Debug for RedisEffect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEffect").finish_non_exhaustive()
    }
}

impl RedisEffect {
    /// The effect whose Lua function body is `body` (see the type's docs).
    pub fn new(body: &str) -> Self {
        Self {
            script: Script::new(&format!(
                "{RESTORE}\nlocal function effect(keys, args)\n{body}\nend\n{DECIDE_AND_DO}"
            )),
        }
    }
}

/// What [`RedisFence::decide_and_do`] did.
enum DecidedAndDone {
    /// The decision, and with `Run` the effect done with it.
    Decided(Decision),
    /// The decision was `Run` and the effect refused; nothing was written.
    Refused(String),
}

impl RedisFence {
    /// Decides `phase` of `key` and, on `Run`, does `effect` in the same
    /// script; retried when the state changed between read and write.
    async fn decide_and_do(
        &self,
        key: &BranchKey,
        phase: Phase,
        effect: &RedisEffect,
        keys: &[&str],
        args: &[&str],
    ) -> Result<DecidedAndDone, FenceError> {
        for _ in 0..16 {
            let (previous, busy) = self.current(key).await?;
            if let Some(holding) = busy {
                return Err(FenceError::Busy(holding));
            }
            let (decision, next) = decide(previous, phase);
            if decision != Decision::Run {
                if next == previous || self.swap(key, previous, next, None).await? {
                    return Ok(DecidedAndDone::Decided(decision));
                }
                continue;
            }
            let mut invocation = effect.script.key(self.record_key(key));
            invocation
                .key(self.pending_key())
                .arg(encode(previous))
                .arg(encode(next))
                .arg(now_ms())
                .arg(self.retention_seconds())
                .arg(Self::member(key));
            for k in keys {
                invocation.key(*k);
            }
            for a in args {
                invocation.arg(*a);
            }
            let (done, pending, oldest, reason): (i64, i64, String, String) = invocation
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(store_error)?;
            match done {
                1 => {
                    *crate::sync::lock(&self.pending) = (
                        usize::try_from(pending).unwrap_or(0),
                        oldest.parse::<f64>().ok().map(|v| v as u64),
                    );
                    return Ok(DecidedAndDone::Decided(Decision::Run));
                }
                2 => return Ok(DecidedAndDone::Refused(reason)),
                _ => {}
            }
        }
        Err(FenceError::Store(format!(
            "branch {}/{} kept changing under contention",
            key.xid, key.branch_id
        )))
    }
}

/// A TCC resource whose business state is in Redis too: the fence's
/// decision and the participant's own Redis commands ([`RedisEffect`]) run
/// as one Lua script, so that the branch's state and the effect are written
/// together or not at all. No hold, no lease: there is nothing between the
/// decision and the effect for a drop or a crash to fall into. Made by
/// [`crate::ServiceTelemetry::tcc_redis`].
///
/// With Redis Cluster, every key of a call (the fence's record and pending
/// set under the fence's prefix, and the effect's keys) must hash to one
/// slot: put one `{hash tag}` in the prefix and the keys.
#[derive(Clone, Debug)]
pub struct RedisResource {
    meter: crate::tcc::Meter,
    fence: std::sync::Arc<RedisFence>,
}

impl RedisResource {
    pub(crate) fn new(meter: crate::tcc::Meter, fence: std::sync::Arc<RedisFence>) -> Self {
        let weak = std::sync::Arc::downgrade(&fence);
        meter.sample_pending(move || weak.upgrade().map(|f| f.pending_now()));
        Self { meter, fence }
    }

    /// The stage of `phase` of `branch` on this resource, named `name`.
    pub fn stage(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        phase: Phase,
        branch: &BranchKey,
    ) -> crate::Stage {
        self.meter.stage(name, phase, branch)
    }

    /// Runs `phase` of `branch`: decides it with the fence's rules and, when
    /// it may run, does `effect` with `keys` and `args` in the same script.
    ///
    /// # Errors
    ///
    /// [`BranchError::Rejected`] when the fence refuses the phase;
    /// [`BranchError::Handler`] with the effect's answer when it refused
    /// (nothing written: the branch is as it was); [`BranchError::Fence`]
    /// when Redis failed, or another call holds the branch through
    /// [`crate::tcc::TccResource::run`] on the same fence.
    pub async fn run(
        &self,
        phase: Phase,
        branch: &BranchKey,
        effect: &RedisEffect,
        keys: &[&str],
        args: &[&str],
    ) -> Result<BranchOutcome<()>, BranchError<String>> {
        use paytrace_semconv::tcc_phase_outcome as outcome;
        let done = match self
            .fence
            .decide_and_do(branch, phase, effect, keys, args)
            .await
        {
            Ok(done) => done,
            Err(e) => return Err(self.meter.fence_failed(phase, e).into()),
        };
        match done {
            DecidedAndDone::Refused(reason) => {
                self.meter.note_decision(phase, Decision::Run);
                self.meter.count_phase(phase, outcome::ERROR);
                Err(BranchError::Handler(reason))
            }
            DecidedAndDone::Decided(decision) => {
                self.meter.note_decision(phase, decision);
                match decision {
                    Decision::Run => {
                        self.meter.count_phase(phase, outcome::OK);
                        Ok(BranchOutcome::Ran(()))
                    }
                    Decision::Skip(a) => self.meter.skipped(phase, a),
                    Decision::Reject(a) => self.meter.rejected(phase, a),
                }
            }
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
