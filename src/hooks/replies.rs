//! Follow-up messages to chat senders: the outcome of a run a command started, posted where
//! the sender said (Slack's and Mattermost's `response_url`, Discord's interaction webhook) once
//! the run finishes or is rescheduled.
//!
//! A follow-up URL is chosen by whoever signed the request, which a source's operator does not
//! control in detail, so it is held to the source's `response_url_hosts`, `https://` except
//! loopback; redirects are never followed (a redirect would leave the allowed hosts); each post
//! has a timeout and a bounded retry; and one command posts at most [`MAX_POSTS`] times (Slack
//! and Mattermost accept 5 posts to one `response_url` within 30 minutes).

use super::event::ChatCommand;
use crate::audit::{AdminEvent, AuditLog};
use crate::config::{HookKind, HookSourceConfig};
use crate::domain::RunState;
use crate::retry::Backoff;
use crate::runs::RunCell;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use url::Url;
use uuid::Uuid;

/// Discord's API, where follow-ups go when the source names no `api_base_url`.
const DISCORD_API: &str = "https://discord.com/api/v10";

/// Posts one command may make (the sender's limit is 5 within 30 minutes).
pub const MAX_POSTS: usize = 4;

/// Attempts per post: a timeout or a 5xx/429 is tried again, twice.
const ATTEMPTS: u32 = 3;

/// Each post's timeout.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a follow-up waits for its run: Slack's and Mattermost's `response_url` is valid for
/// 30 minutes, Discord's interaction token for 15.
fn give_up_after(kind: HookKind) -> Duration {
    match kind {
        HookKind::Discord => Duration::from_secs(14 * 60),
        _ => Duration::from_secs(29 * 60),
    }
}

/// Where a follow-up goes and how.
#[derive(Clone)]
pub struct ReplyTarget {
    url: Url,
    /// Discord edits the deferred answer (`PATCH`); Slack and Mattermost take a `POST`.
    discord: bool,
}

impl std::fmt::Debug for ReplyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The path is a credential (Slack's response_url, Discord's interaction token).
        f.write_str(&redacted(&self.url))
    }
}

impl ReplyTarget {
    /// The URL as the audit trail and the logs show it: scheme, host and the first path
    /// segment; the rest is the sender's secret.
    pub fn redacted(&self) -> String {
        redacted(&self.url)
    }
}

fn redacted(url: &Url) -> String {
    let first = url
        .path_segments()
        .and_then(|mut s| s.next())
        .unwrap_or_default();
    format!(
        "{}://{}/{first}/…",
        url.scheme(),
        url.host_str().unwrap_or_default()
    )
}

/// Why a follow-up URL is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedTarget {
    /// Not a URL.
    #[error("the follow-up URL is not a URL")]
    NotAUrl,
    /// `http://` to a host that is not loopback, or another scheme.
    #[error("the follow-up URL must use https://")]
    NotHttps,
    /// A host the source does not list in `response_url_hosts`.
    #[error("the follow-up URL's host {0} is not one of the source's response_url_hosts")]
    HostNotAllowed(String),
    /// User information in the URL (a way to smuggle a credential or confuse a parser).
    #[error("the follow-up URL carries user information")]
    UserInfo,
}

/// The follow-up target of a Slack or Mattermost command: its `response_url`, if allowed.
pub fn response_url_target(
    source: &HookSourceConfig,
    response_url: &str,
) -> Result<ReplyTarget, RefusedTarget> {
    let url = Url::parse(response_url).map_err(|_| RefusedTarget::NotAUrl)?;
    check_url(&url)?;
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !source.response_url_hosts.iter().any(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .eq_ignore_ascii_case(host)
    }) {
        return Err(RefusedTarget::HostNotAllowed(host.to_string()));
    }
    Ok(ReplyTarget {
        url,
        discord: false,
    })
}

/// The follow-up target of a Discord interaction: its original answer, at the source's
/// `api_base_url`. The ids go into the path, so they must be what Discord issues (snowflakes
/// and URL-safe tokens), never a path of the sender's choosing.
pub fn discord_target(
    source: &HookSourceConfig,
    application_id: &str,
    token: &str,
) -> Result<ReplyTarget, RefusedTarget> {
    let safe = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.len() <= 512
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    if !safe(application_id, &[]) || !safe(token, &['-', '_', '.']) {
        return Err(RefusedTarget::NotAUrl);
    }
    let base = source
        .api_base_url
        .clone()
        .unwrap_or_else(|| Url::parse(DISCORD_API).expect("a valid URL"));
    let url = Url::parse(&format!(
        "{}/webhooks/{application_id}/{token}/messages/@original",
        base.as_str().trim_end_matches('/')
    ))
    .map_err(|_| RefusedTarget::NotAUrl)?;
    check_url(&url)?;
    Ok(ReplyTarget { url, discord: true })
}

