//! Test doubles of Microsoft Entra ID and Microsoft Graph.
//!
//! They follow the documented protocols (discovery, JWKS, the on-behalf-of token request and
//! its error bodies; the Windows Autopilot sync action and its cooldown) closely enough that a
//! gateway which behaves correctly against them behaves correctly against the real services.
//! Used by the `dev` subcommand and by black-box tests; never started by `serve`.

pub mod entra;
pub mod graph;
mod keys;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;

/// What the simulators know about the world: tenants, the gateway's app registration, the
/// gateway's API audiences and Graph's timing rules.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Tenant ids the simulated Entra knows.
    pub tenants: Vec<String>,
    /// The gateway application's client id, registered in the simulated Entra.
    pub client_id: String,
    /// The gateway application's client secret.
    pub client_secret: String,
    /// Audiences of the gateway's own API (client id and App ID URI); minted caller tokens use
    /// the first by default.
    pub api_audiences: Vec<String>,
    /// Graph's "one manual sync per N" rule (Intune: 10 minutes).
    pub graph_cooldown: Duration,
    /// Lifetime of the Graph tokens the OBO exchange issues.
    pub graph_token_lifetime: Duration,
    /// The Graph resource (scope prefix and token `aud`) as a national cloud names it, e.g.
    /// `https://graph.microsoft.us`; `None` = the simulated Graph's own base URL.
    pub graph_resource: Option<String>,
    /// The `cloud_instance_name` discovery and keys report (e.g. `microsoftonline.us`).
    pub cloud_instance_name: String,
    /// The polling interval the device authorization endpoint announces.
    pub device_interval: Duration,
    /// The Graph permissions the tenants consented to for the gateway; asking for another
    /// fails as Entra does (AADSTS65001, `consent_required`). Default: every permission the
    /// app registration lists.
    pub consented_permissions: Vec<String>,
    /// The clock of Graph's cooldown and sync progress (default: the real one); a test gives
    /// the gateway the same [`crate::clock::ManualClock`] so both run in one virtual time.
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl SimOptions {
    /// Options with Graph's documented defaults: 600 s cooldown, 3600 s Graph token lifetime.
    pub fn new(
        tenants: Vec<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        api_audiences: Vec<String>,
    ) -> Self {
        SimOptions {
            tenants,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            api_audiences,
            graph_cooldown: Duration::from_secs(600),
            graph_token_lifetime: Duration::from_secs(3600),
            graph_resource: None,
            cloud_instance_name: "microsoftonline.com".into(),
            device_interval: Duration::from_secs(5),
            consented_permissions: vec![
                entra::PERMISSION_READ_WRITE.into(),
                entra::PERMISSION_READ.into(),
            ],
            clock: crate::clock::system(),
        }
    }
}

/// A running simulated Entra and simulated Graph that share signing keys.
#[derive(Clone)]
pub struct Simulators {
    /// The simulated Entra ID (discovery, JWKS, token endpoint, token minting).
    pub entra: entra::SimEntra,
    /// The simulated Microsoft Graph (Autopilot settings and the sync action).
    pub graph: graph::SimGraph,
}

impl Simulators {
    /// Binds both listeners on 127.0.0.1:0 first (so each knows the other's address), then
    /// starts them on the caller's runtime.
    ///
    /// # Errors
    /// When a listener cannot be bound, or `opts.api_audiences` is empty.
    pub async fn start(opts: SimOptions) -> std::io::Result<Simulators> {
        if opts.api_audiences.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "SimOptions::api_audiences must name at least one audience",
            ));
        }
        let entra_listener = bind_local()?;
        let graph_listener = bind_local()?;
        let entra_base = base_url(&entra_listener)?;
        let graph_base = base_url(&graph_listener)?;
        // RSA keygen is CPU-bound: keep it off the async threads.
        let keys = tokio::task::spawn_blocking(keys::KeyStore::new)
            .await
            .map_err(std::io::Error::other)?;
        let keys = Arc::new(keys);
        let graph_resource = opts
            .graph_resource
            .clone()
            .unwrap_or_else(|| graph_base.clone());
        let entra = entra::SimEntra::start(
            &opts,
            entra_base.clone(),
            graph_resource,
            Arc::clone(&keys),
            entra_listener,
        )?;
        let graph = graph::SimGraph::start(&opts, graph_base, entra_base, keys, graph_listener)?;
        Ok(Simulators { entra, graph })
    }
}

/// Starts only the simulated Entra ID, issuing Graph tokens for `graph_resource` (an origin such
/// as `http://127.0.0.1:8081`) instead of a simulated Graph's URL.
///
/// For running the gateway against another Graph stand-in (the benchmark's nginx): the gateway
/// asks for scopes on its `graph.base_url`'s origin, and Entra only grants scopes on the
/// resource it knows, so the two must name the same origin.
///
/// # Errors
/// When the listener cannot be bound, or `opts.api_audiences` is empty.
pub async fn start_entra_for(
    opts: SimOptions,
    graph_resource: String,
) -> std::io::Result<entra::SimEntra> {
    if opts.api_audiences.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "SimOptions::api_audiences must name at least one audience",
        ));
    }
    let listener = bind_local()?;
    let base = base_url(&listener)?;
    let keys = tokio::task::spawn_blocking(keys::KeyStore::new)
        .await
        .map_err(std::io::Error::other)?;
    entra::SimEntra::start(
        &opts,
        base,
        graph_resource.trim_end_matches('/').to_string(),
        Arc::new(keys),
        listener,
    )
}

fn bind_local() -> std::io::Result<TcpListener> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn base_url(l: &TcpListener) -> std::io::Result<String> {
    Ok(format!("http://{}", l.local_addr()?))
}

/// Owns a running server; stopping it closes the listener so clients get "connection refused".
/// Dropping the last owner stops the server too, so tests do not leak listeners.
pub(crate) struct ServerSlot {
    handle: Mutex<Option<ServerHandle>>,
    stopped: StopFlag,
}

/// Set when a simulator stops. A client's kept-alive connection may still reach a worker for a
/// moment after the listener closed; requests arriving that way are refused (see
/// [`refuse_when_stopped`]) so "stopped" never means "answered normally".
pub(crate) type StopFlag = Arc<std::sync::atomic::AtomicBool>;

/// The middleware body for `App::wrap_fn`: refuses every request once `stopped` is set.
pub(crate) fn refuse_when_stopped<S, B>(
    stopped: &StopFlag,
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    let refused = stopped.load(std::sync::atomic::Ordering::SeqCst);
    let answer = srv.call(req);
    async move {
        if refused {
            return Err(actix_web::error::ErrorServiceUnavailable(
                "simulator stopped",
            ));
        }
        answer.await
    }
}

impl ServerSlot {
    /// Spawns `server` on the current runtime and keeps its handle; `stopped` is the flag its
    /// app checks with [`refuse_when_stopped`].
    pub(crate) fn spawn(server: actix_web::dev::Server, stopped: StopFlag) -> ServerSlot {
        let handle = server.handle();
        tokio::spawn(server);
        ServerSlot {
            handle: Mutex::new(Some(handle)),
            stopped,
        }
    }

    /// Stops without waiting for in-flight requests (a hanging Graph answer must not delay it).
    pub(crate) async fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let handle = self.handle.lock().expect("server slot lock").take();
        if let Some(h) = handle {
            h.stop(false).await;
        }
    }
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.handle.lock() {
            if let Some(h) = g.take() {
                // The stop command is sent when `stop` is called; the future only waits.
                drop(h.stop(false));
            }
        }
    }
}
