//! The one helper that spawns the whole system (zero2prod's `spawn_app`), and the assertions
//! the specifications share.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use sync_gateway::audit::AuditSink;
use sync_gateway::clock::{Clock, ManualClock};
use sync_gateway::server::BuildOptions;
use sync_gateway::sim::entra::TokenSpec;
use sync_gateway::sim::graph::{GraphMode, GraphResponse};
use sync_gateway::sim::{SimOptions, Simulators};
use sync_gateway::{Application, Config};

/// Everything the process logged during the suite, for the secret scan.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = LogSink(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "sync_gateway=trace,actix_web=debug,reqwest=debug,info",
            ))
            .with_writer(move || sink.clone())
            .json()
            .try_init();
        buf
    })
    .clone()
}

/// The whole system under test.
pub struct TestApp {
    /// `http://127.0.0.1:PORT` of the gateway.
    pub address: String,
    /// The simulated Entra ID and Graph.
    pub sims: Simulators,
    /// The allowed tenant.
    pub tenant: String,
    /// A second allowed tenant.
    pub tenant2: String,
    /// A tenant the simulated Entra knows but the gateway does not allow.
    pub foreign_tenant: String,
    /// The audit file.
    pub audit_path: PathBuf,
    /// A client for talking to the gateway.
    pub http: reqwest::Client,
    /// The gateway's validated configuration (for `login` and restarts).
    pub config: Config,
    /// A temporary directory that lives as long as the app (certificates, session stores).
    pub dir: PathBuf,
    /// The gateway's own audit handle.
    pub audit: sync_gateway::audit::AuditLog,
    /// The simulators and ids, to start another gateway in the same world.
    pub world: World,
    /// The clock the scheduler and the simulated Graph share, when the test runs in virtual
    /// time ([`Setup::in_virtual_time`]); see [`TestApp::clock`].
    pub manual_clock: Option<Arc<ManualClock>>,
    /// The gateway's OTLP exporter: `Some` only when `telemetry.otlp_endpoint` is set.
    pub otel: Option<Arc<sync_gateway::otel::Otel>>,
    handle: actix_web::dev::ServerHandle,
    running: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// What a [`Setup::prepare`] hook sees before the gateway starts.
pub struct Prepare<'a> {
    /// The running simulators (register certificates, mint federated tokens, ...).
    pub sims: &'a Simulators,
    /// The app's temporary directory, for files the configuration points at.
    pub dir: &'a Path,
    /// The allowed tenant.
    pub tenant: &'a str,
    /// The second tenant the simulated Entra knows.
    pub foreign_tenant: &'a str,
}

