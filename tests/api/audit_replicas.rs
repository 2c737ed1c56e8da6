//! Audit across replicas: on the redis backend each replica writes its own chain (its own file
//! beside `audit.path`, or its own PostgreSQL stream), every record names its replica, a
//! restart under the same replica id continues that chain, and `audit verify` checks every
//! chain on its own, one result line each.
//!
//! The redis-backend tests read `REDIS_URL`, the PostgreSQL ones `DATABASE_URL` too; without
//! them a test returns at once after saying why.

use crate::helpers::{assert_trail_valid, spawn_app_with, Setup, TestApp, World};
use crate::postgres::{database_url, fresh_schema, pg_client, postgres_setup};
use crate::state::{delete_keys, on_redis, quoted, redis_url, unique_prefix};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use sync_gateway::audit::verify::line_hash_hex;

const BIN: &str = env!("CARGO_BIN_EXE_sync-gateway");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SYNC_GATEWAY__AUDIT__POSTGRES_URL")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A gateway on the redis backend as replica `replica`, configured further by `tune`.
fn replica(
    url: &str,
    prefix: &str,
    world: Option<World>,
    replica: &str,
    tune: impl FnOnce(Setup) -> Setup,
) -> Setup {
    tune(on_redis(url, prefix, world)).set("state.replica_id", &quoted(replica))
}

