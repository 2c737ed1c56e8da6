//! The command line: `check-config` and `dev`, run as a user would run them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sync-gateway");

const VALID: &str = r#"
[server]
listen = "127.0.0.1:8080"
[entra]
authority_host = "https://login.microsoftonline.com"
tenant_id = "11111111-1111-1111-1111-111111111111"
client_id = "22222222-2222-2222-2222-222222222222"
[callers]
audiences = ["22222222-2222-2222-2222-222222222222"]
allowed_tenants = ["11111111-1111-1111-1111-111111111111"]
required_scope = "Sync.Trigger"
[graph]
base_url = "https://graph.microsoft.com"
[audit]
path = "/var/lib/sync-gateway/audit.jsonl"
"#;

fn check_config(text: &str, secret: Option<&str>) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["check-config", "--config"]).arg(&path);
    cmd.env_remove("SYNC_GATEWAY__ENTRA__CLIENT_SECRET");
    if let Some(s) = secret {
        cmd.env("SYNC_GATEWAY__ENTRA__CLIENT_SECRET", s);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_valid_file_and_masks_the_secret() {
    let (ok, stdout, _) = check_config(VALID, Some("very-secret-value"));
    assert!(ok);
    assert!(stdout.contains("client_id = \"22222222-2222-2222-2222-222222222222\""));
    assert!(
        stdout.contains("upstream_path = \"/beta/deviceManagement/windowsAutopilotSettings/sync\"")
    );
    assert!(!stdout.contains("very-secret-value"));
    assert!(stdout.contains("********"));
}

#[test]
fn check_config_names_each_missing_required_key_and_exits_1() {
    let required = [
        ("server", "listen"),
        ("entra", "authority_host"),
        ("entra", "tenant_id"),
        ("entra", "client_id"),
        ("callers", "audiences"),
        ("callers", "allowed_tenants"),
        ("callers", "required_scope"),
        ("graph", "base_url"),
        ("audit", "path"),
    ];
    for (section, key) in required {
        let without: String = VALID
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .collect::<Vec<_>>()
            .join("\n");
        let (ok, _, stderr) = check_config(&without, Some("s"));
        assert!(!ok, "{section}.{key} missing was accepted");
        assert!(
            stderr.contains(&format!("{section}.{key}: is required")),
            "{section}.{key}: {stderr}"
        );
    }
    let (ok, _, stderr) = check_config(VALID, None);
    assert!(!ok);
    assert!(
        stderr.contains("entra.client_secret: is required"),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_plain_http_to_a_remote_host() {
    let text = VALID.replace("https://graph.microsoft.com", "http://graph.microsoft.com");
    let (ok, _, stderr) = check_config(&text, Some("s"));
    assert!(!ok);
    assert!(
        stderr.contains("graph.base_url: must use https://"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_example_configuration_is_valid() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml"))
            .unwrap();
    let (ok, _, stderr) = check_config(&text, Some("example-secret"));
    assert!(ok, "{stderr}");
}

#[test]
fn dev_mode_prints_a_token_and_a_curl_line_that_triggers_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("dev-audit.jsonl");
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--audit-path"])
        .arg(&audit)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut token = None;
    let mut curl = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        if let Some(t) = line.trim().strip_prefix("export TOKEN=") {
            token = Some(t.to_string());
        }
        if line.trim().starts_with("curl -i -X POST") {
            curl = Some(line.trim().to_string());
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let token = token.expect("dev printed a token");
    let curl = curl.expect("dev printed a curl line");
    let url = curl.split_whitespace().nth(4).expect("the URL").to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/sync"),
        "{url}"
    );
    assert!(curl.contains("Authorization: Bearer $TOKEN"));

    let resp = reqwest::blocking_free_post(&url, &token);
    child.kill().ok();
    child.wait().ok();

    let (status, body) = resp;
    assert_eq!(status, 202, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["state"], "succeeded");
    assert_eq!(body["upstream"]["status"], 204);
    let text = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"kind\":\"intent\""))
            .count(),
        1
    );
    let logs = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!logs.contains(&token), "dev mode logged the caller token");
}

/// A tiny synchronous POST for the test above (the test is not async: it drives a child).
mod reqwest {
    pub fn blocking_free_post(url: &str, token: &str) -> (u16, String) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let r = ::reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .header("Content-Type", "application/json")
                .body(r#"{"reason":"trying sync-gateway"}"#)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        })
    }
}
