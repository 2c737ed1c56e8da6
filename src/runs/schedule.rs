//! Per (action, tenant): at most one running and one scheduled run, and the promise that every
//! accepted request is covered by a run that starts after it, with runs at least the cooldown
//! apart.
//!
//! A request joins the scheduled run if there is one; otherwise it starts a run now if the
//! cooldown has passed and nothing runs; otherwise it creates the scheduled run with
//! `not_before` = the end of the cooldown. The cooldown is learned from Graph too: read once per
//! tenant at first use (so a restart does not fire early), and again whenever Graph answers 429.

use super::shared::{self, SharedRuns};
use super::{after, execute, Actor, OutcomeRecord, Run, RunCell, RunPolicy, RunState};
use crate::audit::{AttemptSummary, AuditEvent, AuditLog, OutcomeWrite, RunRecord};
use crate::clock::Clock;
use crate::credentials::{Credentials, DelegatedToken};
use crate::domain::RunEvent;
use crate::error::GatewayError;
use crate::limits::{ScriptCell, Taken};
use crate::metrics::RunMetrics;
use crate::upstream::Graph;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How often one run may be sent back to wait by Graph's 409/429 before it fails.
pub const MAX_REQUEUES: u32 = 6;

/// Added to times learned from Graph: its stored timestamps may be truncated and its clock
/// is not ours, and a run that arrives a moment early costs a whole 429 round trip.
pub const LEARNED_MARGIN: Duration = Duration::from_secs(1);

impl RunPolicy {
    /// When the cooldown that Graph started at `trigger` (a time Graph reported) is over.
    pub fn cooldown_after(&self, trigger: DateTime<Utc>) -> DateTime<Utc> {
        after(trigger, self.cooldown + LEARNED_MARGIN)
    }
}

/// What happened to a submitted request.
pub enum Submitted {
    /// It started a run now: the caller may wait for its first outcome.
    Started(Arc<RunCell>),
    /// It joined (or created) the scheduled run.
    Scheduled(Arc<RunCell>),
}

impl Submitted {
    /// The run the request joined.
    pub fn cell(&self) -> &Arc<RunCell> {
        match self {
            Submitted::Started(c) | Submitted::Scheduled(c) => c,
        }
    }
}

/// The gateway's view of one tenant's runs, for `GET /sync/status`.
#[derive(Debug, Clone, Serialize)]
pub struct TenantRuns {
    /// The run calling Graph now.
    pub running: Option<Run>,
    /// The run waiting for its time.
    pub scheduled: Option<Run>,
    /// The earliest time a new run could start.
    pub next_start: DateTime<Utc>,
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) running: Option<Arc<RunCell>>,
    pub(super) scheduled: Option<Arc<RunCell>>,
    /// No run may start before this (cooldown after the last start, or learned from Graph).
    pub(super) next_allowed: Option<DateTime<Utc>>,
    /// Whether Graph's settings were read for this tenant since start.
    learned: bool,
}

/// Shared by the scheduler and the executor.
pub(super) struct Inner {
    pub(super) policy: RunPolicy,
    pub(super) graph: Arc<Graph>,
    pub(super) credentials: Arc<Credentials>,
    pub(super) audit: AuditLog,
    /// Every scheduling decision reads the time here (a manual clock in timeline tests).
    pub(super) clock: Arc<dyn Clock>,
    /// Transitions, live runs, each tenant's next allowed start.
    metrics: RunMetrics,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    active: Mutex<HashMap<Uuid, Arc<RunCell>>>,
    finished: super::archive::Archive<Arc<RunCell>>,
    shutting_down: AtomicBool,
    /// With `state.backend = "redis"`: the schedule every replica shares.
    shared: Option<SharedRuns>,
    /// Shared runs this process executes, with the fencing token of its lease and when the
    /// lease was taken.
    fences: Arc<Mutex<HashMap<Uuid, Fence>>>,
    /// Shared runs this process has a task for (waiting, executing or following), so the
    /// sweep does not start a second one.
    driven: Mutex<HashSet<Uuid>>,
    /// Tenants whose Graph settings this process read since start (shared schedule).
    learned: Mutex<HashSet<String>>,
    /// Held while they are read, so concurrent first requests wait for the one read.
    learning: tokio::sync::Mutex<()>,
    /// The runtime the scheduler was built on (the process's own). Runs are spawned there, not
    /// on the HTTP worker that took the request: a worker's runtime ends when the listener
    /// closes, and with it any run still waiting for its turn.
    runtime: tokio::runtime::Handle,
}

/// What [`Scheduler::submit_taking`] did.
pub struct TakenJoin {
    /// What the rate-limit cells said, in order, up to the one that refused.
    pub taken: Vec<Taken>,
    /// `None` when a cell refused (the schedule is as it was); otherwise the submitted run, or
    /// why it failed after the cells were taken (its `scheduled` record, say).
    pub submitted: Option<Result<Submitted, GatewayError>>,
}

