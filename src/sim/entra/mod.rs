//! Simulated Microsoft Entra ID: the [`SimEntra`] handle tests and `dev` drive, and the server
//! wiring its endpoints. Each endpoint has its own file: OpenID discovery and JWKS
//! (`discovery.rs`), the token endpoint and the on-behalf-of grant (`token.rs`), what its grants
//! share (`grant.rs`), client assertions (`credentials.rs`), the device code and refresh-token
//! grants (`sessions.rs`), the client-credentials grant (`client_credentials.rs`), caller tokens for the gateway's own API (`mint.rs`). The state they
//! share is in `state.rs`, Entra's error bodies in `errors.rs`, form parsing in `form.rs`.
//! Children refer to their siblings, never to this file.

mod client_credentials;
mod credentials;
mod discovery;
mod errors;
mod form;
mod grant;
mod mint;
mod sessions;
mod state;
#[cfg(test)]
mod test_support;
mod token;

pub use super::options::AppConsent;
pub use client_credentials::GRANT_CLIENT_CREDENTIALS;
pub use credentials::{ClientAuthSeen, FederatedTokenSpec, TOKEN_EXCHANGE_AUDIENCE};
pub use grant::{PERMISSION_READ, PERMISSION_READ_WRITE};
pub use mint::{TokenSpec, TokenVersion, DEFAULT_CLIENT_APP_ID};
pub use sessions::{DeviceOutcome, DeviceScript, DeviceUser};
pub use state::{Failure, FailureScope};
pub use token::{
    TokenRequestSeen, CLIENT_ASSERTION_TYPE, GRANT_DEVICE_CODE, GRANT_JWT_BEARER,
    GRANT_REFRESH_TOKEN,
};

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use jsonwebtoken::{Algorithm, Header};
use serde_json::Value;

use credentials::Credentials;
use sessions::Sessions;
use state::EntraState;
use token::TokenLog;

use super::keys::KeyStore;
use super::options::SimOptions;
use super::server::{refuse_when_stopped, ServerSlot, StopFlag};

/// Handle to a running simulated Entra. Cheap to clone; the server stops when the last clone is
/// dropped or on [`SimEntra::stop`].
#[derive(Clone)]
pub struct SimEntra {
    state: Arc<EntraState>,
    credentials: Arc<Credentials>,
    sessions: Arc<Sessions>,
    token_log: Arc<TokenLog>,
    server: Arc<ServerSlot>,
}

impl SimEntra {
    /// Starts the server on `listener`, for Entra at `base` issuing Graph tokens for
    /// `graph_resource`, signing with `keys`.
    pub(crate) fn start(
        opts: &SimOptions,
        base: String,
        graph_resource: String,
        keys: Arc<KeyStore>,
        listener: TcpListener,
    ) -> std::io::Result<SimEntra> {
        let state = Arc::new(EntraState::new(opts, base, graph_resource, keys));
        let credentials = Arc::new(Credentials::default());
        let sessions = Arc::new(Sessions::default());
        let token_log = Arc::new(TokenLog::default());
        let data = web::Data::from(Arc::clone(&state));
        let credentials_data = web::Data::from(Arc::clone(&credentials));
        let sessions_data = web::Data::from(Arc::clone(&sessions));
        let token_log_data = web::Data::from(Arc::clone(&token_log));
        let stopped = StopFlag::default();
        let gate = stopped.clone();
        let server = HttpServer::new(move || {
            let gate = gate.clone();
            App::new()
                .wrap_fn(move |req, srv| refuse_when_stopped(&gate, req, srv))
                .app_data(data.clone())
                .app_data(credentials_data.clone())
                .app_data(sessions_data.clone())
                .app_data(token_log_data.clone())
                .route("/_sim/tokens", web::post().to(mint::sim_mint))
                .route(
                    "/{tenant}/v2.0/.well-known/openid-configuration",
                    web::get().to(discovery::discovery_v2),
                )
                .route(
                    "/{tenant}/.well-known/openid-configuration",
                    web::get().to(discovery::discovery_v1),
                )
                .route(
                    "/{tenant}/discovery/v2.0/keys",
                    web::get().to(discovery::jwks_v2),
                )
                .route(
                    "/{tenant}/discovery/keys",
                    web::get().to(discovery::jwks_v1),
                )
                .route("/{tenant}/oauth2/v2.0/token", web::post().to(token::token))
                .route(
                    "/{tenant}/oauth2/v2.0/devicecode",
                    web::post().to(sessions::device_authorization),
                )
                .route("/_sim/device", web::get().to(sessions::device_page))
                .route("/_sim/device", web::post().to(sessions::device_decision))
        })
        .workers(2)
        // The embedding process (tests, `dev`) owns signal handling.
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        Ok(SimEntra {
            state,
            credentials,
            sessions,
            token_log,
            server: Arc::new(ServerSlot::spawn(server, stopped)),
        })
    }

