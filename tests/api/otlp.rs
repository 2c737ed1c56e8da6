//! OpenTelemetry export (`telemetry.otlp_endpoint`): a local OTLP/HTTP receiver records what the
//! gateway posts to `/v1/traces`; the spans carry the caller's trace, the server span's parent
//! is the caller's span, and the Entra and Graph call spans have the span ids their
//! `traceparent` named. Without an endpoint nothing is built and nothing is sent.

use crate::helpers::{spawn_app_with, Setup};
use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver on a free loopback port; the bodies of the POSTs to `/v1/traces`.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    fn start() -> Receiver {
        let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let kept = bodies.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            let kept = kept.clone();
            App::new().route(
                "/v1/traces",
                web::post().to(move |body: web::Bytes| {
                    let kept = kept.clone();
                    async move {
                        kept.lock().unwrap().push(body.to_vec());
                        HttpResponse::Ok()
                            .content_type("application/x-protobuf")
                            .body(Vec::new())
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            port,
            bodies,
            handle,
        }
    }

    fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| ExportTraceServiceRequest::decode(b.as_slice()).expect("OTLP protobuf"))
            .collect()
    }

    fn spans(&self) -> Vec<Span> {
        self.requests()
            .into_iter()
            .flat_map(|r| r.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The span id of a `traceparent`.
fn span_of(traceparent: &str) -> String {
    traceparent.split('-').nth(2).unwrap().to_string()
}

fn text_attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

#[tokio::test]
async fn spans_of_a_sync_request_are_exported_in_the_callers_trace_without_its_token() {
    let receiver = Receiver::start();
    let mut app = spawn_app_with(Setup::default().set(
        "telemetry.otlp_endpoint",
        &format!("\"http://127.0.0.1:{}\"", receiver.port),
    ))
    .await;
    assert!(app.otel.is_some(), "the exporter is built");
    let token = app.token();
    let resp = app
        .http
        .post(format!("{}/sync", app.address))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // A graceful stop flushes the exporter; then wait, bounded, for the receiver to have it all.
    app.stop().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = receiver.spans();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        if ["POST /sync", "graph sync", "entra token"]
            .iter()
            .all(|n| names.contains(n))
        {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans not exported: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let requests = receiver.requests();
    let service = requests[0].resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        });
    assert_eq!(service.as_deref(), Some("sync-gateway"));

    // Every span is in the caller's trace (the one the audit record names).
    let record = app.only_request_record();
    assert_eq!(record["trace_id"], TRACE);
    for s in &spans {
        assert_eq!(hex(&s.trace_id), TRACE, "{}", s.name);
    }
    let server: Vec<&Span> = spans.iter().filter(|s| s.name == "POST /sync").collect();
    assert_eq!(server.len(), 1);
    let server = server[0];
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(text_attr(server, "http.route").as_deref(), Some("/sync"));
    assert_eq!(
        text_attr(server, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        text_attr(server, "http.response.status_code").as_deref(),
        Some("202")
    );
    assert_eq!(
        text_attr(server, "sync_gateway.audit_id").as_deref(),
        record["id"].as_str()
    );

    // The Graph call's span is the one its traceparent named, a child of the server span.
    let graph_calls = app.sims.graph.calls();
    assert_eq!(graph_calls.len(), 1);
    let sent_to_graph = span_of(graph_calls[0].traceparent.as_deref().unwrap());
    let graph: Vec<&Span> = spans.iter().filter(|s| s.name == "graph sync").collect();
    assert_eq!(graph.len(), 1);
    assert_eq!(graph[0].kind, SpanKind::Client as i32);
    assert_eq!(hex(&graph[0].span_id), sent_to_graph);
    assert_eq!(graph[0].parent_span_id, server.span_id);
    assert_eq!(
        text_attr(graph[0], "http.response.status_code").as_deref(),
        Some("204")
    );

    // So is the on-behalf-of exchange's at Entra ID.
    let exchange = app
        .sims
        .entra
        .token_request_log()
        .into_iter()
        .find(|t| t.grant_type == "urn:ietf:params:oauth:grant-type:jwt-bearer")
        .expect("an exchange");
    let sent_to_entra = span_of(exchange.traceparent.as_deref().unwrap());
    let entra: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "entra token"
                && text_attr(s, "sync_gateway.grant").as_deref() == Some("on_behalf_of")
        })
        .collect();
    assert_eq!(entra.len(), 1);
    assert_eq!(hex(&entra[0].span_id), sent_to_entra);
    assert_eq!(entra[0].parent_span_id, server.span_id);

    // No token in what was exported: not the caller's, nor any the simulated Entra issued.
    let exported: Vec<u8> = receiver.bodies.lock().unwrap().concat();
    let exported = String::from_utf8_lossy(&exported);
    let mut needles = app.sims.entra.issued_secrets();
    needles.push(token.clone());
    for secret in needles {
        assert!(!exported.contains(&secret), "a token was exported");
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() >= 32) {
            assert!(!exported.contains(sig), "a token's signature was exported");
        }
    }
    for s in &spans {
        for a in &s.attributes {
            let v = format!("{:?}", a.value);
            assert!(!v.contains(&token), "{} carries the caller's token", a.key);
        }
    }
    receiver.handle.stop(false).await;
}

#[tokio::test]
async fn without_an_otlp_endpoint_nothing_is_built_and_nothing_is_sent() {
    let receiver = Receiver::start();
    // A [telemetry] section without an endpoint is still off.
    let mut app = spawn_app_with(Setup::default().set("telemetry.service_name", "\"other\"")).await;
    assert!(
        app.otel.is_none(),
        "no exporter without telemetry.otlp_endpoint"
    );
    let resp = app
        .http
        .post(format!("{}/sync", app.address))
        .bearer_auth(app.token())
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // Shut down, which would flush an exporter if there were one.
    app.stop().await;
    assert_eq!(receiver.bodies.lock().unwrap().len(), 0);
    receiver.handle.stop(false).await;
}

#[tokio::test]
async fn a_collector_that_is_down_never_affects_requests_or_the_stop() {
    // A port nobody listens on: every export fails (connection refused).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut app = spawn_app_with(
        Setup::default()
            .set(
                "telemetry.otlp_endpoint",
                &format!("\"http://127.0.0.1:{port}\""),
            )
            .set("telemetry.otlp_timeout_seconds", "1"),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    }
    // The failed exports are flushed (and fail) at the stop, which still completes.
    app.otel.as_ref().unwrap().flush().await;
    assert!(
        crate::helpers::logs().contains("spans could not be exported to the OTLP collector"),
        "the failed export is logged"
    );
    app.stop().await;
    assert_eq!(app.audit_of_kind("request").len(), 3);
}