/// Prepares files and simulators before the gateway starts; returns configuration entries
/// (dotted key, TOML value text) to set.
pub type PrepareHook = Box<dyn FnOnce(&Prepare<'_>) -> Vec<(String, String)> + Send>;

/// Adjusts the simulators' options before they start.
pub type SimHook = Box<dyn FnOnce(&mut SimOptions) + Send>;

/// Knobs a test may turn before the system starts.
pub struct Setup {
    /// Extra configuration: dotted key → TOML value text, e.g. `("limits.per_caller", "{ per_minute = 1, burst = 1 }")`.
    pub config: Vec<(String, String)>,
    /// The client secret the gateway is configured with (default: the one Entra knows).
    pub gateway_secret: Option<String>,
    /// Stop the simulated Entra before the gateway starts.
    pub entra_down_at_start: bool,
    /// The audit path (default: a file in a fresh temporary directory).
    pub audit_path: Option<PathBuf>,
    /// Graph's mode (default: always accept, so tests are not bound by the 10-minute rule).
    pub graph_mode: GraphMode,
    /// Intune's rule for real: Graph in its normal mode with this cooldown, and the gateway
    /// configured with the same (default: none; the gateway's cooldown is 0).
    pub intune_cooldown: Option<Duration>,
    /// Lifetime of the Graph tokens the simulated Entra issues (default one hour).
    pub graph_token_lifetime: Option<Duration>,
    /// Configure no client secret (the test configures a certificate or a federated token).
    pub omit_client_secret: bool,
    /// More environment for the configuration (e.g. `AZURE_*`).
    pub env: Vec<(String, String)>,
    /// Runs once the simulators are up, before the gateway is configured.
    pub prepare: Option<PrepareHook>,
    /// Options of the simulators beyond the tenants and the app registration.
    pub sim: Option<SimHook>,
    /// The audit trail cannot be written from the start, so the gateway never becomes ready:
    /// wait only for the signing keys.
    pub audit_broken_at_start: bool,
    /// The state backend (Redis) cannot be reached from the start, so `/readyz` may never
    /// answer 200: wait only for the signing keys.
    pub state_unreachable_at_start: bool,
    /// Replaces the durable audit sink (a failing or hanging one).
    pub audit_sink: Option<Box<dyn AuditSink>>,
    /// Reuse these simulators and ids instead of starting new ones (a restart on one trail).
    pub world: Option<World>,
    /// Run the scheduler and the simulated Graph's cooldown on this clock, which stands still
    /// until the test advances it (default: the real clock). Ignored with `world`, which
    /// brings its own.
    pub clock: Option<Arc<ManualClock>>,
}

/// The simulators and the ids the gateway is configured with.
#[derive(Clone)]
pub struct World {
    /// Entra and Graph.
    pub sims: Simulators,
    /// The allowed tenant.
    pub tenant: String,
    /// A second allowed tenant.
    pub tenant2: String,
    /// A tenant the simulated Entra knows but the gateway does not allow.
    pub foreign_tenant: String,
    /// The gateway's client id.
    pub client_id: String,
    /// The gateway's client secret.
    pub secret: String,
    /// The manual clock the simulated Graph runs on, if not the real one.
    pub clock: Option<Arc<ManualClock>>,
}

/// Starts both simulators with fresh tenants and a fresh gateway registration.
pub async fn start_world() -> World {
    start_world_with(|_| {}).await
}

/// [`start_world`], with the simulators' options adjusted by `tune` first.
pub async fn start_world_with(tune: impl FnOnce(&mut SimOptions)) -> World {
    let tenant = uuid::Uuid::new_v4().to_string();
    let tenant2 = uuid::Uuid::new_v4().to_string();
    let foreign_tenant = uuid::Uuid::new_v4().to_string();
    let client_id = uuid::Uuid::new_v4().to_string();
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4().simple());
    let mut options = SimOptions::new(
        vec![tenant.clone(), tenant2.clone(), foreign_tenant.clone()],
        client_id.clone(),
        secret.clone(),
        vec![client_id.clone(), APP_ID_URI.to_string()],
    );
    tune(&mut options);
    let sims = Simulators::start(options).await.expect("simulators start");
    let clock = None;
    World {
        sims,
        tenant,
        tenant2,
        foreign_tenant,
        client_id,
        secret,
        clock,
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            config: Vec::new(),
            gateway_secret: None,
            entra_down_at_start: false,
            audit_path: None,
            graph_mode: GraphMode::Always(GraphResponse::Accept),
            intune_cooldown: None,
            graph_token_lifetime: None,
            omit_client_secret: false,
            env: Vec::new(),
            prepare: None,
            sim: None,
            audit_broken_at_start: false,
            state_unreachable_at_start: false,
            audit_sink: None,
            world: None,
            clock: None,
        }
    }
}

impl Setup {
    /// Sets a configuration key.
    pub fn set(mut self, key: &str, toml_value: &str) -> Self {
        self.config.push((key.into(), toml_value.into()));
        self
    }

    /// Intune's cooldown rule enforced by Graph and respected by the gateway.
    pub fn intune(cooldown_secs: u64) -> Self {
        Setup {
            graph_mode: GraphMode::Normal,
            intune_cooldown: Some(Duration::from_secs(cooldown_secs)),
            ..Setup::default()
        }
        .set("actions.sync.cooldown_seconds", &cooldown_secs.to_string())
    }

    /// Runs the scheduler and the simulated Graph's cooldown on a [`ManualClock`] that stands
    /// still until the test calls `app.clock().advance(..)`: timelines without real sleeps,
    /// and exact instants to assert. Network timeouts and token lifetimes stay real.
    pub fn in_virtual_time(mut self) -> Self {
        self.clock = Some(Arc::new(ManualClock::new()));
        self
    }
}

/// The audience every test token is for.
pub const APP_ID_URI: &str = "api://sync-gateway-test";

/// Spawns the gateway and both simulators with the defaults.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Setup::default()).await
}

