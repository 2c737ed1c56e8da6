//! The PostgreSQL sink: the same chain as a file, verified the same way, and the same fail
//! closed rule when the server is unreachable or stops answering. Runs when `DATABASE_URL` is
//! set (CI sets it); otherwise each test says it was skipped.

use crate::helpers::{
    assert_schema_valid, config_toml, problem_of, problem_type, spawn_app_with, start_world, Setup,
    TestApp,
};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_gateway::audit::verify::VerifyOptions;
use sync_gateway::audit::{verify_postgres, PostgresOptions};
use sync_gateway::server::StartError;
use sync_gateway::{Application, Config};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) fn database_url(test: &str) -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped {test}: DATABASE_URL is not set");
            None
        }
    }
}

/// A schema of its own per test, so tests never share a chain; dropped when the test ends
/// so the shared database does not fill up.
pub(crate) struct Schema {
    name: String,
    url: String,
}

impl std::ops::Deref for Schema {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!(r#"DROP SCHEMA IF EXISTS "{name}" CASCADE"#))
                        .await;
                }
            });
        })
        .join();
    }
}

pub(crate) fn fresh_schema(url: &str) -> Schema {
    Schema {
        name: format!("audit_test_{}", uuid::Uuid::new_v4().simple()),
        url: url.to_string(),
    }
}

pub(crate) fn postgres_setup(url: &str, schema: &str) -> Setup {
    let mut setup = Setup::default()
        .set("audit.sinks", "[\"postgres\"]")
        .set("audit.postgres_schema", &format!("{schema:?}"))
        .set("audit.write_timeout_ms", "700");
    // DATABASE_URL may carry a password, which the configuration file must not hold.
    setup
        .env
        .push(("SYNC_GATEWAY__AUDIT__POSTGRES_URL".into(), url.into()));
    setup
}

/// A PostgreSQL client on `url`.
pub(crate) async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

async fn rows(url: &str, schema: &str) -> Vec<(i64, String)> {
    pg_client(url)
        .await
        .query(
            &format!(r#"SELECT seq, line FROM "{schema}".records ORDER BY seq"#),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn verify(url: &str, schema: &str) -> sync_gateway::audit::verify::Report {
    verify_postgres(
        &PostgresOptions {
            url: url.into(),
            schema: schema.into(),
            timeout: Duration::from_secs(10),
        },
        &VerifyOptions::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_postgres_sink_holds_the_same_chain_and_verify_accepts_it() {
    let Some(url) = database_url("the_postgres_sink_holds_the_same_chain") else {
        return;
    };
    let schema = fresh_schema(&url);
    let app = spawn_app_with(postgres_setup(&url, &schema)).await;
    for _ in 0..3 {
        assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    }
    let kinds_of = |rows: &[(i64, String)]| -> Vec<String> {
        rows.iter()
            .map(|(_, l)| serde_json::from_str::<Value>(l).unwrap()["kind"].to_string())
            .collect()
    };
    // The last run's `finished` record may land just after its caller's answer (its own
    // commit): the rows are read again until it is there, with a bound.
    let mut rows = rows(&url, &schema).await;
    for _ in 0..100 {
        if kinds_of(&rows).iter().filter(|k| *k == "\"run\"").count() >= 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        rows = self::rows(&url, &schema).await;
    }
    let kinds = kinds_of(&rows);
    // Each sync: the run's start and finish, and the request.
    assert_eq!(kinds.iter().filter(|k| *k == "\"run\"").count(), 6);
    assert_eq!(kinds.iter().filter(|k| *k == "\"request\"").count(), 3);
    for (i, (seq, line)) in rows.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1);
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], *seq);
        assert_schema_valid(&v);
    }
    let report = intact(&url, &schema).await;
    assert_eq!(report.records, rows.len() as u64);
}

