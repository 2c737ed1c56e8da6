//! Test doubles of Microsoft Entra ID and Microsoft Graph.
//!
//! They follow the documented protocols (discovery, JWKS, the on-behalf-of token request and
//! its error bodies; the Windows Autopilot sync action and its cooldown) closely enough that a
//! gateway which behaves correctly against them behaves correctly against the real services.
//! Used by the `dev` subcommand and by black-box tests; never started by `serve`.

pub mod entra;
pub mod graph;
pub mod hooks;
mod keys;
mod options;
mod server;

pub use options::{AppConsent, SimOptions, PERMISSION_READ, PERMISSION_READ_WRITE};

use std::net::TcpListener;
use std::sync::Arc;

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