/// The runs of one action.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// Runs `run` on the scheduler's runtime, inside the trace of the request that created it,
    /// so its calls to Entra and Graph carry that trace.
    fn spawn_run(&self, run: impl std::future::Future<Output = ()> + Send + 'static) {
        match crate::trace::current() {
            Some(trace) => drop(self.inner.runtime.spawn(crate::trace::scope(trace, run))),
            None => drop(self.inner.runtime.spawn(run)),
        }
    }

    /// A scheduler for one action's runs, deciding by the time `clock` gives, counting into
    /// `metrics`.
    pub fn new(
        policy: RunPolicy,
        graph: Arc<Graph>,
        credentials: Arc<Credentials>,
        audit: AuditLog,
        clock: Arc<dyn Clock>,
        metrics: RunMetrics,
        shared: Option<(crate::state::Redis, crate::secret::StoreKey)>,
    ) -> Scheduler {
        let finished = super::archive::Archive::new(policy.max_finished, policy.retention);
        let shared = shared.map(|(redis, key)| {
            let sealer = crate::state::Sealer::new(&key);
            SharedRuns::new(redis, sealer, key.bytes(), policy.retention)
        });
        let sweeps = shared.is_some();
        let scheduler = Scheduler {
            inner: Arc::new(Inner {
                policy,
                graph,
                credentials,
                audit,
                clock,
                metrics,
                slots: Mutex::new(HashMap::new()),
                active: Mutex::new(HashMap::new()),
                finished,
                shutting_down: AtomicBool::new(false),
                shared,
                fences: Arc::new(Mutex::new(HashMap::new())),
                driven: Mutex::new(HashSet::new()),
                learned: Mutex::new(HashSet::new()),
                learning: tokio::sync::Mutex::new(()),
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        if sweeps {
            let inner = scheduler.inner.clone();
            drop(scheduler.inner.runtime.spawn(sweep(inner)));
        }
        scheduler
    }

    /// The action's settings.
    pub fn policy(&self) -> &RunPolicy {
        &self.inner.policy
    }

    /// Covers request `request` of `tenant` by a run, acting as `actor`.
    pub async fn submit(
        &self,
        request: Uuid,
        tenant: &str,
        actor: Actor,
    ) -> Result<Submitted, GatewayError> {
        if self.inner.shared.is_some() {
            // Without cells nothing can refuse: there is always a run.
            let joined = self.submit_taking(request, tenant, actor, &[]).await?;
            return joined.submitted.unwrap_or(Err(GatewayError::Internal));
        }
        let inner = &self.inner;
        let slot_lock = inner.slot(tenant);
        let mut slot = slot_lock.lock().await;
        if !slot.learned {
            // Concurrent first requests wait here for the one read.
            inner
                .learn_at_first_use(&mut slot, tenant, &actor.token)
                .await;
            slot.learned = true;
        }
        if let Some(scheduled) = slot.scheduled.clone() {
            scheduled.join(request, actor);
            return Ok(Submitted::Scheduled(scheduled));
        }
        let now = inner.clock.now();
        // A cooldown of 0 turns scheduling off: every request is its own run, at once (a plain
        // proxy with retries and audit, e.g. for an action without Intune's rule).
        let unconstrained = inner.policy.cooldown.is_zero();
        let free = slot.running.is_none() && slot.next_allowed.is_none_or(|t| now >= t);
        if free || unconstrained {
            let cell = RunCell::new(
                inner.policy.action,
                tenant.to_string(),
                RunState::Running,
                None,
                request,
                actor,
            );
            inner.start_locked(&mut slot, &cell, now, "new");
            inner.track(&cell);
            self.spawn_run(drive(self.inner.clone(), cell.clone(), true));
            return Ok(Submitted::Started(cell));
        }
        let not_before = slot.next_allowed.map_or(now, |t| t.max(now));
        let cell = RunCell::new(
            inner.policy.action,
            tenant.to_string(),
            RunState::Scheduled,
            Some(not_before),
            request,
            actor,
        );
        inner
            .record(&cell, RunEvent::Scheduled, None)
            .await
            .map_err(|_| not_recorded())?;
        slot.scheduled = Some(cell.clone());
        inner.metrics.transition("new", "scheduled");
        inner.track(&cell);
        self.spawn_run(drive(self.inner.clone(), cell.clone(), false));
        Ok(Submitted::Scheduled(cell))
    }

    /// Whether a request of `tenant` may have its rate-limit cells taken by the join itself
    /// ([`Scheduler::submit_taking`]): on the shared schedule, once this process knows the
    /// tenant's schedule (Graph's settings are read before a tenant's first join, and no
    /// caller the limits would refuse may cause that read).
    pub fn takes_limits_with_join(&self, tenant: &str) -> bool {
        self.inner.shared.is_some() && self.inner.learned.lock().contains(tenant)
    }

    /// [`Scheduler::submit`] that first takes the caller's rate-limit `cells` in the same
    /// script on the shared schedule (one Redis round trip for both). Fails only when nothing
    /// was taken or decided (Redis did not answer).
    pub async fn submit_taking(
        &self,
        request: Uuid,
        tenant: &str,
        actor: Actor,
        cells: &[ScriptCell],
    ) -> Result<TakenJoin, GatewayError> {
        let inner = &self.inner;
        let Some(shared) = inner.shared.as_ref() else {
            return Err(GatewayError::Internal);
        };
        inner.learn_shared(shared, tenant, &actor.token).await;
        let now = inner.clock.now();
        let (taken, decided) = shared
            .submit(
                tenant,
                now,
                inner.policy.cooldown,
                Uuid::now_v7(),
                request,
                &actor,
                cells,
            )
            .await
            .map_err(state_unavailable)?;
        let submitted = match decided {
            Some(decided) => Some(
                self.follow_submitted(request, tenant, actor, now, decided)
                    .await,
            ),
            None => None,
        };
        Ok(TakenJoin { taken, submitted })
    }

    /// The run `id` as callers see it (following merges), if it is live or finished recently;
    /// on the shared schedule, as any replica would answer.
    pub async fn find(&self, id: Uuid) -> Result<Option<Run>, GatewayError> {
        if let Some(shared) = &self.inner.shared {
            return shared
                .load(id, self.inner.policy.action)
                .await
                .map_err(state_unavailable);
        }
        Ok(self.get(id).map(|c| c.view()))
    }

    /// The run `id` (following merges), if it is live or finished recently in this process.
    pub fn get(&self, id: Uuid) -> Option<Arc<RunCell>> {
        let inner = &self.inner;
        let found = inner
            .active
            .lock()
            .get(&id)
            .cloned()
            .or_else(|| inner.finished.get(&id, inner.clock.instant()));
        found.map(|c| c.resolve())
    }

    /// The running and scheduled runs of `tenant`, and when the next run could start.
    pub async fn tenant_runs(&self, tenant: &str) -> TenantRuns {
        if let Some(shared) = &self.inner.shared {
            return self.tenant_runs_shared(shared, tenant).await;
        }
        let slot_lock = self.inner.slot(tenant);
        let slot = slot_lock.lock().await;
        let now = self.inner.clock.now();
        TenantRuns {
            running: slot.running.as_ref().map(|c| c.view()),
            scheduled: slot.scheduled.as_ref().map(|c| c.view()),
            next_start: slot.next_allowed.map_or(now, |t| t.max(now)),
        }
    }

    /// On shutdown: scheduled runs that cannot start within `drain` are recorded as abandoned
    /// with the requests they cover; the rest get until the deadline to finish.
    pub async fn shutdown(&self, drain: Duration) {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        // Which runs can still start is a scheduling question (the clock's time); how long the
        // process waits for them is real time: a manual clock that nobody advances must not
        // hold a shutdown forever.
        let deadline = after(inner.clock.now(), drain);
        let real_deadline = tokio::time::Instant::now() + drain;
        if inner.shared.is_some() {
            // A shared scheduled run is not this replica's to abandon: another replica (or
            // this one after a restart) claims it when it is due. Runs executing here get the
            // drain to finish; one that does not loses its lease and is taken over.
            while !inner.fences.lock().is_empty() && tokio::time::Instant::now() < real_deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return;
        }
        inner.abandon_scheduled(|nb| nb > deadline).await;
        while !inner.active_is_empty()
            && inner.clock.now() < deadline
            && tokio::time::Instant::now() < real_deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        inner.abandon_scheduled(|_| true).await;
    }
}

fn not_recorded() -> GatewayError {
    GatewayError::AuditUnavailable(
        "the request could not be recorded durably, so it was not carried out".into(),
    )
}

/// Carries a run through its life: (wait for its turn,) execute, and if Graph says "not now",
/// wait again, until it reaches a final state or its requests move into another run.
async fn drive(inner: Arc<Inner>, cell: Arc<RunCell>, started: bool) {
    let mut my_turn = started;
    let mut requeues = 0;
    loop {
        if !my_turn && !wait_for_turn(&inner, &cell).await {
            return;
        }
        match execute::run(inner.as_ref(), &cell).await {
            execute::Outcome::Done => return,
            execute::Outcome::Requeue(_, busy) if requeues >= MAX_REQUEUES => {
                // Graph keeps saying "not now" beyond any cooldown: stop and say so.
                tracing::warn!(run = %cell.id(), requeues, "Graph keeps refusing; giving up");
                inner.finish(&cell, RunState::Failed, Some(busy)).await;
                return;
            }
            execute::Outcome::Requeue(next, _) => {
                requeues += 1;
                if !inner.requeue(&cell, next).await {
                    return;
                }
                my_turn = false;
            }
        }
    }
}

/// Sleeps until the run's time, waits for the tenant's running run to finish, respects what
/// was learned meanwhile, then marks it running. False if the run is no longer scheduled
/// (merged or abandoned).
async fn wait_for_turn(inner: &Inner, cell: &Arc<RunCell>) -> bool {
    if let Some(shared) = &inner.shared {
        return wait_for_shared_turn(inner, shared, cell).await;
    }
    let tenant = cell.tenant_id();
    loop {
        let not_before = cell.view().not_before.unwrap_or_else(|| inner.clock.now());
        inner.clock.sleep_until(not_before).await;
        let slot_lock = inner.slot(&tenant);
        let mut slot = slot_lock.lock().await;
        if !slot
            .scheduled
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, cell))
        {
            return false;
        }
        if let Some(running) = slot.running.clone() {
            drop(slot);
            running.wait_final().await;
            continue;
        }
        let now = inner.clock.now();
        if let Some(t) = slot.next_allowed.filter(|t| now < *t) {
            cell.update(|r| r.not_before = Some(t));
            continue;
        }
        slot.scheduled = None;
        inner.start_locked(&mut slot, cell, now, "scheduled");
        return true;
    }
}

