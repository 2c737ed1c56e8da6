//! Carrying out one run: the token it acts with, the attempts, and what Graph's answers mean.
//!
//! - 2xx: succeeded.
//! - 503, 504, no connection: retried with exponential backoff and full jitter (or Graph's
//!   `Retry-After`), within the run's attempt and time budget; `Retry-Attempt` is sent on retries.
//! - 429: Intune's cooldown (someone synced from the portal): the settings say when the last
//!   sync was triggered; the run waits until that plus the cooldown. Not an error to callers.
//! - 409: a sync is in progress: poll `syncStatus` (bounded), then wait as for 429.
//! - No answer in time: failed (the sync may have happened, so it is not repeated), and the
//!   tenant's next run waits a full cooldown to be safe.
//! - Anything else: failed.
//!
//! Every attempt is preceded by a durable `run` record; if it cannot be written, nothing is sent.

use super::{after, Actor, RunCell, RunPolicy, RunState, RunUpstream};
use crate::audit::AttemptSummary;
use crate::audit::AuditError;
use crate::clock::Clock;
use crate::credentials::Credentials;
use crate::credentials::DelegatedToken;
use crate::domain::RunEvent;
use crate::error::GatewayError;
use crate::retry::Backoff;
use crate::upstream::Graph;
use crate::upstream::{new_client_request_id, AttemptClass, UpstreamOutcome};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Backoff steps never exceed this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A token this close to expiry is exchanged again before a run uses it.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// What carrying out a run needs from the scheduler that owns it. A trait, so that the
/// executor does not import the scheduler (which starts it): no cycle between the two files.
pub(super) trait Host: Sync {
    /// The action's rules (cooldown, budgets, paths).
    fn policy(&self) -> &RunPolicy;
    /// Graph.
    fn graph(&self) -> &Graph;
    /// Where tokens come from.
    fn credentials(&self) -> &Credentials;
    /// The time the scheduler decides by.
    fn clock(&self) -> &dyn Clock;
    /// Ends the run in a final state (records it).
    fn finish(
        &self,
        cell: &Arc<RunCell>,
        state: RunState,
        failure: Option<GatewayError>,
    ) -> impl Future<Output = ()> + Send;
    /// Pushes the tenant's next start out to `t`.
    fn hold_until(&self, tenant: &str, t: DateTime<Utc>) -> impl Future<Output = ()> + Send;
    /// Whether this process still holds the run (always, in memory; on the shared schedule,
    /// whether its lease still carries this replica's fencing token). Asked before every
    /// attempt: a replica that lost the run must not call Graph for it.
    fn still_holds(&self, cell: &RunCell) -> impl Future<Output = bool> + Send;
    /// Writes the run's `event` record, durable before it returns (fail closed).
    fn record(
        &self,
        cell: &RunCell,
        event: RunEvent,
        attempt: Option<AttemptSummary>,
    ) -> impl Future<Output = Result<(), AuditError>> + Send;
}

/// How an execution ended.
pub(super) enum Outcome {
    /// The run reached a final state.
    Done,
    /// Graph said "not now" (the error it would be): the run must wait until then.
    Requeue(DateTime<Utc>, GatewayError),
}

