//! `sync-gateway audit verify | hash | keygen | schema`, run as an operator would run them.

use crate::helpers::{spawn_app_with, Setup};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sync-gateway");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SYNC_GATEWAY__AUDIT__HMAC_KEY")
        .env_remove("SYNC_GATEWAY__AUDIT__POSTGRES_URL")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A gateway trail signed with a key made by `audit keygen`: (trail file, public key file).
async fn signed_trail(dir: &Path) -> (String, String) {
    let key = dir.join("signing.pem");
    let out = run(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("-----BEGIN PUBLIC KEY-----"));
    let audit = dir.join("audit.jsonl");
    let mut app = spawn_app_with(
        Setup {
            audit_path: Some(audit.clone()),
            ..Setup::default()
        }
        .set(
            "audit.signing_key_file",
            &format!("{:?}", key.display().to_string()),
        ),
    )
    .await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    app.stop().await;
    (
        audit.display().to_string(),
        format!("{}.pub", key.display()),
    )
}

#[tokio::test]
async fn audit_verify_exits_0_for_an_intact_trail_with_its_signatures_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (trail, public) = signed_trail(dir.path()).await;
    let out = run(&["audit", "verify", &trail, "--public-key", &public]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("result: intact"), "{stdout}");
    assert!(
        stdout.contains("0 record(s) after the last verified checkpoint"),
        "{stdout}"
    );
}

#[tokio::test]
async fn audit_verify_exits_1_and_names_the_file_and_line_of_the_first_broken_link() {
    let dir = tempfile::tempdir().unwrap();
    let (trail, public) = signed_trail(dir.path()).await;
    let mut lines: Vec<String> = std::fs::read_to_string(&trail)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.remove(2);
    std::fs::write(&trail, lines.join("\n") + "\n").unwrap();
    let out = run(&["audit", "verify", &trail, "--public-key", &public]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("BROKEN: {trail}:3: expected seq 3, found 4")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("the first broken link is {trail}:3")),
        "{stdout}"
    );
}

#[tokio::test]
async fn audit_verify_exits_2_when_a_file_cannot_be_read() {
    let out = run(&["audit", "verify", "/nonexistent/audit.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read the trail"));
}

#[tokio::test]
async fn hashed_values_are_what_audit_hash_prints_and_never_appear_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, "a-32-byte-hmac-key-for-the-tests!\n").unwrap();
    let app = spawn_app_with(Setup::default().set(
        "audit.hmac_key_file",
        &format!("{:?}", key.display().to_string()),
    ))
    .await;
    let mut spec = app.user();
    spec.upn = Some("alex@contoso.example".into());
    let resp = app
        .post_sync_json(
            &app.sims.entra.mint(&spec),
            r#"{"reason":"laptop reimaged"}"#,
        )
        .await;
    assert_eq!(resp.status(), 202);

    let hash = |v: &str| {
        let out = run(&["audit", "hash", v, "--key-file", key.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let record = app.only_request_record();
    assert_eq!(record["client_ip"], hash("127.0.0.1"));
    assert_eq!(record["caller"]["upn"], hash("alex@contoso.example"));
    assert_eq!(record["reason"], hash("laptop reimaged"));
    let started = app
        .audit_of_kind("run")
        .into_iter()
        .find(|r| r["event"] == "started")
        .unwrap();
    assert_eq!(started["acting_as"]["upn"], hash("alex@contoso.example"));
    let trail = app.audit_text();
    for clear in [
        "alex@contoso.example",
        "laptop reimaged",
        "127.0.0.1",
        "a-32-byte-hmac",
    ] {
        assert!(!trail.contains(clear), "{clear} is in the trail");
    }
    let start = app
        .audit_of_kind("admin")
        .into_iter()
        .find(|r| r["event"] == "start")
        .unwrap();
    assert_eq!(start["hmac_key_id"].as_str().unwrap().len(), 16);
}

#[test]
fn audit_hash_without_a_key_says_where_to_put_one() {
    let out = run(&["audit", "hash", "x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--key-file"));
}

/// The command the docs give for regenerating `docs/audit.schema.json` prints exactly that file,
/// byte for byte, so running it leaves nothing to commit.
#[test]
fn audit_schema_prints_the_committed_schema() {
    let out = run(&["audit", "schema"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/audit.schema.json"
    ))
    .unwrap();
    assert_eq!(
        text(&out.stdout),
        committed,
        "regenerate with `cargo run -- audit schema > docs/audit.schema.json`"
    );
}
