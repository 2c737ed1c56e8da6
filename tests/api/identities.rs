//! Service identities: `login` with the device-code flow, app-only callers acting as an
//! identity, refresh-token rotation stored atomically and encrypted, and what callers,
//! `/readyz` and the audit trail say when a session can no longer refresh.

use crate::helpers::{problem_of, problem_type, spawn_app_with, Prepare, Setup, TestApp};
use base64::Engine;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use sync_gateway::credentials::login::{login, LoginError, LoginOutcome, Pacer};
use sync_gateway::credentials::store::{SessionStore, StoreKey};
use sync_gateway::sim::entra::{
    DeviceOutcome, DeviceScript, DeviceUser, Failure, FailureScope, TokenSpec,
};

/// The ticketing webhook's application (client) id, mapped to the identity `bot`.
const WEBHOOK_APP: &str = "5b0c6c1e-7d2a-4f3e-9a8b-1c2d3e4f5a6b";
const ROLE: &str = "Sync.Trigger.All";
pub(crate) const SERVICE_ACCOUNT: &str = "svc-sync@contoso.example";

/// The store key every test uses (32 bytes).
pub(crate) fn store_key_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A gateway with `[identities.bot]` in the allowed tenant, the webhook app mapped to it.
pub(crate) fn with_identity() -> Setup {
    Setup {
        prepare: Some(Box::new(|p: &Prepare<'_>| {
            let key_file = p.dir.join("store.key");
            std::fs::write(&key_file, store_key_b64()).unwrap();
            vec![
                ("identities.bot.tenant_id".into(), quoted(p.tenant)),
                (
                    "identities.bot.store_path".into(),
                    quoted(&p.dir.join("bot.session").display().to_string()),
                ),
                (
                    "identities.bot.store_key_file".into(),
                    quoted(&key_file.display().to_string()),
                ),
                ("callers.required_app_role".into(), quoted(ROLE)),
                (format!("callers.apps.{WEBHOOK_APP}.run_as"), quoted("bot")),
            ]
        })),
        ..Setup::default()
    }
}

/// Records the waits between polls instead of sleeping.
#[derive(Default)]
struct Recorder(Vec<Duration>);

impl Pacer for Recorder {
    fn pause(&mut self, d: Duration) -> impl Future<Output = ()> + Send {
        self.0.push(d);
        std::future::ready(())
    }
}

pub(crate) struct Login {
    pub(crate) result: Result<LoginOutcome, LoginError>,
    waits: Vec<u64>,
    printed: String,
}

/// Runs `sync-gateway login --identity bot` against the simulated Entra, whose person at the
/// browser follows `script`.
pub(crate) async fn run_login(app: &TestApp, script: DeviceScript) -> Login {
    app.sims.entra.script_device_login(Some(script));
    let mut pacer = Recorder::default();
    let mut out = Vec::new();
    let result = login(
        &app.config,
        "bot",
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        &mut pacer,
        &mut out,
    )
    .await;
    Login {
        result,
        waits: pacer.0.iter().map(|d| d.as_secs()).collect(),
        printed: String::from_utf8(out).unwrap(),
    }
}

pub(crate) fn approve_after(pending_polls: usize) -> DeviceScript {
    DeviceScript {
        slow_downs: 0,
        pending_polls,
        outcome: DeviceOutcome::Approve(DeviceUser::named(SERVICE_ACCOUNT)),
    }
}

/// A gateway whose identity `bot` has signed in.
async fn signed_in_app() -> TestApp {
    let app = spawn_app_with(with_identity()).await;
    run_login(&app, approve_after(0)).await.result.unwrap();
    app
}

pub(crate) fn service_account_oid() -> String {
    DeviceUser::named(SERVICE_ACCOUNT).object_id
}

fn app_token(app: &TestApp, app_id: &str, roles: &[&str]) -> String {
    let mut spec = TokenSpec::app(&app.tenant, app_id);
    spec.roles = roles.iter().map(|r| r.to_string()).collect();
    app.sims.entra.mint(&spec)
}

pub(crate) fn webhook_token(app: &TestApp) -> String {
    app_token(app, WEBHOOK_APP, &[ROLE])
}

fn store_path(app: &TestApp) -> PathBuf {
    app.dir.join("bot.session")
}

fn stored_refresh_token(app: &TestApp) -> String {
    let key = StoreKey::from_base64(&store_key_b64()).unwrap();
    SessionStore::new(store_path(app), &key, "bot", &app.tenant)
        .load()
        .unwrap()
        .expect("a stored session")
        .refresh_token
        .expose()
        .to_string()
}