impl Inner {
    pub(super) fn slot(&self, tenant: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        // Bounded: tenants come only from validated tokens of allowed tenants.
        self.slots
            .lock()
            .entry(tenant.to_string())
            .or_default()
            .clone()
    }

    fn track(&self, cell: &Arc<RunCell>) {
        self.active.lock().insert(cell.id(), cell.clone());
    }

    fn active_is_empty(&self) -> bool {
        self.active.lock().is_empty()
    }

    /// Moves a run that will change no more from the live set to the bounded archive.
    pub(super) fn retire(&self, cell: &Arc<RunCell>) {
        let id = cell.id();
        self.active.lock().remove(&id);
        self.finished.insert(id, cell.clone(), self.clock.instant());
    }

    /// Marks `cell` running in its tenant's slot; `from` is where it comes from (`new` or
    /// `scheduled`), for the transition count.
    fn start_locked(
        &self,
        slot: &mut Slot,
        cell: &Arc<RunCell>,
        now: DateTime<Utc>,
        from: &'static str,
    ) {
        // With a cooldown of 0 several runs may be running; the slot remembers the latest.
        slot.running = Some(cell.clone());
        self.set_next_allowed(slot, &cell.tenant_id(), after(now, self.policy.cooldown));
        // Counted before the change is visible, so whoever sees the new state sees it counted.
        self.metrics.transition(from, RunState::Running.as_str());
        cell.update(|r| {
            r.state = RunState::Running;
            r.started_at.get_or_insert(now);
        });
    }

