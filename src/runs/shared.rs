//! Run schedules shared by every replica through Redis (`state.backend = "redis"`).
//!
//! The memory scheduler's per-tenant slot (the running run, the scheduled run, the next allowed
//! start) lives in one Redis hash, and every decision on it is one Lua script, so replicas
//! never interleave: a request joins the scheduled run, or starts one, or creates the scheduled
//! one, atomically (one round trip, the warm path of a storm).
//!
//! Exactly one replica executes a run: it holds the run's lease (`SET … PX`, renewed while it
//! runs) whose value carries a fencing token, and every later change (an attempt, the finish,
//! a requeue) is refused unless the lease still holds that token. A replica that dies loses the
//! lease; the sweep of any replica then finds the run orphaned and puts its requests back in
//! the tenant's scheduled run, which starts when the cooldown allows (never early: the next
//! allowed start was set when the dead run started).
//!
//! A scheduled run may be executed by a replica that never saw its requests, so each joiner's
//! [`Actor`] (who it is, its delegated token, a user's inbound token for a new exchange) is kept
//! sealed with AES-256-GCM under `state.encryption_key`, bound to its Redis key, expiring with
//! its tokens. Nothing else in these keys is secret.
//!
//! Keys (`P` = `state.key_prefix`): `P run-slot:{tenant}` (hash: `running`, `scheduled`,
//! `next_allowed` in Unix ms), `P run-tenants` (set), `P run:{id}` (hash: the run as callers
//! see it), `P run:{id}:covered` (list of request ids), `P run:{id}:actors` (list of actor tags),
//! `P run-actor:{tenant}:{tag}` (an identity's sealed actor, shared by the runs that list it,
//! expiring with its tokens), `P run:{id}:lease` (`{owner} {fence}`). One Redis
//! (or a primary with replicas/Sentinel), not Redis Cluster: the scripts touch keys of several
//! runs.

use super::MAX_COVERED_IDS;
use super::{Actor, Covers, OutcomeRecord, Run, RunError, RunState, RunUpstream, MAX_ACTORS};
use crate::audit::AttemptSummary;
use crate::caller::UserCaller;
use crate::credentials::{ActingIdentity, DelegatedToken, ServiceIdentityRef};
use crate::domain::{hex, CallerSummary};
use crate::limits::{taken_from_flat, ScriptCell, Taken};
use crate::secret::{BearerToken, Secret};
use crate::state::{Redis, Sealer, Unavailable};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Bytes of an actor's fingerprint (96 bits: collisions between one run's joiners are out of
/// reach).
const FINGERPRINT_BYTES: usize = 12;

/// Fingerprints remembered at most (per process) of actors it stored lately.
const MAX_RECENTLY_STORED: usize = 10_000;

/// How long a run's lease lasts without renewal: a replica that stops renewing (it died, or
/// lost Redis) for this long loses the run to another replica.
pub const RUN_LEASE: Duration = Duration::from_secs(10);

/// Shared by every script: the prefix, the helpers that move requests between runs.
/// ARGV[1] is the key prefix, ARGV[2] the tenant, ARGV[3] how long a final run stays readable.
const PRELUDE: &str = r#"
local P, T, RET = ARGV[1], ARGV[2], ARGV[3]
local SLOT = P .. 'run-slot:' .. T
local function runkey(id) return P .. 'run:' .. id end
-- A joiner's sealed actor: one per identity of the tenant, shared by the runs that list it.
local function actorkey(tag) return P .. 'run-actor:' .. T .. ':' .. tag end
local function num(v) return tonumber(v or '0') or 0 end
local function drop_actors(id)
  local rk = runkey(id)
  -- The actors themselves expire with their tokens; another run may list them still.
  redis.call('DEL', rk .. ':actors')
