//! Runs: one upstream execution of an action for one tenant, and the scheduling that turns
//! Intune's "one sync per 10 minutes" into a promise instead of an error.
//!
//! - [`Run`] is what callers see (`POST /sync`, `GET /sync/runs/{id}`).
//! - [`RunCell`] holds a run while it lives: its view, the identity it will act as (memory only),
//!   and a channel that wakes whoever waits for it.
//! - [`schedule::Scheduler`] decides, per (action, tenant), whether a request joins the scheduled
//!   run, starts one now, or creates the scheduled one; [`execute`] carries a run out.

mod archive;
pub mod execute;
pub mod schedule;
mod shared;

use crate::audit::AttemptSummary;
use crate::credentials::{ActingIdentity, DelegatedToken};
use crate::domain::CallerSummary;
pub use crate::domain::RunState;
use crate::error::GatewayError;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// Requests one run remembers by id at most (the count keeps going past it).
pub const MAX_COVERED_IDS: usize = 100_000;

/// Distinct identities a run keeps to act as, newest first: if the latest joiner cannot act
/// when the run's turn comes (its token expired, its consent was revoked), an earlier one does.
pub const MAX_ACTORS: usize = 4;

/// Whether a final run's outcome record (`finished`, `abandoned`) is in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeRecord {
    /// Not durable yet: the trail could not take it in time; it is kept and written, marked
    /// `late`, once the trail recovers.
    Pending,
    /// Durable.
    Recorded,
    /// Durable, written after the trail recovered (marked `"late": true` in the trail).
    RecordedLate,
    /// Not in the trail: it could not be written, nor kept (the late queue was full, the
    /// gateway stopped, or the run never called Graph and its record fails closed); logged.
    NotRecorded,
}

/// The requests a run covers. Their audit ids are in the run's audit records, not here: a
/// storm of joiners must not make every answer (and every copy of the view) grow.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Covers {
    /// How many requests joined.
    pub count: usize,
}

/// Graph's answers for a run: the last attempt's, and every attempt.
#[derive(Debug, Clone, Serialize)]
pub struct RunUpstream {
    /// The last attempt's status.
    pub status: Option<u16>,
    /// The last attempt's `request-id`.
    pub request_id: Option<String>,
    /// The last attempt's `client-request-id`.
    pub client_request_id: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptSummary>,
}

/// Why a run failed, as a problem kind and a sentence.
#[derive(Debug, Clone, Serialize)]
pub struct RunError {
    /// The stable problem kind (e.g. `upstream-failed`).
    pub kind: &'static str,
    /// What happened.
    pub detail: String,
}

/// A run as callers see it.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// UUID v7.
    pub id: Uuid,
    /// The action (`sync`).
    pub action: &'static str,
    /// The tenant whose Graph it calls.
    pub tenant_id: String,
    /// Where it is.
    pub state: RunState,
    /// The earliest start, while scheduled.
    pub not_before: Option<DateTime<Utc>>,
    /// When its first attempt was sent.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The requests it covers.
    pub covers: Covers,
    /// Whose delegated token it uses: the most recent request that joined, or, once it runs,
    /// the most recent one that could act.
    pub acting_as: Option<Arc<CallerSummary>>,
    /// Graph's answers.
    pub upstream: Option<RunUpstream>,
    /// Why it failed.
    pub error: Option<RunError>,
    /// Once it is final: whether its outcome is durable in the audit trail yet.
    pub outcome_record: Option<OutcomeRecord>,
}

impl Run {
    /// True when Graph may have acted for this run, or still may: it is not final, or it made
    /// an attempt. What is recorded about such a run is an outcome that must not be lost.
    pub fn may_have_acted(&self) -> bool {
        !self.state.is_final() || self.upstream.is_some()
    }
}

/// Who a run acts as, with what: the identity and its delegated token, in memory only.
#[derive(Clone)]
pub struct Actor {
    /// For the audit trail and the run view.
    pub summary: Arc<CallerSummary>,
    /// Who acts: a user (whose inbound token can be exchanged again if the delegated one would
    /// expire) or a service identity (whose session can be refreshed).
    pub identity: ActingIdentity,
    /// The delegated Graph token from the request's exchange.
    pub token: Arc<DelegatedToken>,
}

/// A live run: its view, its actor, its failure, and a channel announcing every change.
pub struct RunCell {
    run: Mutex<Run>,
    /// The audit ids of the requests it covers, for its audit records.
    covered: Mutex<Vec<Uuid>>,
    /// Who may act, oldest first, one entry per identity, at most [`MAX_ACTORS`].
    actors: Mutex<Vec<Actor>>,
    failure: Mutex<Option<GatewayError>>,
    merged_into: Mutex<Option<Arc<RunCell>>>,
    changed: watch::Sender<u64>,
}