    /// Sets when the tenant's next run may start, and the gauge that shows it.
    fn set_next_allowed(&self, slot: &mut Slot, tenant: &str, t: DateTime<Utc>) {
        slot.next_allowed = Some(t);
        self.metrics.next_allowed(tenant, t);
    }

    /// Reads Graph's settings once per tenant so a restart inside the cooldown waits it out.
    async fn learn_at_first_use(&self, slot: &mut Slot, tenant: &str, token: &DelegatedToken) {
        if let Some(allowed) = self.cooldown_from_settings(token).await {
            let t = slot.next_allowed.map_or(allowed, |n| n.max(allowed));
            self.set_next_allowed(slot, tenant, t);
        }
    }

    /// When the cooldown of a sync triggered recently (by anyone: the portal, another
    /// gateway) ends, as Graph's settings say; `None` if none runs or they cannot be read.
    async fn cooldown_from_settings(&self, token: &DelegatedToken) -> Option<DateTime<Utc>> {
        match self
            .graph
            .read_settings(&self.policy.status_path, token)
            .await
        {
            Ok(s) => {
                let allowed = self.policy.cooldown_after(s.last_manual_sync_trigger?);
                (allowed > self.clock.now()).then(|| {
                    tracing::info!(next_allowed = %allowed, "a sync was triggered recently; the next run waits for the cooldown");
                    allowed
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the Autopilot settings; relying on Graph's answers");
                None
            }
        }
    }

    /// After Graph said "not now": the run waits until `next`, in the tenant's scheduled run
    /// (merging into it if one exists, since it starts after every request either covers).
    /// True if `cell` itself is now the scheduled run.
    pub(super) async fn requeue(&self, cell: &Arc<RunCell>, next: DateTime<Utc>) -> bool {
        if let Some(shared) = &self.shared {
            return self.requeue_shared(shared, cell, next).await;
        }
        let tenant = cell.tenant_id();
        let slot_lock = self.slot(&tenant);
        let mut slot = slot_lock.lock().await;
        if slot.running.as_ref().is_some_and(|r| Arc::ptr_eq(r, cell)) {
            slot.running = None;
        }
        self.set_next_allowed(&mut slot, &tenant, next);
        if let Some(target) = slot.scheduled.clone() {
            target.absorb(cell);
            target.update(|r| r.not_before = Some(r.not_before.map_or(next, |n| n.max(next))));
            *cell.merged_into.lock() = Some(target.clone());
            self.metrics
                .transition(RunState::Running.as_str(), "merged");
            cell.update(|r| r.state = RunState::Scheduled);
            drop(slot);
            self.retire(cell);
            // Carries Graph's answers: an outcome record, kept if the trail cannot take it now.
            let record = self.run_record(cell, RunEvent::Merged, None, Some(target.id()));
            let write = self.audit.append_outcome(&record).await;
            keep_outcome(&self.runtime, cell, write, RunEvent::Merged, false);
            return false;
        }
        self.metrics
            .transition(RunState::Running.as_str(), RunState::Scheduled.as_str());
        cell.update(|r| {
            r.state = RunState::Scheduled;
            r.not_before = Some(next);
        });
        slot.scheduled = Some(cell.clone());
        drop(slot);
        // Graph's 409/429 already happened: an outcome record, kept if the trail cannot take it.
        let record = self.run_record(cell, RunEvent::Rescheduled, None, None);
        let write = self.audit.append_outcome(&record).await;
        keep_outcome(&self.runtime, cell, write, RunEvent::Rescheduled, false);
        true
    }

    /// Ends a run in a final state.
    pub(super) async fn finish(
        &self,
        cell: &Arc<RunCell>,
        state: RunState,
        failure: Option<GatewayError>,
    ) {
        if let Some(f) = &failure {
            cell.set_failure(f.clone());
        }
        let tenant = cell.tenant_id();
        if self.shared.is_none() {
            let slot_lock = self.slot(&tenant);
            let mut slot = slot_lock.lock().await;
            if slot.running.as_ref().is_some_and(|r| Arc::ptr_eq(r, cell)) {
                slot.running = None;
            }
        }
        let now = self.clock.now();
        // Counted before the change is visible, so whoever sees the new state sees it counted.
        self.metrics
            .transition(cell.state().as_str(), state.as_str());
        let end = |r: &mut Run| {
            r.state = state;
            r.finished_at = Some(now);
            r.error = failure.as_ref().map(|f| super::RunError {
                kind: f.kind(),
                detail: f.to_string(),
            });
            // Not durable yet: callers reading the run see that until the record is written.
            r.outcome_record = Some(OutcomeRecord::Pending);
        };
        // On the shared schedule the outcome is published first, so a caller who sees it here
        // and asks another replica next reads the same.
        let mut ended = cell.view();
        end(&mut ended);
        self.publish_finish(cell.id(), &ended).await;
        cell.update(end);
        self.retire(cell);
        let event = if state == RunState::Abandoned {
            RunEvent::Abandoned
        } else {
            RunEvent::Finished
        };
        let record = self.run_record(cell, event, None, None);
        if cell.attempts_made() > 0 {
            // Graph was called: what it answered must reach the trail, late if need be.
            let write = self.audit.append_outcome(&record).await;
            keep_outcome(&self.runtime, cell, write, event, true);
        } else {
            // Nothing happened upstream: the record fails closed like any other.
            match self.audit.append(&record).await {
                Ok(()) => cell.set_outcome_record(OutcomeRecord::Recorded),
                Err(e) => {
                    tracing::error!(run = %cell.id(), error = %e, event = event.as_str(),
                        "could not record a run that never called Graph");
                    cell.set_outcome_record(OutcomeRecord::NotRecorded);
                }
            }
        }
        if let Some(shared) = &self.shared {
            publish_outcome_record_when_known(&self.runtime, shared.clone(), cell.clone());
        }
    }

    /// Pushes the tenant's next start out to `t` (e.g. after a timeout, when Graph may have synced).
    pub(super) async fn hold_until(&self, tenant: &str, t: DateTime<Utc>) {
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.hold_until(tenant, t).await {
                // The run's lease still sets `next_allowed` to its start + the cooldown.
                tracing::warn!(error = %e, "could not push the tenant's next start out on the shared schedule");
            }
            self.metrics.next_allowed(tenant, t);
            return;
        }
        let slot_lock = self.slot(tenant);
        let mut slot = slot_lock.lock().await;
        let t = slot.next_allowed.map_or(t, |n| n.max(t));
        self.set_next_allowed(&mut slot, tenant, t);
    }

    async fn abandon_scheduled(&self, which: impl Fn(DateTime<Utc>) -> bool) {
        let slots: Vec<_> = self.slots.lock().values().cloned().collect();
        for slot_lock in slots {
            let taken = {
                let mut slot = slot_lock.lock().await;
                match &slot.scheduled {
                    Some(s) if which(s.view().not_before.unwrap_or_else(|| self.clock.now())) => {
                        slot.scheduled.take()
                    }
                    _ => None,
                }
            };
            if let Some(cell) = taken {
                tracing::warn!(run = %cell.id(), covers = cell.view().covers.count,
                    "shutting down before a scheduled run could start: recording it as abandoned");
                self.finish(&cell, RunState::Abandoned, None).await;
            }
        }
    }

    /// Writes a `run` record for `event` and waits until it is durable (fail closed: for the
    /// records that must be durable before what they announce).
    pub(super) async fn record(
        &self,
        cell: &RunCell,
        event: RunEvent,
        attempt: Option<AttemptSummary>,
    ) -> Result<(), crate::audit::AuditError> {
        let record = self.run_record(cell, event, attempt, None);
        self.audit.append(&record).await
    }

    /// The `run` record of `event` for the run as it is now.
    fn run_record(
        &self,
        cell: &RunCell,
        event: RunEvent,
        attempt: Option<AttemptSummary>,
        merged_into: Option<Uuid>,
    ) -> AuditEvent {
        let r = cell.view();
        let (with_covers, with_attempts) = (event.lists_covers(), event.lists_attempts());
        let record = RunRecord {
            v: crate::audit::event_format_version(),
            id: Uuid::now_v7(),
            // When the record was written: the trail keeps real time, whatever clock schedules.
            time: Utc::now(),
            run_id: r.id,
            action: r.action,
            tenant_id: r.tenant_id,
            event,
            state: r.state,
            not_before: r
                .not_before
                .filter(|_| r.state == RunState::Scheduled && merged_into.is_none()),
            acting_as: r.acting_as,
            covers: if with_covers {
                cell.covered()
            } else {
                Vec::new()
            },
            attempt,
            attempts: if with_attempts {
                r.upstream.map(|u| u.attempts).unwrap_or_default()
            } else {
                Vec::new()
            },
            error: r.error.map(|e| e.kind),
            merged_into,
        };
        AuditEvent::Run(record)
    }
}

/// Follows an outcome record of `cell` that was not durable in time: logs it, and, when
/// `show` (a final run's record), keeps the run's `outcome_record` current until it lands.
fn keep_outcome(
    runtime: &tokio::runtime::Handle,
    cell: &Arc<RunCell>,
    write: OutcomeWrite,
    event: RunEvent,
    show: bool,
) {
    let run = cell.id();
    match write {
        OutcomeWrite::Durable(_) => {
            if show {
                cell.set_outcome_record(OutcomeRecord::Recorded);
            }
        }
        OutcomeWrite::Lost(e) => {
            tracing::error!(%run, error = %e, event = event.as_str(), "a run's outcome record was lost");
            if show {
                cell.set_outcome_record(OutcomeRecord::NotRecorded);
            }
        }
        OutcomeWrite::Queued { error, landed } => {
            tracing::error!(%run, error = %error, event = event.as_str(),
                "a run's outcome record is not durable yet; it is kept and written late once the audit trail recovers");
            // Its own task: the trail may stay down for long, and shutdown must not wait on it.
            let cell = cell.clone();
            runtime.spawn(async move {
                let now = match landed.wait().await {
                    Ok(l) => {
                        tracing::info!(%run, event = event.as_str(), seq = l.seq, "a run's outcome record was written late");
                        if l.late {
                            OutcomeRecord::RecordedLate
                        } else {
                            OutcomeRecord::Recorded
                        }
                    }
                    Err(e) => {
                        tracing::error!(%run, error = %e, event = event.as_str(), "a run's outcome record was lost");
                        OutcomeRecord::NotRecorded
                    }
                };
                if show {
                    cell.set_outcome_record(now);
                }
            });
        }
    }
}

impl execute::Host for Inner {
    fn policy(&self) -> &RunPolicy {
        &self.policy
    }
    fn graph(&self) -> &Graph {
        &self.graph
    }
    fn credentials(&self) -> &Credentials {
        &self.credentials
    }
    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }
    async fn finish(&self, cell: &Arc<RunCell>, state: RunState, failure: Option<GatewayError>) {
        Inner::finish(self, cell, state, failure).await
    }
    async fn hold_until(&self, tenant: &str, t: DateTime<Utc>) {
        Inner::hold_until(self, tenant, t).await
    }
    async fn still_holds(&self, cell: &RunCell) -> bool {
        Inner::still_holds(self, cell).await
    }
    async fn record(
        &self,
        cell: &RunCell,
        event: RunEvent,
        attempt: Option<AttemptSummary>,
    ) -> Result<(), crate::audit::AuditError> {
        Inner::record(self, cell, event, attempt).await
    }
}

