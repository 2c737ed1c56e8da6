//! Clients that hold the gateway's resources: bodies that never finish, declared sizes over the
//! limit, one caller holding many slow requests, more connections than the cap. Spoken to over
//! raw TCP, since an HTTP client library would not send a request that never ends.

use crate::helpers::{problem_type, spawn_app_with, Setup, TestApp};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a never-finished body is framed.
#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length: 4000`, of which only `{` is sent.
    Length,
    /// `Transfer-Encoding: chunked`, one chunk `{` and never the last chunk.
    Chunked,
}

/// An answer read off a raw connection.
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawAnswer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// The body as a problem, asserting the content type.
    fn problem(&self) -> Value {
        assert_eq!(self.header("content-type"), "application/problem+json");
        serde_json::from_str(&self.body).expect("a JSON problem")
    }
}

/// Parses one HTTP/1.1 answer with a `Content-Length` body; `None` while incomplete.
fn parse_answer(bytes: &[u8]) -> Option<(RawAnswer, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("a length"))
        .unwrap_or(0);
    let total = end + 4 + length;
    if bytes.len() < total {
        return None;
    }
    let body = String::from_utf8_lossy(&bytes[end + 4..total]).into_owned();
    Some((
        RawAnswer {
            status,
            headers,
            body,
        },
        total,
    ))
}

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.address.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("the gateway's port")
}

/// Opens a connection and sends a `POST /sync` with `token` whose body starts and never ends.
async fn slow_post(app: &TestApp, token: &str, framing: Framing) -> TcpStream {
    let mut s = connect(app).await;
    send_slow_post(&mut s, token, framing).await;
    s
}

async fn send_slow_post(s: &mut TcpStream, token: &str, framing: Framing) {
    let (framing, start) = match framing {
        Framing::Length => ("Content-Length: 4000", "{"),
        Framing::Chunked => ("Transfer-Encoding: chunked", "1\r\n{\r\n"),
    };
    let head = format!(
        "POST /sync HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n{start}"
    );
    s.write_all(head.as_bytes()).await.unwrap();
}

/// Reads one answer and then waits for the gateway to close the connection (at most 30 s: a
/// connection left open fails the test here).
async fn answer_then_close(mut s: TcpStream) -> RawAnswer {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("the gateway answers and closes the connection")
        .expect("the connection reads");
    parse_answer(&buf).expect("a complete answer").0
}