/// The records of one file.
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (bounded) until every run `app` started has its `finished` record, which may land
/// just after the caller's answer.
async fn wait_for_finishes(app: &TestApp) {
    for _ in 0..100 {
        let runs = app.audit_of_kind("run");
        let started = runs.iter().filter(|r| r["event"] == "started").count();
        let finished = runs.iter().filter(|r| r["event"] == "finished").count();
        if started == finished {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replicas `gw-a` (two syncs) and `gw-b` (one sync) on one Redis, writing to one audit
/// directory; both stopped. Returns their trail files.
async fn two_replicas_sharing(dir: &Path, url: &str, prefix: &str) -> (PathBuf, PathBuf) {
    let shared = dir.join("audit.jsonl");
    let with_shared = |s: Setup| Setup {
        audit_path: Some(shared.clone()),
        ..s
    };
    let mut a = spawn_app_with(replica(url, prefix, None, "gw-a", with_shared)).await;
    let mut b = spawn_app_with(replica(
        url,
        prefix,
        Some(a.world.clone()),
        "gw-b",
        with_shared,
    ))
    .await;
    let token = a.token();
    assert_eq!(a.post_sync(&token).await.status(), 202);
    assert_eq!(b.post_sync(&token).await.status(), 202);
    assert_eq!(a.post_sync(&token).await.status(), 202);
    wait_for_finishes(&a).await;
    wait_for_finishes(&b).await;
    let files = (a.audit_path.clone(), b.audit_path.clone());
    a.stop().await;
    b.stop().await;
    files
}

#[tokio::test]
async fn two_replicas_sharing_an_audit_directory_write_one_chain_each_naming_their_replica() {
    let Some(url) = redis_url("two replicas, one audit directory") else {
        return;
    };
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas_sharing(dir.path(), &url, &prefix).await;
    delete_keys(&url, &prefix).await;

    assert_eq!(a, dir.path().join("audit.gw-a.jsonl"));
    assert_eq!(b, dir.path().join("audit.gw-b.jsonl"));
    assert!(
        !dir.path().join("audit.jsonl").exists(),
        "no replica writes the shared name"
    );
    for (file, name, syncs) in [(&a, "gw-a", 2), (&b, "gw-b", 1)] {
        let records = records(file);
        assert!(records.iter().all(|r| r["replica"] == name), "{records:#?}");
        let requests = records.iter().filter(|r| r["kind"] == "request").count();
        assert_eq!(requests, syncs, "{name}");
        let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
        assert_trail_valid(std::slice::from_ref(file), &[]);
    }
}

#[tokio::test]
async fn audit_verify_over_a_shared_directory_reports_each_replicas_chain_ok() {
    let Some(url) = redis_url("verify two chains") else {
        return;
    };
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas_sharing(dir.path(), &url, &prefix).await;
    delete_keys(&url, &prefix).await;
    let (na, nb) = (records(&a).len(), records(&b).len());

    let out = run(&["audit", "verify", dir.path().to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("chain gw-a: {na} record(s), seq 1..{na}: ok\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("chain gw-b: {nb} record(s), seq 1..{nb}: ok\n")),
        "{text}"
    );
    assert!(text.contains("result: 2 chain(s), all intact"), "{text}");

    // The files named one by one, in any order, are the same two chains.
    let out = run(&["audit", "verify", b.to_str().unwrap(), a.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("result: 2 chain(s), all intact"));
}

#[tokio::test]
async fn an_edited_line_in_one_replicas_chain_is_reported_for_that_chain_only() {
    let Some(url) = redis_url("an edited chain among two") else {
        return;
    };
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas_sharing(dir.path(), &url, &prefix).await;
    delete_keys(&url, &prefix).await;
    let mut lines: Vec<String> = std::fs::read_to_string(&b)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines[2].contains("\"v\":1"), "{}", lines[2]);
    lines[2] = lines[2].replacen("\"v\":1", "\"v\":2", 1);
    std::fs::write(&b, lines.join("\n") + "\n").unwrap();
    let na = records(&a).len();

    let out = run(&["audit", "verify", dir.path().to_str().unwrap()]);
    assert_gw_b_broken_at_line_3(
        &out,
        na,
        &format!(
            "BROKEN (1 problem(s)), first at {}:3: record altered",
            b.display()
        ),
    );
}

/// `verify`'s report of two chains: `gw-a` whole with `na` records, `gw-b` broken as
/// `b_says`, and the overall result naming it; exit status 1.
fn assert_gw_b_broken_at_line_3(out: &Output, na: usize, b_says: &str) {
    let text = stdout(out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("chain gw-a: {na} record(s), seq 1..{na}: ok\n")),
        "{text}"
    );
    let b_line = text
        .lines()
        .find(|l| l.starts_with("chain gw-b: "))
        .unwrap_or_else(|| panic!("no result line for gw-b in {text}"));
    assert!(b_line.contains(b_says), "{b_line}");
    assert!(
        text.contains("result: NOT intact (1 of 2 chain(s) broken: gw-b)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_replica_restarted_with_the_same_id_continues_its_chain() {
    let Some(url) = redis_url("a replica's restart") else {
        return;
    };
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("audit.jsonl");
    let mut app = spawn_app_with(replica(&url, &prefix, None, "gw-a", |s| Setup {
        audit_path: Some(shared.clone()),
        ..s
    }))
    .await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    wait_for_finishes(&app).await;
    let before = app.audit_records().len();
    app.restart().await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    wait_for_finishes(&app).await;
    app.stop().await;
    delete_keys(&url, &prefix).await;

    let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files, [dir.path().join("audit.gw-a.jsonl")]);
    let records = records(&files[0]);
    assert!(records.len() > before, "the restart wrote on");
    let starts = records.iter().filter(|r| r["event"] == "start").count();
    assert_eq!(starts, 2, "two processes, one chain");
    assert!(records.iter().all(|r| r["replica"] == "gw-a"));
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
    let out = run(&["audit", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("result: intact"), "{}", stdout(&out));
}

#[tokio::test]
async fn on_the_memory_backend_the_trail_keeps_audit_path_and_every_record_names_the_replica() {
    let app = spawn_app_with(Setup::default().set("state.replica_id", "\"solo-0\"")).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.audit_path, app.dir.join("audit.jsonl"));
    let records = app.audit_records();
    assert!(!records.is_empty());
    assert!(
        records.iter().all(|r| r["replica"] == "solo-0"),
        "{records:#?}"
    );
    assert_trail_valid(std::slice::from_ref(&app.audit_path), &[]);
}

/// `(stream, seq, line)` of every row, in stream and seq order.
async fn stream_rows(url: &str, schema: &str) -> Vec<(String, i64, String)> {
    pg_client(url)
        .await
        .query(
            &format!(r#"SELECT stream, seq, line FROM "{schema}".records ORDER BY stream, seq"#),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Replicas `gw-a` (restarted once) and `gw-b` on one Redis, writing to one PostgreSQL schema;
/// both stopped.
async fn two_replicas_on_postgres(db: &str, redis: &str, prefix: &str, schema: &str) {
    let pg = |s: Setup| {
        let mut p = postgres_setup(db, schema);
        let mut s = s;
        s.env.append(&mut p.env);
        s.config.append(&mut p.config);
        s
    };
    let mut a = spawn_app_with(replica(redis, prefix, None, "gw-a", pg)).await;
    let mut b = spawn_app_with(replica(redis, prefix, Some(a.world.clone()), "gw-b", pg)).await;
    let token = a.token();
    assert_eq!(a.post_sync(&token).await.status(), 202);
    assert_eq!(b.post_sync(&token).await.status(), 202);
    a.restart().await;
    assert_eq!(a.post_sync(&token).await.status(), 202);
    a.stop().await;
    b.stop().await;
}

/// Every row of `stream` as JSON, asserting its `seq`s run 1, 2, 3, ...
fn chain_of(rows: &[(String, i64, String)], stream: &str) -> Vec<Value> {
    let chain: Vec<&(String, i64, String)> = rows.iter().filter(|r| r.0 == stream).collect();
    let seqs: Vec<i64> = chain.iter().map(|r| r.1).collect();
    assert_eq!(
        seqs,
        (1..=chain.len() as i64).collect::<Vec<_>>(),
        "{stream}"
    );
    chain
        .iter()
        .map(|r| serde_json::from_str(&r.2).unwrap())
        .collect()
}

#[tokio::test]
async fn two_replicas_on_one_postgres_schema_keep_a_stream_each_and_verify_reports_both_ok() {
    let (Some(db), Some(redis)) = (
        database_url("two replicas on PostgreSQL"),
        redis_url("two replicas on PostgreSQL"),
    ) else {
        return;
    };
    let prefix = unique_prefix();
    let schema = fresh_schema(&db);
    two_replicas_on_postgres(&db, &redis, &prefix, &schema).await;
    delete_keys(&redis, &prefix).await;

    let rows = stream_rows(&db, &schema).await;
    let streams: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(streams.into_iter().collect::<Vec<_>>(), ["gw-a", "gw-b"]);
    let a = chain_of(&rows, "gw-a");
    let b = chain_of(&rows, "gw-b");
    assert!(a.iter().all(|r| r["replica"] == "gw-a"));
    assert!(b.iter().all(|r| r["replica"] == "gw-b"));
    let starts = a.iter().filter(|r| r["event"] == "start").count();
    assert_eq!(starts, 2, "the restart continued gw-a's chain");

    let out = verify_on_postgres(&db, &schema, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let (na, nb) = (a.len(), b.len());
    assert!(
        text.contains(&format!("chain gw-a: {na} record(s), seq 1..{na}: ok\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("chain gw-b: {nb} record(s), seq 1..{nb}: ok\n")),
        "{text}"
    );
    assert!(text.contains("result: 2 chain(s), all intact"), "{text}");

    // One stream alone: the single chain's report.
    let out = verify_on_postgres(&db, &schema, &["--postgres-stream", "gw-b"]);
    assert_one_intact_chain(&out, nb);
}

#[tokio::test]
async fn an_edited_row_in_one_postgres_stream_is_reported_for_that_stream_only() {
    let (Some(db), Some(redis)) = (
        database_url("an edited PostgreSQL stream"),
        redis_url("an edited PostgreSQL stream"),
    ) else {
        return;
    };
    let prefix = unique_prefix();
    let schema = fresh_schema(&db);
    two_replicas_on_postgres(&db, &redis, &prefix, &schema).await;
    delete_keys(&redis, &prefix).await;
    let client = pg_client(&db).await;
    // Someone with the table owner's rights, around the append-only trigger.
    client
        .batch_execute(&format!(
            r#"ALTER TABLE "{schema}".records DISABLE TRIGGER records_append_only;
               UPDATE "{schema}".records SET line = replace(line, '"v":1', '"v":2')
                   WHERE stream = 'gw-b' AND seq = 3;
               ALTER TABLE "{schema}".records ENABLE TRIGGER records_append_only;"#
        ))
        .await
        .unwrap();
    let na = chain_of(&stream_rows(&db, &schema).await, "gw-a").len();

    let out = verify_on_postgres(&db, &schema, &[]);
    assert_gw_b_broken_at_line_3(
        &out,
        na,
        &format!("first at postgres:{schema}.records[stream=gw-b]:3: record altered"),
    );
}

/// The table as the previous version created it: migration 1 only, no `stream`.
fn previous_version_sql(schema: &str) -> String {
    format!(
        r#"
CREATE SCHEMA "{schema}";
CREATE TABLE "{schema}".migrations (
    version    INT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE "{schema}".records (
    seq        BIGINT PRIMARY KEY,
    prev       TEXT NOT NULL,
    hash       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    line       TEXT NOT NULL,
    record     JSONB NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX records_kind_idx ON "{schema}".records (kind);
CREATE FUNCTION "{schema}".refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only';
END $$;
CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON "{schema}".records
    FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse_change();
INSERT INTO "{schema}".migrations (version) VALUES (1);
"#
    )
}

/// `audit verify` of the trail in `schema` on `url`, with `more` arguments.
fn verify_on_postgres(url: &str, schema: &str, more: &[&str]) -> Output {
    let mut args = vec![
        "audit",
        "verify",
        "--postgres-url",
        url,
        "--postgres-schema",
        schema,
    ];
    args.extend_from_slice(more);
    run(&args)
}

/// `out` reports one chain of `n` records, intact.
fn assert_one_intact_chain(out: &Output, n: usize) {
    let text = stdout(out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("read {n} record(s) from 1 source(s), seq 1..{n}")),
        "{text}"
    );
    assert!(text.contains("result: intact"), "{text}");
}

/// The table of the previous version in `schema`, holding three records it wrote (no
/// `replica`, no stream); their lines.
async fn previous_version_with_three_records(db: &str, schema: &str) -> Vec<String> {
    let client = pg_client(db).await;
    client
        .batch_execute(&previous_version_sql(schema))
        .await
        .unwrap();
    let mut tail = sync_gateway::audit::Tail::EMPTY;
    let mut old: Vec<String> = Vec::new();
    for i in 1..=3 {
        let line = String::from_utf8(
            tail.link(format!(r#"{{"v":1,"kind":"admin","event":"old-{i}"}}"#).as_bytes()),
        )
        .unwrap();
        let prev = match old.last() {
            Some(l) => line_hash_hex(l.as_bytes()),
            None => "0".repeat(64),
        };
        client
            .execute(
                &format!(
                    r#"INSERT INTO "{schema}".records (seq, prev, hash, kind, line, record)
                       VALUES ($1, $2, $3, 'admin', $4::text, $4::text::jsonb)"#
                ),
                &[&(i as i64), &prev, &line_hash_hex(line.as_bytes()), &line],
            )
            .await
            .unwrap();
        old.push(line);
    }
    old
}

#[tokio::test]
async fn audit_verify_reads_a_table_of_the_previous_version_as_it_is_and_migrates_nothing() {
    let Some(db) = database_url("verify reads an old table") else {
        return;
    };
    let schema = fresh_schema(&db);
    previous_version_with_three_records(&db, &schema).await;

    let out = verify_on_postgres(&db, &schema, &[]);
    assert_one_intact_chain(&out, 3);
    // A replica's stream is not in a table from before streams.
    let out = verify_on_postgres(&db, &schema, &["--postgres-stream", "gw-b"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("holds no streams yet"), "{err}");

    // The table is as it was: no `stream` column, migration 1 only.
    let client = pg_client(&db).await;
    let stream_columns = client
        .query(
            "SELECT 1 FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'records' AND column_name = 'stream'",
            &[&&*schema],
        )
        .await
        .unwrap();
    assert!(stream_columns.is_empty());
    let versions: Vec<i32> = client
        .query(
            &format!(r#"SELECT version FROM "{schema}".migrations"#),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1]);
}

#[tokio::test]
async fn audit_verify_on_a_schema_without_the_trail_says_so_creates_nothing_and_exits_2() {
    let Some(db) = database_url("verify without a trail") else {
        return;
    };
    let schema = fresh_schema(&db);
    let out = verify_on_postgres(&db, &schema, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("no audit table \"{schema}\".records")),
        "{err}"
    );
    let client = pg_client(&db).await;
    let created = client
        .query(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = $1",
            &[&&*schema],
        )
        .await
        .unwrap();
    assert!(created.is_empty(), "verify created the schema");
}

#[tokio::test]
async fn an_auditor_with_select_only_verifies_the_postgres_trail() {
    let Some(db) = database_url("verify with a read-only role") else {
        return;
    };
    let schema = fresh_schema(&db);
    let mut app = spawn_app_with(postgres_setup(&db, &schema)).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    app.stop().await;
    let n = chain_of(&stream_rows(&db, &schema).await, "").len();

    // A role that may read the records and nothing else.
    let role = format!("auditor_{}", uuid::Uuid::new_v4().simple());
    let admin = pg_client(&db).await;
    admin
        .batch_execute(&format!(
            r#"CREATE ROLE {role} LOGIN;
               GRANT USAGE ON SCHEMA "{schema}" TO {role};
               GRANT SELECT ON "{schema}".records TO {role};"#
        ))
        .await
        .unwrap();
    let mut auditor = url::Url::parse(&db).unwrap();
    auditor.set_username(&role).unwrap();
    auditor.set_password(None).unwrap();

    let out = verify_on_postgres(auditor.as_str(), &schema, &[]);
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await
        .unwrap();
    assert_one_intact_chain(&out, n);
}

#[tokio::test]
async fn a_table_of_the_previous_version_is_migrated_and_a_single_gateway_continues_its_chain() {
    let Some(db) = database_url("the stream migration") else {
        return;
    };
    let schema = fresh_schema(&db);
    let old = previous_version_with_three_records(&db, &schema).await;

    let mut app = spawn_app_with(postgres_setup(&db, &schema)).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    app.stop().await;

    let rows = stream_rows(&db, &schema).await;
    assert!(
        rows.iter().all(|r| r.0.is_empty()),
        "one gateway: the default stream"
    );
    let chain = chain_of(&rows, "");
    assert!(chain.len() > 3);
    let kept: Vec<&str> = rows[..3].iter().map(|r| r.2.as_str()).collect();
    assert_eq!(kept, old, "the old rows are untouched");
    assert!(chain[3..].iter().all(|r| r["replica"].is_string()));

    let out = verify_on_postgres(&db, &schema, &[]);
    assert_one_intact_chain(&out, chain.len());
}
