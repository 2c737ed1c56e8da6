//! `sync-gateway dev`: the whole flow on loopback in one command. Starts a simulated Entra ID
//! and a simulated Graph, a gateway configured against them, mints a caller token and prints
//! the `curl` line that triggers a sync.
//!
//! The configuration is written next to the audit file (`dev-gateway.toml`, with the client
//! secret and the session key in their own files), so `sync-gateway login --config
//! dev-gateway.toml --identity dev-bot` signs the service identity in against the simulated
//! Entra while `dev` runs, and an app-only caller can then trigger a sync as that identity.

use crate::sim::entra::TokenSpec;
use crate::sim::{SimOptions, Simulators};
use crate::{Application, Config};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
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

/// The service identity dev mode configures.
pub const DEV_IDENTITY: &str = "dev-bot";

/// The app-only caller (a ticketing webhook) that acts as [`DEV_IDENTITY`] in dev mode.
pub const DEV_WEBHOOK_APP: &str = "0d5e6f70-8192-4a3b-9c4d-5e6f708192a3";

/// The app role dev mode requires of app-only callers.
pub const DEV_APP_ROLE: &str = "Sync.Trigger.All";

/// Writes `contents` to `path` readable by the owner only (dev and benchmark secrets).
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_ref())
}

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
    // A person at the verification page should not wait 5 s per poll.
    sim_options.device_interval = Duration::from_secs(1);
    let sims = Simulators::start(sim_options).await?;

    let dir = opts
        .audit_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let files = DevFiles::new(&dir);
    // A session of an earlier run belongs to simulators that are gone.
    let _ = std::fs::remove_file(&files.session);
    write_private(&files.client_secret, &client_secret)?;
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| "no system randomness")?;
    use base64::Engine;
    write_private(
        &files.store_key,
        base64::engine::general_purpose::STANDARD.encode(key),
    )?;
    // The dev source's secret: fresh per run, like the client secret.
    let hook_secret = format!("dev-hook-{}", uuid::Uuid::new_v4().simple());
    write_private(&files.hook_secret, format!("{hook_secret}\n"))?;
    let toml_text = dev_config_toml(&opts, &sims, &tenant, &client_id, &files);
    write_private(&files.config, &toml_text)?;
    let config = Config::from_toml_and_env(&toml_text, Vec::new())?;
    // The service identity signs in against the simulated Entra before the gateway starts, as
    // an operator's `login` would, so the webhook examples work at once.
    let signed_in = sign_in_dev_identity(&config, &sims).await;
    crate::server::raise_open_file_limit(config.server.max_connections);
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
    let mut app_spec = TokenSpec::app(&tenant, DEV_WEBHOOK_APP);
    app_spec.roles = vec![DEV_APP_ROLE.to_string()];
    let app_token = sims.entra.mint(&app_spec);
    let delivery = github_example(&hook_secret);
    let identity_note = match &signed_in {
        Ok(account) => format!(
            "The service identity '{DEV_IDENTITY}' is signed in (as {account}, against the simulated Entra ID)."
        ),
        Err(e) => format!(
            "The service identity '{DEV_IDENTITY}' could not be signed in ({e}); sign it in (in another\nterminal; open the page it prints and approve the code):\n\n  cargo run --release -- login --config {} --identity {DEV_IDENTITY}",
            files.config.display()
        ),
    };
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

{identity_note}
Callers that are not users act as it:

A ticketing system with an app-only token (app {DEV_WEBHOOK_APP}):

  export APP_TOKEN={app_token}
  curl -i -H "Authorization: Bearer $APP_TOKEN" -X POST {gateway}/sync

A GitHub-style webhook delivery to the source 'dev-github', signed with its secret (in
{hook_secret_file}); sent twice, the second is answered as a duplicate:

  curl -i -X POST {gateway}/hooks/dev-github -H 'Content-Type: application/json' -H 'X-GitHub-Delivery: {delivery_id}' -H 'X-Hub-Signature-256: {signature}' --data '{body}'