/// The lease this process holds on a shared run: its `{owner} {fence}` and when it was taken.
#[derive(Clone)]
struct Fence {
    token: String,
    taken: std::time::Instant,
}

impl Fence {
    fn taken(token: String) -> Self {
        Fence {
            token,
            taken: std::time::Instant::now(),
        }
    }
}

/// Redis could not be reached: the schedule fails closed (a double sync is what the gateway
/// exists to prevent).
fn state_unavailable(e: crate::state::Unavailable) -> GatewayError {
    tracing::warn!(error = %e, "the shared run schedule could not be reached; refusing");
    GatewayError::StateUnavailable {
        retry_after_secs: 1,
    }
}

/// How often a replica looks at the shared schedule: for runs another replica left behind
/// (scheduled by a replica that died, or orphaned by one that died running them), and for the
/// progress of runs it follows but does not execute. Real time: it races other processes.
const SHARED_POLL: Duration = Duration::from_millis(500);

/// Waits until `cell`'s outcome is durable (or known lost) in this replica's chain, then says
/// so on the shared schedule, so every replica's `GET /sync/runs/{id}` shows it.
fn publish_outcome_record_when_known(
    runtime: &tokio::runtime::Handle,
    shared: SharedRuns,
    cell: Arc<RunCell>,
) {
    drop(runtime.spawn(async move {
        let mut rx = cell.subscribe();
        // Bounded: an outcome kept for a trail that stays down is published as pending.
        let limit = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            match cell.outcome_record() {
                Some(OutcomeRecord::Pending) | None => {}
                Some(o) => {
                    shared.publish_outcome_record(cell.id(), o).await;
                    return;
                }
            }
            if tokio::time::timeout_at(limit, rx.changed()).await.is_err() {
                return;
            }
        }
    }));
}