/// Spawns the gateway and both simulators, configured by `setup`, and waits until it is ready
/// (unless Entra is down at start, when it cannot be).
pub async fn spawn_app_with(mut setup: Setup) -> TestApp {
    capture_logs();
    let world = match setup.world.take() {
        Some(w) => w,
        None => {
            let (cooldown, lifetime, sim, clock) = (
                setup.intune_cooldown,
                setup.graph_token_lifetime,
                setup.sim.take(),
                setup.clock.take(),
            );
            let sim_clock = clock.clone();
            let mut world = start_world_with(move |options| {
                if let Some(c) = sim_clock {
                    options.clock = c as Arc<dyn Clock>;
                }
                if let Some(c) = cooldown {
                    options.graph_cooldown = c;
                }
                if let Some(l) = lifetime {
                    options.graph_token_lifetime = l;
                }
                if let Some(tune) = sim {
                    tune(options);
                }
            })
            .await;
            world.clock = clock;
            world
        }
    };
    let World {
        sims,
        tenant,
        tenant2,
        foreign_tenant,
        secret,
        ..
    } = world.clone();
    sims.graph.set_mode(setup.graph_mode.clone());
    if setup.entra_down_at_start {
        sims.entra.stop().await;
    }

    let dir = tempfile::tempdir().unwrap();
    let audit_path = setup
        .audit_path
        .clone()
        .unwrap_or_else(|| dir.path().join("audit.jsonl"));
    let mut entries = setup.config.clone();
    if let Some(prepare) = setup.prepare.take() {
        entries.extend(prepare(&Prepare {
            sims: &sims,
            dir: dir.path(),
            tenant: &tenant,
            foreign_tenant: &foreign_tenant,
        }));
    }
    let mut env = setup.env.clone();
    if !setup.omit_client_secret {
        env.push((
            "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".to_string(),
            setup.gateway_secret.clone().unwrap_or(secret),
        ));
    }
    let config = Config::from_toml_and_env(&config_toml(&world, &audit_path, &entries), env)
        .expect("valid test configuration");
    // The file this gateway writes: on the redis backend, its replica's own beside `audit.path`.
    let audit_path =
        sync_gateway::audit::trail_path(&config.audit, &config.state).unwrap_or(audit_path);
    let (address, handle, audit, running, otel) =
        start_gateway(config.clone(), setup.audit_sink.take(), world.clock.clone()).await;
    let test_app = TestApp {
        address,
        sims,
        tenant,
        tenant2,
        foreign_tenant,
        audit_path,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        config,
        dir: dir.path().to_path_buf(),
        audit,
        manual_clock: world.clock.clone(),
        world,
        otel,
        handle,
        running: Some(running),
        _dir: dir,
    };
    if setup.audit_broken_at_start || setup.state_unreachable_at_start {
        test_app.wait_until_keys_loaded().await;
    } else if !setup.entra_down_at_start {
        test_app.wait_until_ready().await;
    }
    test_app
}

type Started = (
    String,
    actix_web::dev::ServerHandle,
    sync_gateway::audit::AuditLog,
    tokio::task::JoinHandle<std::io::Result<()>>,
    Option<Arc<sync_gateway::otel::Otel>>,
);

async fn start_gateway(
    config: Config,
    audit_sink: Option<Box<dyn AuditSink>>,
    clock: Option<Arc<ManualClock>>,
) -> Started {
    let clock = clock.map(|c| c as Arc<dyn Clock>);
    let app = Application::build_with(config, BuildOptions { audit_sink, clock })
        .await
        .expect("gateway builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let audit = app.audit();
    let otel = app.otel();
    (
        address,
        handle,
        audit,
        tokio::spawn(app.run_until_stopped()),
        otel,
    )
}

/// The gateway configuration the tests use, against `world`, with `extra` keys set
/// (dotted key → TOML value text).
pub fn config_toml(
    world: &World,
    audit_path: &std::path::Path,
    extra: &[(String, String)],
) -> String {
    let World {
        sims,
        tenant,
        tenant2,
        client_id,
        ..
    } = world;
    let mut table: toml::Table = toml::from_str(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 2
[entra]
authority_host = "{entra}"
tenant_id = "{tenant}"
client_id = "{client_id}"
timeout_seconds = 2
[callers]
audiences = ["{client_id}", "{APP_ID_URI}"]
allowed_tenants = ["{tenant}", "{tenant2}"]
required_scope = "Sync.Trigger"
[graph]
base_url = "{graph}"
timeout_seconds = 2
[limits]
per_caller = {{ per_minute = 6000, burst = 1000 }}
per_tenant = {{ per_minute = 6000, burst = 1000 }}
# Tests send up to 50 concurrent requests with one token.
max_in_flight_per_caller = 64
[audit]
path = {audit}
[actions.sync]
cooldown_seconds = 0
retry_base_ms = 20
max_attempts = 3
status_poll_ms = 100
"#,
        entra = sims.entra.base_url(),
        graph = sims.graph.base_url(),
        audit = toml::Value::String(audit_path.display().to_string()),
    ))
    .unwrap();
    for (key, value) in extra {
        let v: toml::Table = toml::from_str(&format!("v = {value}")).expect("a TOML value");
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap();
        let mut t = &mut table;
        for p in parts {
            t = t
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .unwrap();
        }
        t.insert(last.to_string(), v["v"].clone());
    }
    toml::to_string(&table).unwrap()
}