Ctrl-C stops everything."#,
        entra = sims.entra.base_url(),
        graph = sims.graph.base_url(),
        audit = opts.audit_path.display(),
        cooldown = opts.cooldown.as_secs(),
        hook_secret_file = files.hook_secret.display(),
        delivery_id = delivery.id,
        signature = delivery.signature,
        body = delivery.body,
    );
    app.run_until_stopped().await?;
    drop(sims);
    Ok(())
}

/// Signs [`DEV_IDENTITY`] in with the device-code flow against the simulated Entra, whose
/// person at the browser approves at once; the account's UPN, or why it failed.
async fn sign_in_dev_identity(config: &Config, sims: &Simulators) -> Result<String, String> {
    use crate::credentials::login::{login, RealTime};
    use crate::sim::entra::{DeviceOutcome, DeviceScript, DeviceUser};
    const ACCOUNT: &str = "svc-autopilot@contoso.example";
    sims.entra.script_device_login(Some(DeviceScript {
        slow_downs: 0,
        pending_polls: 0,
        outcome: DeviceOutcome::Approve(DeviceUser::named(ACCOUNT)),
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    // What `login` prints is for a person at a terminal; here nobody needs to act.
    let mut printed = Vec::new();
    let outcome = login(config, DEV_IDENTITY, http, &mut RealTime, &mut printed).await;
    // Later `login` runs are answered as a person at the page would.
    sims.entra.script_device_login(None);
    outcome
        .map(|_| ACCOUNT.to_string())
        .map_err(|e| e.to_string())
}

/// A signed GitHub-style delivery for the dev source.
struct SignedDelivery {
    id: String,
    signature: String,
    body: &'static str,
}

/// A delivery as GitHub signs one: `sha256=` and the hex HMAC-SHA256 of the body.
fn github_example(secret: &str) -> SignedDelivery {
    let body = r#"{"action":"approved","sender":{"login":"octocat"}}"#;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body.as_bytes());
    SignedDelivery {
        id: uuid::Uuid::new_v4().to_string(),
        signature: format!("sha256={}", crate::domain::hex(tag.as_ref())),
        body,
    }
}

/// Where dev mode keeps its configuration and secrets.
struct DevFiles {
    config: PathBuf,
    hook_secret: PathBuf,
    client_secret: PathBuf,
    store_key: PathBuf,
    session: PathBuf,
}

impl DevFiles {
    fn new(dir: &Path) -> DevFiles {
        DevFiles {
            config: dir.join("dev-gateway.toml"),
            hook_secret: dir.join("dev-hook-secret"),
            client_secret: dir.join("dev-client-secret"),
            store_key: dir.join("dev-session.key"),
            session: dir.join(format!("{DEV_IDENTITY}.session")),
        }
    }
}

fn dev_config_toml(
    opts: &DevOptions,
    sims: &Simulators,
    tenant: &str,
    client_id: &str,
    files: &DevFiles,
) -> String {
    format!(
        r#"# Written by `sync-gateway dev`; valid while it runs (the simulators are in its process).
[server]
listen = "{listen}"
expose_openapi = true
[entra]
authority_host = "{entra}"
tenant_id = "{tenant}"
client_id = "{client_id}"
client_secret_file = {secret}
[callers]
audiences = ["{client_id}", "{DEV_APP_ID_URI}"]
allowed_tenants = ["{tenant}"]
required_scope = "Sync.Trigger"
required_app_role = "{DEV_APP_ROLE}"
[callers.apps."{DEV_WEBHOOK_APP}"]
run_as = "{DEV_IDENTITY}"
[graph]
base_url = "{graph}"
timeout_seconds = 10
[audit]
path = {audit}
[actions.sync]
cooldown_seconds = {cooldown}
[identities.{DEV_IDENTITY}]
tenant_id = "{tenant}"
store_path = {session}
store_key_file = {key}
[hooks.dev-github]
kind = "github"
secrets_file = {hook_secret}
run_as = "{DEV_IDENTITY}"
"#,
        listen = opts.listen,
        entra = sims.entra.base_url(),
        graph = sims.graph.base_url(),
        audit = toml_string(&opts.audit_path),
        cooldown = opts.cooldown.as_secs(),
        secret = toml_string(&files.client_secret),
        session = toml_string(&files.session),
        key = toml_string(&files.store_key),
        hook_secret = toml_string(&files.hook_secret),
    )
}

fn toml_string(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}