/// The shared schedule's sweep, on every replica: puts runs whose executor died back in line,
/// and claims scheduled runs that are due and that no task of this process waits for (their
/// creator died, or only another replica saw them).
async fn sweep(inner: Arc<Inner>) {
    let Some(shared) = inner.shared.clone() else {
        return;
    };
    while !inner.shutting_down.load(Ordering::SeqCst) {
        tokio::time::sleep(SHARED_POLL).await;
        let tenants = match shared.tenants().await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "the shared schedule could not be swept");
                continue;
            }
        };
        for tenant in tenants {
            let now = inner.clock.now();
            let swept = match shared.sweep(&tenant, now).await {
                Ok(s) => s,
                Err(_) => continue,
            };
            if let Some(orphan) = swept.orphan {
                tracing::warn!(run = %orphan, tenant = %tenant,
                    "a run's replica stopped holding it; its requests wait for the tenant's next run");
            }
            let Some((id, due)) = swept.scheduled else {
                continue;
            };
            if due > now || inner.driven.lock().contains(&id) {
                continue;
            }
            let run = match shared.load(id, inner.policy.action).await {
                Ok(Some(r)) => r,
                _ => continue,
            };
            let cell = inner.follow_cell(run);
            if inner.driven.lock().insert(id) {
                drop(inner.runtime.spawn(drive(inner.clone(), cell, false)));
            }
        }
    }
}

/// The shared counterpart of the memory slot's wait: claims the run on Redis when it is due
/// and the tenant's running run (on any replica) is done. False if another replica took it or
/// it moved into another run; this process then follows it until it is final.
async fn wait_for_shared_turn(inner: &Inner, shared: &SharedRuns, cell: &Arc<RunCell>) -> bool {
    let tenant = cell.tenant_id();
    let id = cell.id();
    let mut first = true;
    loop {
        if inner.shutting_down.load(Ordering::SeqCst) {
            inner.driven.lock().remove(&id);
            return false;
        }
        if !first {
            let not_before = cell.view().not_before.unwrap_or_else(|| inner.clock.now());
            tokio::select! {
                _ = inner.clock.sleep_until(not_before) => {}
                _ = tokio::time::sleep(SHARED_POLL) => {}
            }
        }
        first = false;
        let now = inner.clock.now();
        if cell.view().not_before.is_some_and(|nb| now < nb) {
            continue;
        }
        match shared.claim(&tenant, id, now, inner.policy.cooldown).await {
            Err(e) => {
                tracing::debug!(run = %id, error = %e, "could not claim a due run; trying again")
            }
            Ok(shared::Claim::Busy) => {}
            Ok(shared::Claim::Wait(t)) => cell.update(|r| r.not_before = Some(t)),
            Ok(shared::Claim::Gone) => {
                follow(inner, shared, cell).await;
                return false;
            }
            Ok(shared::Claim::Claimed { fence, orphan }) => {
                if let Some(o) = orphan {
                    tracing::warn!(run = %o, into = %id,
                        "a run whose replica stopped holding it is carried by the run starting now");
                }
                match shared.for_execution(&tenant, id).await {
                    Ok(found) => {
                        let covers = shared
                            .load(id, inner.policy.action)
                            .await
                            .ok()
                            .flatten()
                            .map_or(0, |r| r.covers.count);
                        cell.take_over(found.covered, found.actors, covers);
                    }
                    Err(e) => {
                        tracing::warn!(run = %id, error = %e, "could not read the run's joiners; acting as the ones this replica knows");
                    }
                }
                inner.fences.lock().insert(id, Fence::taken(fence));
                inner.spawn_heartbeat(cell.clone());
                inner
                    .metrics
                    .transition(RunState::Scheduled.as_str(), RunState::Running.as_str());
                inner
                    .metrics
                    .next_allowed(&tenant, after(now, inner.policy.cooldown));
                cell.update(|r| {
                    r.state = RunState::Running;
                    r.not_before = None;
                    r.started_at.get_or_insert(now);
                });
                return true;
            }
        }
    }
}