/// Whether the login-required log line for this app's identity names `code`.
fn login_required_logged(app: &TestApp, code: &str) -> bool {
    crate::helpers::logs().lines().any(|l| {
        l.contains("service_identity_login_required") && l.contains(&app.tenant) && l.contains(code)
    })
}

async fn readyz(app: &TestApp) -> (u16, serde_json::Value) {
    let r = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn login_prints_the_verification_url_and_code_and_stores_the_session() {
    let app = spawn_app_with(with_identity()).await;
    let login = run_login(&app, approve_after(1)).await;
    let outcome = login.result.unwrap();
    assert_eq!(outcome.account.upn.as_deref(), Some(SERVICE_ACCOUNT));
    assert_eq!(outcome.tenant_id, app.tenant);
    assert!(
        login.printed.contains(&format!(
            "open the page {}/_sim/device and enter the code ",
            app.sims.entra.base_url()
        )),
        "{}",
        login.printed
    );
    // Polled at Entra's interval: once pending, then signed in.
    assert_eq!(login.waits, vec![5, 5]);
    assert_eq!(app.sims.entra.device_polls(), 2);
    assert_eq!(app.sims.entra.device_logins(), 1);
    assert_eq!(
        stored_refresh_token(&app),
        app.sims
            .entra
            .current_refresh_token(&service_account_oid())
            .unwrap()
    );
}

#[tokio::test]
async fn login_polls_five_seconds_slower_after_slow_down() {
    let app = spawn_app_with(with_identity()).await;
    let login = run_login(
        &app,
        DeviceScript {
            slow_downs: 1,
            pending_polls: 1,
            outcome: DeviceOutcome::Approve(DeviceUser::named(SERVICE_ACCOUNT)),
        },
    )
    .await;
    assert!(login.result.is_ok(), "{:?}", login.result.err());
    assert_eq!(login.waits, vec![5, 10, 10]);
}

#[tokio::test]
async fn a_declined_sign_in_stores_nothing() {
    let app = spawn_app_with(with_identity()).await;
    // Entra says `authorization_declined`; RFC 8628 says `access_denied`.
    for outcome in [DeviceOutcome::Deny, DeviceOutcome::AccessDenied] {
        let login = run_login(
            &app,
            DeviceScript {
                slow_downs: 0,
                pending_polls: 1,
                outcome,
            },
        )
        .await;
        assert!(
            matches!(login.result, Err(LoginError::Denied)),
            "{:?}",
            login.result
        );
    }
    assert!(!store_path(&app).exists());
}

#[tokio::test]
async fn an_expired_device_code_stores_nothing() {
    let app = spawn_app_with(with_identity()).await;
    let login = run_login(
        &app,
        DeviceScript {
            slow_downs: 0,
            pending_polls: 0,
            outcome: DeviceOutcome::Expire,
        },
    )
    .await;
    assert!(
        matches!(login.result, Err(LoginError::Expired)),
        "{:?}",
        login.result
    );
    assert!(!store_path(&app).exists());
}

#[tokio::test]
async fn an_account_of_another_tenant_is_not_stored() {
    let app = spawn_app_with(with_identity()).await;
    let mut stranger = DeviceUser::named("someone@fabrikam.example");
    stranger.tenant_id = Some(app.foreign_tenant.clone());
    let login = run_login(
        &app,
        DeviceScript {
            slow_downs: 0,
            pending_polls: 0,
            outcome: DeviceOutcome::Approve(stranger),
        },
    )
    .await;
    assert!(
        matches!(login.result, Err(LoginError::WrongTenant { .. })),
        "{:?}",
        login.result
    );
    assert!(!store_path(&app).exists());
}

#[tokio::test]
async fn a_mapped_app_caller_with_the_role_acts_as_the_service_identity() {
    let app = signed_in_app().await;
    let resp = app.post_sync(&webhook_token(&app)).await;
    assert_eq!(resp.status(), 202);
    let calls = app.sims.graph.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].object_id.as_deref(),
        Some(service_account_oid().as_str())
    );
    assert_eq!(app.sims.entra.refreshes(), 1);
    assert_eq!(app.sims.entra.exchanges(), 0);
}

