//! `sync-gateway dev`: the whole flow on loopback in one command. Starts a simulated Entra ID
//! and a simulated Graph, a gateway configured against them, mints a caller token and prints
//! the `curl` line that triggers a sync.

use crate::sim::entra::TokenSpec;
use crate::sim::{SimOptions, Simulators};
use crate::{Application, Config};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// What `dev` needs from the command line.
pub struct DevOptions {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// The audit file.
    pub audit_path: std::path::PathBuf,
    /// The simulated Graph's "one sync per N" rule and the gateway's cooldown (Intune: 600 s;
    /// shorter in dev so a newcomer sees a scheduled run go out).
    pub cooldown: Duration,
}

/// The gateway's App ID URI in dev mode (its second accepted audience).
pub const DEV_APP_ID_URI: &str = "api://sync-gateway-dev";

/// Runs dev mode until interrupted.
pub async fn run(opts: DevOptions) -> Result<(), Box<dyn std::error::Error>> {
    let tenant = uuid::Uuid::new_v4().to_string();
    let client_id = uuid::Uuid::new_v4().to_string();
    // A fresh secret per run: it only ever exists in this process.
    let client_secret = format!("dev-{}", uuid::Uuid::new_v4().simple());
    let mut sim_options = SimOptions::new(
        vec![tenant.clone()],
        client_id.clone(),
        client_secret.clone(),
        vec![client_id.clone(), DEV_APP_ID_URI.to_string()],
    );
    sim_options.graph_cooldown = opts.cooldown;
    let sims = Simulators::start(sim_options).await?;

    let config = Config::from_toml_and_env(
        &dev_config_toml(&opts, &sims, &tenant, &client_id),
        [(
            "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".to_string(),
            client_secret,
        )],
    )?;
    let app = Application::build(config).await?;
    let port = app.port();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.keys_ready() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let user = uuid::Uuid::new_v4().to_string();
    let mut spec = TokenSpec::user(&tenant, &user);
    spec.upn = Some("dev.user@contoso.example".into());
    let token = sims.entra.mint(&spec);
    let gateway = format!("http://{}:{port}", opts.listen.ip());
    println!(
        r#"sync-gateway dev: a simulated Entra ID, a simulated Graph and the gateway, all on loopback.

  gateway            {gateway}
  simulated Entra ID {entra}   (tenant {tenant})
  simulated Graph    {graph}
  audit trail        {audit}

A caller token for dev.user@contoso.example (scope Sync.Trigger, valid 60 minutes):

  export TOKEN={token}

Trigger a sync through the gateway:

  curl -i -X POST {gateway}/sync -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{{"reason":"trying sync-gateway"}}'

Graph allows one sync per {cooldown} s here (Intune: 600 s). Send it again within that time and the
answer is `scheduled` with a `not_before`; follow the run it names until it has `succeeded`:

  curl -s {gateway}/sync/runs/<id from the answer> -H "Authorization: Bearer $TOKEN"
  curl -s {gateway}/sync/status -H "Authorization: Bearer $TOKEN"

Mint another caller token:

  curl -s -X POST {entra}/_sim/tokens -H 'Content-Type: application/json' -d '{{"tenant_id":"{tenant}","object_id":"{user}"}}'

Ctrl-C stops everything."#,
        entra = sims.entra.base_url(),
        graph = sims.graph.base_url(),
        audit = opts.audit_path.display(),
        cooldown = opts.cooldown.as_secs(),
    );
    app.run_until_stopped().await?;
    drop(sims);
    Ok(())
}

fn dev_config_toml(opts: &DevOptions, sims: &Simulators, tenant: &str, client_id: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
[entra]
authority_host = "{entra}"
tenant_id = "{tenant}"
client_id = "{client_id}"
[callers]
audiences = ["{client_id}", "{DEV_APP_ID_URI}"]
allowed_tenants = ["{tenant}"]
required_scope = "Sync.Trigger"
[graph]
base_url = "{graph}"
timeout_seconds = 10
[audit]
path = {audit}
[actions.sync]
cooldown_seconds = {cooldown}
"#,
        listen = opts.listen,
        entra = sims.entra.base_url(),
        graph = sims.graph.base_url(),
        audit = toml_string(&opts.audit_path),
        cooldown = opts.cooldown.as_secs(),
    )
}

fn toml_string(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}
