//! Webhooks and chat-ops (`POST /hooks/{source}`): every kind verified as its sender signs,
//! replays refused, answers in each sender's own format within its deadline, follow-ups posted
//! only where allowed, and every delivery in the audit trail.
//!
//! One gateway per test with one source per kind (named after the kind), each with two
//! secrets (the older first, as during a rotation), acting as the service identity `bot`.

use crate::helpers::{problem_of, problem_type, spawn_app_with, Prepare, Setup, TestApp};
use aws_lc_rs::signature::Ed25519KeyPair;
use chrono::{Duration as Age, Utc};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_gateway::config::HookKind;
use sync_gateway::credentials::login::{login, Pacer};
use sync_gateway::sim::entra::{DeviceOutcome, DeviceScript, DeviceUser};
use sync_gateway::sim::hooks::{discord_key_pair, new_secret, sample_body, sign, SigningKey};
use tokio::sync::Notify;

const SERVICE_ACCOUNT: &str = "svc-hooks@contoso.example";

/// What a follow-up receiver got: method, path, JSON body.
type Received = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A local `response_url` / Discord API receiver on plain HTTP (loopback is allowed plain).
struct Receiver {
    base: String,
    received: Received,
    arrived: Arc<Notify>,
    _server: actix_web::dev::ServerHandle,
}

impl Receiver {
    async fn start() -> Receiver {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        let received: Received = Arc::default();
        let arrived = Arc::new(Notify::new());
        let (r, a) = (received.clone(), arrived.clone());
        let server = HttpServer::new(move || {
            let (r, a) = (r.clone(), a.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (r, a) = (r.clone(), a.clone());
                async move {
                    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    r.lock().unwrap().push((
                        req.method().to_string(),
                        req.path().to_string(),
                        json,
                    ));
                    a.notify_waiters();
                    // A path asking for it is redirected elsewhere (a follow-up must not follow).
                    if req.path().contains("redirect-me") {
                        return HttpResponse::TemporaryRedirect()
                            .insert_header(("Location", "/elsewhere"))
                            .finish();
                    }
                    HttpResponse::Ok().finish()
                }
            }))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            base: format!("http://127.0.0.1:{port}"),
            received,
            arrived,
            _server: handle,
        }
    }

    fn received(&self) -> Vec<(String, String, Value)> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (at most 20 s) until `n` posts have arrived.
    async fn wait_for(&self, n: usize) -> Vec<(String, String, Value)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.received();
            }
        }
    }
}

