//! HTTP as a hostile or careless client speaks it: duplicate credentials, wrong methods on every
//! route, malformed requests the HTTP parser refuses, and the audit id on every problem answer.

use crate::helpers::{header, problem_of, problem_type, spawn_app, TestApp};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Asserts that `p` names the request record the gateway wrote for it, and returns that record.
fn record_named_by(app: &TestApp, p: &Value) -> Value {
    let instance = p["instance"].as_str().expect("the problem has an instance");
    let id = instance
        .strip_prefix("urn:uuid:")
        .expect("instance is a urn:uuid");
    app.audit_of_kind("request")
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no request record with id {id}"))
}

#[tokio::test]
async fn two_authorization_headers_are_refused_with_400_whichever_comes_first() {
    let app = spawn_app().await;
    let valid = format!("Bearer {}", app.token());
    for pair in [
        [valid.as_str(), "Bearer x.y.z"],
        ["Bearer x.y.z", valid.as_str()],
    ] {
        let resp = app
            .http
            .post(format!("{}/sync", app.address))
            .header("Authorization", pair[0])
            .header("Authorization", pair[1])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(header(&resp, "content-type"), "application/problem+json");
        let p = problem_of(resp).await;
        assert_eq!(p["type"], problem_type("bad-request"));
        assert!(p["detail"]
            .as_str()
            .unwrap()
            .contains("more than one Authorization"));
        let record = record_named_by(&app, &p);
        assert_eq!(record["decision"], "denied");
        assert_eq!(record["code"], "bad-request");
    }
    assert_eq!(
        app.sims.entra.token_requests(),
        0,
        "an exchange was attempted"
    );
    assert_eq!(app.sims.graph.sync_calls(), 0, "Graph was called");
}

const READ_ROUTES: [&str; 5] = [
    "/sync/runs/0193a7e4-0000-7000-8000-000000000000",
    "/sync/status",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// Every method but the ones a route serves, including an extension method.
const OTHER_METHODS: [&str; 7] = [
    "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PURGE",
];

#[tokio::test]
async fn wrong_methods_on_every_read_route_answer_405_with_allow_get_and_head() {
    let app = spawn_app().await;
    for route in READ_ROUTES {
        for method in OTHER_METHODS {
            let resp = app
                .http
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{route}", app.address),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 405, "{method} {route}");
            assert_eq!(header(&resp, "allow"), "GET, HEAD", "{method} {route}");
            let p = problem_of(resp).await;
            assert_eq!(p["type"], problem_type("method-not-allowed"));
            let record = record_named_by(&app, &p);
            assert_eq!(record["status"], 405);
        }
    }
    assert_eq!(
        app.audit_of_kind("request").len(),
        READ_ROUTES.len() * OTHER_METHODS.len()
    );
}

#[tokio::test]
async fn head_is_served_wherever_get_is() {
    let app = spawn_app().await;
    for (route, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        // No token: the same refusal GET gets, not a 405.
        ("/sync/status", 401),
        (READ_ROUTES[0], 401),
    ] {
        let resp = app
            .http
            .head(format!("{}{route}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "HEAD {route}");
        assert!(
            resp.bytes().await.unwrap().is_empty(),
            "HEAD {route} has a body"
        );
    }
}

#[tokio::test]
async fn wrong_methods_on_sync_answer_405_with_allow_post() {
    let app = spawn_app().await;
    for method in ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
        let resp = app
            .http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/sync", app.address),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} /sync");
        assert_eq!(header(&resp, "allow"), "POST");
    }
}

#[tokio::test]
async fn an_unknown_path_answers_404_problem_naming_its_audit_record() {
    let app = spawn_app().await;
    let resp = app.get("/admin?token=should-not-be-recorded").await;
    assert_eq!(resp.status(), 404);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("not-found"));
    let record = record_named_by(&app, &p);
    assert_eq!(record["route"], "unmatched");
    assert_eq!(record["method"], "GET");
    assert!(
        !app.audit_text().contains("should-not-be-recorded"),
        "the raw path reached the trail"
    );
}

#[tokio::test]
async fn reading_a_run_without_a_token_answers_401_naming_its_audit_record() {
    let app = spawn_app().await;
    let resp = app.get(READ_ROUTES[0]).await;
    assert_eq!(resp.status(), 401);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("missing-credentials"));
    let record = record_named_by(&app, &p);
    assert_eq!(record["route"], "/sync/runs/{id}");
    assert_eq!(record["decision"], "denied");
    assert_eq!(record["code"], "missing-credentials");
}

#[tokio::test]
async fn reads_of_runs_and_status_are_audited_with_their_route() {
    let app = spawn_app().await;
    let token = app.token();
    let run: Value = app.post_sync(&token).await.json().await.unwrap();
    let id = run["id"].as_str().unwrap();
    for path in [format!("/sync/runs/{id}"), "/sync/status".to_string()] {
        let resp = app
            .http
            .get(format!("{}{path}", app.address))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let records = app.audit_of_kind("request");
    let routes: Vec<&str> = records
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["/sync", "/sync/runs/{id}", "/sync/status"]);
    assert!(records.iter().all(|r| r["decision"] == "allowed"));
    assert_eq!(records[1]["run_id"], id);
}

#[tokio::test]
async fn a_status_read_graph_cannot_answer_is_a_502_naming_its_audit_record() {
    let app = spawn_app().await;
    let token = app.token();
    app.sims.graph.stop().await;
    let resp = app.get_as("/sync/status", &token).await;
    assert_eq!(resp.status(), 502);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("upstream-failed"));
    let record = record_named_by(&app, &p);
    assert_eq!(record["status"], 502);
    assert_eq!(record["code"], "upstream-failed");
}

/// Sends `raw` on a fresh connection and reads the answer until the gateway closes it.
async fn raw_exchange(app: &TestApp, raw: &[u8]) -> String {
    let addr = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the gateway kept the connection open");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The answers actix-web's HTTP/1 parser gives before any handler runs. They cannot be shaped
/// (actix-http builds them in its dispatcher), so the README's error table lists them as
/// answers without a body; this test keeps that table true.
#[tokio::test]
async fn requests_the_http_parser_refuses_get_a_bare_status_and_no_handler_runs() {
    let app = spawn_app().await;
    let huge = "a".repeat(256 * 1024);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "oversized headers",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").into_bytes(),
            "HTTP/1.1 431",
        ),
        (
            "HTTP/1.1 without Host",
            b"POST /sync HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "Content-Length with Transfer-Encoding",
            b"POST /sync HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}"
                .to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "two Content-Length headers",
            b"POST /sync HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
                .to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "NUL in a header value",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
    ];
    for (what, raw, status_line) in cases {
        let answer = raw_exchange(&app, &raw).await;
        assert!(answer.starts_with(status_line), "{what}: {answer:?}");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(body.is_empty(), "{what}: a body {body:?}");
        assert!(
            !head.to_ascii_lowercase().contains("content-type"),
            "{what}: {head:?}"
        );
    }
    assert!(
        app.audit_of_kind("request").is_empty(),
        "a refused request reached a handler"
    );
}
