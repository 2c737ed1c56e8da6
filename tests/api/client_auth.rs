//! The gateway's own client credential at Entra ID: a certificate (client assertion) or a
//! workload identity federation token, end to end, including rotation on disk and the
//! operator-facing answers when Entra refuses them.

use crate::helpers::{
    logs, problem_of, problem_type, spawn_app_with, test_certificate as certificate, Prepare,
    Setup, TestApp,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use sync_gateway::sim::entra::{ClientAuthSeen, FederatedTokenSpec, TokenRequestSeen};

fn toml_path(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// Replaces `path` the way a secret mount does: a new file renamed over the old one.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// The certificate paths in a test's directory.
fn cert_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("gateway.crt"), dir.join("gateway.key"))
}

/// A gateway authenticating with a certificate; `registered` receives the `x5t#S256` the
/// simulated Entra computed when the certificate was uploaded (`None`: not uploaded).
fn with_certificate(
    alg: Option<&'static str>,
    register: bool,
    registered: Arc<Mutex<String>>,
) -> Setup {
    Setup {
        omit_client_secret: true,
        prepare: Some(Box::new(move |p: &Prepare<'_>| {
            let (cert, key) = certificate();
            if register {
                *registered.lock().unwrap() = p.sims.entra.register_certificate(&cert);
            }
            let (cert_path, key_path) = cert_paths(p.dir);
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            let mut c = vec![
                ("entra.certificate_file".to_string(), toml_path(&cert_path)),
                ("entra.private_key_file".to_string(), toml_path(&key_path)),
            ];
            if let Some(a) = alg {
                c.push(("entra.assertion_alg".to_string(), format!("\"{a}\"")));
            }
            c
        })),
        ..Setup::default()
    }
}

/// The token requests that reached the simulated Entra.
fn requests(app: &TestApp) -> Vec<TokenRequestSeen> {
    app.sims.entra.token_request_log()
}

fn certificate_seen(r: &TokenRequestSeen) -> (String, String, String) {
    match &r.client_auth {
        Some(ClientAuthSeen::Certificate {
            alg,
            thumbprint,
            audience,
        }) => (alg.clone(), thumbprint.clone(), audience.clone()),
        other => panic!("not a certificate assertion: {other:?}"),
    }
}

fn federated_jti(r: &TokenRequestSeen) -> String {
    match &r.client_auth {
        Some(ClientAuthSeen::Federated { jti }) => jti.clone(),
        other => panic!("not a federated assertion: {other:?}"),
    }
}

fn jti_of(token: &str) -> String {
    jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token).unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_certificate_signs_a_fresh_ps256_assertion_for_each_exchange() {
    let registered = Arc::new(Mutex::new(String::new()));
    let app = spawn_app_with(with_certificate(None, true, registered.clone())).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let seen = requests(&app);
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.status, 200);
        let (alg, thumbprint, audience) = certificate_seen(r);
        assert_eq!(alg, "PS256");
        assert_eq!(thumbprint, *registered.lock().unwrap());
        assert_eq!(
            audience,
            format!(
                "{}/{}/oauth2/v2.0/token",
                app.sims.entra.base_url(),
                app.tenant
            )
        );
    }
    // The simulated Entra refuses a reused jti, so two successes mean two fresh assertions.
    assert_eq!(app.sims.entra.exchanges(), 2);
}

#[tokio::test]
async fn assertion_alg_rs256_signs_with_the_sha1_thumbprint() {
    let registered = Arc::new(Mutex::new(String::new()));
    let app = spawn_app_with(with_certificate(Some("RS256"), true, registered.clone())).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let (alg, thumbprint, _) = certificate_seen(&requests(&app)[0]);
    assert_eq!(alg, "RS256");
    // x5t (SHA-1, 27 base64url characters), not x5t#S256 (SHA-256, 43).
    assert_eq!(thumbprint.len(), 27);
    assert_ne!(thumbprint, *registered.lock().unwrap());
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_used_without_a_restart() {
    let registered = Arc::new(Mutex::new(String::new()));
    let app = spawn_app_with(with_certificate(None, true, registered.clone())).await;
    let old = registered.lock().unwrap().clone();
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);

    let (cert, key) = certificate();
    let new = app.sims.entra.register_certificate(&cert);
    let (cert_path, key_path) = cert_paths(&app.dir);
    // Mid-rotation the new certificate is there, its key not yet: the old pair stays in use.
    replace(&cert_path, &cert);
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    replace(&key_path, &key);
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);

    let thumbprints: Vec<String> = requests(&app)
        .iter()
        .map(|r| certificate_seen(r).1)
        .collect();
    assert_eq!(thumbprints, vec![old.clone(), old, new]);
}

#[tokio::test]
async fn an_unregistered_certificate_answers_503_and_tells_the_operator_why() {
    let app = spawn_app_with(with_certificate(None, false, Arc::default())).await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(crate::helpers::header(&resp, "retry-after"), "30");
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("client-credential-rejected"));
    assert!(p["detail"].as_str().unwrap().contains("certificate"), "{p}");
    assert_eq!(app.sims.graph.sync_calls(), 0);
    assert_eq!(
        app.only_request_record()["code"],
        "client-credential-rejected"
    );
    let cert_path = cert_paths(&app.dir).0.display().to_string();
    let line = logs()
        .lines()
        .find(|l| l.contains("AADSTS700027") && l.contains(&cert_path))
        .map(str::to_string)
        .expect("a log line naming the code and the certificate file");
    assert!(line.contains("not registered on the application"), "{line}");
}