#[tokio::test]
async fn the_audit_records_name_the_initiating_app_and_the_identity_acted_as() {
    let app = signed_in_app().await;
    assert_eq!(app.post_sync(&webhook_token(&app)).await.status(), 202);
    let record = app.only_request_record();
    assert_eq!(record["caller"]["kind"], "app");
    assert_eq!(record["caller"]["app_id"], WEBHOOK_APP);
    let started = app
        .audit_of_kind("run")
        .into_iter()
        .find(|r| r["event"] == "started")
        .expect("the run's start record");
    for acting_as in [&record["acting_as"], &started["acting_as"]] {
        assert_eq!(acting_as["kind"], "service_identity");
        assert_eq!(acting_as["identity"], "bot");
        assert_eq!(acting_as["upn"], SERVICE_ACCOUNT);
        assert_eq!(acting_as["object_id"], service_account_oid());
        assert_eq!(acting_as["tenant_id"], app.tenant);
    }
}

#[tokio::test]
async fn an_app_caller_without_a_mapping_is_refused_with_403() {
    let app = signed_in_app().await;
    let other_app = "6c1d7d2f-8e3b-4a4f-8b9c-2d3e4f5a6b7c";
    let resp = app.post_sync(&app_token(&app, other_app, &[ROLE])).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("app-only-caller")
    );
    assert_eq!(app.sims.entra.refreshes(), 0);
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_mapped_app_caller_without_the_role_is_refused_with_403() {
    let app = signed_in_app().await;
    let resp = app
        .post_sync(&app_token(&app, WEBHOOK_APP, &["Other.Role"]))
        .await;
    assert_eq!(resp.status(), 403);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("insufficient-role"));
    assert!(p["detail"].as_str().unwrap().contains(ROLE));
    assert_eq!(app.sims.entra.refreshes(), 0);
    assert_eq!(app.only_request_record()["decision"], "denied");
}

#[tokio::test]
async fn before_login_callers_get_503_naming_the_login_command_and_readyz_is_degraded() {
    let app = spawn_app_with(with_identity()).await;
    let resp = app.post_sync(&webhook_token(&app)).await;
    assert_eq!(resp.status(), 503);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("service-identity-login-required"));
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("sync-gateway login --config <file> --identity bot"),
        "{p}"
    );
    assert_eq!(app.sims.entra.token_requests(), 0);
    let (status, body) = readyz(&app).await;
    // Users are still served: degraded, not unready.
    assert_eq!(status, 200);
    assert_eq!(body["status"], "degraded");
    assert_eq!(
        body["checks"]["service_identities"]["bot"]["state"],
        "login-required"
    );
    assert_eq!(body["checks"]["service_identities"]["bot"]["in_use"], true);
    let gauge = r#"sync_gateway_service_identity_login_required{identity="bot"}"#;
    assert_eq!(app.metric(gauge).await, 1.0);
}

#[tokio::test]
async fn an_identity_no_application_acts_as_does_not_degrade_readyz() {
    let mut setup = with_identity();
    let prepare = setup.prepare.take().unwrap();
    setup.prepare = Some(Box::new(move |p: &Prepare<'_>| {
        prepare(p)
            .into_iter()
            .filter(|(key, _)| !key.starts_with("callers."))
            .collect()
    }));
    let app = spawn_app_with(setup).await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready", "{body}");
    let bot = &body["checks"]["service_identities"]["bot"];
    assert_eq!(bot["state"], "login-required");
    assert_eq!(bot["in_use"], false);
}

#[tokio::test]
async fn a_login_while_the_gateway_runs_is_used_from_the_next_request() {
    let app = spawn_app_with(with_identity()).await;
    assert_eq!(app.post_sync(&webhook_token(&app)).await.status(), 503);
    run_login(&app, approve_after(0)).await.result.unwrap();
    assert_eq!(app.post_sync(&webhook_token(&app)).await.status(), 202);
    // The line must be there with 0, not merely absent (which `metric` also reads as 0).
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"sync_gateway_service_identity_login_required{identity="bot"} 0"#),
        "{metrics}"
    );
    let logins: Vec<_> = app
        .audit_of_kind("admin")
        .into_iter()
        .filter(|r| r["event"] == "identity_login")
        .collect();
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(logins[0]["identity"], "bot");
    assert_eq!(logins[0]["outcome"], "succeeded");
    let (_, body) = readyz(&app).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(
        body["checks"]["service_identities"]["bot"]["state"],
        "ready"
    );
}

