//! Application identities (`[identities.NAME] kind = "application"`): an app-only caller mapped
//! to one makes the gateway act as its own application, with the client-credentials grant and
//! the application permission, instead of a signed-in service account.

use crate::helpers::{
    problem_of, problem_type, spawn_app_with, test_certificate, Prepare, Setup, TestApp,
};
use std::time::Duration;
use sync_gateway::sim::entra::{
    AppConsent, Failure, FailureScope, TokenSpec, GRANT_CLIENT_CREDENTIALS,
};
use sync_gateway::sim::graph::{GraphMode, GraphResponse};
use sync_gateway::sim::PERMISSION_READ;

/// The ticketing webhook's application (client) id, mapped to the application identity `app`.
const WEBHOOK_APP: &str = "7d3e5f60-1a2b-4c3d-8e9f-0a1b2c3d4e5f";
const ROLE: &str = "Sync.Trigger.All";
const PERMISSION: &str = "DeviceManagementServiceConfig.ReadWrite.All";

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `[identities.app] kind = "application"` in the allowed tenant, the webhook app mapped to it.
fn application_identity(p: &Prepare<'_>) -> Vec<(String, String)> {
    vec![
        ("identities.app.kind".into(), quoted("application")),
        ("identities.app.tenant_id".into(), quoted(p.tenant)),
        ("callers.required_app_role".into(), quoted(ROLE)),
        (format!("callers.apps.{WEBHOOK_APP}.run_as"), quoted("app")),
    ]
}

/// A gateway with the application identity, authenticating with its client secret.
fn with_application_identity() -> Setup {
    Setup {
        prepare: Some(Box::new(application_identity)),
        ..Setup::default()
    }
}

/// The same, the gateway authenticating with a certificate registered on its application.
fn with_application_identity_and_certificate() -> Setup {
    Setup {
        omit_client_secret: true,
        prepare: Some(Box::new(|p: &Prepare<'_>| {
            let (cert, key) = test_certificate();
            p.sims.entra.register_certificate(&cert);
            let (cert_path, key_path) = (p.dir.join("gateway.crt"), p.dir.join("gateway.key"));
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            let mut entries = application_identity(p);
            entries.push((
                "entra.certificate_file".into(),
                quoted(&cert_path.display().to_string()),
            ));
            entries.push((
                "entra.private_key_file".into(),
                quoted(&key_path.display().to_string()),
            ));
            entries
        })),
        ..Setup::default()
    }
}

fn webhook_token(app: &TestApp) -> String {
    let mut spec = TokenSpec::app(&app.tenant, WEBHOOK_APP);
    spec.roles = vec![ROLE.to_string()];
    app.sims.entra.mint(&spec)
}

/// The client-credentials requests that reached the simulated Entra.
fn client_credentials_requests(app: &TestApp) -> Vec<sync_gateway::sim::entra::TokenRequestSeen> {
    app.sims
        .entra
        .token_request_log()
        .into_iter()
        .filter(|r| r.grant_type == GRANT_CLIENT_CREDENTIALS)
        .collect()
}

#[tokio::test]
async fn a_mapped_app_caller_triggers_a_sync_that_reaches_graph_with_the_gateways_app_only_token() {
    let app = spawn_app_with(with_application_identity()).await;
    let resp = app.post_sync(&webhook_token(&app)).await;
    assert_eq!(resp.status(), 202);
    let calls = app.sims.graph.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].authorization_ok);
    assert!(calls[0].app_only, "{:?}", calls[0]);
    assert_eq!(
        calls[0].app_id.as_deref(),
        Some(app.world.client_id.as_str())
    );
    assert_eq!(calls[0].tenant_id.as_deref(), Some(app.tenant.as_str()));
    // At the identity's tenant's token endpoint, with the client credential; no exchange, no
    // session.
    let requests = client_credentials_requests(&app);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].tenant, app.tenant);
    assert_eq!(requests[0].status, 200);
    assert_eq!(
        requests[0].client_auth,
        Some(sync_gateway::sim::entra::ClientAuthSeen::Secret)
    );
    assert_eq!(app.sims.entra.exchanges(), 0);
    assert_eq!(app.sims.entra.refreshes(), 0);
}

#[tokio::test]
async fn the_application_token_is_requested_with_the_gateways_certificate_when_that_is_its_credential(
) {
    let app = spawn_app_with(with_application_identity_and_certificate()).await;
    assert_eq!(app.post_sync(&webhook_token(&app)).await.status(), 202);
    let requests = client_credentials_requests(&app);
    assert_eq!(requests.len(), 1);
    assert!(
        matches!(
            requests[0].client_auth,
            Some(sync_gateway::sim::entra::ClientAuthSeen::Certificate { .. })
        ),
        "{:?}",
        requests[0]
    );
    assert!(app.sims.graph.calls()[0].app_only);
}

