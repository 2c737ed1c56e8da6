//! The PostgreSQL sink: each group commit is one transaction inserting its records, with the
//! same chain fields and the exact line bytes, so `audit verify --postgres` checks the same
//! chain a file would hold. The table is created by a versioned migration at start and
//! refuses updates and deletes.
//!
//! Each replica keeps its own chain in the one table: a `stream` column names it (the replica
//! id on the redis backend, `''` for the single process of the memory backend and for every row
//! written before streams existed), and `seq` and `prev` run per stream, keyed `(stream, seq)`.
//!
//! The writer thread is synchronous; the sink owns a small current-thread tokio runtime and
//! bounds every round trip with `timeout` (connect, migration, each commit). `audit verify`
//! reads through a read-only connection that migrates nothing ([`postgres_streams`],
//! [`verify_postgres_stream`]).

use super::chain::{hash, hex, Tail};
use super::sink::{AuditSink, Batch, Opened};
use super::verify::{Report, Verifier, VerifyOptions};
use std::io;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Where and how the sink connects.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `audit.postgres_url`, e.g. `postgres://audit@db.internal/gateway` (may carry a password:
    /// never logged).
    pub url: String,
    /// `audit.postgres_schema`: the schema holding the `records` table.
    pub schema: String,
    /// The bound on each round trip: connect, migrate, commit.
    pub timeout: Duration,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

// Defined in `config`, which checks `audit.postgres_schema` without importing `audit`.
pub use crate::config::valid_schema_name;

/// The stream of the one chain of a single gateway (memory backend), and of every row written
/// before streams existed: such a gateway continues the chain it wrote before.
pub const DEFAULT_STREAM: &str = "";

/// The migrations, in order; `migrations.version` records which ran.
fn migrations(schema: &str) -> Vec<String> {
    vec![
        format!(
            r#"
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
"#
        ),
        // One chain per replica. Adding a column with a constant default rewrites no row (and
        // fires no row trigger): the rows already there become the default stream's chain.
        format!(
            r#"
ALTER TABLE "{schema}".records ADD COLUMN stream TEXT NOT NULL DEFAULT '';
ALTER TABLE "{schema}".records DROP CONSTRAINT records_pkey;
ALTER TABLE "{schema}".records ADD PRIMARY KEY (stream, seq);
"#
        ),
    ]
}

/// The PostgreSQL sink; see the module docs.
pub struct PostgresSink {
    opts: PostgresOptions,
    /// The chain this sink writes: its `stream` value.
    stream: String,
    rt: Option<tokio::runtime::Runtime>,
    client: Option<Client>,
}

impl PostgresSink {
    /// A sink for `opts` writing the default stream ([`DEFAULT_STREAM`]); nothing connects
    /// until [`AuditSink::open`].
    pub fn new(opts: PostgresOptions) -> PostgresSink {
        PostgresSink::for_stream(opts, DEFAULT_STREAM)
    }

    /// A sink for `opts` writing the chain `stream` (a replica id).
    pub fn for_stream(opts: PostgresOptions, stream: impl Into<String>) -> PostgresSink {
        PostgresSink {
            opts,
            stream: stream.into(),
            rt: None,
            client: None,
        }
    }

    fn runtime(&mut self) -> io::Result<&tokio::runtime::Runtime> {
        if self.rt.is_none() {
            self.rt = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            );
        }
        self.rt
            .as_ref()
            .ok_or_else(|| io::Error::other("no runtime"))
    }

    fn connect(&mut self) -> io::Result<()> {
        let opts = self.opts.clone();
        let rt = self.runtime()?;
        let client = rt.block_on(async {
            bounded(opts.timeout, async {
                let client = open(&opts, "sync-gateway-audit").await?;
                migrate(&client, &opts.schema).await?;
                Ok(client)
            })
            .await
        })?;
        self.client = Some(client);
        Ok(())
    }

    fn read_tail(&mut self) -> io::Result<(Tail, Option<Vec<u8>>)> {
        let sql = format!(
            r#"SELECT seq, line FROM "{}".records WHERE stream = $1 ORDER BY seq DESC LIMIT 1"#,
            self.opts.schema
        );
        let timeout = self.opts.timeout;
        let stream = self.stream.clone();
        let client = self.client.take().ok_or_else(not_connected)?;
        let result = self.runtime()?.block_on(bounded(timeout, async {
            client.query_opt(&sql, &[&stream]).await.map_err(pg)
        }));
        self.client = Some(client);
        match result? {
            None => Ok((Tail::EMPTY, None)),
            Some(row) => {
                let seq: i64 = row.get(0);
                let line: String = row.get(1);
                let tail = Tail {
                    seq: seq as u64,
                    hash: hash(line.as_bytes()),
                };
                Ok((tail, Some(line.into_bytes())))
            }
        }
    }
}