#[tokio::test]
async fn fifty_concurrent_requests_make_one_refresh_and_the_store_holds_the_newest_token() {
    let mut app = signed_in_app().await;
    // Slow the refresh down so all fifty arrive while it is in flight.
    app.sims.entra.set_failure(
        FailureScope::Global,
        Some(Failure::Slow(Duration::from_millis(300))),
    );
    let token = webhook_token(&app);
    let statuses = app.post_sync_concurrently(&token, 50).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(app.sims.entra.refreshes(), 1);
    let newest = app
        .sims
        .entra
        .current_refresh_token(&service_account_oid())
        .unwrap();
    assert_eq!(stored_refresh_token(&app), newest);

    // A restart forgets the access token and refreshes with the stored (newest) token; the
    // simulated Entra refuses any older one.
    app.sims.entra.set_failure(FailureScope::Global, None);
    app.restart().await;
    assert_eq!(app.post_sync(&token).await.status(), 202);
    assert_eq!(app.sims.entra.refreshes(), 2);
}

#[tokio::test]
async fn a_revoked_session_answers_503_and_stops_asking_entra() {
    let app = signed_in_app().await;
    app.sims.entra.revoke_refresh_tokens(&service_account_oid());
    let resp = app.post_sync(&webhook_token(&app)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("service-identity-login-required")
    );
    let (status, body) = readyz(&app).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("degraded")));
    assert_eq!(
        body["checks"]["service_identities"]["bot"]["state"],
        "login-required"
    );
    assert!(login_required_logged(&app, "AADSTS50173"));
    let requests = app.sims.entra.token_requests();
    assert_eq!(app.post_sync(&webhook_token(&app)).await.status(), 503);
    assert_eq!(app.sims.entra.token_requests(), requests);
}

#[tokio::test]
async fn a_session_expired_after_90_idle_days_needs_a_login() {
    let app = signed_in_app().await;
    app.sims.entra.expire_refresh_tokens(&service_account_oid());
    let resp = app.post_sync(&webhook_token(&app)).await;
    assert_eq!(resp.status(), 503);
    assert!(login_required_logged(&app, "AADSTS700082"));
}

#[tokio::test]
async fn a_temporary_file_left_by_a_crash_does_not_stop_the_stored_session() {
    let mut app = signed_in_app().await;
    // A crash mid-write leaves a torn temporary file next to the (whole) store.
    std::fs::write(
        app.dir.join(".bot.session.tmp-0123abcd"),
        b"{\"format\":\"sync-ga",
    )
    .unwrap();
    app.restart().await;
    assert_eq!(app.post_sync(&webhook_token(&app)).await.status(), 202);
    assert_eq!(app.sims.entra.refreshes(), 1);
}

#[tokio::test]
async fn the_session_store_never_holds_a_token_in_the_clear() {
    let app = signed_in_app().await;
    assert_eq!(app.post_sync(&webhook_token(&app)).await.status(), 202);
    let bytes = std::fs::read(store_path(&app)).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in app.sims.entra.issued_secrets() {
        assert!(
            !text.contains(&secret),
            "a token is in the store in the clear"
        );
        assert!(
            !text.contains(&b64.encode(&secret)),
            "a token is in the store, base64"
        );
    }
    assert!(!text.contains(SERVICE_ACCOUNT));
}

#[tokio::test]
async fn a_rotated_token_lost_in_a_crash_leaves_the_old_session_whole_and_asks_for_login() {
    let mut app = signed_in_app().await;
    let stored = stored_refresh_token(&app);
    // A process that received the rotated token and died before storing it: Entra has
    // redeemed the stored token, the store still holds it.
    let secret = match &app.config.entra.client_auth {
        sync_gateway::config::ClientAuthConfig::Secret { secret, .. } => {
            secret.expose().to_string()
        }
        other => panic!("{other:?}"),
    };
    let redeemed = app
        .http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            app.sims.entra.base_url(),
            app.tenant
        ))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", stored.as_str()),
            ("client_id", app.config.entra.client_id.as_str()),
            ("client_secret", secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(redeemed.status(), 200);
    app.restart().await;

    // The store is whole (the old session), the gateway serves a clear answer, not a crash.
    assert_eq!(stored_refresh_token(&app), stored);
    let resp = app.post_sync(&webhook_token(&app)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("service-identity-login-required")
    );
    run_login(&app, approve_after(0)).await.result.unwrap();
    assert_eq!(app.post_sync(&webhook_token(&app)).await.status(), 202);
}