#[tokio::test]
async fn postgres_records_cannot_be_updated_or_deleted() {
    let Some(url) = database_url("postgres_records_cannot_be_updated_or_deleted") else {
        return;
    };
    let schema = fresh_schema(&url);
    let app = spawn_app_with(postgres_setup(&url, &schema)).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let client = pg_client(&url).await;
    let update = client
        .execute(
            &format!(r#"UPDATE "{schema}".records SET line = '{{}}' WHERE seq = 1"#),
            &[],
        )
        .await;
    assert!(update.is_err());
    let delete = client
        .execute(&format!(r#"DELETE FROM "{schema}".records"#), &[])
        .await;
    assert!(delete.is_err());
}

#[tokio::test]
async fn a_restart_continues_the_postgres_chain() {
    let Some(url) = database_url("a_restart_continues_the_postgres_chain") else {
        return;
    };
    let schema = fresh_schema(&url);
    let mut app = spawn_app_with(postgres_setup(&url, &schema)).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    app.stop().await;
    let world = app.world.clone();
    drop(app);
    let app = spawn_app_with(Setup {
        world: Some(world),
        ..postgres_setup(&url, &schema)
    })
    .await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    // The caller is answered once its own record is durable; the run's `finished` record may
    // land a moment later (its own commit), so the count is awaited, with a bound.
    let mut report = intact(&url, &schema).await;
    for _ in 0..100 {
        if report.records >= 11 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        report = intact(&url, &schema).await;
    }
    // start, config_loaded, run started, run finished, request, stop;
    // start, config_loaded, run started, run finished, request
    assert_eq!(report.records, 11, "{}", report.render());
}

/// What the proxy in front of PostgreSQL does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    /// Passes bytes both ways.
    Up,
    /// Closes every connection and refuses new ones: the server is gone.
    Down,
    /// Holds connections open and passes nothing: the server stopped answering.
    Silent,
}

/// A TCP proxy in front of PostgreSQL that a test can cut.
struct Proxy {
    port: u16,
    link: watch::Sender<Link>,
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, rx) = watch::channel(Link::Up);
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                let mode = *rx.borrow();
                match mode {
                    Link::Down => continue, // dropped: connection closed at once
                    Link::Silent => {
                        h.lock().unwrap().push(inbound);
                        continue;
                    }
                    Link::Up => {}
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async {
                            while rx.changed().await.is_ok() {
                                if *rx.borrow() != Link::Up {
                                    break;
                                }
                            }
                        } => {
                            if *rx.borrow() == Link::Silent {
                                // Keep both ends open, say nothing, until the link changes.
                                let _ = rx.changed().await;
                            }
                        }
                    }
                });
            }
        });
        Proxy {
            port,
            link,
            _held: held,
        }
    }

    fn set(&self, link: Link) {
        let _ = self.link.send(link);
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }
}

/// A gateway whose PostgreSQL sink goes through a proxy, after one request that worked.
async fn app_behind_proxy(url: &str) -> (Proxy, Schema, TestApp) {
    let proxy = Proxy::start(host_port(url)).await;
    let schema = fresh_schema(url);
    let app = spawn_app_with(postgres_setup(&proxy.url(url), &schema)).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    (proxy, schema, app)
}

/// Verifies the table (off the runtime: verify blocks) and asserts the chain is intact.
async fn intact(url: &str, schema: &str) -> sync_gateway::audit::verify::Report {
    let (u, name) = (url.to_string(), schema.to_string());
    let report = tokio::task::spawn_blocking(move || verify(&u, &name))
        .await
        .unwrap();
    assert!(report.intact(), "{}", report.render());
    report
}

fn host_port(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5432)
    )
}

#[tokio::test]
async fn an_unreachable_postgres_answers_503_and_graph_is_never_called() {
    let Some(url) = database_url("an_unreachable_postgres_answers_503") else {
        return;
    };
    let (proxy, schema, app) = app_behind_proxy(&url).await;

    proxy.set(Link::Down);
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("audit-unavailable")
    );
    assert_eq!(app.sims.graph.sync_calls(), 1);
    assert_eq!(app.get("/readyz").await.status(), 503);

    proxy.set(Link::Up);
    app.wait_until_ready().await;
    let answer = app.post_sync(&app.token()).await;
    assert_eq!(answer.status(), 202);
    assert_eq!(app.sims.graph.sync_calls(), 2);
    // The run's `finished` row may land just after the answer: read the trail once it has.
    let run: Value = answer.json().await.unwrap();
    app.wait_for_outcome_record(run["id"].as_str().unwrap(), "recorded")
        .await;
    let report = intact(&url, &schema).await;
    assert!(report.open_runs.is_empty(), "{}", report.render());
}

#[tokio::test]
async fn a_postgres_server_that_stops_answering_gives_503_within_the_bound() {
    let Some(url) = database_url("a_postgres_server_that_stops_answering") else {
        return;
    };
    let (proxy, schema, app) = app_behind_proxy(&url).await;

    proxy.set(Link::Silent);
    for _ in 0..3 {
        assert_eq!(app.post_sync(&app.token()).await.status(), 503);
    }
    assert_eq!(app.sims.graph.sync_calls(), 1);

    proxy.set(Link::Up);
    app.wait_until_ready().await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    intact(&url, &schema).await;
}

#[tokio::test]
async fn a_gateway_whose_postgres_is_unreachable_at_start_refuses_to_start() {
    // A loopback port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let world = start_world().await;
    let extra = [
        ("audit.sinks".to_string(), "[\"postgres\"]".to_string()),
        (
            "audit.postgres_url".to_string(),
            format!("\"postgres://postgres@127.0.0.1:{port}/test\""),
        ),
        ("audit.write_timeout_ms".to_string(), "500".to_string()),
    ];
    let config = Config::from_toml_and_env(
        &config_toml(&world, std::path::Path::new("/unused"), &extra),
        [(
            "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".to_string(),
            world.secret.clone(),
        )],
    )
    .unwrap();
    match Application::build(config).await {
        Err(StartError::Audit { path, source }) => {
            assert!(path.contains("PostgreSQL"), "{path}");
            assert!(!source.to_string().contains("postgres://"), "{source}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the gateway started without its audit database"),
    }
}