/// Keeps `cell` (a run another replica executes, or that merged into one) current from the
/// shared schedule until it is final, so waiters and follow-ups here see its outcome.
async fn follow(inner: &Inner, shared: &SharedRuns, cell: &Arc<RunCell>) {
    let mut current = cell.clone();
    loop {
        if inner.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        let found = match shared.load(current.id(), inner.policy.action).await {
            Ok(Some(run)) => run,
            Ok(None) => break,
            Err(_) => {
                tokio::time::sleep(SHARED_POLL).await;
                continue;
            }
        };
        if found.id != current.id() {
            // Merged: this run's requests ride on another one now.
            let target = inner.follow_cell(found);
            current.merge_into(target.clone());
            inner.retire_local(&current);
            current = target;
            continue;
        }
        let done = found.state.is_final();
        current.show(found);
        if done {
            break;
        }
        tokio::time::sleep(SHARED_POLL).await;
    }
    inner.retire_local(&current);
    inner.driven.lock().remove(&cell.id());
}

impl Scheduler {
    /// [`Scheduler::submit`] on the shared schedule: one script decides (join, start now, or
    /// schedule), then this replica keeps a local copy of the run for its caller.
    /// This process's side of what the shared slot decided for `request`.
    async fn follow_submitted(
        &self,
        request: Uuid,
        tenant: &str,
        actor: Actor,
        now: DateTime<Utc>,
        decided: shared::Submitted,
    ) -> Result<Submitted, GatewayError> {
        let inner = &self.inner;
        let Some(shared) = inner.shared.as_ref() else {
            return Err(GatewayError::Internal);
        };
        match decided {
            shared::Submitted::Started { id, fence } => {
                let cell = RunCell::with_id(
                    id,
                    inner.policy.action,
                    tenant.to_string(),
                    RunState::Running,
                    None,
                    request,
                    actor,
                );
                inner.metrics.transition("new", RunState::Running.as_str());
                inner
                    .metrics
                    .next_allowed(tenant, after(now, inner.policy.cooldown));
                cell.update(|r| r.started_at = Some(now));
                inner.fences.lock().insert(id, Fence::taken(fence));
                inner.driven.lock().insert(id);
                inner.track(&cell);
                inner.spawn_heartbeat(cell.clone());
                self.spawn_run(drive(self.inner.clone(), cell.clone(), true));
                Ok(Submitted::Started(cell))
            }
            shared::Submitted::Scheduled { id, not_before } => {
                let cell = RunCell::with_id(
                    id,
                    inner.policy.action,
                    tenant.to_string(),
                    RunState::Scheduled,
                    Some(not_before),
                    request,
                    actor,
                );
                if inner
                    .record(&cell, RunEvent::Scheduled, None)
                    .await
                    .is_err()
                {
                    if let Err(e) = shared.withdraw(tenant, id).await {
                        tracing::warn!(run = %id, error = %e, "could not withdraw a scheduled run whose record failed");
                    }
                    return Err(not_recorded());
                }
                inner.metrics.transition("new", "scheduled");
                inner.track(&cell);
                if inner.driven.lock().insert(id) {
                    self.spawn_run(drive(self.inner.clone(), cell.clone(), false));
                }
                Ok(Submitted::Scheduled(cell))
            }
            shared::Submitted::Joined {
                id,
                not_before,
                covers,
            } => {
                let known = inner.active.lock().get(&id).cloned();
                let cell = match known {
                    Some(cell) => {
                        cell.joined_shared(request, actor, covers);
                        cell
                    }
                    None => {
                        let cell = RunCell::with_id(
                            id,
                            inner.policy.action,
                            tenant.to_string(),
                            RunState::Scheduled,
                            not_before,
                            request,
                            actor,
                        );
                        cell.update(|r| r.covers.count = covers);
                        inner.track(&cell);
                        cell
                    }
                };
                if inner.driven.lock().insert(id) {
                    self.spawn_run(drive(self.inner.clone(), cell.clone(), false));
                }
                Ok(Submitted::Scheduled(cell))
            }
        }
    }

    async fn tenant_runs_shared(&self, shared: &SharedRuns, tenant: &str) -> TenantRuns {
        let now = self.inner.clock.now();
        let action = self.inner.policy.action;
        let Ok(slot) = shared.slot(tenant).await else {
            // Status is a read: it answers with what it cannot see left out.
            return TenantRuns {
                running: None,
                scheduled: None,
                next_start: now,
            };
        };
        let mut running = None;
        if let Some(id) = slot.running {
            running = shared.load(id, action).await.ok().flatten();
        }
        let mut scheduled = None;
        if let Some(id) = slot.scheduled {
            scheduled = shared.load(id, action).await.ok().flatten();
        }
        TenantRuns {
            running,
            scheduled,
            next_start: slot.next_allowed.map_or(now, |t| t.max(now)),
        }
    }
}

impl Inner {
    /// A local copy of shared run `run` (the one this process already has, or a new follower).
    fn follow_cell(&self, run: Run) -> Arc<RunCell> {
        let mut active = self.active.lock();
        if let Some(c) = active.get(&run.id) {
            return c.clone();
        }
        let cell = RunCell::follower(run);
        active.insert(cell.id(), cell.clone());
        cell
    }