impl RunCell {
    /// A new run of `action` for `tenant_id`, covering `request`, acting as `actor`.
    pub fn new(
        action: &'static str,
        tenant_id: String,
        state: RunState,
        not_before: Option<DateTime<Utc>>,
        request: Uuid,
        actor: Actor,
    ) -> Arc<RunCell> {
        Self::with_id(
            Uuid::now_v7(),
            action,
            tenant_id,
            state,
            not_before,
            request,
            actor,
        )
    }

    /// A new run with a given id (one the shared schedule already knows).
    pub(super) fn with_id(
        id: Uuid,
        action: &'static str,
        tenant_id: String,
        state: RunState,
        not_before: Option<DateTime<Utc>>,
        request: Uuid,
        actor: Actor,
    ) -> Arc<RunCell> {
        Arc::new(RunCell {
            run: Mutex::new(Run {
                id,
                action,
                tenant_id,
                state,
                not_before,
                started_at: None,
                finished_at: None,
                covers: Covers { count: 1 },
                acting_as: Some(actor.summary.clone()),
                upstream: None,
                error: None,
                outcome_record: None,
            }),
            covered: Mutex::new(vec![request]),
            actors: Mutex::new(vec![actor]),
            failure: Mutex::new(None),
            merged_into: Mutex::new(None),
            changed: watch::channel(0).0,
        })
    }

    /// A replica's local copy of a shared run it follows but does not execute (yet): its view
    /// as Redis has it, no requests or actors of its own.
    pub(super) fn follower(run: Run) -> Arc<RunCell> {
        Arc::new(RunCell {
            run: Mutex::new(run),
            covered: Mutex::new(Vec::new()),
            actors: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            merged_into: Mutex::new(None),
            changed: watch::channel(0).0,
        })
    }

    /// Shows `run` (read from the shared schedule) as this run's view.
    pub(super) fn show(&self, run: Run) {
        self.update(|r| *r = run);
    }

    /// Takes the requests and actors the shared schedule holds for this run, before this
    /// replica executes it. Actors that could not be read (expired) leave the local ones.
    pub(super) fn take_over(&self, covered: Vec<Uuid>, actors: Vec<Actor>, covers: usize) {
        *self.covered.lock() = covered;
        if !actors.is_empty() {
            *self.actors.lock() = actors;
        }
        self.update(|r| r.covers.count = covers.max(r.covers.count));
    }

    /// The run now carries its requests in `target`.
    pub(super) fn merge_into(&self, target: Arc<RunCell>) {
        *self.merged_into.lock() = Some(target);
        self.changed.send_modify(|v| *v += 1);
    }

    /// The run's id.
    pub fn id(&self) -> Uuid {
        self.run.lock().id
    }

    /// A copy of the run as it is now.
    pub fn view(&self) -> Run {
        self.run.lock().clone()
    }

    /// The run's state now.
    pub fn state(&self) -> RunState {
        self.run.lock().state
    }

    /// The run's tenant. Cheaper than [`RunCell::view`], which copies the whole run: the
    /// executor needs only this on every attempt.
    pub fn tenant_id(&self) -> String {
        self.run.lock().tenant_id.clone()
    }

    /// How many upstream attempts the run has made so far.
    pub fn attempts_made(&self) -> usize {
        self.run
            .lock()
            .upstream
            .as_ref()
            .map_or(0, |u| u.attempts.len())
    }

    /// The run that now carries this run's requests (itself unless it was merged).
    pub fn resolve(self: &Arc<Self>) -> Arc<RunCell> {
        let mut cell = self.clone();
        loop {
            let next = cell.merged_into.lock().clone();
            match next {
                Some(n) => cell = n,
                None => return cell,
            }
        }
    }

    /// Whether its outcome is durable in the audit trail yet (`None` until it is final).
    pub fn outcome_record(&self) -> Option<OutcomeRecord> {
        self.run.lock().outcome_record
    }

    pub(super) fn set_outcome_record(&self, o: OutcomeRecord) {
        self.update(|r| r.outcome_record = Some(o));
    }

    /// Why the run failed, as the error its caller gets.
    pub fn failure(&self) -> Option<GatewayError> {
        self.failure.lock().clone()
    }

    /// Who the run may act as, the most recent joiner first.
    pub fn actors(&self) -> Vec<Actor> {
        self.actors.lock().iter().rev().cloned().collect()
    }

    /// Records that the run acts as `actor` (an earlier joiner, when the latest could not).
    pub(super) fn act_as(&self, actor: &Actor) {
        self.update(|r| r.acting_as = Some(actor.summary.clone()));
    }