#[tokio::test]
async fn the_audit_records_say_the_application_identity_acted() {
    let app = spawn_app_with(with_application_identity()).await;
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
        assert_eq!(acting_as["kind"], "application_identity");
        assert_eq!(acting_as["identity"], "app");
        assert_eq!(acting_as["app_id"], app.world.client_id.as_str());
        assert_eq!(acting_as["tenant_id"], app.tenant);
        // No account acted: nothing names one.
        assert!(acting_as.get("upn").is_none() && acting_as.get("object_id").is_none());
    }
}

#[tokio::test]
async fn fifty_concurrent_first_calls_make_exactly_one_client_credentials_request() {
    let app = spawn_app_with(with_application_identity()).await;
    // Entra answers slowly, so the fifty arrive while the first request is still in flight.
    app.sims.entra.set_failure(
        FailureScope::Global,
        Some(Failure::Slow(Duration::from_millis(300))),
    );
    let statuses = app.post_sync_concurrently(&webhook_token(&app), 50).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(client_credentials_requests(&app).len(), 1);
    assert_eq!(app.sims.entra.app_tokens(), 1);
}

#[tokio::test]
async fn a_later_sync_reuses_the_cached_application_token() {
    let app = spawn_app_with(with_application_identity()).await;
    let token = webhook_token(&app);
    assert_eq!(app.post_sync(&token).await.status(), 202);
    assert_eq!(app.post_sync(&token).await.status(), 202);
    assert_eq!(app.sims.graph.calls().len(), 2);
    assert_eq!(client_credentials_requests(&app).len(), 1);
}

#[tokio::test]
async fn an_application_without_admin_consent_in_the_tenant_is_refused_403_and_graph_is_not_called()
{
    let app = spawn_app_with(with_application_identity()).await;
    app.sims
        .entra
        .set_app_consent(&app.tenant, AppConsent::NotInTenant);
    let resp = app.post_sync(&webhook_token(&app)).await;
    assert_eq!(resp.status(), 403);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("consent-required"));
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains(PERMISSION), "{detail}");
    assert!(detail.contains("admin consent"), "{detail}");
    // Entra refused it (AADSTS700016) and nothing reached Graph.
    assert_eq!(client_credentials_requests(&app)[0].status, 400);
    assert_eq!(app.sims.graph.sync_calls(), 0);
    assert_eq!(app.only_request_record()["code"], "consent-required");
}

#[tokio::test]
async fn a_graph_403_on_an_application_run_names_the_application_permission_and_admin_consent() {
    let app = spawn_app_with(with_application_identity()).await;
    // Consented, but only to read: the token's roles lack the sync's permission.
    app.sims.entra.set_app_consent(
        &app.tenant,
        AppConsent::Granted(vec![PERMISSION_READ.into()]),
    );
    let token = webhook_token(&app);
    let resp = app.post_sync(&token).await;
    assert_eq!(resp.status(), 403);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("upstream-forbidden"));
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains(PERMISSION), "{detail}");
    assert!(detail.contains("application permission"), "{detail}");
    assert!(detail.contains("admin consent"), "{detail}");
    // The run's own failure reason says the same.
    let run: serde_json::Value = app
        .get_as(
            &format!("/sync/runs/{}", p["run"]["id"].as_str().unwrap()),
            &token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(run["state"], "failed");
    assert_eq!(run["error"]["kind"], "upstream-forbidden");
    let reason = run["error"]["detail"].as_str().unwrap();
    assert!(reason.contains(PERMISSION), "{reason}");
    assert!(reason.contains("admin consent"), "{reason}");
    assert_eq!(app.sims.graph.calls()[0].status, 403);
}

#[tokio::test]
async fn a_user_run_refused_by_graph_does_not_speak_of_application_permissions() {
    let app = spawn_app_with(Setup {
        graph_mode: GraphMode::Always(GraphResponse::Status(403)),
        ..with_application_identity()
    })
    .await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 403);
    let detail = problem_of(resp).await["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!detail.contains("application permission"), "{detail}");
}

#[tokio::test]
async fn a_mapped_app_caller_reads_the_sync_status_as_the_application() {
    let app = spawn_app_with(with_application_identity()).await;
    let resp = app.get_as("/sync/status", &webhook_token(&app)).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["tenant_id"], app.tenant);
    assert_eq!(app.sims.graph.settings_reads(), 1);
    assert_eq!(client_credentials_requests(&app).len(), 1);
}