    /// Forgets a shared run's local copy once it changes no more here.
    fn retire_local(&self, cell: &Arc<RunCell>) {
        if self.active.lock().remove(&cell.id()).is_some() {
            self.finished
                .insert(cell.id(), cell.clone(), self.clock.instant());
        }
    }

    /// Reads Graph's settings once per tenant in this process (as the memory scheduler does)
    /// and pushes the shared next start out if a sync was triggered recently.
    async fn learn_shared(&self, shared: &SharedRuns, tenant: &str, token: &DelegatedToken) {
        if self.learned.lock().contains(tenant) {
            return;
        }
        let _one_read = self.learning.lock().await;
        if self.learned.lock().contains(tenant) {
            return;
        }
        // Once for the whole schedule, not per replica: a replica starting later would read
        // the other replicas' own runs in Graph's settings and hold the next run back again.
        match shared.learned(tenant).await {
            Ok(true) => {}
            Ok(false) => {
                let allowed = self.cooldown_from_settings(token).await;
                if shared.learned_from_graph(tenant, allowed).await.is_err() {
                    // Not learned: the next request reads again.
                    return;
                }
                if let Some(t) = allowed {
                    self.metrics.next_allowed(tenant, t);
                }
            }
            Err(_) => return,
        }
        // Bounded: tenants come only from validated tokens of allowed tenants.
        self.learned.lock().insert(tenant.to_string());
    }

    /// Renews the lease of a run this process executes, a third of the lease at a time, for
    /// as long as it does; publishes its attempts so other replicas can show them.
    fn spawn_heartbeat(&self, cell: Arc<RunCell>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let fences = self.fences.clone();
        drop(self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(shared::RUN_LEASE / 3).await;
                let Some(fence) = fences.lock().get(&cell.id()).map(|f| f.token.clone()) else {
                    return;
                };
                let view = cell.view();
                match shared.renew(&view.tenant_id, view.id, &fence, Some(&view)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(run = %view.id, "the run's lease was taken over");
                        fences.lock().remove(&view.id);
                        return;
                    }
                    Err(e) => tracing::warn!(run = %view.id, error = %e, "could not renew the run's lease"),
                }
            }
        }));
    }

    /// Whether this process still holds `cell` (see [`execute::Host::still_holds`]).
    async fn still_holds(&self, cell: &RunCell) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let Some(fence) = self.fences.lock().get(&cell.id()).cloned() else {
            return false;
        };
        if fence.taken.elapsed() < shared::RUN_LEASE / 3 {
            // Taken moments ago (the run's first attempt): no other replica can hold it yet.
            return true;
        }
        let fence = fence.token;
        let view = cell.view();
        match shared
            .renew(&view.tenant_id, view.id, &fence, Some(&view))
            .await
        {
            Ok(held) => {
                if !held {
                    self.fences.lock().remove(&view.id);
                }
                held
            }
            // Redis is unreachable: nobody can take the run over while it is, and the fence
            // refuses this replica's later changes if someone did.
            Err(_) => true,
        }
    }

    /// Publishes a final run on the shared schedule (a few tries: other replicas wait for the
    /// slot it frees); nothing when this process does not hold it.
    async fn publish_finish(&self, id: Uuid, view: &Run) {
        let Some(shared) = &self.shared else {
            return;
        };
        let Some(Fence { token: fence, .. }) = self.fences.lock().remove(&id) else {
            return;
        };
        for attempt in 0..5u32 {
            match shared.finish(view, &fence).await {
                Ok(true) => break,
                Ok(false) => {
                    tracing::warn!(run = %id, "the run's lease was lost before it finished; its outcome is in this replica's audit chain only");
                    break;
                }
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, attempt, "could not publish a finished run");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        self.driven.lock().remove(&id);
    }

    /// [`Inner::requeue`] on the shared schedule.
    async fn requeue_shared(
        &self,
        shared: &SharedRuns,
        cell: &Arc<RunCell>,
        next: DateTime<Utc>,
    ) -> bool {
        let id = cell.id();
        let Some(Fence { token: fence, .. }) = self.fences.lock().remove(&id) else {
            return false;
        };
        let tenant = cell.tenant_id();
        self.metrics.next_allowed(&tenant, next);
        match shared.requeue(&cell.view(), &fence, next).await {
            Ok(shared::Requeued::Scheduled) => {
                self.metrics
                    .transition(RunState::Running.as_str(), RunState::Scheduled.as_str());
                cell.update(|r| {
                    r.state = RunState::Scheduled;
                    r.not_before = Some(next);
                });
                let record = self.run_record(cell, RunEvent::Rescheduled, None, None);
                let write = self.audit.append_outcome(&record).await;
                keep_outcome(&self.runtime, cell, write, RunEvent::Rescheduled, false);
                true
            }
            Ok(shared::Requeued::Merged(target)) => {
                self.metrics
                    .transition(RunState::Running.as_str(), "merged");
                cell.update(|r| r.state = RunState::Scheduled);
                if let Ok(Some(run)) = shared.load(target, self.policy.action).await {
                    cell.merge_into(self.follow_cell(run));
                }
                self.retire_local(cell);
                self.driven.lock().remove(&id);
                let record = self.run_record(cell, RunEvent::Merged, None, Some(target));
                let write = self.audit.append_outcome(&record).await;
                keep_outcome(&self.runtime, cell, write, RunEvent::Merged, false);
                false
            }
            Ok(shared::Requeued::Fenced) | Err(_) => {
                // Another replica holds it now (or will, once the lease runs out): its
                // requests go on in the shared schedule, not here.
                tracing::warn!(run = %id, "could not put the run back in the shared schedule; the replica that takes it over carries it");
                self.retire_local(cell);
                self.driven.lock().remove(&id);
                false
            }
        }
    }
}
