//! Per (action, tenant): at most one running and one scheduled run, and the promise that every
//! accepted request is covered by a run that starts after it, with runs at least the cooldown
//! apart.
//!
//! A request joins the scheduled run if there is one; otherwise it starts a run now if the
//! cooldown has passed and nothing runs; otherwise it creates the scheduled run with
//! `not_before` = the end of the cooldown. The cooldown is learned from Graph too: read once per
//! tenant at first use (so a restart does not fire early), and again whenever Graph answers 429.

use super::{after, execute, Actor, OutcomeRecord, Run, RunCell, RunPolicy, RunState};
use crate::audit::{AttemptSummary, AuditEvent, AuditLog, OutcomeWrite, RunRecord};
use crate::clock::Clock;
use crate::credentials::{Credentials, DelegatedToken};
use crate::domain::RunEvent;
use crate::error::GatewayError;
use crate::metrics::RunMetrics;
use crate::upstream::Graph;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
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
    /// The runtime the scheduler was built on (the process's own). Runs are spawned there, not
    /// on the HTTP worker that took the request: a worker's runtime ends when the listener
    /// closes, and with it any run still waiting for its turn.
    runtime: tokio::runtime::Handle,
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
    ) -> Scheduler {
        let finished = super::archive::Archive::new(policy.max_finished, policy.retention);
        Scheduler {
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
                runtime: tokio::runtime::Handle::current(),
            }),
        }
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

    /// The run `id` (following merges), if it is live or finished recently.
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
        match self
            .graph
            .read_settings(&self.policy.status_path, token)
            .await
        {
            Ok(s) => {
                if let Some(t) = s.last_manual_sync_trigger {
                    let allowed = self.policy.cooldown_after(t);
                    if allowed > self.clock.now() {
                        tracing::info!(next_allowed = %allowed, "a sync was triggered recently; the next run waits for the cooldown");
                        let t = slot.next_allowed.map_or(allowed, |n| n.max(allowed));
                        self.set_next_allowed(slot, tenant, t);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the Autopilot settings; relying on Graph's answers");
            }
        }
    }

    /// After Graph said "not now": the run waits until `next`, in the tenant's scheduled run
    /// (merging into it if one exists, since it starts after every request either covers).
    /// True if `cell` itself is now the scheduled run.
    pub(super) async fn requeue(&self, cell: &Arc<RunCell>, next: DateTime<Utc>) -> bool {
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
        {
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
        cell.update(|r| {
            r.state = state;
            r.finished_at = Some(now);
            r.error = failure.as_ref().map(|f| super::RunError {
                kind: f.kind(),
                detail: f.to_string(),
            });
            // Not durable yet: callers reading the run see that until the record is written.
            r.outcome_record = Some(OutcomeRecord::Pending);
        });
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
    }

    /// Pushes the tenant's next start out to `t` (e.g. after a timeout, when Graph may have synced).
    pub(super) async fn hold_until(&self, tenant: &str, t: DateTime<Utc>) {
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
    async fn record(
        &self,
        cell: &RunCell,
        event: RunEvent,
        attempt: Option<AttemptSummary>,
    ) -> Result<(), crate::audit::AuditError> {
        Inner::record(self, cell, event, attempt).await
    }
}