fn check_url(url: &Url) -> Result<(), RefusedTarget> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(RefusedTarget::UserInfo);
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if crate::config::is_loopback_host(url) => Ok(()),
        _ => Err(RefusedTarget::NotHttps),
    }
}

/// Labels of `hook_replies_total`: bounded by the configured sources and three outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplyLabels {
    /// The source's NAME.
    pub source: String,
    /// `delivered`, `failed` or `refused`.
    pub outcome: &'static str,
}

/// Posts follow-ups; one per gateway, shared by every source.
#[derive(Clone)]
pub struct Replies {
    http: reqwest::Client,
    audit: AuditLog,
    /// `hook_replies_total{source, outcome}`.
    pub posted: Family<ReplyLabels, Counter>,
}

impl Replies {
    /// A client that follows no redirect and gives each post [`POST_TIMEOUT`].
    pub fn new(audit: AuditLog) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(POST_TIMEOUT)
            .connect_timeout(POST_TIMEOUT)
            .build()?;
        Ok(Replies {
            http,
            audit,
            posted: Family::default(),
        })
    }

    /// Where a chat command's outcome will be posted, if its sender gave a place: only on the
    /// source's allowed hosts. A refused URL is recorded (a `hook_reply` record, a log line and
    /// the counter) and never fetched.
    pub async fn target_of(
        &self,
        source: &HookSourceConfig,
        command: &ChatCommand,
    ) -> Result<Option<ReplyTarget>, RefusedTarget> {
        let (target, url) = match (&command.response_url, &command.discord) {
            (Some(url), _) => (response_url_target(source, url.expose()), url.expose()),
            (None, Some(d)) => (
                discord_target(source, &d.application_id, d.token.expose()),
                source
                    .api_base_url
                    .as_ref()
                    .map_or(DISCORD_API, Url::as_str),
            ),
            (None, None) => return Ok(None),
        };
        if let Err(why) = &target {
            // Scheme and host only: the path of a refused URL may still be a credential.
            let shown = Url::parse(url)
                .map(|u| format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or_default()))
                .unwrap_or_else(|_| "(not a URL)".into());
            self.posted
                .get_or_create(&ReplyLabels {
                    source: source.name.clone(),
                    outcome: "refused",
                })
                .inc();
            tracing::warn!(source = %source.name, target = %shown, reason = %why, "a follow-up URL was refused");
            self.record(&source.name, None, shown, None, 0, "refused")
                .await;
        }
        target.map(Some)
    }

    /// Follows `cell` until it is final and posts what happened to `target`: a reschedule when
    /// Graph makes the run wait, then the outcome. Runs on its own task; gives up when the
    /// sender's URL would have expired.
    pub fn follow(&self, source: &HookSourceConfig, cell: Arc<RunCell>, target: ReplyTarget) {
        let this = self.clone();
        let name = source.name.clone();
        let limit = give_up_after(source.kind);
        // The posts belong to the command's trace (task-locals do not cross `spawn`).
        let trace = crate::trace::current();
        tokio::spawn(async move {
            let follow = tokio::time::timeout(limit, this.follow_run(&name, cell, &target));
            let _ = match trace {
                Some(t) => crate::trace::scope(t, follow).await,
                None => follow.await,
            };
        });
    }

    async fn follow_run(&self, source: &str, cell: Arc<RunCell>, target: &ReplyTarget) {
        let mut posts = 0;
        let mut seen_running = false;
        loop {
            let current = cell.resolve();
            // Subscribed before the look, so a change in between is not missed.
            let mut changes = current.subscribe();
            let run = current.view();
            match run.state {
                RunState::Running => seen_running = true,
                RunState::Scheduled if seen_running => {
                    // Graph said "not now" (409/429): the run waits again.
                    seen_running = false;
                    let when = run
                        .not_before
                        .map(|t| t.format("%H:%M UTC").to_string())
                        .unwrap_or_else(|| "later".into());
                    if posts < MAX_POSTS - 1 {
                        posts += 1;
                        let text = format!(
                            "Intune asked to wait: Autopilot sync run {} now starts at {when}.",
                            run.id
                        );
                        self.post(source, run.id, target, &text).await;
                    }
                }
                RunState::Scheduled => {}
                _ => {
                    let text = outcome_text(&run);
                    if posts < MAX_POSTS {
                        self.post(source, run.id, target, &text).await;
                    }
                    return;
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// One follow-up, with a bounded retry; recorded in the trail either way.
    async fn post(&self, source: &str, run_id: Uuid, target: &ReplyTarget, text: &str) {
        let body = if target.discord {
            json!({ "content": text })
        } else {
            // Only the person who typed the command sees it, as with the acknowledgement.
            json!({ "response_type": "ephemeral", "text": text })
        };
        let backoff = Backoff::exponential(Duration::from_millis(500), Duration::from_secs(4));
        let mut status = None;
        let mut attempts = 0;
        for attempt in 0..ATTEMPTS {
            attempts = attempt + 1;
            let request = if target.discord {
                self.http.patch(target.url.clone())
            } else {
                self.http.post(target.url.clone())
            };
            let answer = crate::trace::propagate(request).json(&body).send().await;
            let retry = match &answer {
                Ok(r) => {
                    status = Some(r.status().as_u16());
                    r.status().is_server_error() || r.status().as_u16() == 429
                }
                Err(_) => {
                    status = None;
                    true
                }
            };
            if !retry || attempt + 1 == ATTEMPTS {
                break;
            }
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let outcome = if delivered { "delivered" } else { "failed" };
        self.posted
            .get_or_create(&ReplyLabels {
                source: source.to_string(),
                outcome,
            })
            .inc();
        if !delivered {
            tracing::warn!(source, target = %target.redacted(), status, attempts, "a follow-up could not be delivered");
        }
        self.record(
            source,
            Some(run_id),
            target.redacted(),
            status,
            attempts,
            outcome,
        )
        .await;
    }

    async fn record(
        &self,
        source: &str,
        run_id: Option<Uuid>,
        target: String,
        status: Option<u16>,
        attempts: u32,
        outcome: &'static str,
    ) {
        let event = AdminEvent::HookReply {
            source: source.to_string(),
            run_id,
            target,
            status,
            attempts,
            outcome: outcome.to_string(),
        };
        if let Err(e) = self.audit.admin(event).await {
            tracing::error!(source, error = %e, "a follow-up's audit record could not be written");
        }
    }
}

/// What a chat user reads when their run is final.
pub fn outcome_text(run: &crate::runs::Run) -> String {
    let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%H:%M UTC").to_string())
            .unwrap_or_default()
    };
    match run.state {
        RunState::Succeeded => format!(
            "Autopilot sync run {} succeeded at {}: Intune is syncing devices from Windows Autopilot.",
            run.id,
            at(run.finished_at)
        ),
        RunState::Failed => format!(
            "Autopilot sync run {} failed: {}.",
            run.id,
            run.error
                .as_ref()
                .map(|e| e.detail.trim_end_matches('.').to_string())
                .unwrap_or_else(|| "no reason was given".into())
        ),
        RunState::Abandoned => format!(
            "Autopilot sync run {} was abandoned: the gateway stopped before it could start. Ask again.",
            run.id
        ),
        RunState::Scheduled | RunState::Running => {
            format!("Autopilot sync run {} is {}.", run.id, run.state.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follow_up_url_shows_only_its_host_and_first_segment() {
        let url = Url::parse("https://hooks.slack.com/commands/T1/2/SECRETPATH").unwrap();
        assert_eq!(redacted(&url), "https://hooks.slack.com/commands/…");
    }

    #[test]
    fn only_https_or_loopback_http_without_user_info_is_used() {
        let ok = |u: &str| check_url(&Url::parse(u).unwrap());
        assert_eq!(ok("https://hooks.slack.com/x"), Ok(()));
        assert_eq!(ok("http://127.0.0.1:9/x"), Ok(()));
        assert_eq!(ok("http://hooks.slack.com/x"), Err(RefusedTarget::NotHttps));
        assert_eq!(ok("ftp://hooks.slack.com/x"), Err(RefusedTarget::NotHttps));
        assert_eq!(
            ok("https://a:b@hooks.slack.com/x"),
            Err(RefusedTarget::UserInfo)
        );
    }
}
