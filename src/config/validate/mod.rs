//! Validation, one file per section: each turns its `Raw*` section into the section of
//! [`Config`], pushing every problem it finds (with the key and where its value came from)
//! instead of stopping at the first.

mod actions;
mod audit;
mod callers;
mod check;
mod entra;
mod graph;
mod hooks;
mod identities;
mod secret;
mod server;
mod state;
mod telemetry;

pub use audit::{valid_schema_name, MIN_HMAC_KEY_BYTES};
pub use check::{is_loopback_host, parse_service_url};
pub use hooks::{MAX_HOOK_BODY_BYTES, MAX_HOOK_SECRETS};
#[cfg(test)]
pub(crate) use state::machine_hostname;

use check::Check;

use super::error::ConfigError;
use super::load::Loaded;
use super::model::{ActionsConfig, Config};

/// Every section checked; a `Config` only when nothing is wrong.
pub(super) fn validate(loaded: Loaded) -> Result<Config, Vec<ConfigError>> {
    let Loaded {
        raw,
        origins,
        azure,
        hostname,
        unknown,
    } = loaded;
    let mut c = Check {
        errors: unknown,
        origins,
    };
    let server = c.server(raw.server);
    let limits = c.limits(raw.limits, server.as_ref().map(|s| s.max_connections));
    let entra = c.entra(raw.entra, &azure);
    let graph = c.graph(raw.graph, &entra);
    // Every table an app may name, valid or not: a broken identity is its own error.
    let identity_names: Vec<String> = raw.identities.keys().cloned().collect();
    let callers = c.callers(raw.callers, &identity_names);
    let sync_scope = graph
        .as_ref()
        .map(|g| g.scope(super::names::SYNC_PERMISSION));
    let state = c.state(raw.state, hostname, state::machine_hostname);
    let identities = c.identities(
        raw.identities,
        callers.as_ref().map(|c| c.allowed_tenants.as_slice()),
        sync_scope.as_deref(),
        state.as_ref().map(|s| s.backend),
    );
    let hooks = c.hooks(
        raw.hooks,
        &identity_names,
        &identities,
        callers.as_ref().map(|c| c.allowed_tenants.as_slice()),
    );
    let audit = c.audit(raw.audit);
    let sync = c.sync_action(raw.actions.sync);
    let telemetry = c.telemetry(raw.telemetry);

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    // Every `None` above pushed an error, so these unwraps cannot fail.
    Ok(Config {
        server: server.unwrap(),
        entra: entra.config.unwrap(),
        callers: callers.unwrap(),
        graph: graph.unwrap(),
        limits: limits.unwrap(),
        audit: audit.unwrap(),
        actions: ActionsConfig {
            sync: sync.unwrap(),
        },
        identities,
        hooks,
        telemetry: telemetry.unwrap(),
        state: state.unwrap(),
    })
}