    /// Waits until the run (or the run it merged into) leaves `Running`, at most `limit`;
    /// returns the run that carries the request.
    pub async fn wait_while_running(self: &Arc<Self>, limit: Duration) -> Arc<RunCell> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let cell = self.resolve();
            if cell.state() != RunState::Running {
                return cell;
            }
            let mut rx = cell.changed.subscribe();
            // Re-check after subscribing so a change in between is not missed.
            if cell.state() != RunState::Running || cell.merged_into.lock().is_some() {
                continue;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return self.resolve();
            }
        }
    }

    /// Waits until the run reaches a final state (used to hold a scheduled run back while the
    /// tenant's running run finishes).
    pub async fn wait_final(self: &Arc<Self>) {
        let mut rx = self.changed.subscribe();
        while !self.state().is_final() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A receiver that wakes on every change of this run (a follow-up watching for its outcome).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Run)) {
        f(&mut self.run.lock());
        self.changed.send_modify(|v| *v += 1);
    }

    /// The audit ids of the requests it covers (at most [`MAX_COVERED_IDS`]).
    pub fn covered(&self) -> Vec<Uuid> {
        self.covered.lock().clone()
    }

    /// A request joined this run on the shared schedule, which now counts `covers`.
    pub(super) fn joined_shared(&self, request: Uuid, actor: Actor, covers: usize) {
        self.join(request, actor);
        self.update(|r| r.covers.count = covers.max(r.covers.count));
    }

    fn join(&self, request: Uuid, actor: Actor) {
        {
            let mut ids = self.covered.lock();
            if ids.len() < MAX_COVERED_IDS {
                ids.push(request);
            }
        }
        self.update(|r| {
            r.covers.count += 1;
            r.acting_as = Some(actor.summary.clone());
        });
        let mut actors = self.actors.lock();
        // A newer token of the same identity replaces its older one.
        actors.retain(|a| !a.identity.same_as(&actor.identity));
        if actors.len() == MAX_ACTORS {
            actors.remove(0);
        }
        actors.push(actor);
    }

    fn absorb(&self, other: &RunCell) {
        let moved = other.covered();
        let count = other.view().covers.count;
        {
            let mut ids = self.covered.lock();
            let room = MAX_COVERED_IDS.saturating_sub(ids.len());
            ids.extend(moved.into_iter().take(room));
        }
        self.update(|r| r.covers.count += count);
    }

    fn set_failure(&self, e: GatewayError) {
        *self.failure.lock() = Some(e);
    }
}

/// How one action's runs behave (from `[actions.sync]`).
#[derive(Debug, Clone)]
pub struct RunPolicy {
    /// The action's name, as recorded.
    pub action: &'static str,
    /// The Graph path of the action.
    pub upstream_path: String,
    /// The Graph path of the settings that say when the last sync was triggered.
    pub status_path: String,
    /// The delegated scope the action needs.
    pub graph_scope: String,
    /// Runs of one tenant start at least this far apart.
    pub cooldown: Duration,
    /// How long one run may keep retrying transient failures.
    pub retry_budget: Duration,
    /// Attempts per execution at most.
    pub max_attempts: u32,
    /// The first backoff step.
    pub retry_base: Duration,
    /// After a 409, how often `syncStatus` is polled.
    pub status_poll: Duration,
    /// After a 409, how many polls at most.
    pub status_poll_limit: u32,
    /// How long finished runs stay readable.
    pub retention: Duration,
    /// How many finished runs stay readable at most.
    pub max_finished: u64,
}

/// `t` plus `d`, saturating.
pub(super) fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::UserCaller;
    use crate::secret::{BearerToken, Secret};

    fn actor(object_id: &str) -> Actor {
        let user = UserCaller {
            tenant_id: "t".into(),
            object_id: object_id.into(),
            upn: None,
            client_app_id: None,
            scopes: Vec::new(),
            token: BearerToken::new("x"),
            expires_at: 0,
        };
        Actor {
            summary: Arc::new(user.summary()),
            identity: ActingIdentity::User(Arc::new(user)),
            token: Arc::new(
                DelegatedToken::new(Secret::new("g"), Duration::from_secs(60)).unwrap(),
            ),
        }
    }

    fn object_ids(cell: &RunCell) -> Vec<String> {
        cell.actors()
            .iter()
            .map(|a| a.summary.object_id.clone().unwrap())
            .collect()
    }

    #[test]
    fn a_run_keeps_the_latest_distinct_joiners_newest_first() {
        let cell = RunCell::new(
            "sync",
            "t".into(),
            RunState::Scheduled,
            None,
            Uuid::nil(),
            actor("a"),
        );
        for id in ["b", "c", "d", "e"] {
            cell.join(Uuid::nil(), actor(id));
        }
        assert_eq!(
            object_ids(&cell),
            ["e", "d", "c", "b"],
            "at most MAX_ACTORS"
        );
        cell.join(Uuid::nil(), actor("c"));
        assert_eq!(
            object_ids(&cell),
            ["c", "e", "d", "b"],
            "a rejoiner moves up, once"
        );
        assert_eq!(cell.view().covers.count, 6);
    }
}
