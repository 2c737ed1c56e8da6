//! W3C Trace Context: a caller's trace is continued into the audit record, the log line and
//! the calls to Entra ID and Graph; a request without one starts a new trace.

use crate::helpers::spawn_app;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn a_callers_trace_reaches_the_audit_record_the_log_and_graph() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(format!("{}/sync", app.address))
        .bearer_auth(app.token())
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let record = app.only_request_record();
    assert_eq!(record["trace_id"], TRACE);
    let calls = app.sims.graph.calls();
    assert_eq!(calls.len(), 1);
    let sent = calls[0]
        .traceparent
        .clone()
        .expect("Graph got a traceparent");
    assert!(sent.starts_with(&format!("00-{TRACE}-")), "{sent}");
    // A span of the gateway's own, not the caller's.
    assert!(!sent.contains("00f067aa0ba902b7"), "{sent}");
    assert!(sent.ends_with("-01"), "{sent}");
    // The on-behalf-of exchange at Entra ID carries it too.
    let exchange = app
        .sims
        .entra
        .token_request_log()
        .into_iter()
        .find(|t| t.grant_type == "urn:ietf:params:oauth:grant-type:jwt-bearer")
        .expect("an exchange");
    let sent_to_entra = exchange.traceparent.expect("Entra got a traceparent");
    assert!(
        sent_to_entra.starts_with(&format!("00-{TRACE}-")),
        "{sent_to_entra}"
    );
    let audit_id = record["id"].as_str().unwrap();
    assert!(
        crate::helpers::logs()
            .lines()
            .any(|l| l.contains(audit_id) && l.contains(TRACE)),
        "no log line carries the trace id"
    );
}

#[tokio::test]
async fn a_request_without_a_trace_starts_one() {
    let app = spawn_app().await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let record = app.only_request_record();
    let trace = record["trace_id"].as_str().expect("a trace id");
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, TRACE);
    let sent = app.sims.graph.calls()[0].traceparent.clone().unwrap();
    assert!(sent.contains(trace), "{sent}");
}
