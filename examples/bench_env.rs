//! The benchmark's environment and its small load driver (`bench/run.sh` uses both).
//!
//! `bench_env serve` starts the simulated Entra ID in its own process, so the gateway under test
//! runs exactly as in production (`sync-gateway serve --config`), and writes what the other
//! processes need into a directory: the tenant, the client id and secret, the signing key as a
//! PEM (HAProxy's `jwt_verify` takes a file), and sets of minted caller tokens, one per line.
//! It serves `GET /stats` (exchanges made, token and key requests) on a second port so the
//! harness can count what the gateway asked of Entra, and runs until SIGTERM or SIGINT.
//!
//! `bench_env burst` is the load driver for the scenarios `wrk` cannot express: every token of a
//! file sent by N requests at the same instant (the cold-exchange scenario), or every token
//! exactly once (the memory scenario). It prints one JSON line: status counts, transport errors,
//! latency percentiles.
//!
//! Loopback only; every request it makes has a timeout.

use actix_web::{web, App, HttpResponse, HttpServer};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_gateway::sim::entra::{SimEntra, TokenSpec};
use sync_gateway::sim::{start_entra_for, SimOptions};

#[derive(Parser)]
#[command(about = "sync-gateway benchmark environment and load driver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the simulated Entra ID, write the environment files into --dir, serve until killed.
    Serve {
        /// Where the environment files go (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The Graph origin the gateway is configured with (the nginx stand-in): Entra issues
        /// Graph tokens for this resource.
        #[arg(long)]
        graph_resource: String,
        /// A token set to mint: NAME:COUNT or NAME:COUNT:LIFETIME_SECS (default lifetime 3600 s).
        /// Written to DIR/tokens-NAME.txt, one token per line, each for a distinct user.
        #[arg(long = "set")]
        sets: Vec<String>,
    },
    /// Send every token of --tokens with --per-token simultaneous requests; print a JSON summary.
    Burst {
        /// The URL to POST to (e.g. http://127.0.0.1:8080/sync).
        #[arg(long)]
        url: String,
        /// A file with one bearer token per line.
        #[arg(long)]
        tokens: PathBuf,
        /// Requests sent at the same instant with each token.
        #[arg(long, default_value_t = 1)]
        per_token: usize,
        /// Tokens in flight at once.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// Timeout of each request, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_env: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve {
            dir,
            graph_resource,
            sets,
        } => rt.block_on(serve(dir, graph_resource, sets)),
        Command::Burst {
            url,
            tokens,
            per_token,
            parallel,
            timeout_secs,
        } => rt.block_on(burst(
            url,
            tokens,
            per_token.max(1),
            parallel.max(1),
            Duration::from_secs(timeout_secs.max(1)),
        )),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_env: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One `--set` argument.
struct TokenSet {
    name: String,
    count: usize,
    lifetime: Duration,
}

fn parse_set(s: &str) -> Result<TokenSet, BoxError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (name, count, lifetime) = match parts.as_slice() {
        [n, c] => (*n, c.parse()?, 3600),
        [n, c, l] => (*n, c.parse()?, l.parse()?),
        _ => return Err(format!("--set {s:?}: expected NAME:COUNT[:LIFETIME_SECS]").into()),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("--set {s:?}: the name must be letters, digits and '-'").into());
    }
    Ok(TokenSet {
        name: name.to_string(),
        count,
        lifetime: Duration::from_secs(lifetime),
    })
}