/// A connection with every statement bounded by `opts.timeout`.
async fn open(opts: &PostgresOptions, application: &str) -> io::Result<Client> {
    let mut cfg: tokio_postgres::Config = opts.url.parse().map_err(pg)?;
    cfg.connect_timeout(opts.timeout)
        .keepalives(true)
        .application_name(application);
    let (client, connection) = cfg.connect(NoTls).await.map_err(pg)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let ms = opts.timeout.as_millis().max(1);
    client
        .batch_execute(&format!("SET statement_timeout = {ms}"))
        .await
        .map_err(pg)?;
    Ok(client)
}

async fn bounded<T>(
    d: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "PostgreSQL did not answer in time"))?
}

fn pg(e: tokio_postgres::Error) -> io::Error {
    // The error's text names the server's message, never the URL or its password.
    io::Error::other(format!("postgres: {e}"))
}

fn not_connected() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "not connected to PostgreSQL")
}

async fn migrate(client: &Client, schema: &str) -> io::Result<()> {
    if !valid_schema_name(schema) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid schema name",
        ));
    }
    // One gateway at a time migrates a schema.
    client
        .batch_execute(&format!(
            r#"BEGIN;
SELECT pg_advisory_xact_lock(hashtext('sync-gateway-audit:{schema}'));
CREATE SCHEMA IF NOT EXISTS "{schema}";
CREATE TABLE IF NOT EXISTS "{schema}".migrations (
    version    INT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
COMMIT;"#
        ))
        .await
        .map_err(pg)?;
    for (i, sql) in migrations(schema).iter().enumerate() {
        let version = i as i32 + 1;
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtext('sync-gateway-audit:{schema}'));"
            ))
            .await
            .map_err(pg)?;
        let done = client
            .query_opt(
                &format!(r#"SELECT 1 FROM "{schema}".migrations WHERE version = $1"#),
                &[&version],
            )
            .await
            .map_err(pg)?;
        if done.is_none() {
            client.batch_execute(sql).await.map_err(pg)?;
            client
                .execute(
                    &format!(r#"INSERT INTO "{schema}".migrations (version) VALUES ($1)"#),
                    &[&version],
                )
                .await
                .map_err(pg)?;
        }
        client.batch_execute("COMMIT").await.map_err(pg)?;
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    prev: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

impl AuditSink for PostgresSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn open(&mut self) -> io::Result<Opened> {
        self.connect()?;
        let (tail, last_line) = self.read_tail()?;
        Ok(Opened {
            tail,
            last_line,
            notes: Vec::new(),
        })
    }

    fn commit(&mut self, batch: &Batch<'_>) -> io::Result<()> {
        let mut seqs: Vec<i64> = Vec::with_capacity(batch.lines.len());
        let mut prevs: Vec<String> = Vec::with_capacity(batch.lines.len());
        let mut hashes: Vec<String> = Vec::with_capacity(batch.lines.len());
        let mut kinds: Vec<String> = Vec::with_capacity(batch.lines.len());
        let mut lines: Vec<String> = Vec::with_capacity(batch.lines.len());
        for (i, line) in batch.lines().enumerate() {
            let f: Fields<'_> = serde_json::from_slice(line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            seqs.push((batch.first_seq + i as u64) as i64);
            prevs.push(f.prev.into_owned());
            hashes.push(hex(&hash(line)));
            kinds.push(f.kind.map(|k| k.into_owned()).unwrap_or_default());
            lines.push(String::from_utf8_lossy(line).into_owned());
        }
        let sql = format!(
            r#"INSERT INTO "{}".records (stream, seq, prev, hash, kind, line, record)
               SELECT $6, s, p, h, k, l, l::jsonb
               FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) AS t(s, p, h, k, l)"#,
            self.opts.schema
        );
        let timeout = self.opts.timeout;
        let stream = self.stream.clone();
        let mut client = self.client.take().ok_or_else(not_connected)?;
        let result = self.runtime()?.block_on(bounded(timeout, async {
            let tx = client.transaction().await.map_err(pg)?;
            tx.execute(&sql, &[&seqs, &prevs, &hashes, &kinds, &lines, &stream])
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)
        }));
        // After any failure the connection's state is unknown: `recover` reconnects.
        if result.is_ok() {
            self.client = Some(client);
        }
        result
    }

    fn recover(&mut self) -> io::Result<Option<Tail>> {
        // A commit that failed may still have committed (the answer was lost): the table,
        // not the writer, knows where the chain stands.
        self.client = None;
        self.connect()?;
        let (tail, _) = self.read_tail()?;
        Ok(Some(tail))
    }
}