/// The gateway, its sources' keys and the follow-up receiver.
struct HookApp {
    app: TestApp,
    /// Per kind: the older and the newer secret (both configured).
    secrets: HashMap<HookKind, (String, String)>,
    discord: Arc<Ed25519KeyPair>,
    receiver: Receiver,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Waits no time between device-code polls.
struct NoWait;

impl Pacer for NoWait {
    fn pause(&mut self, _d: Duration) -> impl std::future::Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// A gateway with one source per kind; `tune` adds to the setup (Intune's rule, a clock,
/// source options as `hooks.<kind>.<key>` entries).
async fn spawn_hooks_with(setup: Setup) -> HookApp {
    spawn_hooks_with_more(setup, |_| Vec::new()).await
}

/// [`spawn_hooks_with`], with more entries once the tenant is known (they win over the defaults).
async fn spawn_hooks_with_more(
    setup: Setup,
    more: fn(&Prepare<'_>) -> Vec<(String, String)>,
) -> HookApp {
    let receiver = Receiver::start().await;
    let secrets: HashMap<HookKind, (String, String)> = HookKind::ALL
        .into_iter()
        .filter(|k| *k != HookKind::Discord)
        .map(|k| (k, (new_secret(k), new_secret(k))))
        .collect();
    let (pair, public_key) = discord_key_pair();
    let (files, base) = (secrets.clone(), receiver.base.clone());
    // A test's own settings win over these defaults (the later entry of a key wins).
    let explicit: BTreeSet<String> = setup.config.iter().map(|(k, _)| k.clone()).collect();
    let setup = Setup {
        prepare: Some(Box::new(move |p: &Prepare<'_>| {
            let key_file = p.dir.join("store.key");
            use base64::Engine;
            std::fs::write(
                &key_file,
                base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
            )
            .unwrap();
            let mut entries = vec![
                ("identities.bot.tenant_id".into(), quoted(p.tenant)),
                (
                    "identities.bot.store_path".into(),
                    quoted(&p.dir.join("bot.session").display().to_string()),
                ),
                (
                    "identities.bot.store_key_file".into(),
                    quoted(&key_file.display().to_string()),
                ),
            ];
            for kind in HookKind::ALL {
                let name = kind.as_str();
                let set = |k: &str, v: String| (format!("hooks.{name}.{k}"), v);
                entries.push(set("kind", quoted(name)));
                entries.push(set("run_as", quoted("bot")));
                entries.push(set("limits", "{ per_minute = 6000, burst = 1000 }".into()));
                match files.get(&kind) {
                    Some((old, new)) => {
                        let path = p.dir.join(format!("{name}.secrets"));
                        std::fs::write(&path, format!("{old}\n{new}\n")).unwrap();
                        entries.push(set("secrets_file", quoted(&path.display().to_string())));
                    }
                    None => entries.push(set("public_key", quoted(&public_key))),
                }
                match kind {
                    HookKind::Slack | HookKind::Mattermost => {
                        entries.push(set("response_url_hosts", "[\"127.0.0.1\"]".into()))
                    }
                    HookKind::Discord => entries.push(set("api_base_url", quoted(&base))),
                    _ => {}
                }
            }
            entries.retain(|(k, _)| !explicit.contains(k));
            entries.extend(more(p));
            entries
        })),
        ..setup
    };
    let app = spawn_app_with(setup).await;
    app.sims.entra.script_device_login(Some(DeviceScript {
        slow_downs: 0,
        pending_polls: 0,
        outcome: DeviceOutcome::Approve(DeviceUser::named(SERVICE_ACCOUNT)),
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    login(&app.config, "bot", http, &mut NoWait, &mut Vec::new())
        .await
        .expect("the service identity signs in");
    HookApp {
        app,
        secrets,
        discord: Arc::new(pair),
        receiver,
    }
}

async fn spawn_hooks() -> HookApp {
    spawn_hooks_with(Setup::default()).await
}

/// Which key signs: the configured older or newer secret, or one nobody configured.
#[derive(Clone, Copy, PartialEq)]
enum Key {
    Old,
    New,
    Wrong,
}

impl HookApp {
    /// `kind`'s sample body with `id` as its delivery id, its follow-up URL on the receiver.
    fn body(&self, kind: HookKind, id: &str) -> Vec<u8> {
        let body = sample_body(kind, id);
        match kind {
            HookKind::Slack | HookKind::Mattermost => {
                let url = format!("{}/commands/{id}/secret-path", self.receiver.base);
                let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body)
                    .map(|(k, v)| {
                        let v = if k == "response_url" {
                            url.clone()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields)
                    .finish()
                    .into_bytes()
            }
            _ => body,
        }
    }

    /// The headers `kind`'s sender sends with `body` at `at`, signed with `key`.
    fn sign(
        &self,
        kind: HookKind,
        key: Key,
        body: &[u8],
        at: chrono::DateTime<Utc>,
        id: &str,
    ) -> Vec<(String, String)> {
        if kind == HookKind::Discord {
            let pair = match key {
                Key::Wrong => Arc::new(discord_key_pair().0),
                _ => self.discord.clone(),
            };
            return sign(kind, SigningKey::Ed25519(&pair), body, at, id);
        }
        let (old, new) = &self.secrets[&kind];
        let wrong = new_secret(kind);
        let secret = match key {
            Key::Old => old,
            Key::New => new,
            Key::Wrong => &wrong,
        };
        sign(kind, SigningKey::Secret(secret), body, at, id)
    }

    async fn post(
        &self,
        kind: HookKind,
        body: Vec<u8>,
        headers: &[(String, String)],
    ) -> reqwest::Response {
        let mut request = self
            .app
            .http
            .post(format!("{}/hooks/{}", self.app.address, kind.as_str()))
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send().await.unwrap()
    }

    /// A delivery signed now with `key`.
    async fn deliver(&self, kind: HookKind, key: Key, id: &str) -> reqwest::Response {
        let body = self.body(kind, id);
        let headers = self.sign(kind, key, &body, Utc::now(), id);
        self.post(kind, body, &headers).await
    }

    /// The request records of hook requests, oldest first.
    fn hook_records(&self) -> Vec<Value> {
        self.app
            .audit_of_kind("request")
            .into_iter()
            .filter(|r| r["entrance"] == "hook")
            .collect()
    }

    /// The one hook record of delivery `id`'s latest request.
    fn record_of(&self, id: &str) -> Value {
        self.hook_records()
            .into_iter()
            .rev()
            .find(|r| r["hook"]["delivery_id"] == id)
            .unwrap_or_else(|| panic!("no hook record of delivery {id}"))
    }
}

/// 202 for ticketing kinds, 200 (the platform's reply) for chat kinds.
fn accepted_status(kind: HookKind) -> u16 {
    if kind.is_chat() {
        200
    } else {
        202
    }
}

fn id(kind: HookKind, what: &str) -> String {
    format!("{}-{what}-{}", kind.as_str(), uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn every_kind_accepts_a_delivery_signed_as_its_sender_signs_and_joins_a_run() {
    let h = spawn_hooks().await;
    for kind in HookKind::ALL {
        let id = id(kind, "valid");
        let resp = h.deliver(kind, Key::New, &id).await;
        assert_eq!(resp.status().as_u16(), accepted_status(kind), "{kind:?}");
        let record = h.record_of(&id);
        assert_eq!(record["hook"]["outcome"], "accepted", "{kind:?}");
        assert_eq!(record["hook"]["source"], kind.as_str());
        assert_eq!(record["hook"]["kind"], kind.as_str());
        assert_eq!(record["caller"]["kind"], "hook");
        assert_eq!(record["acting_as"]["identity"], "bot");
        assert!(record["run_id"].is_string(), "{kind:?}: {record}");
        assert_eq!(record["decision"], "allowed");
    }
}

#[tokio::test]
async fn every_kind_accepts_the_second_secret_of_a_rotation() {
    let h = spawn_hooks().await;
    for kind in HookKind::ALL
        .into_iter()
        .filter(|k| *k != HookKind::Discord)
    {
        let id = id(kind, "rotated");
        let resp = h.deliver(kind, Key::Old, &id).await;
        assert_eq!(resp.status().as_u16(), accepted_status(kind), "{kind:?}");
        assert_eq!(h.record_of(&id)["hook"]["outcome"], "accepted");
    }
}

#[tokio::test]
async fn every_kind_that_signs_its_body_refuses_a_tampered_body_with_401_and_joins_nothing() {
    let h = spawn_hooks().await;
    // GitLab's classic token and Mattermost's token sign nothing: their senders prove only that
    // they know the token, so a changed body cannot be told from an original (the README says
    // so; prefer GitLab's signing tokens, kind standard-webhooks).
    let signing = HookKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, HookKind::Gitlab | HookKind::Mattermost));
    for kind in signing {
        let id = id(kind, "tampered");
        let body = h.body(kind, &id);
        let headers = h.sign(kind, Key::New, &body, Utc::now(), &id);
        let mut tampered = body.clone();
        // One byte changed in the middle, where every kind's body has a letter.
        let i = tampered.len() / 2;
        tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
        let resp = h.post(kind, tampered, &headers).await;
        assert_eq!(resp.status(), 401, "{kind:?}");
        assert!(resp.headers().contains_key("www-authenticate"));
        assert_eq!(
            problem_of(resp).await["type"],
            problem_type("invalid-signature")
        );
        let last = h.hook_records().pop().unwrap();
        assert_eq!(last["hook"]["source"], kind.as_str());
        assert_eq!(last["hook"]["outcome"], "refused");
        assert_eq!(last["code"], "invalid-signature");
        assert!(last["run_id"].is_null());
    }
    assert_eq!(h.app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn every_kind_refuses_a_secret_it_was_not_given_with_401() {
    let h = spawn_hooks().await;
    for kind in HookKind::ALL {
        let resp = h.deliver(kind, Key::Wrong, &id(kind, "wrong")).await;
        assert_eq!(resp.status(), 401, "{kind:?}");
        assert_eq!(
            problem_of(resp).await["type"],
            problem_type("invalid-signature")
        );
        let last = h.hook_records().pop().unwrap();
        assert_eq!(last["decision"], "denied");
        assert!(last["run_id"].is_null());
    }
    assert_eq!(h.app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_signed_timestamp_more_than_five_minutes_old_or_ahead_is_refused() {
    let h = spawn_hooks().await;
    let signs_time: Vec<HookKind> = HookKind::ALL
        .into_iter()
        .filter(|k| k.signs_timestamp())
        .collect();
    assert_eq!(
        signs_time.len(),
        4,
        "standard-webhooks, slack, zendesk, discord"
    );
    for kind in signs_time {
        for age in [Age::seconds(-301), Age::seconds(301)] {
            let id = id(kind, "stale");
            let body = h.body(kind, &id);
            let headers = h.sign(kind, Key::New, &body, Utc::now() - age, &id);
            let resp = h.post(kind, body, &headers).await;
            assert_eq!(resp.status(), 401, "{kind:?} {age}");
            let detail = problem_of(resp).await["detail"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(detail.contains("tolerance"), "{kind:?}: {detail}");
        }
        // Within the tolerance it is fine.
        let id = id(kind, "fresh");
        let body = h.body(kind, &id);
        let headers = h.sign(kind, Key::New, &body, Utc::now() - Age::seconds(240), &id);
        assert_eq!(
            h.post(kind, body, &headers).await.status().as_u16(),
            accepted_status(kind)
        );
    }
}

#[tokio::test]
async fn every_kind_refuses_a_delivery_without_its_signature_headers_with_401() {
    let h = spawn_hooks().await;
    for kind in HookKind::ALL {
        let id = id(kind, "unsigned");
        let body = h.body(kind, &id);
        let content_type = h.sign(kind, Key::New, &body, Utc::now(), &id)[0].clone();
        let resp = h.post(kind, body, &[content_type]).await;
        assert_eq!(resp.status(), 401, "{kind:?}");
        assert_eq!(
            problem_of(resp).await["type"],
            problem_type("invalid-signature")
        );
        let last = h.hook_records().pop().unwrap();
        assert_eq!(last["hook"]["source"], kind.as_str());
        assert_eq!(last["hook"]["outcome"], "refused");
        assert!(last["run_id"].is_null());
    }
    assert_eq!(h.app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_signature_header_sent_twice_is_refused_with_401() {
    let h = spawn_hooks().await;
    let kind = HookKind::Github;
    let id = id(kind, "twice");
    let body = h.body(kind, &id);
    let mut headers = h.sign(kind, Key::New, &body, Utc::now(), &id);
    let signature = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-hub-signature-256"))
        .unwrap()
        .clone();
    headers.push(signature);
    assert_eq!(h.post(kind, body, &headers).await.status(), 401);
}

#[tokio::test]
async fn a_delivery_sent_again_is_answered_2xx_as_a_duplicate_and_joins_nothing() {
    let h = spawn_hooks().await;
    for kind in HookKind::ALL {
        let id = id(kind, "dup");
        let first = h.deliver(kind, Key::New, &id).await;
        assert_eq!(first.status().as_u16(), accepted_status(kind), "{kind:?}");
        let run = h.record_of(&id)["run_id"].clone();
        // The sender's retry: the same delivery, signed again (a fresh timestamp).
        let again = h.deliver(kind, Key::New, &id).await;
        assert_eq!(again.status(), 200, "{kind:?}");
        let record = h.record_of(&id);
        assert_eq!(record["hook"]["outcome"], "duplicate", "{kind:?}");
        assert_eq!(
            record["run_id"], run,
            "{kind:?}: a duplicate names the first run"
        );
        if !kind.is_chat() {
            let body: Value = again.json().await.unwrap();
            assert_eq!(body["status"], "duplicate");
        }
    }
    // Graph was called at most once per accepted delivery, never for a duplicate: each run
    // covers its own first delivery only.
    let runs: BTreeSet<String> = h
        .hook_records()
        .iter()
        .filter(|r| r["hook"]["outcome"] == "accepted")
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    assert!(h.app.sims.graph.sync_calls() <= runs.len());
}

#[tokio::test]
async fn a_body_over_the_sources_limit_is_refused_with_413_and_joins_nothing() {
    let h = spawn_hooks_with(Setup::default().set("hooks.github.max_body_bytes", "1024")).await;
    // Every kind at its default limit, 64 KiB; github at its configured 1 KiB.
    for kind in HookKind::ALL {
        let limit = if kind == HookKind::Github {
            1024
        } else {
            65_536
        };
        let id = id(kind, "big");
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(limit)).into_bytes();
        let headers = h.sign(kind, Key::New, &body, Utc::now(), &id);
        let resp = h.post(kind, body, &headers).await;
        assert_eq!(resp.status(), 413, "{kind:?}");
        assert_eq!(
            problem_of(resp).await["type"],
            problem_type("payload-too-large")
        );
        let last = h.hook_records().pop().unwrap();
        assert_eq!(last["hook"]["source"], kind.as_str());
        assert_eq!(last["code"], "payload-too-large");
        assert!(last["run_id"].is_null());
    }
    // Within the default limit, the same size is fine.
    let kind = HookKind::Jira;
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(2048)).into_bytes();
    let headers = h.sign(kind, Key::New, &body, Utc::now(), "big-jira");
    assert_eq!(h.post(kind, body, &headers).await.status(), 202);
    assert!(h.record_of("big-jira")["run_id"].is_string());
}

#[tokio::test]
async fn a_signed_body_that_is_not_what_its_sender_sends_is_refused_with_400() {
    let h = spawn_hooks().await;
    for kind in HookKind::ALL {
        let id = id(kind, "malformed");
        // JSON senders get a form, form senders get a repeated field.
        let body: Vec<u8> = match kind {
            HookKind::Slack | HookKind::Mattermost => {
                b"command=%2Fautopilot-sync&text=sync&text=help".to_vec()
            }
            _ => b"{\"unterminated\": ".to_vec(),
        };
        let headers = h.sign(kind, Key::New, &body, Utc::now(), &id);
        let resp = h.post(kind, body, &headers).await;
        assert_eq!(resp.status(), 400, "{kind:?}");
        assert_eq!(problem_of(resp).await["type"], problem_type("bad-request"));
        let last = h.hook_records().pop().unwrap();
        assert_eq!(last["hook"]["outcome"], "refused");
        assert!(last["run_id"].is_null());
    }
    assert_eq!(h.app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn githubs_published_test_vector_verifies() {
    // github/docs: secret "It's a Secret to Everybody", body "Hello, World!"; the secret from
    // the environment, as the secrets rule allows.
    let mut setup = Setup::default().set("hooks.vector", "{ kind = \"github\", run_as = \"bot\" }");
    setup.env.push((
        "SYNC_GATEWAY__HOOKS__VECTOR__SECRETS".into(),
        "It's a Secret to Everybody".into(),
    ));
    let h = spawn_hooks_with(setup).await;
    let send = |signature: &'static str| {
        h.app
            .http
            .post(format!("{}/hooks/vector", h.app.address))
            .header("X-Hub-Signature-256", signature)
            .header("X-GitHub-Delivery", "vector")
            .body("Hello, World!")
            .send()
    };
    // The signature verifies; the body then is not the JSON a GitHub event is: 400, not 401.
    let resp = send("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // One hex digit off: 401.
    let resp = send("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e18")
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn a_when_filter_that_does_not_match_answers_200_filtered_and_is_audited() {
    let h = spawn_hooks_with(Setup::default().set(
        "hooks.jira.when",
        "{ pointer = \"/transition/to_status\", equals = \"Done\" }",
    ))
    .await;
    let kind = HookKind::Jira;
    let id = id(kind, "filtered");
    let resp = h.deliver(kind, Key::New, &id).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "filtered");
    let record = h.record_of(&id);
    assert_eq!(record["hook"]["outcome"], "filtered");
    assert!(record["run_id"].is_null());
    assert_eq!(h.app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn discord_pings_are_answered_pong_and_bad_signatures_401() {
    let h = spawn_hooks().await;
    let kind = HookKind::Discord;
    let body = br#"{"type":1,"id":"ping-1","application_id":"1"}"#.to_vec();
    let headers = h.sign(kind, Key::New, &body, Utc::now(), "ping-1");
    let resp = h.post(kind, body.clone(), &headers).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        serde_json::json!({"type": 1})
    );
    // Discord's endpoint check: deliberately bad signatures must get 401.
    let forged = h.sign(kind, Key::Wrong, &body, Utc::now(), "ping-2");
    assert_eq!(h.post(kind, body, &forged).await.status(), 401);
    assert_eq!(h.app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn slack_is_acknowledged_at_once_and_the_outcome_is_posted_to_response_url_when_graph_answers(
) {
    let h = spawn_hooks().await;
    h.app.sims.graph.hold_answers();
    let kind = HookKind::Slack;
    let id = id(kind, "e2e");
    let resp = h.deliver(kind, Key::New, &id).await;
    // Graph has not answered: the acknowledgement came anyway.
    assert_eq!(resp.status(), 200);
    let ack: Value = resp.json().await.unwrap();
    assert_eq!(ack["response_type"], "ephemeral");
    let text = ack["text"].as_str().unwrap();
    assert!(text.contains("Sync requested by @operator"), "{text}");
    let record = h.record_of(&id);
    let run = record["run_id"].as_str().unwrap().to_string();
    assert!(text.contains(&run), "{text}");
    assert!(
        h.receiver.received().is_empty(),
        "nothing posted before the outcome"
    );
    h.app.sims.graph.release_answers();
    let posts = h.receiver.wait_for(1).await;
    assert_eq!(posts.len(), 1, "{posts:?}");
    let (method, path, body) = &posts[0];
    assert_eq!(method, "POST");
    assert_eq!(path, &format!("/commands/{id}/secret-path"));
    assert_eq!(body["response_type"], "ephemeral");
    let outcome = body["text"].as_str().unwrap();
    assert!(
        outcome.contains(&run) && outcome.contains("succeeded"),
        "{outcome}"
    );
    // The post is in the trail, without the URL's secret path.
    let reply = wait_for_reply_record(&h).await;
    assert_eq!(reply["outcome"], "delivered");
    assert_eq!(reply["status"], 200);
    assert_eq!(reply["run_id"], run.as_str());
    assert!(!reply["target"].as_str().unwrap().contains("secret-path"));
}

async fn wait_for_reply_record(h: &HookApp) -> Value {
    for _ in 0..200 {
        if let Some(r) = h
            .app
            .audit_of_kind("admin")
            .into_iter()
            .find(|r| r["event"] == "hook_reply")
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no hook_reply record");
}

#[tokio::test]
async fn a_response_url_on_a_host_not_allowed_is_refused_audited_and_never_fetched() {
    let h = spawn_hooks_with(
        Setup::default().set("hooks.slack.response_url_hosts", "[\"hooks.slack.com\"]"),
    )
    .await;
    let kind = HookKind::Slack;
    let id = id(kind, "foreign-url");
    let resp = h.deliver(kind, Key::New, &id).await;
    assert_eq!(resp.status(), 200);
    let text = resp.json::<Value>().await.unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains("not requested") && text.contains("127.0.0.1"),
        "{text}"
    );
    let record = h.record_of(&id);
    assert_eq!(record["hook"]["outcome"], "refused");
    assert!(record["run_id"].is_null());
    let reply = wait_for_reply_record(&h).await;
    assert_eq!(reply["outcome"], "refused");
    assert_eq!(reply["attempts"], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        h.receiver.received().is_empty(),
        "the refused URL was fetched"
    );
    assert_eq!(h.app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_chat_user_outside_allow_gets_a_private_refusal_and_no_run() {
    let h = spawn_hooks_with(
        Setup::default().set("hooks.slack.allow", "{ users = [\"U-someone-else\"] }"),
    )
    .await;
    let kind = HookKind::Slack;
    let id = id(kind, "not-allowed");
    let resp = h.deliver(kind, Key::New, &id).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["response_type"], "ephemeral");
    assert!(body["text"].as_str().unwrap().contains("not allowed"));
    let record = h.record_of(&id);
    assert_eq!(record["hook"]["outcome"], "not_allowed");
    assert!(record["run_id"].is_null());
    assert_eq!(h.app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn help_or_an_unknown_word_answers_the_usage_privately_and_triggers_nothing() {
    let h = spawn_hooks().await;
    let kind = HookKind::Slack;
    for text in ["help", "deploy everything"] {
        let id = id(kind, "help");
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("team_id", "T0123"),
                ("user_id", "U0789"),
                ("command", "/autopilot-sync"),
                ("text", text),
                ("trigger_id", id.as_str()),
            ])
            .finish()
            .into_bytes();
        let headers = h.sign(kind, Key::New, &body, Utc::now(), &id);
        let resp = h.post(kind, body, &headers).await;
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["response_type"], "ephemeral");
        assert!(
            answer["text"].as_str().unwrap().contains("Usage"),
            "{answer}"
        );
        assert_eq!(h.record_of(&id)["hook"]["outcome"], "help");
    }
    assert_eq!(h.app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_chat_commands_text_after_sync_is_the_runs_reason() {
    let h = spawn_hooks().await;
    let kind = HookKind::Mattermost;
    let id = id(kind, "reason");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("team_id", "t0123"),
            ("user_id", "u0789"),
            ("user_name", "ana"),
            ("command", "/autopilot-sync"),
            ("text", "sync new laptops for HR"),
            ("trigger_id", id.as_str()),
        ])
        .finish()
        .into_bytes();
    let headers = h.sign(kind, Key::New, &body, Utc::now(), &id);
    assert_eq!(h.post(kind, body, &headers).await.status(), 200);
    let record = h.record_of(&id);
    assert_eq!(record["reason"], "new laptops for HR");
    assert_eq!(record["hook"]["sender_user"], "u0789 (ana)");
}

#[tokio::test]
async fn teams_gets_its_synchronous_message_reply() {
    let h = spawn_hooks().await;
    let resp = h
        .deliver(
            HookKind::TeamsOutgoing,
            Key::New,
            &id(HookKind::TeamsOutgoing, "reply"),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert!(body["text"].as_str().unwrap().contains("Sync requested"));
}

#[tokio::test]
async fn a_discord_command_is_deferred_and_its_outcome_edits_the_answer() {
    let h = spawn_hooks().await;
    let kind = HookKind::Discord;
    let id = id(kind, "deferred");
    let resp = h.deliver(kind, Key::New, &id).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["type"], 5);
    let posts = h.receiver.wait_for(1).await;
    let (method, path, body) = &posts[0];
    assert_eq!(method, "PATCH");
    assert_eq!(path, "/webhooks/1/interaction-token/messages/@original");
    assert!(
        body["content"].as_str().unwrap().contains("succeeded"),
        "{body}"
    );
}

#[tokio::test]
async fn an_unknown_source_is_404_and_audited() {
    let h = spawn_hooks().await;
    let resp = h
        .app
        .http
        .post(format!("{}/hooks/nope", h.app.address))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let record = h.hook_records().pop().unwrap();
    assert_eq!(record["code"], "not-found");
    assert_eq!(record["route"], "/hooks/{source}");
}

#[tokio::test]
async fn two_hundred_distinct_deliveries_in_a_burst_make_one_run_now_and_at_most_one_trailing() {
    let h = Arc::new(spawn_hooks_with(Setup::intune(600).in_virtual_time()).await);
    let kind = HookKind::Github;
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    for i in 0..200 {
        let (h, gate) = (h.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            h.deliver(kind, Key::New, &format!("burst-{i}"))
                .await
                .status()
                .as_u16()
        });
    }
    let statuses: Vec<u16> = tasks.join_all().await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let runs: BTreeSet<String> = h
        .hook_records()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    assert!(runs.len() <= 2, "{} runs for 200 deliveries", runs.len());
    // Graph is called once now; the trailing run waits for Intune's 10 minutes.
    for _ in 0..100 {
        if h.app.sims.graph.sync_calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.app.sims.graph.sync_calls(), 1);
}

#[tokio::test]
async fn the_same_delivery_sent_fifty_times_at_once_makes_at_most_one_run() {
    let h = Arc::new(spawn_hooks().await);
    let kind = HookKind::Pagerduty;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let h = h.clone();
        tasks.spawn(async move {
            h.deliver(kind, Key::New, "the-same")
                .await
                .status()
                .as_u16()
        });
    }
    let statuses: Vec<u16> = tasks.join_all().await;
    // One accepted; the rest duplicates (200) or told to retry while it was in progress (503).
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 202, 503].contains(s)),
        "{statuses:?}"
    );
    let runs: BTreeSet<String> = h
        .hook_records()
        .iter()
        .filter_map(|r| r["run_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(runs.len(), 1);
}

#[tokio::test]
async fn a_source_may_act_as_an_application_identity() {
    let h = spawn_hooks_with_more(Setup::default(), |p| {
        vec![
            ("identities.app.kind".into(), quoted("application")),
            ("identities.app.tenant_id".into(), quoted(p.tenant)),
            ("hooks.github.run_as".into(), quoted("app")),
        ]
    })
    .await;
    let kind = HookKind::Github;
    let id = id(kind, "application");
    assert_eq!(h.deliver(kind, Key::New, &id).await.status(), 202);
    let record = h.record_of(&id);
    assert_eq!(record["acting_as"]["kind"], "application_identity");
    assert_eq!(record["acting_as"]["identity"], "app");
}

#[tokio::test]
async fn a_source_over_its_limit_gets_429_with_retry_after_and_its_retry_is_served_later() {
    let h = spawn_hooks_with(
        Setup::default().set("hooks.github.limits", "{ per_minute = 60, burst = 1 }"),
    )
    .await;
    let kind = HookKind::Github;
    assert_eq!(
        h.deliver(kind, Key::New, &id(kind, "first")).await.status(),
        202
    );
    let limited = id(kind, "limited");
    let resp = h.deliver(kind, Key::New, &limited).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(problem_of(resp).await["type"], problem_type("rate-limited"));
    assert!(h.record_of(&limited)["run_id"].is_null());
    // The refused delivery was not remembered: the sender's retry, once the allowance is
    // back, is served (not answered as a duplicate).
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(h.deliver(kind, Key::New, &limited).await.status(), 202);
    assert_eq!(h.record_of(&limited)["hook"]["outcome"], "accepted");
}

#[tokio::test]
async fn a_delivery_without_its_signature_headers_is_refused_before_its_body_is_waited_for() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = spawn_hooks().await;
    let addr = h.app.address.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A body of 100 bytes is announced and never sent.
    conn.write_all(
        b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    // 401 (the signature header is missing), not 408 (the body did not arrive in time).
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(h.hook_records().pop().unwrap()["code"], "invalid-signature");
}

#[tokio::test]
async fn a_delivery_sent_chunked_is_verified_over_its_whole_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = spawn_hooks().await;
    let kind = HookKind::Github;
    let id = id(kind, "chunked");
    let body = h.body(kind, &id);
    let headers = h.sign(kind, Key::New, &body, Utc::now(), &id);
    let mut request =
        String::from("POST /hooks/github HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n");
    for (k, v) in &headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    // The body in two chunks, then the last chunk.
    let (a, b) = body.split_at(body.len() / 2);
    for part in [a, b] {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            part.len(),
            String::from_utf8_lossy(part)
        ));
    }
    request.push_str("0\r\n\r\n");
    let addr = h.app.address.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(h.record_of(&id)["hook"]["outcome"], "accepted");
}

#[tokio::test]
async fn a_follow_up_is_not_redirected_elsewhere() {
    let h = spawn_hooks().await;
    let kind = HookKind::Slack;
    let id = id(kind, "redirect-me");
    assert_eq!(h.deliver(kind, Key::New, &id).await.status(), 200);
    let reply = wait_for_reply_record(&h).await;
    // The receiver's 307 is the answer: not followed, not retried.
    assert_eq!(reply["outcome"], "failed");
    assert_eq!(reply["status"], 307);
    assert_eq!(reply["attempts"], 1);
    let posts = h.receiver.received();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert!(posts[0].1.contains("redirect-me"));
}

#[tokio::test]
async fn a_run_graph_makes_wait_is_posted_as_rescheduled() {
    let h = spawn_hooks().await;
    h.app
        .sims
        .graph
        .push_responses([sync_gateway::sim::graph::GraphResponse::TooMany {
            retry_after_secs: Some(600),
        }]);
    let kind = HookKind::Slack;
    let id = id(kind, "rescheduled");
    assert_eq!(h.deliver(kind, Key::New, &id).await.status(), 200);
    let posts = h.receiver.wait_for(1).await;
    let text = posts[0].2["text"].as_str().unwrap();
    assert!(text.contains("Intune asked to wait"), "{text}");
    assert!(
        text.contains(h.record_of(&id)["run_id"].as_str().unwrap()),
        "{text}"
    );
}