#[tokio::test]
async fn a_certificate_assertion_names_the_token_endpoint_of_the_callers_tenant() {
    let registered = Arc::new(Mutex::new(String::new()));
    let mut setup = with_certificate(None, true, registered);
    let prepare = setup.prepare.take().unwrap();
    setup.prepare = Some(Box::new(move |p: &Prepare<'_>| {
        let mut c = prepare(p);
        c.push((
            "callers.allowed_tenants".into(),
            format!("[\"{}\", \"{}\"]", p.tenant, p.foreign_tenant),
        ));
        c
    }));
    let app = spawn_app_with(setup).await;
    let caller = sync_gateway::sim::entra::TokenSpec::user(&app.foreign_tenant, "u-second");
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&caller)).await.status(),
        202
    );
    let seen = &requests(&app)[0];
    assert_eq!(seen.tenant, app.foreign_tenant);
    assert_eq!(
        certificate_seen(seen).2,
        format!(
            "{}/{}/oauth2/v2.0/token",
            app.sims.entra.base_url(),
            app.foreign_tenant
        )
    );
}

const SERVICE_ACCOUNT: &str = "system:serviceaccount:sync:sync-gateway";

/// A gateway authenticating with the federated token file `entra.federated_token_file`, which
/// holds a token of `spec` from the simulated OIDC issuer; returns the app and that token.
async fn federated_app(spec: FederatedTokenSpec) -> (TestApp, String) {
    let minted = Arc::new(Mutex::new(String::new()));
    let minted_hook = minted.clone();
    let app = spawn_app_with(Setup {
        omit_client_secret: true,
        prepare: Some(Box::new(move |p: &Prepare<'_>| {
            p.sims.entra.add_federated_credential(SERVICE_ACCOUNT);
            let token = p.sims.entra.mint_federated_token(&spec);
            let file = p.dir.join("azure-identity-token");
            std::fs::write(&file, &token).unwrap();
            *minted_hook.lock().unwrap() = token;
            vec![("entra.federated_token_file".into(), toml_path(&file))]
        })),
        ..Setup::default()
    })
    .await;
    let token = minted.lock().unwrap().clone();
    (app, token)
}

#[tokio::test]
async fn a_federated_token_file_authenticates_the_exchange() {
    let (app, token) = federated_app(FederatedTokenSpec::new(SERVICE_ACCOUNT)).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let seen = requests(&app);
    assert_eq!(seen.len(), 1);
    assert_eq!(federated_jti(&seen[0]), jti_of(&token));
}

#[tokio::test]
async fn the_federated_token_file_is_found_through_azure_federated_token_file() {
    let minted = Arc::new(Mutex::new(String::new()));
    // The webhook's variable, not the configuration key, names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let path_for_hook = path.clone();
    let minted_hook = minted.clone();
    let setup = Setup {
        omit_client_secret: true,
        env: vec![(
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            path.display().to_string(),
        )],
        prepare: Some(Box::new(move |p: &Prepare<'_>| {
            p.sims.entra.add_federated_credential(SERVICE_ACCOUNT);
            let token = p
                .sims
                .entra
                .mint_federated_token(&FederatedTokenSpec::new(SERVICE_ACCOUNT));
            std::fs::write(&path_for_hook, &token).unwrap();
            *minted_hook.lock().unwrap() = token;
            Vec::new()
        })),
        ..Setup::default()
    };
    let app = spawn_app_with(setup).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(
        federated_jti(&requests(&app)[0]),
        jti_of(&minted.lock().unwrap())
    );
}

#[tokio::test]
async fn a_federated_token_file_replaced_by_a_newer_one_is_read_when_entra_says_the_old_expired() {
    let (app, old) = federated_app(FederatedTokenSpec::new(SERVICE_ACCOUNT)).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    // The platform projects a newer token; later the one the gateway holds passes its exp.
    app.sims.entra.expire_federated_tokens();
    let new = app
        .sims
        .entra
        .mint_federated_token(&FederatedTokenSpec::new(SERVICE_ACCOUNT));
    replace(&app.dir.join("azure-identity-token"), &new);

    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let seen: Vec<(String, u16)> = requests(&app)
        .iter()
        .map(|r| (federated_jti(r), r.status))
        .collect();
    assert_eq!(
        seen,
        vec![
            (jti_of(&old), 200),
            (jti_of(&old), 401),
            (jti_of(&new), 200)
        ]
    );
}

#[tokio::test]
async fn an_expired_federated_token_answers_503_and_tells_the_operator_why() {
    let mut spec = FederatedTokenSpec::new(SERVICE_ACCOUNT);
    spec.expires_at = Some(chrono::Utc::now().timestamp() - 60);
    let (app, _) = federated_app(spec).await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("client-credential-rejected"));
    assert!(
        p["detail"].as_str().unwrap().contains("federated token"),
        "{p}"
    );
    // Read again once after Entra's "expired", then given up.
    assert_eq!(app.sims.entra.token_requests(), 2);
    assert_eq!(app.sims.graph.sync_calls(), 0);
    let file = app.dir.join("azure-identity-token").display().to_string();
    let line = logs()
        .lines()
        .find(|l| l.contains("AADSTS700024") && l.contains(&file))
        .map(str::to_string)
        .expect("a log line naming the code and the token file");
    assert!(line.contains("not refreshing it"), "{line}");
}

#[tokio::test]
async fn a_federated_token_without_a_matching_federated_credential_answers_503() {
    let mut spec = FederatedTokenSpec::new("system:serviceaccount:other:someone");
    spec.audience = "api://AzureADTokenExchange".into();
    let (app, _) = federated_app(spec).await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("client-credential-rejected")
    );
    assert!(logs().contains("AADSTS700213"));
}