impl TestApp {
    /// Stops the gateway as SIGTERM would and waits until its shutdown work is done (runs
    /// abandoned, the stop recorded).
    pub async fn stop(&mut self) {
        self.handle.stop(true).await;
        if let Some(r) = self.running.take() {
            r.await.expect("the server task").expect("the server ran");
        }
    }

    /// Stops the gateway and starts a new one with the same configuration, simulators and
    /// audit file: a process restart; waits until it is ready.
    pub async fn restart(&mut self) {
        self.stop().await;
        // The same clock: a restart does not turn back virtual time.
        let (address, handle, audit, running, otel) =
            start_gateway(self.config.clone(), None, self.manual_clock.clone()).await;
        self.otel = otel;
        self.address = address;
        self.handle = handle;
        self.audit = audit;
        self.running = Some(running);
        self.wait_until_ready().await;
    }

    /// The manual clock of a test in virtual time; panics if the test runs in real time.
    pub fn clock(&self) -> &ManualClock {
        self.manual_clock
            .as_deref()
            .expect("a test in virtual time (Setup::in_virtual_time)")
    }

    /// The trail's files: rotated ones and the active one (when it is a regular file).
    pub fn audit_files(&self) -> Vec<PathBuf> {
        trail_files(&self.audit_path)
    }