/// Reads one answer off a connection that stays open (at most 30 s).
async fn one_answer(s: &mut TcpStream) -> RawAnswer {
    let mut buf = Vec::new();
    let read = async {
        loop {
            if let Some((a, _)) = parse_answer(&buf) {
                return a;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("the connection reads");
            assert!(n > 0, "the gateway closed the connection before answering");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("an answer")
}

/// The request record whose id the problem's `instance` names.
fn record_of(app: &TestApp, problem: &Value) -> Value {
    let instance = problem["instance"].as_str().expect("an instance");
    let id = instance.strip_prefix("urn:uuid:").expect("a urn:uuid");
    app.audit_of_kind("request")
        .into_iter()
        .find(|r| r["id"] == id)
        .expect("a request record for the instance")
}

/// Polls `/metrics` until `n` `POST /sync` requests are in flight (or panics after 10 s).
async fn wait_in_flight(app: &TestApp, n: f64) {
    for _ in 0..500 {
        if app.metric("sync_gateway_sync_requests_in_flight").await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never {n} requests in flight");
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408_and_audited() {
    let app = spawn_app_with(Setup::default().set("server.request_timeout_seconds", "1")).await;
    let slow = slow_post(&app, &app.token(), Framing::Length).await;
    let answer = answer_then_close(slow).await;
    assert_eq!(answer.status, 408);
    let problem = answer.problem();
    assert_eq!(problem["type"], problem_type("request-timeout"));
    let record = record_of(&app, &problem);
    assert_eq!(record["status"], 408);
    assert_eq!(record["code"], "request-timeout");
    assert_eq!(record["decision"], "denied");
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_chunked_body_that_never_ends_is_answered_408_and_its_connection_closed() {
    let app = spawn_app_with(Setup::default().set("server.request_timeout_seconds", "1")).await;
    let slow = slow_post(&app, &app.token(), Framing::Chunked).await;
    let answer = answer_then_close(slow).await;
    assert_eq!(answer.status, 408);
    assert_eq!(answer.problem()["type"], problem_type("request-timeout"));
}

#[tokio::test]
async fn a_refusal_closes_the_connection_of_a_chunked_body_that_never_ends() {
    let app = spawn_app_with(Setup::default()).await;
    // Refused before the body is read (no valid token); actix would otherwise drain the body.
    let slow = slow_post(&app, "not-a-token", Framing::Chunked).await;
    let answer = answer_then_close(slow).await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_413_before_any_body_is_sent() {
    let app = spawn_app_with(Setup::default()).await;
    let mut s = connect(&app).await;
    let head = format!(
        "POST /sync HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        app.token()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = answer_then_close(s).await;
    assert_eq!(answer.status, 413);
    let problem = answer.problem();
    assert_eq!(problem["type"], problem_type("payload-too-large"));
    let record = record_of(&app, &problem);
    assert_eq!(record["status"], 413);
    assert_eq!(record["code"], "payload-too-large");
    // Refused before the token was even looked at: nothing was exchanged.
    assert!(record["caller"].is_null(), "{record}");
    assert_eq!(app.sims.entra.token_requests(), 0);
}

#[tokio::test]
async fn one_caller_holding_its_cap_of_slow_bodies_leaves_health_and_other_callers_served() {
    let app = spawn_app_with(
        Setup::default()
            .set("limits.max_in_flight_per_caller", "3")
            .set("server.request_timeout_seconds", "6"),
    )
    .await;
    let hog = app.token();
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(slow_post(&app, &hog, Framing::Length).await);
    }
    wait_in_flight(&app, 3.0).await;

    // The same caller's next request is refused at once, without its body being waited for.
    let extra = app.post_sync(&hog).await;
    assert_eq!(extra.status(), 429);
    assert_eq!(crate::helpers::header(&extra, "retry-after"), "1");
    let problem = crate::helpers::problem_of(extra).await;
    assert_eq!(problem["type"], problem_type("too-many-in-flight"));
    assert_eq!(record_of(&app, &problem)["code"], "too-many-in-flight");

    // Everyone else is served.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);

    // The slow requests end with 408 once their deadline passes, each recorded.
    for s in slow {
        let answer = answer_then_close(s).await;
        assert_eq!(answer.status, 408);
        let problem = answer.problem();
        assert_eq!(problem["type"], problem_type("request-timeout"));
        let record = record_of(&app, &problem);
        assert_eq!(record["status"], 408);
        assert_eq!(record["code"], "request-timeout");
    }
    let timed_out = app
        .audit_of_kind("request")
        .into_iter()
        .filter(|r| r["code"] == "request-timeout")
        .count();
    assert_eq!(timed_out, 3);
}

#[tokio::test]
async fn a_connection_beyond_server_max_connections_waits_until_one_closes() {
    let app = spawn_app_with(
        Setup::default()
            .set("server.max_connections", "2")
            .set("limits.max_in_flight_per_caller", "1")
            .set("server.request_timeout_seconds", "60"),
    )
    .await;
    // Two connections, each proven served, then held by a body that does not arrive.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&app).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(one_answer(&mut s).await.status, 200);
        send_slow_post(&mut s, &app.token(), Framing::Length).await;
        held.push(s);
    }

    // A third is not served while both are held: nothing arrives within a second (an
    // observation window, not a speed requirement: both are held for 60 s).
    let mut third = connect(&app).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(1), third.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "a third connection was served beyond the cap"
    );

    // Closing one lets it in.
    drop(held.remove(0));
    assert_eq!(one_answer(&mut third).await.status, 200);
}

#[tokio::test]
async fn a_chunked_body_that_never_ends_does_not_keep_a_connection_to_another_route() {
    let app = spawn_app_with(Setup::default()).await;
    for (path, status) in [("/healthz", 200), ("/sync/status", 401), ("/nowhere", 404)] {
        let mut s = connect(&app).await;
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{{\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let answer = answer_then_close(s).await;
        assert_eq!(answer.status, status, "{path}");
    }
}

#[tokio::test]
async fn a_status_read_shares_the_callers_in_flight_cap_but_a_run_read_does_not() {
    let app = spawn_app_with(
        Setup::default()
            .set("limits.max_in_flight_per_caller", "1")
            .set("server.request_timeout_seconds", "6"),
    )
    .await;
    let hog = app.token();
    let run: Value = app.post_sync(&hog).await.json().await.unwrap();
    let slow = slow_post(&app, &hog, Framing::Length).await;
    wait_in_flight(&app, 1.0).await;

    // GET /sync/status calls Graph, so it needs a slot the slow body holds.
    let status = app.get_as("/sync/status", &hog).await;
    assert_eq!(status.status(), 429);
    let problem = crate::helpers::problem_of(status).await;
    assert_eq!(problem["type"], problem_type("too-many-in-flight"));
    // Reading a run touches memory only: no slot needed.
    let read = app
        .http
        .get(format!(
            "{}/sync/runs/{}",
            app.address,
            run["id"].as_str().unwrap()
        ))
        .bearer_auth(&hog)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(answer_then_close(slow).await.status, 408);
}
