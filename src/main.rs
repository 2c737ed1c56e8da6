//! The `sync-gateway` command line: `serve`, `dev`, `check-config`, `login`, `audit`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use sync_gateway::credentials::login::{login, RealTime};
use sync_gateway::telemetry::{self, LogFormat};
use sync_gateway::{Application, Config};

// mimalloc instead of the system allocator: a proxied request makes a few dozen small
// allocations, and glibc's malloc/free/realloc were about a fifth of its instructions (13% fewer
// instructions per request with mimalloc). It costs memory: idle RSS 10.8 -> 21.9 MB, 61.9 ->
// 80.4 MB at 100,000 callers, both within the targets (bench/README.md has the measurements).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sync-gateway",
    version,
    about = "A gateway in front of Microsoft Graph's Windows Autopilot sync action"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve against the configured Entra ID and Graph.
    Serve {
        /// The TOML configuration file (keys overridable as SYNC_GATEWAY__SECTION__KEY).
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a simulated Entra ID, a simulated Graph and the gateway on loopback, and print a
    /// ready caller token with the curl line that triggers a sync.
    #[cfg(feature = "sim")]
    Dev {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The audit file.
        #[arg(long, default_value = "dev-audit.jsonl")]
        audit_path: PathBuf,
        /// Graph's (simulated) one-sync-per-N-seconds rule, and the gateway's cooldown.
        #[arg(long, default_value_t = 30)]
        cooldown_seconds: u64,
    },
    /// Validate the configuration and print it with secrets masked; exit 1 if invalid.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Sign a service identity in with the device-code flow and store its session encrypted
    /// (prints a URL and a code to enter in a browser, as `az login --use-device-code` does).
    Login {
        /// The TOML configuration file (the gateway's: its client credential is used).
        #[arg(long)]
        config: PathBuf,
        /// The identity to sign in: the NAME of `[identities.NAME]`.
        #[arg(long)]
        identity: String,
    },
    /// Work with the audit trail: verify it, compute a searchable hash, make a signing key, print
    /// its schema.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain and the checkpoint signatures; report the first broken link (file and
    /// line), missing files, a torn last line and runs without a finish. Several chains (one per
    /// replica: audit.<replica>.jsonl files, or PostgreSQL streams) are each checked on their
    /// own, with one result line per chain. Exit 0 when every chain is intact, 1 when one is
    /// not, 2 when the trail cannot be read.
    Verify {
        /// The trail's files, in any order (e.g. audit*.jsonl*), or a directory: every *.jsonl
        /// file in it and their rotated files.
        #[arg(required_unless_present = "postgres_url")]
        paths: Vec<PathBuf>,
        /// A public key (PEM) of the checkpoint signer; repeat for rotated keys.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
        /// Verify the PostgreSQL sink instead of files.
        #[arg(
            long,
            env = "SYNC_GATEWAY__AUDIT__POSTGRES_URL",
            hide_env_values = true
        )]
        postgres_url: Option<String>,
        /// The schema of the PostgreSQL sink.
        #[arg(long, default_value = "sync_gateway_audit")]
        postgres_schema: String,
        /// Verify only this PostgreSQL stream (a replica id; "" for a single gateway's chain)
        /// instead of every stream in the table.
        #[arg(long, requires = "postgres_url")]
        postgres_stream: Option<String>,
    },
    /// Print the value a sensitive field (client IP, UPN, reason) has in the trail when
    /// audit hashing is on, to search for it.
    Hash {
        /// The value as it would be recorded in clear.
        value: String,
        /// The HMAC key file (else SYNC_GATEWAY__AUDIT__HMAC_KEY, else --config's audit.hmac_key_file).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// A configuration file whose audit.hmac_key_file to use.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create an Ed25519 key for checkpoints: the private key goes to OUT (mode 0600), the
    /// public key to OUT.pub and stdout.
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the JSON Schema of an audit line, generated from the record types; this is what
    /// docs/audit.schema.json holds (a test checks that the committed file matches).
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config).and_then(|c| {
            // The files the configuration names, loaded as `serve` loads them at start.
            sync_gateway::preflight::check(&c).map(|p| (c, p))
        }) {
            Ok((c, checked)) => {
                println!("# configuration is valid; effective values (secrets masked):");
                println!("# client authentication: {}", checked.client_auth);
                println!(
                    "# replica id: {} ({}); {}",
                    c.state.replica_id,
                    c.state.replica_id_source,
                    audit_chain_of(&c)
                );
                for note in &checked.notes {
                    println!("# note: {note}");
                }
                match &c.telemetry.otlp {
                    Some(o) => println!(
                        "# telemetry: spans exported over OTLP/HTTP (protobuf) to {}, service.name {}, each export within {} s",
                        o.traces_url, o.service_name, o.timeout_seconds
                    ),
                    None => println!("# telemetry: no OTLP export (telemetry.otlp_endpoint is not set)"),
                }
                for filled in &c.entra.filled_from_environment {
                    println!("# {filled}");
                }
                for (name, id) in &c.identities {
                    match id.delegated() {
                        Some(session) => println!(
                            "# service identity {name} (delegated): session in {}, key from {}",
                            match c.state.backend {
                                sync_gateway::config::StateBackendKind::Memory => session
                                    .store_path
                                    .as_deref()
                                    .map_or_else(String::new, |p| p.display().to_string()),
                                sync_gateway::config::StateBackendKind::Redis => format!(
                                    "Redis (key {}session:{{{name}}}, shared by the replicas)",
                                    c.state.key_prefix
                                ),
                            },
                            session.store_key_source
                        ),
                        None => println!(
                            "# service identity {name} (application): the gateway's own application ({}) in tenant {}, \
                             client-credentials grant for {}/.default with the client credential above; \
                             needs the application permission {} with admin consent in that tenant; no session, no login",
                            c.entra.client_id,
                            id.tenant_id.as_str(),
                            c.graph.resource(),
                            sync_gateway::config::SYNC_PERMISSION
                        ),
                    }
                }
                for (name, h) in &c.hooks {
                    // The count and where they came from, never the secrets: enough to see a
                    // rotation in progress (two) or a file that was not mounted.
                    let proof = match h.public_key {
                        Some(_) => "Ed25519 public key, no secrets".to_string(),
                        None => format!(
                            "{} secret{} from {}",
                            h.secrets.len(),
                            if h.secrets.len() == 1 { "" } else { "s" },
                            h.secrets_source
                        ),
                    };
                    println!(
                        "# hook source {name}: kind {}, runs as {} in tenant {}, {proof}",
                        h.kind.as_str(),
                        h.run_as,
                        h.tenant_id
                    );
                }
                match &c.state.redis_url {
                    // The URL with its password masked, and where it came from.
                    Some(url) => println!(
                        "# state: redis at {} (from {}), keys under {:?}, {} ms per call, limits fail {} when it is unreachable, run schedules and delivery ids fail closed, joiners' credentials sealed with the key from {}",
                        url.redacted(),
                        url.source,
                        c.state.key_prefix,
                        c.state.timeout_ms,
                        match c.state.on_unavailable.limits {
                            sync_gateway::config::FailMode::Closed => "closed",
                            sync_gateway::config::FailMode::Open => "open",
                        },
                        c.state
                            .encryption_key
                            .as_ref()
                            .map_or("nowhere", |(_, source)| source.as_str())
                    ),
                    None => println!("# state: memory (this process only; one replica)"),
                }
                print!("{}", c.to_masked_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            let Some(config) = load(&config) else {
                return ExitCode::FAILURE;
            };
            telemetry::init(LogFormat::Json);
            sync_gateway::server::raise_open_file_limit(config.server.max_connections);
            run(async move {
                let app = Application::build(config).await?;
                tracing::info!(port = app.port(), "sync-gateway serving");
                app.run_until_stopped().await?;
                tracing::info!(
                    "sync-gateway stopped: in-flight requests answered, the audit trail flushed"
                );
                Ok(())
            })
        }
        Command::Login { config, identity } => {
            let Some(config) = load(&config) else {
                return ExitCode::FAILURE;
            };
            telemetry::init(LogFormat::Text);
            run(async move {
                let http = reqwest::Client::builder()
                    .timeout(config.entra_timeout())
                    .connect_timeout(config.entra_timeout())
                    .build()?;
                let mut stdout = std::io::stdout();
                login(&config, &identity, http, &mut RealTime, &mut stdout).await?;
                Ok(())
            })
        }
        Command::Audit(cmd) => audit_command(cmd),
        #[cfg(feature = "sim")]
        Command::Dev {
            listen,
            audit_path,
            cooldown_seconds,
        } => {
            telemetry::init(LogFormat::Text);
            run(sync_gateway::dev::run(sync_gateway::dev::DevOptions {
                listen,
                audit_path,
                cooldown: std::time::Duration::from_secs(cooldown_seconds),
            }))
        }
    }
}