    /// `GET path` on the gateway.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("gateway answers")
    }

    /// `GET path` on the gateway as the caller holding `token`.
    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("gateway answers")
    }

    /// The value of metric line `name` (`sync_gateway_...` with labels) in `/metrics`, or 0.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls `/readyz` until it reports the signing keys loaded (or panics after 10 s).
    pub async fn wait_until_keys_loaded(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body: Value = self.get("/readyz").await.json().await.unwrap();
            if body["checks"]["signing_keys"] == true {
                return;
            }
            assert!(Instant::now() < deadline, "keys not loaded within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /sync/runs/{id}`, polled until its `outcome_record` is `want` (or panics after
    /// 10 s): a run's outcome reaches the trail after its callers may have had their answer.
    pub async fn wait_for_outcome_record(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let run: Value = self
                .get_as(&format!("/sync/runs/{id}"), &self.token())
                .await
                .json()
                .await
                .unwrap();
            if run["outcome_record"] == want {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "outcome_record never became {want}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/readyz` until 200 (or panics after 10 s).
    pub async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.address))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "gateway not ready within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A fresh user of the allowed tenant.
    pub fn user(&self) -> TokenSpec {
        TokenSpec::user(&self.tenant, uuid::Uuid::new_v4().to_string())
    }

    /// A valid caller token for a fresh user.
    pub fn token(&self) -> String {
        self.sims.entra.mint(&self.user())
    }

    /// The claims of a valid token for a fresh user, to be altered and signed by a test.
    pub fn claims(&self) -> Value {
        self.sims.entra.claims_for(&self.user())
    }

    /// `POST /sync` with `token` and no body.
    pub async fn post_sync(&self, token: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/sync", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("gateway answers")
    }

    /// `n` concurrent `POST /sync` with `token`; their statuses.
    pub async fn post_sync_concurrently(&self, token: &str, n: usize) -> Vec<u16> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (http, url, token) = (
                self.http.clone(),
                format!("{}/sync", self.address),
                token.to_string(),
            );
            set.spawn(async move {
                let resp = http.post(url).bearer_auth(token).send().await;
                resp.expect("gateway answers").status().as_u16()
            });
        }
        set.join_all().await
    }

    /// `POST /sync` with `token` and a JSON body.
    pub async fn post_sync_json(&self, token: &str, body: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/sync", self.address))
            .bearer_auth(token)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("gateway answers")
    }

    /// Every audit record so far.
    pub fn audit_records(&self) -> Vec<Value> {
        let text = self.audit_text();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
            .collect()
    }

    /// The `event` record of run `id` in the audit file, polled until it is there (or panics
    /// after 10 s): a run's outcome reaches the trail after its callers may have had their
    /// answer. Reads the file only, so the trail gains no record by the waiting.
    pub async fn wait_for_run_record(&self, id: &str, event: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .audit_of_kind("run")
                .into_iter()
                .find(|r| r["run_id"] == id && r["event"] == event);
            if let Some(record) = found {
                return record;
            }
            assert!(Instant::now() < deadline, "no {event} record of run {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The audit records of `kind` (`request`, `run`).
    pub fn audit_of_kind(&self, kind: &str) -> Vec<Value> {
        self.audit_records()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    /// The one request record, asserting there is exactly one.
    pub fn only_request_record(&self) -> Value {
        let records = self.audit_of_kind("request");
        assert_eq!(records.len(), 1, "request records: {records:#?}");
        records.into_iter().next().unwrap()
    }

    /// The audit file's text; empty for a device such as /dev/full (reading it never ends).
    pub fn audit_text(&self) -> String {
        match std::fs::metadata(&self.audit_path) {
            Ok(m) if m.is_file() => std::fs::read_to_string(&self.audit_path).unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// Fails if any token or secret the simulators know appears in the logs or the audit trail.
    pub fn assert_no_secret_leaked(&self) {
        let logs = String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned();
        let audit = self.audit_text();
        for secret in self.sims.entra.issued_secrets() {
            let mut needles = vec![secret.clone()];
            // A JWT's signature alone is enough to identify (and, with the rest, replay) it.
            if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() >= 32) {
                needles.push(sig.to_string());
            }
            for n in needles {
                assert!(!logs.contains(&n), "a secret appears in the logs");
                assert!(!audit.contains(&n), "a secret appears in the audit trail");
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Every test doubles as a leak check: nothing it made the gateway see may be logged.
        if !std::thread::panicking() {
            self.assert_no_secret_leaked();
            let files = self.audit_files();
            if !files.is_empty() {
                assert_trail_valid(&files, &[]);
            }
        }
        let handle = self.handle.clone();
        drop(handle.stop(false));
    }
}

/// Everything logged so far by every test of this binary (tests run in parallel: assert on
/// text unique to the test, such as a path in its own temporary directory).
pub fn logs() -> String {
    String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned()
}

/// The JSON body of an answer, asserting it is `application/problem+json` when `problem`.
pub async fn problem_of(resp: reqwest::Response) -> Value {
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(ct, "application/problem+json", "content type");
    resp.json().await.expect("a JSON problem")
}

/// The value of header `name`, or "" when absent.
pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A fresh self-signed RSA-2048 certificate and its PKCS#8 private key, both PEM.
pub fn test_certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let cert = rcgen::CertificateParams::new(vec!["sync-gateway.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The problem `type` for `kind`.
pub fn problem_type(kind: &str) -> String {
    format!("urn:sync-gateway:problem:{kind}")
}

/// The trail files of the active file `active`: rotated ones, then `active` itself, when
/// they are regular files.
pub fn trail_files(active: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = sync_gateway::audit::rotated_files(active)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if std::fs::metadata(active)
        .map(|m| m.is_file())
        .unwrap_or(false)
    {
        files.push(active.to_path_buf());
    }
    files
}

/// The JSON Schema of audit records (`docs/audit.schema.json`), compiled once.
pub fn audit_schema() -> &'static jsonschema::Validator {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/audit.schema.json"
        ))
        .expect("the schema file");
        let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the schema compiles")
    })
}

/// Fails unless `record` validates against the audit schema.
pub fn assert_schema_valid(record: &Value) {
    let errors: Vec<String> = audit_schema()
        .iter_errors(record)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{record} does not match the schema: {errors:?}"
    );
}

/// Fails unless every complete record in `files` validates against the schema and the chain
/// verifies (a torn last line is allowed: it was never acknowledged).
pub fn assert_trail_valid(files: &[PathBuf], keys: &[sync_gateway::audit::CheckpointVerifier]) {
    for f in files {
        let text = std::fs::read(f).expect("a trail file");
        for line in text.split_inclusive(|b| *b == b'\n') {
            if line.last() != Some(&b'\n') {
                continue; // a torn tail
            }
            let v: Value = serde_json::from_slice(&line[..line.len() - 1]).expect("a JSON record");
            assert_schema_valid(&v);
        }
    }
    let report = sync_gateway::audit::verify::verify_files(
        files,
        &sync_gateway::audit::verify::VerifyOptions {
            keys: keys.to_vec(),
        },
    )
    .expect("the trail is readable");
    assert!(report.intact(), "{}", report.render());
}