/// Executes `cell` until it succeeds, fails, or must wait.
pub(super) async fn run(inner: &impl Host, cell: &Arc<RunCell>) -> Outcome {
    let token = match acting_token(inner, cell).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(run = %cell.id(), kind = e.kind(), "no delegated token for the run");
            inner.finish(cell, RunState::Failed, Some(e)).await;
            return Outcome::Done;
        }
    };
    let policy = inner.policy();
    // The budget and the pauses between attempts are real time, not the scheduler's clock:
    // they are short, bounded, and the caller who started the run may be waiting on them.
    let budget_end = Instant::now() + policy.retry_budget;
    let mut tries: u32 = 0;
    loop {
        tries += 1;
        let number = cell.attempts_made() as u32 + 1;
        let attempt = AttemptSummary {
            number,
            client_request_id: new_client_request_id(),
            status: None,
            request_id: None,
            sent_at: inner.clock().now(),
        };
        let event = if number == 1 {
            RunEvent::Started
        } else {
            RunEvent::Attempt
        };
        if !inner.still_holds(cell).await {
            // Another replica took the run over (this one stalled past its lease): it carries
            // the requests now, and calling Graph from here too could sync twice.
            tracing::warn!(run = %cell.id(), "the run's lease was lost; leaving it to the replica that holds it");
            return Outcome::Done;
        }
        if let Err(e) = inner.record(cell, event, Some(attempt.clone())).await {
            tracing::error!(run = %cell.id(), error = %e, "pre-call record not durable; Graph not called");
            let err = GatewayError::AuditUnavailable(
                "the request could not be recorded durably, so it was not carried out".into(),
            );
            inner.finish(cell, RunState::Failed, Some(err)).await;
            return Outcome::Done;
        }
        let out = inner
            .graph()
            .trigger(
                &policy.upstream_path,
                &token,
                attempt.client_request_id.clone(),
                tries,
            )
            .await;
        note_attempt(cell, attempt, &out);
        // Every answer is in the run's audit records; the log keeps the ones worth a look.
        if matches!(out.class, AttemptClass::Succeeded) {
            tracing::debug!(run = %cell.id(), attempt = number, status = out.status,
                request_id = out.request_id.as_deref().unwrap_or(""), "Graph answered");
        } else {
            tracing::info!(run = %cell.id(), attempt = number, status = out.status,
                request_id = out.request_id.as_deref().unwrap_or(""), "Graph answered");
        }
        match out.class {
            AttemptClass::Succeeded => {
                // Graph stamps the trigger when it receives the call, after we sent it: count
                // the cooldown from its answer so the next run cannot arrive early.
                let tenant = cell.tenant_id();
                inner
                    .hold_until(&tenant, after(inner.clock().now(), policy.cooldown))
                    .await;
                inner.finish(cell, RunState::Succeeded, None).await;
                return Outcome::Done;
            }
            AttemptClass::Transient => {
                let wait = backoff(tries, policy.retry_base, out.retry_after_secs);
                if tries < policy.max_attempts && Instant::now() + wait <= budget_end {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                tracing::warn!(run = %cell.id(), attempts = number, "retry budget exhausted");
                inner.finish(cell, RunState::Failed, out.result.err()).await;
                return Outcome::Done;
            }
            AttemptClass::TimedOut => {
                let tenant = cell.tenant_id();
                inner
                    .hold_until(&tenant, after(inner.clock().now(), policy.cooldown))
                    .await;
                inner.finish(cell, RunState::Failed, out.result.err()).await;
                return Outcome::Done;
            }
            AttemptClass::Failed => {
                inner.finish(cell, RunState::Failed, out.result.err()).await;
                return Outcome::Done;
            }
            AttemptClass::TooMany => {
                let next = next_allowed_after_429(inner, &token, out.retry_after_secs).await;
                tracing::info!(run = %cell.id(), %next, "Graph is in its cooldown; the run waits");
                return Outcome::Requeue(next, busy(out));
            }
            AttemptClass::Conflict => {
                let next = wait_out_sync_in_progress(inner, &token).await;
                tracing::info!(run = %cell.id(), %next, "a sync was in progress; the run waits");
                return Outcome::Requeue(next, busy(out));
            }
        }
    }
}

fn busy(out: UpstreamOutcome) -> GatewayError {
    out.result.err().unwrap_or(GatewayError::Internal)
}

/// The token the run acts with: the latest joiner's, or, if that identity cannot act now (its
/// inbound token expired, consent was revoked, ...), the next most recent joiner's. Fails with
/// the latest joiner's error when none can.
async fn acting_token(
    inner: &impl Host,
    cell: &Arc<RunCell>,
) -> Result<Arc<DelegatedToken>, GatewayError> {
    let mut latest_error = None;
    for (i, actor) in cell.actors().iter().enumerate() {
        match token_for(inner, actor).await {
            Ok(token) => {
                if i > 0 {
                    tracing::info!(run = %cell.id(), skipped = i,
                        "the latest joiner cannot act; the run acts as an earlier one");
                    cell.act_as(actor);
                }
                return Ok(token);
            }
            Err(e) => {
                latest_error.get_or_insert(e);
            }
        }
    }
    Err(latest_error.unwrap_or(GatewayError::Internal))
}