    /// Sets what `tenant` granted the gateway's application as itself (the client-credentials
    /// grant): admin consent for some application permissions, or nothing at all.
    pub fn set_app_consent(&self, tenant: &str, consent: AppConsent) {
        self.state.set_app_consent(tenant, consent);
    }

    /// Successful client-credentials grants (app-only tokens issued).
    pub fn app_tokens(&self) -> usize {
        self.state.app_tokens.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT`: what the gateway configures as `entra.authority_host`.
    pub fn base_url(&self) -> String {
        self.state.base.clone()
    }

    /// The simulated Graph's resource URI (its base URL): the `aud` of issued Graph tokens and
    /// the prefix of valid scopes.
    pub fn graph_resource(&self) -> String {
        self.state.graph_resource.clone()
    }

    /// The issuer a token of `version` from `tenant_id` carries.
    pub fn issuer(&self, tenant_id: &str, version: TokenVersion) -> String {
        match version {
            TokenVersion::V1 => state::issuer_v1(tenant_id),
            TokenVersion::V2 => self.state.issuer_v2(tenant_id),
        }
    }

    /// The claims a real caller token of that spec carries (v1: `iss` sts.windows.net, `ver`
    /// "1.0", `appid`; v2: `iss` `{base}/{tid}/v2.0`, `ver` "2.0", `azp`).
    pub fn claims_for(&self, spec: &TokenSpec) -> Value {
        mint::claims_for(&self.state, spec)
    }

    /// A signed caller token of that spec: header `{alg RS256, typ JWT, kid, x5t}`.
    pub fn mint(&self, spec: &TokenSpec) -> String {
        mint::mint(&self.state, spec)
    }

    /// The header Entra puts on tokens signed with the active key (`RS256`, `JWT`, `kid`,
    /// `x5t`): a starting point for crafting bad tokens with [`SimEntra::sign`].
    pub fn header(&self) -> Header {
        self.state.keys.active().header()
    }

    /// The active signing key's `kid`.
    pub fn active_kid(&self) -> String {
        self.state.keys.active().kid.clone()
    }

    /// Signs arbitrary claims with the active key and exactly the given header (tests use it to
    /// craft wrong `aud`/`iss`, `jku` headers, ...).
    ///
    /// # Panics
    /// If `header.alg` is not an RSA algorithm (RS*/PS*): craft `none`/HS* tokens by hand.
    pub fn sign(&self, header: &Header, claims: &Value) -> String {
        let key = self.state.keys.active();
        let token = jsonwebtoken::encode(header, claims, &key.encoding)
            .expect("SimEntra::sign needs an RSA algorithm in the header");
        self.state.record(&token);
        token
    }

    /// Signs with RS256 and a key that is never published, under a `kid` nobody knows.
    pub fn sign_with_unpublished_key(&self, claims: &Value) -> String {
        let key = self.state.keys.unpublished();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("unpublished-{}", uuid::Uuid::new_v4().simple()));
        let token = jsonwebtoken::encode(&header, claims, &key.encoding).expect("RS256 signing");
        self.state.record(&token);
        token
    }

    /// The active key's public key as a `PUBLIC KEY` PEM (SubjectPublicKeyInfo), e.g. for the
    /// HS256-with-public-key confusion attack.
    pub fn public_key_pem(&self) -> String {
        self.state.keys.active().public_pem.clone()
    }

    /// Generates a new key, publishes it and makes it the signing key; old keys stay published.
    /// Returns the new `kid`. Blocks for the RSA key generation (tens of milliseconds).
    pub fn rotate_keys(&self) -> String {
        self.state.keys.rotate()
    }

    /// Sets (or with `None` clears) the failure injected into token requests for `who`.
    /// A user-specific failure wins over the global one.
    pub fn set_failure(&self, who: FailureScope, failure: Option<Failure>) {
        self.state.set_failure(who, failure);
    }

    /// JWKS fetches (v1 and v2 endpoints, any tenant, including failed ones).
    pub fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    /// OpenID discovery fetches (v1 and v2, including failed ones).
    pub fn discovery_requests(&self) -> usize {
        self.state.discovery_requests.load(Ordering::SeqCst)
    }

    /// Every POST to a token endpoint, whatever its outcome.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Successful on-behalf-of exchanges.
    pub fn exchanges(&self) -> usize {
        self.state.exchanges.load(Ordering::SeqCst)
    }

    /// Every token minted, signed or issued so far (caller tokens, Graph tokens, refresh
    /// tokens, ID tokens, device codes, federated tokens), every client assertion received,
    /// plus the client secret: tests scan logs and audit files for these.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.state.issued_secrets()
    }

    /// Every token request so far, oldest first: tenant, grant, client authentication, status.
    pub fn token_request_log(&self) -> Vec<TokenRequestSeen> {
        self.token_log.requests()
    }

    /// Successful refresh-token grants.
    pub fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// Device-code polls (every POST with the device-code grant that passed client
    /// authentication).
    pub fn device_polls(&self) -> usize {
        self.state.device_polls.load(Ordering::SeqCst)
    }

    /// Device-code flows completed with tokens.
    pub fn device_logins(&self) -> usize {
        self.state.device_logins.load(Ordering::SeqCst)
    }

    /// Registers an RSA certificate (PEM) on the gateway's app registration, as an
    /// administrator uploads one; returns its `x5t#S256`. Several may be registered (rotation).
    ///
    /// # Panics
    /// If `pem` is not an RSA certificate.
    pub fn register_certificate(&self, pem: &str) -> String {
        self.credentials.register_certificate(pem)
    }

    /// The simulated OIDC issuer (a Kubernetes service-account issuer) whose tokens the
    /// federated credentials trust.
    pub fn federated_issuer(&self) -> String {
        credentials::federated_issuer(&self.state)
    }

    /// Adds a federated identity credential to the app registration: issuer = the simulated
    /// OIDC issuer, this `subject`, audience `api://AzureADTokenExchange`.
    pub fn add_federated_credential(&self, subject: &str) {
        self.credentials.add_federated(subject);
    }

    /// A token of the simulated OIDC issuer, as the platform projects into the pod.
    pub fn mint_federated_token(&self, spec: &FederatedTokenSpec) -> String {
        self.credentials.mint_federated(&self.state, spec)
    }

    /// Time passes for the OIDC issuer: every federated token minted so far is now past its
    /// `exp` and refused with AADSTS700024.
    pub fn expire_federated_tokens(&self) {
        self.credentials.expire_federated_tokens();
    }

    /// How polls of device codes issued from now on are answered (`None`: pending until
    /// [`SimEntra::approve_device_code`] or [`SimEntra::deny_device_code`]).
    pub fn script_device_login(&self, script: Option<DeviceScript>) {
        self.sessions.set_device_script(script);
    }

    /// The person at the browser signs in as `user` for `user_code`; false for an unknown code.
    pub fn approve_device_code(&self, user_code: &str, user: DeviceUser) -> bool {
        self.sessions
            .decide_device_code(user_code, DeviceOutcome::Approve(user))
    }

    /// The person at the browser declines `user_code`; false for an unknown code.
    pub fn deny_device_code(&self, user_code: &str) -> bool {
        self.sessions
            .decide_device_code(user_code, DeviceOutcome::Deny)
    }

    /// The newest refresh token of the user `object_id` that has not been redeemed yet.
    pub fn current_refresh_token(&self, object_id: &str) -> Option<String> {
        self.sessions.newest_refresh_token(object_id)
    }

    /// Revokes every unredeemed refresh token of `object_id` (password reset, admin action).
    pub fn revoke_refresh_tokens(&self, object_id: &str) {
        self.sessions.revoke_sessions(object_id);
    }

    /// Ninety days pass without use: every unredeemed refresh token of `object_id` expires.
    pub fn expire_refresh_tokens(&self, object_id: &str) {
        self.sessions.expire_sessions(object_id);
    }

    /// Stops the server: the IdP becomes unreachable (connections refused).
    pub async fn stop(&self) {
        self.server.stop().await;
    }
}