/// The configuration at `path`, or `None` after printing every problem.
fn load(path: &std::path::Path) -> Option<Config> {
    Config::load(path).map_err(|e| eprint!("{e}")).ok()
}

fn run(f: impl std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sync-gateway stopped");
            eprintln!("sync-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where this replica's audit chain goes, for `check-config`.
fn audit_chain_of(c: &Config) -> String {
    use sync_gateway::audit;
    match c.audit.durable_sink() {
        sync_gateway::config::AuditSinkKind::Postgres => {
            let stream = audit::postgres_stream(&c.state);
            format!(
                "audit chain: {}",
                audit::stream_source(&c.audit.postgres_schema, &stream)
            )
        }
        _ => match audit::trail_path(&c.audit, &c.state) {
            Some(p) => format!("audit chain: {}", p.display()),
            None => "no durable audit sink".into(),
        },
    }
}

/// Verifies `only` stream, or every stream the table holds (the default stream when it holds
/// none), each on its own.
fn verify_postgres_chains(
    pg: &sync_gateway::audit::PostgresOptions,
    opts: &sync_gateway::audit::verify::VerifyOptions,
    only: Option<String>,
) -> std::io::Result<Vec<sync_gateway::audit::verify::ChainReport>> {
    use sync_gateway::audit::{self, verify::ChainReport};
    let streams = match only {
        Some(s) => vec![s],
        None => audit::postgres_streams(pg)?,
    };
    let streams = if streams.is_empty() {
        vec![audit::DEFAULT_STREAM.to_string()]
    } else {
        streams
    };
    streams
        .iter()
        .map(|s| {
            let report = audit::verify_postgres_stream(pg, opts, s)?;
            Ok(ChainReport::new(
                report,
                audit::stream_source(&pg.schema, s),
            ))
        })
        .collect()
}

fn audit_command(cmd: AuditCommand) -> ExitCode {
    use sync_gateway::audit::{self, verify};
    match cmd {
        AuditCommand::Verify {
            paths,
            public_keys,
            postgres_url,
            postgres_schema,
            postgres_stream,
        } => {
            let mut keys = Vec::new();
            for p in &public_keys {
                match audit::CheckpointVerifier::from_pem(p) {
                    Ok(k) => keys.push(k),
                    Err(e) => {
                        eprintln!("sync-gateway audit verify: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let opts = verify::VerifyOptions { keys };
            let chains = match postgres_url {
                Some(url) if paths.is_empty() => verify_postgres_chains(
                    &audit::PostgresOptions {
                        url,
                        schema: postgres_schema,
                        timeout: std::time::Duration::from_secs(10),
                    },
                    &opts,
                    postgres_stream,
                ),
                _ => verify::verify_chains(&paths, &opts),
            };
            match chains {
                Ok(chains) => {
                    print!("{}", verify::render_chains(&chains));
                    if chains.iter().all(|c| c.report.intact()) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("sync-gateway audit verify: cannot read the trail: {e}");
                    ExitCode::from(2)
                }
            }
        }
        AuditCommand::Hash {
            value,
            key_file,
            config,
        } => match hmac_key(key_file, config) {
            Ok(key) => {
                println!("{}", audit::ValueHasher::new(key.as_bytes()).hash(&value));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sync-gateway audit hash: {e}");
                ExitCode::FAILURE
            }
        },
        AuditCommand::Schema => {
            // Pretty and newline-terminated: the committed file is this output as is.
            let text = serde_json::to_string_pretty(&audit::schema::generate())
                .expect("a JSON value serializes");
            println!("{text}");
            ExitCode::SUCCESS
        }
        AuditCommand::Keygen { out } => match write_key_pair(&out) {
            Ok(public) => {
                print!("{public}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sync-gateway audit keygen: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The HMAC key, looked up as the `hash` command documents.
fn hmac_key(key_file: Option<PathBuf>, config: Option<PathBuf>) -> Result<String, String> {
    let from_file = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|k| k.trim().to_string())
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    if let Some(p) = key_file {
        return from_file(&p);
    }
    if let Ok(k) = std::env::var("SYNC_GATEWAY__AUDIT__HMAC_KEY") {
        return Ok(k);
    }
    let Some(c) = config else {
        return Err("give --key-file, SYNC_GATEWAY__AUDIT__HMAC_KEY or --config".into());
    };
    let text =
        std::fs::read_to_string(&c).map_err(|e| format!("cannot read {}: {e}", c.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", c.display()))?;
    match table
        .get("audit")
        .and_then(|a| a.get("hmac_key_file"))
        .and_then(|v| v.as_str())
    {
        Some(p) => from_file(std::path::Path::new(p)),
        None => Err(format!("{} sets no audit.hmac_key_file", c.display())),
    }
}

fn write_key_pair(out: &std::path::Path) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public) = sync_gateway::audit::generate_key_pair()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    f.write_all(private.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    std::fs::write(&pub_path, &public)
        .map_err(|e| format!("cannot write {}: {e}", pub_path.to_string_lossy()))?;
    Ok(public)
}