end
-- The requests of run `from` ride on `target`, which starts after every one of them.
local function merge(from, target)
  local fk, tk = runkey(from), runkey(target)
  redis.call('HINCRBY', tk, 'covers', num(redis.call('HGET', fk, 'covers')))
  local room = __MAX_COVERED__ - redis.call('LLEN', tk .. ':covered')
  if room > 0 then
    local ids = redis.call('LRANGE', fk .. ':covered', 0, room - 1)
    for i = 1, #ids, 1000 do
      redis.call('RPUSH', tk .. ':covered', unpack(ids, i, math.min(i + 999, #ids)))
    end
  end
  redis.call('HSET', fk, 'state', 'scheduled', 'merged_into', target)
  redis.call('DEL', fk .. ':covered', fk .. ':lease')
  drop_actors(from)
  redis.call('PEXPIRE', fk, RET)
end
"#;

/// ARGV[4] now, [5] cooldown, [6] new run id, [7] request id, [8] actor tag, [9] the actor's
/// fingerprint followed by the sealed actor, or '' when the caller expects the run to hold
/// this very actor already, [10] its TTL, [11] the caller summary (JSON), [12] lease ms,
/// [13] owner, [14] the actor's fingerprint, [15] how many rate-limit cells to take first,
/// then each cell's key, `t` and `tau` ([`crate::limits::GCRA_FUNCTION`]). Answers
/// `need_actor` (and changes nothing) when [9] is '' and the run does not hold that actor;
/// `limited` (having taken the cells up to the one refusing, and changed nothing else) when
/// a cell refuses. Every other answer carries what the cells said after its four fields.
const SUBMIT: &str = r#"
local now, cooldown = tonumber(ARGV[4]), tonumber(ARGV[5])
local FP = ARGV[14]
local sched = redis.call('HGET', SLOT, 'scheduled')
if ARGV[9] == '' then
  -- Only the fingerprint in front of the sealed actor ('' when there is none).
  if redis.call('GETRANGE', actorkey(ARGV[8]), 0, #FP - 1) ~= FP then
    return {'need_actor', '', '', ''}
  end
end
local taken = {}
local function answer(fields)
  for _, v in ipairs(taken) do fields[#fields + 1] = string.format('%.0f', v) end
  return fields
end
local ncells = tonumber(ARGV[15])
if ncells > 0 then
  local cells = {}
  for i = 1, ncells do cells[i] = {ARGV[13 + 3 * i], ARGV[14 + 3 * i], ARGV[15 + 3 * i]} end
  local refused
  taken, refused = gcra(cells)
  if refused then return answer({'limited', '', '', ''}) end
end
local function join(id)
  local rk = runkey(id)
  if redis.call('LLEN', rk .. ':covered') < __MAX_COVERED__ then
    redis.call('RPUSH', rk .. ':covered', ARGV[7])
  end
  local al = rk .. ':actors'
  if ARGV[9] ~= '' then
    redis.call('SET', actorkey(ARGV[8]), ARGV[9], 'PX', ARGV[10])
  end
  redis.call('LREM', al, 0, ARGV[8])
  redis.call('RPUSH', al, ARGV[8])
  while redis.call('LLEN', al) > __MAX_ACTORS__ do
    redis.call('LPOP', al)
  end
end
if sched then
  local rk = runkey(sched)
  local covers = redis.call('HINCRBY', rk, 'covers', 1)
  redis.call('HSET', rk, 'acting_as', ARGV[11])
  join(sched)
  return answer({'joined', sched, redis.call('HGET', rk, 'not_before') or '', tostring(covers)})
end
local running = redis.call('HGET', SLOT, 'running')
local na = num(redis.call('HGET', SLOT, 'next_allowed'))
local id = ARGV[6]
local rk = runkey(id)
-- A new run: the sweep looks for the tenant from now on (a join finds it there already).
redis.call('SADD', P .. 'run-tenants', T)
if cooldown == 0 or ((not running) and now >= na) then
  redis.call('HSET', SLOT, 'running', id, 'next_allowed', now + cooldown)
  redis.call('HSET', rk, 'tenant', T, 'state', 'running', 'started_at', now, 'covers', 1,
    'acting_as', ARGV[11], 'fence', 1)
  redis.call('SET', rk .. ':lease', ARGV[13] .. ' 1', 'PX', ARGV[12])
  join(id)
  return answer({'started', id, '', '1'})
end
local nb = math.max(na, now)
redis.call('HSET', SLOT, 'scheduled', id)
redis.call('HSET', rk, 'tenant', T, 'state', 'scheduled', 'not_before', nb, 'covers', 1,
  'acting_as', ARGV[11], 'fence', 0)
join(id)
return answer({'scheduled', id, tostring(nb), '1'})
"#;

/// ARGV[4] run id: forgets a scheduled run nobody else joined (its record failed).
const WITHDRAW: &str = r#"
local id = ARGV[4]
local rk = runkey(id)
if redis.call('HGET', SLOT, 'scheduled') == id and num(redis.call('HGET', rk, 'covers')) == 1 then
  redis.call('HDEL', SLOT, 'scheduled')
  drop_actors(id)
  redis.call('DEL', rk, rk .. ':covered')
  return 1
end
return 0
"#;

/// ARGV[4] run id, [5] now, [6] cooldown, [7] owner, [8] lease ms.
const CLAIM: &str = r#"
local id, now, cooldown = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HGET', SLOT, 'scheduled') ~= id then return {'gone', ''} end
local running = redis.call('HGET', SLOT, 'running')
if running and redis.call('EXISTS', runkey(running) .. ':lease') == 1 then return {'busy', ''} end
local rk = runkey(id)
local due = math.max(num(redis.call('HGET', SLOT, 'next_allowed')), num(redis.call('HGET', rk, 'not_before')))
if now < due then return {'wait', tostring(due)} end
local orphan = ''
if running then
  merge(running, id)
  orphan = running
end
local f = redis.call('HINCRBY', rk, 'fence', 1)
redis.call('SET', rk .. ':lease', ARGV[7] .. ' ' .. f, 'PX', ARGV[8])
redis.call('HDEL', SLOT, 'scheduled')
redis.call('HSET', SLOT, 'running', id, 'next_allowed', now + cooldown)
redis.call('HSET', rk, 'state', 'running')
if not redis.call('HGET', rk, 'started_at') then redis.call('HSET', rk, 'started_at', now) end
return {'claimed', tostring(f), orphan}
"#;

/// ARGV[4] run id, [5] `{owner} {fence}`, [6] lease ms, [7] upstream JSON or '', [8] acting_as or ''.
const RENEW: &str = r#"
local rk = runkey(ARGV[4])
if redis.call('GET', rk .. ':lease') ~= ARGV[5] then return 0 end
redis.call('PEXPIRE', rk .. ':lease', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', rk, 'upstream', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', rk, 'acting_as', ARGV[8]) end
return 1
"#;

/// ARGV[4] run id, [5] `{owner} {fence}`, [6] state, [7] finished at, [8] upstream,
/// [9] error, [10] acting_as.
const FINISH: &str = r#"
local id = ARGV[4]
local rk = runkey(id)
if redis.call('GET', rk .. ':lease') ~= ARGV[5] then return 0 end
redis.call('HSET', rk, 'state', ARGV[6], 'finished_at', ARGV[7], 'upstream', ARGV[8],
  'error', ARGV[9], 'acting_as', ARGV[10])
if redis.call('HGET', SLOT, 'running') == id then redis.call('HDEL', SLOT, 'running') end
redis.call('DEL', rk .. ':lease', rk .. ':covered')
drop_actors(id)
redis.call('PEXPIRE', rk, RET)
return 1
"#;

/// ARGV[4] run id, [5] `{owner} {fence}`, [6] next allowed, [7] upstream, [8] acting_as.
const REQUEUE: &str = r#"
local id, nxt = ARGV[4], tonumber(ARGV[6])
local rk = runkey(id)
if redis.call('GET', rk .. ':lease') ~= ARGV[5] then return {'fenced', ''} end
redis.call('DEL', rk .. ':lease')
redis.call('HSET', rk, 'upstream', ARGV[7], 'acting_as', ARGV[8])
if redis.call('HGET', SLOT, 'running') == id then redis.call('HDEL', SLOT, 'running') end
redis.call('HSET', SLOT, 'next_allowed', math.max(num(redis.call('HGET', SLOT, 'next_allowed')), nxt))
local target = redis.call('HGET', SLOT, 'scheduled')
if target then
  merge(id, target)
  local tk = runkey(target)
  redis.call('HSET', tk, 'not_before', math.max(num(redis.call('HGET', tk, 'not_before')), nxt))
  return {'merged', target}
end
redis.call('HSET', rk, 'state', 'scheduled', 'not_before', nxt)
redis.call('HSET', SLOT, 'scheduled', id)
return {'scheduled', ''}
"#;

/// ARGV[4] the time before which no run of the tenant may start (0: none), [5] '1' when it
/// comes from reading Graph's settings at first use (then no other replica reads them again).
/// Only the first replica's reading counts: a later one may have read the settings after a run
/// of this schedule started (every run starts after its replica's reading), and would hold the
/// next run back for the schedule's own sync.
const HOLD: &str = r#"
if ARGV[5] == '1' and redis.call('HSETNX', SLOT, 'learned', 1) == 0 then return 0 end
redis.call('HSET', SLOT, 'next_allowed', math.max(num(redis.call('HGET', SLOT, 'next_allowed')), tonumber(ARGV[4])))
return 1
"#;

/// ARGV[4] now. Puts a run whose executor vanished (no lease) back into the scheduled run, and
/// says which run is scheduled and when it is due.
const SWEEP: &str = r#"
local now = tonumber(ARGV[4])
local na = num(redis.call('HGET', SLOT, 'next_allowed'))
local running = redis.call('HGET', SLOT, 'running')
local orphan = ''
if running and redis.call('EXISTS', runkey(running) .. ':lease') == 0 then
  redis.call('HDEL', SLOT, 'running')
  local sched = redis.call('HGET', SLOT, 'scheduled')
  if sched then
    merge(running, sched)
  else
    -- A second past the next allowed start: the dead run may have reached Graph, which
    -- counts its window from when it received the call, a moment after the run started.
    redis.call('HSET', runkey(running), 'state', 'scheduled', 'not_before', math.max(na + 1000, now))
    redis.call('HSET', SLOT, 'scheduled', running)
  end
  orphan = running
end
local sched = redis.call('HGET', SLOT, 'scheduled') or ''
local due = ''
if sched ~= '' then
  due = tostring(math.max(na, num(redis.call('HGET', runkey(sched), 'not_before'))))
end
return {orphan, sched, due}
"#;

/// ARGV[4] run id: the requests it covers and its sealed actors (tag, value; '' when expired).
const LOAD_FOR_RUN: &str = r#"
local rk = runkey(ARGV[4])
local out = {redis.call('LRANGE', rk .. ':covered', 0, -1), {}}
for _, tag in ipairs(redis.call('LRANGE', rk .. ':actors', 0, -1)) do
  table.insert(out[2], tag)
  table.insert(out[2], redis.call('GET', actorkey(tag)) or '')
end
return out
"#;

fn script(body: &str) -> redis::Script {
    let text = format!("{PRELUDE}{body}")
        .replace("__MAX_COVERED__", &MAX_COVERED_IDS.to_string())
        .replace("__MAX_ACTORS__", &MAX_ACTORS.to_string());
    redis::Script::new(&text)
}

/// What a submitted request became in the shared slot.
pub(super) enum Submitted {
    /// It joined the scheduled run `id` (due at `not_before`), which now covers `covers`.
    Joined {
        id: Uuid,
        not_before: Option<DateTime<Utc>>,
        covers: usize,
    },
    /// It started run `id`, which this replica executes under `fence`.
    Started { id: Uuid, fence: String },
    /// It created the scheduled run `id`, due at `not_before`.
    Scheduled { id: Uuid, not_before: DateTime<Utc> },
}

/// What a claim on a scheduled run found.
pub(super) enum Claim {
    /// The run is no longer the tenant's scheduled run (another replica took it, or it merged).
    Gone,
    /// The tenant's running run still holds its lease.
    Busy,
    /// Not before this time.
    Wait(DateTime<Utc>),
    /// This replica executes it under `fence`; `orphan` is a run whose executor died, now
    /// merged into it.
    Claimed { fence: String, orphan: Option<Uuid> },
}

/// What a requeue did.
pub(super) enum Requeued {
    /// Merged into the scheduled run `target`.
    Merged(Uuid),
    /// The run is now the tenant's scheduled run.
    Scheduled,
    /// The lease was lost: another replica owns the run now; nothing was changed.
    Fenced,
}

/// One tenant's slot, as the sweep saw it.
pub(super) struct SweptSlot {
    /// A run whose executor vanished, put back into the scheduled run.
    pub orphan: Option<Uuid>,
    /// The scheduled run and when it is due.
    pub scheduled: Option<(Uuid, DateTime<Utc>)>,
}

/// The running and scheduled runs of a tenant and its next allowed start.
pub(super) struct SlotView {
    pub running: Option<Uuid>,
    pub scheduled: Option<Uuid>,
    pub next_allowed: Option<DateTime<Utc>>,
}

/// A run's requests and actors, read by the replica that is about to execute it.
pub(super) struct ForExecution {
    pub covered: Vec<Uuid>,
    /// Oldest first, like `RunCell`'s actors.
    pub actors: Vec<Actor>,
}

/// The shared run schedule of one gateway process.
#[derive(Clone)]
pub(super) struct SharedRuns {
    redis: Redis,
    sealer: Sealer,
    /// This process, as lease owner: unique per process start, so a restarted replica never
    /// mistakes a lease of its previous life for its own.
    owner: String,
    retention_ms: u64,
    submit: redis::Script,
    withdraw: redis::Script,
    claim: redis::Script,
    renew: redis::Script,
    finish: redis::Script,
    requeue: redis::Script,
    hold: redis::Script,
    sweep: redis::Script,
    load_for_run: redis::Script,
    outcome: redis::Script,
    /// The HMAC key of actors' fingerprints.
    fingerprint_key: aws_lc_rs::hmac::Key,
    /// Fingerprints of the actors this process stored lately (capped: cleared when full).
    recently_stored: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
}

/// What a joiner's actor holds while sealed.
#[derive(Serialize, Deserialize)]
struct SealedActor {
    summary: StoredSummary,
    identity: SealedIdentity,
    /// The delegated Graph token, and until when it is usable (Unix ms).
    token: String,
    token_usable_until_ms: i64,
    application: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SealedIdentity {
    User {
        tenant_id: String,
        object_id: String,
        upn: Option<String>,
        client_app_id: Option<String>,
        scopes: Vec<String>,
        /// The inbound token, for a new on-behalf-of exchange once the delegated one expires.
        token: String,
        expires_at: i64,
    },
    Service {
        name: String,
        tenant_id: String,
    },
}

/// A [`CallerSummary`] as stored (its `kind` as text).
#[derive(Serialize, Deserialize, Default)]
struct StoredSummary {
    kind: String,
    tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
}

impl StoredSummary {
    fn of(s: &CallerSummary) -> Self {
        StoredSummary {
            kind: s.kind.to_string(),
            tenant_id: s.tenant_id.clone(),
            object_id: s.object_id.clone(),
            upn: s.upn.clone(),
            app_id: s.app_id.clone(),
            identity: s.identity.clone(),
        }
    }

    fn into_summary(self) -> CallerSummary {
        let kind = match self.kind.as_str() {
            "app" => "app",
            "service_identity" => "service_identity",
            "application_identity" => "application_identity",
            "hook" => "hook",
            _ => "user",
        };
        CallerSummary {
            kind,
            tenant_id: self.tenant_id,
            object_id: self.object_id,
            upn: self.upn,
            app_id: self.app_id,
            identity: self.identity,
        }
    }
}

/// The stored form of a run's error.
#[derive(Serialize, Deserialize)]
struct StoredError {
    kind: String,
    detail: String,
}

/// A run's attempts as stored.
#[derive(Serialize, Deserialize)]
struct StoredUpstream {
    status: Option<u16>,
    request_id: Option<String>,
    client_request_id: String,
    attempts: Vec<StoredAttempt>,
}

#[derive(Serialize, Deserialize)]
struct StoredAttempt {
    number: u32,
    client_request_id: String,
    status: Option<u16>,
    request_id: Option<String>,
    sent_at: DateTime<Utc>,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: &str) -> Option<DateTime<Utc>> {
    let n: f64 = v.parse().ok()?;
    Utc.timestamp_millis_opt(n as i64).single()
}

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

fn parse_id(v: &str) -> Option<Uuid> {
    Uuid::parse_str(v).ok()
}

/// A malformed answer from a script: only a different version of the gateway could cause it.
fn malformed(operation: &'static str) -> Unavailable {
    Unavailable {
        operation,
        reason: "an answer this version does not understand".into(),
    }
}

/// The JSON of a run's attempts, `''` when there are none.
fn upstream_json(u: &Option<RunUpstream>) -> String {
    match u {
        None => String::new(),
        Some(u) => serde_json::to_string(&StoredUpstream {
            status: u.status,
            request_id: u.request_id.clone(),
            client_request_id: u.client_request_id.clone(),
            attempts: u
                .attempts
                .iter()
                .map(|a| StoredAttempt {
                    number: a.number,
                    client_request_id: a.client_request_id.clone(),
                    status: a.status,
                    request_id: a.request_id.clone(),
                    sent_at: a.sent_at,
                })
                .collect(),
        })
        .unwrap_or_default(),
    }
}

fn summary_json(s: &Option<Arc<CallerSummary>>) -> String {
    s.as_ref()
        .and_then(|s| serde_json::to_string(&StoredSummary::of(s)).ok())
        .unwrap_or_default()
}

impl SharedRuns {
    /// The schedule on `redis`; actors sealed by `sealer`; final runs readable for `retention`.
    pub(super) fn new(
        redis: Redis,
        sealer: Sealer,
        fingerprint_secret: &[u8],
        retention: Duration,
    ) -> Self {
        // Derived, not the sealing key itself: one key, one use.
        let derived = Sha256::new()
            .chain_update(b"sync-gateway run actor fingerprint\n")
            .chain_update(fingerprint_secret)
            .finalize();
        SharedRuns {
            fingerprint_key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &derived),
            recently_stored: Arc::new(parking_lot::Mutex::new(std::collections::HashSet::new())),
            redis,
            sealer,
            owner: Uuid::new_v4().simple().to_string(),
            retention_ms: duration_ms(retention),
            // The join takes the caller's rate-limit cells first on the warm path.
            submit: script(&format!("{}{SUBMIT}", crate::limits::GCRA_FUNCTION)),
            withdraw: script(WITHDRAW),
            claim: script(CLAIM),
            renew: script(RENEW),
            finish: script(FINISH),
            requeue: script(REQUEUE),
            hold: script(HOLD),
            sweep: script(SWEEP),
            load_for_run: script(LOAD_FOR_RUN),
            // Only while the run is readable: never revive a hash that expired.
            outcome: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'outcome_record', ARGV[1]) end return 1",
            ),
        }
    }

    fn invocation<'a>(
        &self,
        script: &'a redis::Script,
        tenant: &str,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.arg(self.redis.key(""))
            .arg(tenant)
            .arg(self.retention_ms);
        inv
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut conn = self.redis.connection();
        self.redis
            .call(operation, async move { inv.invoke_async(&mut conn).await })
            .await
    }

    /// What a sealed actor is bound to (its additional data): its identity's tag, not its
    /// run, so the same sealed value serves whichever run the request joined.
    fn actor_binding(&self, tag: &str) -> String {
        self.redis.key(&format!("run-actor:{tag}"))
    }

    fn tag_of(identity: &ActingIdentity) -> String {
        let who = match identity {
            ActingIdentity::User(u) => format!("user:{}:{}", u.tenant_id, u.object_id),
            ActingIdentity::Service(s) => format!("service:{}", s.name),
        };
        hex(&Sha256::digest(who.as_bytes())[..12])
    }

    /// The actor sealed for run `id`, and how long it may be kept.
    fn seal_actor(&self, tag: &str, actor: &Actor) -> (String, u64) {
        let (token, remaining) = actor.token.for_sealing();
        let now = Utc::now();
        let (identity, ttl) = match &actor.identity {
            ActingIdentity::User(u) => {
                // No longer than the inbound token, which bounds the delegated one too.
                let left = (u.expires_at * 1000 - ms(now)).max(1) as u64;
                (
                    SealedIdentity::User {
                        tenant_id: u.tenant_id.clone(),
                        object_id: u.object_id.clone(),
                        upn: u.upn.clone(),
                        client_app_id: u.client_app_id.clone(),
                        scopes: u.scopes.clone(),
                        token: u.token.expose().to_string(),
                        expires_at: u.expires_at,
                    },
                    left,
                )
            }
            // No longer than the delegated token it carries; after that the replica acting
            // asks the identity for a fresh one anyway, and the next joiner stores it again.
            ActingIdentity::Service(s) => (
                SealedIdentity::Service {
                    name: s.name.to_string(),
                    tenant_id: s.tenant_id.clone(),
                },
                duration_ms(remaining),
            ),
        };
        let sealed = SealedActor {
            summary: StoredSummary::of(&actor.summary),
            identity,
            token: token.expose().to_string(),
            token_usable_until_ms: ms(now) + remaining.as_millis() as i64,
            application: actor.token.is_application(),
        };
        let plain = serde_json::to_vec(&sealed).unwrap_or_default();
        (self.sealer.seal(&self.actor_binding(tag), &plain), ttl)
    }

    /// A keyed digest of the actor's identity and, for a user, the token the caller sent
    /// (HMAC-SHA-256 under a key derived from `state.encryption_key`, 24 hex digits): says
    /// whether Redis holds this caller's actor already without opening it, and tells nobody
    /// without the key anything about the token. Not the delegated token: each replica
    /// exchanges its own, and any of them acts as well.
    fn fingerprint(&self, tag: &str, actor: &Actor) -> String {
        let presented: &[u8] = match &actor.identity {
            ActingIdentity::User(u) => u.token.digest(),
            ActingIdentity::Service(_) => b"",
        };
        let mut signing = aws_lc_rs::hmac::Context::with_key(&self.fingerprint_key);
        signing.update(tag.as_bytes());
        signing.update(b"\n");
        signing.update(presented);
        hex(&signing.sign().as_ref()[..FINGERPRINT_BYTES])
    }

    fn open_actor(&self, tag: &str, stored: &str) -> Option<Actor> {
        let sealed = stored.get(FINGERPRINT_BYTES * 2..)?;
        let plain = self.sealer.open(&self.actor_binding(tag), sealed)?;
        let a: SealedActor = serde_json::from_slice(&plain).ok()?;
        let left = (a.token_usable_until_ms - ms(Utc::now())).max(0) as u64;
        let token = DelegatedToken::unsealed(
            Secret::new(a.token),
            Duration::from_millis(left),
            a.application,
        )
        .ok()?;
        let identity = match a.identity {
            SealedIdentity::User {
                tenant_id,
                object_id,
                upn,
                client_app_id,
                scopes,
                token,
                expires_at,
            } => ActingIdentity::User(Arc::new(UserCaller {
                tenant_id,
                object_id,
                upn,
                client_app_id,
                scopes,
                token: BearerToken::new(token),
                expires_at,
            })),
            SealedIdentity::Service { name, tenant_id } => {
                ActingIdentity::Service(ServiceIdentityRef {
                    name: name.into(),
                    tenant_id,
                })
            }
        };
        Some(Actor {
            summary: Arc::new(a.summary.into_summary()),
            identity,
            token: Arc::new(token),
        })
    }

    /// Covers `request` of `tenant`: joins the scheduled run, or starts `new_id` now, or makes
    /// `new_id` the scheduled run; one script, so replicas never interleave. The script first
    /// takes the caller's rate-limit `cells`, if any: what they said comes back beside the
    /// decision, and a refusal leaves the schedule as it was (`None`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn submit(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
        cooldown: Duration,
        new_id: Uuid,
        request: Uuid,
        actor: &Actor,
        cells: &[ScriptCell],
    ) -> Result<(Vec<Taken>, Option<Submitted>), Unavailable> {
        let tag = Self::tag_of(&actor.identity);
        let fingerprint = self.fingerprint(&tag, actor);
        let summary = summary_json(&Some(actor.summary.clone()));
        // A caller whose token this replica stored moments ago (a storm's callers send theirs
        // again and again) most likely finds it in the scheduled run: try without it first,
        // which spares sealing it and sending it; the script says if it is needed after all.
        let mut send_actor = !self.recently_stored.lock().contains(&fingerprint);
        let reply = loop {
            let mut inv = self.invocation(&self.submit, tenant);
            let (stored, ttl) = if send_actor {
                let (sealed, ttl) = self.seal_actor(&tag, actor);
                (format!("{fingerprint}{sealed}"), ttl)
            } else {
                (String::new(), 0)
            };
            inv.arg(ms(now))
                .arg(cooldown.as_millis() as u64)
                .arg(new_id.to_string())
                .arg(request.to_string())
                .arg(&tag)
                .arg(&stored)
                .arg(ttl)
                .arg(&summary)
                .arg(duration_ms(RUN_LEASE))
                .arg(&self.owner)
                .arg(&fingerprint)
                .arg(cells.len());
            for cell in cells {
                inv.arg(&cell.key).arg(cell.t).arg(cell.tau);
            }
            let reply: Vec<String> = self.run("run_submit", inv).await?;
            if reply.first().is_some_and(|w| w == "need_actor") && !send_actor {
                send_actor = true;
                continue;
            }
            if send_actor {
                let mut recent = self.recently_stored.lock();
                if recent.len() >= MAX_RECENTLY_STORED {
                    recent.clear();
                }
                recent.insert(fingerprint.clone());
            }
            break reply;
        };
        let [what, id, time, covers, said @ ..] = reply.as_slice() else {
            return Err(malformed("run_submit"));
        };
        let flat = said
            .iter()
            .map(|v| v.parse::<i64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| malformed("run_submit"))?;
        let taken = taken_from_flat(&flat).map_err(|_| malformed("run_submit"))?;
        if what == "limited" {
            return Ok((taken, None));
        }
        if taken.len() != cells.len() {
            // Admitted, yet not every cell was taken: the script's answer is not to be trusted.
            return Err(malformed("run_submit"));
        }
        let id = parse_id(id).ok_or_else(|| malformed("run_submit"))?;
        let decided = match what.as_str() {
            "started" => Submitted::Started {
                id,
                fence: format!("{} 1", self.owner),
            },
            "scheduled" => Submitted::Scheduled {
                id,
                not_before: from_ms(time).ok_or_else(|| malformed("run_submit"))?,
            },
            "joined" => Submitted::Joined {
                id,
                not_before: from_ms(time),
                covers: covers.parse().unwrap_or(1),
            },
            _ => return Err(malformed("run_submit")),
        };
        Ok((taken, Some(decided)))
    }

    /// Forgets scheduled run `id` if nobody joined it (its `scheduled` record failed).
    pub(super) async fn withdraw(&self, tenant: &str, id: Uuid) -> Result<bool, Unavailable> {
        let mut inv = self.invocation(&self.withdraw, tenant);
        inv.arg(id.to_string());
        let n: i64 = self.run("run_withdraw", inv).await?;
        Ok(n == 1)
    }

    /// Tries to take scheduled run `id` for execution on this replica.
    pub(super) async fn claim(
        &self,
        tenant: &str,
        id: Uuid,
        now: DateTime<Utc>,
        cooldown: Duration,
    ) -> Result<Claim, Unavailable> {
        let mut inv = self.invocation(&self.claim, tenant);
        inv.arg(id.to_string())
            .arg(ms(now))
            .arg(cooldown.as_millis() as u64)
            .arg(&self.owner)
            .arg(duration_ms(RUN_LEASE));
        let reply: Vec<String> = self.run("run_claim", inv).await?;
        match reply.as_slice() {
            [w, _] if w == "gone" => Ok(Claim::Gone),
            [w, _] if w == "busy" => Ok(Claim::Busy),
            [w, t] if w == "wait" => Ok(Claim::Wait(
                from_ms(t).ok_or_else(|| malformed("run_claim"))?,
            )),
            [w, fence, orphan] if w == "claimed" => Ok(Claim::Claimed {
                fence: format!("{} {fence}", self.owner),
                orphan: parse_id(orphan),
            }),
            _ => Err(malformed("run_claim")),
        }
    }

    /// Renews the lease of run `id` held under `fence`, publishing its attempts so far and who
    /// acts. False if the lease is no longer this replica's.
    pub(super) async fn renew(
        &self,
        tenant: &str,
        id: Uuid,
        fence: &str,
        view: Option<&Run>,
    ) -> Result<bool, Unavailable> {
        let mut inv = self.invocation(&self.renew, tenant);
        inv.arg(id.to_string())
            .arg(fence)
            .arg(duration_ms(RUN_LEASE))
            .arg(view.map(|v| upstream_json(&v.upstream)).unwrap_or_default())
            .arg(view.map(|v| summary_json(&v.acting_as)).unwrap_or_default());
        let n: i64 = self.run("run_renew", inv).await?;
        Ok(n == 1)
    }

    /// Publishes run `view` as final. False if the lease was lost (nothing changed).
    pub(super) async fn finish(&self, view: &Run, fence: &str) -> Result<bool, Unavailable> {
        let mut inv = self.invocation(&self.finish, &view.tenant_id);
        let error = view
            .error
            .as_ref()
            .and_then(|e| {
                serde_json::to_string(&StoredError {
                    kind: e.kind.to_string(),
                    detail: e.detail.clone(),
                })
                .ok()
            })
            .unwrap_or_default();
        inv.arg(view.id.to_string())
            .arg(fence)
            .arg(view.state.as_str())
            .arg(view.finished_at.map(ms).unwrap_or_default())
            .arg(upstream_json(&view.upstream))
            .arg(error)
            .arg(summary_json(&view.acting_as));
        let n: i64 = self.run("run_finish", inv).await?;
        Ok(n == 1)
    }

    /// Graph said "not now": run `view` waits until `next`, merged into the scheduled run if
    /// there is one.
    pub(super) async fn requeue(
        &self,
        view: &Run,
        fence: &str,
        next: DateTime<Utc>,
    ) -> Result<Requeued, Unavailable> {
        let mut inv = self.invocation(&self.requeue, &view.tenant_id);
        inv.arg(view.id.to_string())
            .arg(fence)
            .arg(ms(next))
            .arg(upstream_json(&view.upstream))
            .arg(summary_json(&view.acting_as));
        let reply: Vec<String> = self.run("run_requeue", inv).await?;
        match reply.as_slice() {
            [w, t] if w == "merged" => Ok(Requeued::Merged(
                parse_id(t).ok_or_else(|| malformed("run_requeue"))?,
            )),
            [w, _] if w == "scheduled" => Ok(Requeued::Scheduled),
            [w, _] if w == "fenced" => Ok(Requeued::Fenced),
            _ => Err(malformed("run_requeue")),
        }
    }

    /// No run of `tenant` starts before `t`.
    pub(super) async fn hold_until(
        &self,
        tenant: &str,
        t: DateTime<Utc>,
    ) -> Result<(), Unavailable> {
        self.hold(tenant, ms(t), false).await
    }

    async fn hold(&self, tenant: &str, t_ms: i64, learned: bool) -> Result<(), Unavailable> {
        let mut inv = self.invocation(&self.hold, tenant);
        inv.arg(t_ms).arg(if learned { "1" } else { "0" });
        let _: i64 = self.run("run_hold", inv).await?;
        Ok(())
    }

    /// Whether some replica already read the tenant's Graph settings since the schedule began
    /// (a later read would see this gateway's own runs and push the next start out again).
    pub(super) async fn learned(&self, tenant: &str) -> Result<bool, Unavailable> {
        Ok(self
            .hash(&format!("run-slot:{tenant}"))
            .await?
            .contains_key("learned"))
    }

    /// What the first read of the tenant's Graph settings taught: no run before `t`, if any.
    pub(super) async fn learned_from_graph(
        &self,
        tenant: &str,
        t: Option<DateTime<Utc>>,
    ) -> Result<(), Unavailable> {
        self.hold(tenant, t.map_or(0, ms), true).await
    }

    /// Says whether final run `id`'s outcome is in this replica's audit chain (best effort:
    /// readers see `pending` until it is).
    pub(super) async fn publish_outcome_record(&self, id: Uuid, o: OutcomeRecord) {
        let word = match o {
            OutcomeRecord::Pending => "pending",
            OutcomeRecord::Recorded => "recorded",
            OutcomeRecord::RecordedLate => "recorded_late",
            OutcomeRecord::NotRecorded => "not_recorded",
        };
        let mut inv = self.outcome.prepare_invoke();
        inv.key(self.redis.key(&format!("run:{id}"))).arg(word);
        if let Err(e) = self.run::<i64>("run_finish", inv).await {
            tracing::warn!(run = %id, error = %e, "could not publish where a run's outcome record is");
        }
    }

    /// Every tenant that ever had a shared slot under this prefix (bounded: tenants come only
    /// from allowed tenants' validated tokens).
    pub(super) async fn tenants(&self) -> Result<Vec<String>, Unavailable> {
        let key = self.redis.key("run-tenants");
        let mut conn = self.redis.connection();
        self.redis
            .call("run_sweep", async move {
                redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await
            })
            .await
    }

    /// Puts an orphaned run of `tenant` back in line and says which run is scheduled, when.
    pub(super) async fn sweep(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<SweptSlot, Unavailable> {
        let mut inv = self.invocation(&self.sweep, tenant);
        inv.arg(ms(now));
        let reply: Vec<String> = self.run("run_sweep", inv).await?;
        let [orphan, sched, due] = reply.as_slice() else {
            return Err(malformed("run_sweep"));
        };
        Ok(SweptSlot {
            orphan: parse_id(orphan),
            scheduled: parse_id(sched).zip(from_ms(due)),
        })
    }

    /// The hash at `{prefix}{key}` (empty when there is none).
    async fn hash(&self, key: &str) -> Result<HashMap<String, String>, Unavailable> {
        let key = self.redis.key(key);
        let mut conn = self.redis.connection();
        self.redis
            .call("run_read", async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
            })
            .await
    }

    /// The tenant's running and scheduled runs and next allowed start.
    pub(super) async fn slot(&self, tenant: &str) -> Result<SlotView, Unavailable> {
        let h = self.hash(&format!("run-slot:{tenant}")).await?;
        Ok(SlotView {
            running: h.get("running").and_then(|v| parse_id(v)),
            scheduled: h.get("scheduled").and_then(|v| parse_id(v)),
            next_allowed: h.get("next_allowed").and_then(|v| from_ms(v)),
        })
    }

    /// Run `id` as callers see it, following merges (`None`: unknown or expired).
    pub(super) async fn load(
        &self,
        id: Uuid,
        action: &'static str,
    ) -> Result<Option<Run>, Unavailable> {
        let mut id = id;
        // A merge chain is short (one per requeue); the bound only guards against a loop.
        for _ in 0..8 {
            let h = self.hash(&format!("run:{id}")).await?;
            if h.is_empty() {
                return Ok(None);
            }
            if let Some(next) = h.get("merged_into").and_then(|v| parse_id(v)) {
                id = next;
                continue;
            }
            return Ok(Some(run_of(id, action, &h)));
        }
        Ok(None)
    }

    /// What the replica about to execute run `id` needs: its requests and its actors.
    pub(super) async fn for_execution(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<ForExecution, Unavailable> {
        let mut inv = self.invocation(&self.load_for_run, tenant);
        inv.arg(id.to_string());
        let (covered, actors): (Vec<String>, Vec<String>) = self.run("run_read", inv).await?;
        let covered = covered.iter().filter_map(|v| parse_id(v)).collect();
        let actors = actors
            .chunks(2)
            .filter_map(|pair| match pair {
                [tag, sealed] if !sealed.is_empty() => self.open_actor(tag, sealed),
                _ => None,
            })
            .collect();
        Ok(ForExecution { covered, actors })
    }
}

/// A run from its Redis hash.
fn run_of(id: Uuid, action: &'static str, h: &HashMap<String, String>) -> Run {
    let time = |k: &str| h.get(k).and_then(|v| from_ms(v));
    let state = match h.get("state").map(String::as_str) {
        Some("running") => RunState::Running,
        Some("succeeded") => RunState::Succeeded,
        Some("failed") => RunState::Failed,
        Some("abandoned") => RunState::Abandoned,
        _ => RunState::Scheduled,
    };
    let upstream = h
        .get("upstream")
        .and_then(|v| serde_json::from_str::<StoredUpstream>(v).ok())
        .map(|u| RunUpstream {
            status: u.status,
            request_id: u.request_id,
            client_request_id: u.client_request_id,
            attempts: u
                .attempts
                .into_iter()
                .map(|a| AttemptSummary {
                    number: a.number,
                    client_request_id: a.client_request_id,
                    status: a.status,
                    request_id: a.request_id,
                    sent_at: a.sent_at,
                })
                .collect(),
        });
    let error = h
        .get("error")
        .and_then(|v| serde_json::from_str::<StoredError>(v).ok())
        .map(|e| RunError {
            kind: crate::error::kind_named(&e.kind),
            detail: e.detail,
        });
    let acting_as = h
        .get("acting_as")
        .and_then(|v| serde_json::from_str::<StoredSummary>(v).ok())
        .map(|s| Arc::new(s.into_summary()));
    Run {
        id,
        action,
        tenant_id: h.get("tenant").cloned().unwrap_or_default(),
        state,
        not_before: time("not_before").filter(|_| state == RunState::Scheduled),
        started_at: time("started_at"),
        finished_at: time("finished_at"),
        covers: Covers {
            count: h.get("covers").and_then(|v| v.parse().ok()).unwrap_or(0),
        },
        acting_as,
        upstream,
        error,
        // The replica that finished it says once its own chain holds the outcome.
        outcome_record: state.is_final().then(|| {
            match h.get("outcome_record").map(String::as_str) {
                Some("recorded") => OutcomeRecord::Recorded,
                Some("recorded_late") => OutcomeRecord::RecordedLate,
                Some("not_recorded") => OutcomeRecord::NotRecorded,
                _ => OutcomeRecord::Pending,
            }
        }),
    }
}