async fn serve(dir: PathBuf, graph_resource: String, sets: Vec<String>) -> Result<(), BoxError> {
    let sets = sets
        .iter()
        .map(|s| parse_set(s))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&dir)?;
    let tenant = uuid::Uuid::new_v4().to_string();
    let client_id = uuid::Uuid::new_v4().to_string();
    // A fresh secret per run; it exists only in this process and in a 0600 file for the gateway.
    let client_secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let opts = SimOptions::new(
        vec![tenant.clone()],
        client_id.clone(),
        client_secret.clone(),
        vec![client_id.clone()],
    );
    let entra = start_entra_for(opts, graph_resource).await?;

    sync_gateway::dev::write_private(&dir.join("client_secret"), client_secret)?;
    std::fs::write(dir.join("public_key.pem"), entra.public_key_pem())?;
    for set in &sets {
        let started = Instant::now();
        mint_set(&entra, &tenant, set, &dir).await?;
        eprintln!(
            "bench_env: minted {} tokens for set {} in {:.1} s",
            set.count,
            set.name,
            started.elapsed().as_secs_f64()
        );
    }

    let stats_listener = TcpListener::bind("127.0.0.1:0")?;
    let stats_url = format!("http://{}/stats", stats_listener.local_addr()?);
    let data = web::Data::new(entra.clone());
    let stats = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/stats", web::get().to(stats))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(stats_listener)?
    .run();
    let stats_handle = stats.handle();
    tokio::spawn(stats);

    std::fs::write(
        dir.join("env"),
        format!(
            "ENTRA_URL={}\nTENANT_ID={tenant}\nCLIENT_ID={client_id}\nSTATS_URL={stats_url}\n",
            entra.base_url()
        ),
    )?;
    // Written last: the harness waits for this file.
    std::fs::write(dir.join("ready"), b"ready\n")?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    stats_handle.stop(false).await;
    entra.stop().await;
    Ok(())
}

async fn stats(entra: web::Data<SimEntra>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "exchanges": entra.exchanges(),
        "token_requests": entra.token_requests(),
        "jwks_requests": entra.jwks_requests(),
        "discovery_requests": entra.discovery_requests(),
    }))
}

/// Mints `set.count` tokens, each for a new user, on every core (RSA signing is the slow part:
/// about a millisecond a token), and writes them one per line.
async fn mint_set(
    entra: &SimEntra,
    tenant: &str,
    set: &TokenSet,
    dir: &Path,
) -> Result<(), BoxError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = set.count.div_ceil(threads.max(1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let n = per_thread.min(set.count.saturating_sub(t * per_thread));
        let entra = entra.clone();
        let tenant = tenant.to_string();
        let lifetime = set.lifetime;
        handles.push(tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|_| {
                    let mut spec = TokenSpec::user(&tenant, uuid::Uuid::new_v4().to_string());
                    spec.lifetime = lifetime;
                    entra.mint(&spec)
                })
                .collect::<Vec<String>>()
        }));
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(
        dir.join(format!("tokens-{}.txt", set.name)),
    )?);
    for h in handles {
        for token in h.await? {
            out.write_all(token.as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// What one request of a burst saw.
enum Seen {
    Status(u16, Duration),
    Failed,
}

async fn burst(
    url: String,
    tokens: PathBuf,
    per_token: usize,
    parallel: usize,
    timeout: Duration,
) -> Result<(), BoxError> {
    let tokens: Vec<String> = std::fs::read_to_string(&tokens)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(parallel * per_token)
        .build()?;
    let url = Arc::new(url);
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens {
        let permit = gate.clone().acquire_owned().await?;
        let client = client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            // Every request of this token leaves at the same instant: the single-flight case.
            let barrier = Arc::new(tokio::sync::Barrier::new(per_token));
            let mut same_token = tokio::task::JoinSet::new();
            for _ in 0..per_token {
                let (client, url, token, barrier) =
                    (client.clone(), url.clone(), token.clone(), barrier.clone());
                same_token.spawn(async move {
                    barrier.wait().await;
                    let sent = Instant::now();
                    let answer = client
                        .post(url.as_str())
                        .bearer_auth(&token)
                        .header("Content-Length", "0")
                        .send()
                        .await;
                    match answer {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            // The answer counts once its body has arrived.
                            let _ = r.bytes().await;
                            Seen::Status(status, sent.elapsed())
                        }
                        Err(_) => Seen::Failed,
                    }
                });
            }
            let seen: Vec<Seen> = same_token.join_all().await;
            drop(permit);
            seen
        });
    }
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failed = 0usize;
    let mut latencies: Vec<Duration> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        for s in done? {
            match s {
                Seen::Status(code, took) => {
                    *statuses.entry(code).or_default() += 1;
                    latencies.push(took);
                }
                Seen::Failed => failed += 1,
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let statuses: BTreeMap<String, usize> = statuses
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    println!(
        "{}",
        json!({
            "requests": latencies.len() + failed,
            "statuses": statuses,
            "transport_errors": failed,
            "elapsed_s": elapsed.as_secs_f64(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
        })
    );
    Ok(())
}