/// The actor's token: the joined request's own, or a fresh exchange if it would expire first.
async fn token_for(inner: &impl Host, actor: &Actor) -> Result<Arc<DelegatedToken>, GatewayError> {
    if actor.token.usable_for(TOKEN_MARGIN) {
        return Ok(actor.token.clone());
    }
    inner
        .credentials()
        .token_for(&actor.identity, &inner.policy().graph_scope)
        .await
}

fn note_attempt(cell: &RunCell, mut attempt: AttemptSummary, out: &UpstreamOutcome) {
    attempt.status = out.status;
    attempt.request_id = out.request_id.clone();
    cell.update(|r| {
        let mut attempts = r.upstream.take().map(|u| u.attempts).unwrap_or_default();
        attempts.push(attempt);
        r.upstream = Some(RunUpstream {
            status: out.status,
            request_id: out.request_id.clone(),
            client_request_id: out.client_request_id.clone(),
            attempts,
        });
    });
}

/// Between attempts of one run: exponential from `actions.sync.retry_base_ms`, capped at
/// [`MAX_BACKOFF`], with full jitter; Graph's `Retry-After` wins when it is given.
fn backoff(tries: u32, base: Duration, retry_after_secs: Option<u64>) -> Duration {
    Backoff::exponential(base, MAX_BACKOFF)
        .with_full_jitter()
        .delay_or(tries, retry_after_secs)
}

/// After a 429: the last manual trigger plus the cooldown; if that has passed (plain
/// throttling), Graph's `Retry-After`; failing both, a whole cooldown from now.
async fn next_allowed_after_429(
    inner: &impl Host,
    token: &DelegatedToken,
    retry_after_secs: Option<u64>,
) -> DateTime<Utc> {
    let now = inner.clock().now();
    let fallback = retry_after_secs
        .map(|s| after(now, Duration::from_secs(s)))
        .unwrap_or_else(|| after(now, inner.policy().cooldown));
    match inner
        .graph()
        .read_settings(&inner.policy().status_path, token)
        .await
    {
        Ok(s) => match s.last_manual_sync_trigger {
            Some(t) if inner.policy().cooldown_after(t) > now => inner.policy().cooldown_after(t),
            _ => fallback,
        },
        Err(e) => {
            tracing::warn!(error = %e, "could not read the Autopilot settings after a 429");
            fallback
        }
    }
}

/// After a 409: polls until Graph no longer reports a sync in progress (bounded), then the
/// cooldown from the last manual trigger applies.
async fn wait_out_sync_in_progress(inner: &impl Host, token: &DelegatedToken) -> DateTime<Utc> {
    let policy = inner.policy();
    let mut last = None;
    for _ in 0..policy.status_poll_limit.max(1) {
        match inner
            .graph()
            .read_settings(&policy.status_path, token)
            .await
        {
            Ok(s) if s.in_progress() => {
                last = s.last_manual_sync_trigger;
                tokio::time::sleep(policy.status_poll).await;
            }
            Ok(s) => {
                last = s.last_manual_sync_trigger;
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not poll the sync status after a 409");
                tokio::time::sleep(policy.status_poll).await;
            }
        }
    }
    // Never sooner than one poll interval: Graph said 409 a moment ago.
    let soonest = after(inner.clock().now(), policy.status_poll);
    last.map(|t| policy.cooldown_after(t))
        .filter(|t| *t > soonest)
        .unwrap_or(soonest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_a_doubling_cap() {
        let base = Duration::from_millis(100);
        for tries in 1..=10 {
            let cap = (base * 2u32.pow(tries - 1)).min(MAX_BACKOFF);
            for _ in 0..50 {
                assert!(backoff(tries, base, None) <= cap);
            }
        }
    }

    #[test]
    fn graphs_retry_after_wins_over_the_backoff() {
        assert_eq!(
            backoff(1, Duration::from_millis(100), Some(7)),
            Duration::from_secs(7)
        );
    }
}