/// Verifies the default stream's chain ([`DEFAULT_STREAM`]: a single gateway's), in `seq`
/// order.
pub fn verify_postgres(opts: &PostgresOptions, verify: &VerifyOptions) -> io::Result<Report> {
    verify_postgres_stream(opts, verify, DEFAULT_STREAM)
}

/// A read-only view of the trail, for `audit verify`: no migration runs and every transaction
/// is read-only, so a role with `SELECT` on the table is enough, and the table is read in the
/// layout it has (a table from before streams holds the default stream only).
struct Reader {
    rt: tokio::runtime::Runtime,
    client: Client,
    schema: String,
    /// Whether the table has the `stream` column (migration 2).
    streams: bool,
    timeout: Duration,
}

impl Reader {
    fn open(opts: &PostgresOptions) -> io::Result<Reader> {
        if !valid_schema_name(&opts.schema) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid schema name",
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, columns) = rt.block_on(bounded(opts.timeout, async {
            let client = open(opts, "sync-gateway-audit-verify").await?;
            client
                .batch_execute("SET default_transaction_read_only = on")
                .await
                .map_err(pg)?;
            let columns = client
                .query(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = $1 AND table_name = 'records'",
                    &[&opts.schema],
                )
                .await
                .map_err(pg)?;
            Ok((client, columns))
        }))?;
        if columns.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no audit table \"{}\".records (or no right to see it)",
                    opts.schema
                ),
            ));
        }
        let streams = columns.iter().any(|r| r.get::<_, String>(0) == "stream");
        Ok(Reader {
            rt,
            client,
            schema: opts.schema.clone(),
            streams,
            timeout: opts.timeout.max(Duration::from_secs(30)),
        })
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> io::Result<Vec<tokio_postgres::Row>> {
        self.rt.block_on(bounded(self.timeout, async {
            self.client.query(sql, params).await.map_err(pg)
        }))
    }
}

/// The streams (chains) the table holds, in order; the default stream is `""`. Reads only.
pub fn postgres_streams(opts: &PostgresOptions) -> io::Result<Vec<String>> {
    let reader = Reader::open(opts)?;
    if !reader.streams {
        return Ok(vec![DEFAULT_STREAM.to_string()]);
    }
    let sql = format!(
        r#"SELECT DISTINCT stream FROM "{}".records ORDER BY stream"#,
        reader.schema
    );
    Ok(reader.query(&sql, &[])?.iter().map(|r| r.get(0)).collect())
}

/// How a stream is named in findings: the table, and the stream unless it is the default.
pub fn stream_source(schema: &str, stream: &str) -> String {
    if stream == DEFAULT_STREAM {
        format!("postgres:{schema}.records")
    } else {
        format!("postgres:{schema}.records[stream={stream}]")
    }
}

/// Verifies the chain `stream` held in PostgreSQL, in `seq` order. Reads only (see
/// [`postgres_streams`]).
pub fn verify_postgres_stream(
    opts: &PostgresOptions,
    verify: &VerifyOptions,
    stream: &str,
) -> io::Result<Report> {
    let reader = Reader::open(opts)?;
    let mut v = Verifier::new(verify.clone());
    let src = v.source(stream_source(&opts.schema, stream));
    // A table from before streams holds one chain, the default stream's.
    if !reader.streams && stream != DEFAULT_STREAM {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "\"{}\".records holds no streams yet (one gateway's chain): no stream {stream:?}",
                opts.schema
            ),
        ));
    }
    let of_stream = if reader.streams {
        "stream = $2 AND"
    } else {
        ""
    };
    let sql = format!(
        r#"SELECT seq, line FROM "{}".records WHERE {of_stream} seq > $1 ORDER BY seq LIMIT 10000"#,
        opts.schema
    );
    let stream = stream.to_string();
    let mut after: i64 = -1;
    let mut row_no = 0u64;
    loop {
        let rows = if reader.streams {
            reader.query(&sql, &[&after, &stream])?
        } else {
            reader.query(&sql, &[&after])?
        };
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let seq: i64 = row.get(0);
            let line: String = row.get(1);
            row_no += 1;
            v.line(src, row_no, line.as_bytes(), true, true);
            after = seq;
        }
    }
    Ok(v.finish())
}
