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

/// `sync-gateway dev` running as a child process, with what it printed.
struct Dev {
    child: std::process::Child,
    token: String,
    curl: String,
    base: String,
    audit: std::path::PathBuf,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Dev {
    fn start(cooldown_seconds: u64) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("dev-audit.jsonl");
        let stderr = dir.path().join("stderr.log");
        let mut child = Command::new(BIN)
            .args(["dev", "--listen", "127.0.0.1:0", "--cooldown-seconds"])
            .arg(cooldown_seconds.to_string())
            .arg("--audit-path")
            .arg(&audit)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
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
        let (mut token, mut curl) = (None, None);
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
        let curl = curl.expect("dev printed a curl line");
        let url = curl.split_whitespace().nth(4).expect("the URL").to_string();
        let base = url
            .strip_suffix("/sync")
            .expect("the URL ends in /sync")
            .to_string();
        Dev {
            child,
            token: token.expect("dev printed a token"),
            curl,
            base,
            audit,
            stderr,
            _dir: dir,
        }
    }

    /// Runs the printed curl line's request (what `curl` would send) and returns status and body.
    async fn post_sync(&self) -> (u16, serde_json::Value) {
        let r = ::reqwest::Client::new()
            .post(format!("{}/sync", self.base))
            .bearer_auth(&self.token)
            .header("Content-Type", "application/json")
            .body(r#"{"reason":"trying sync-gateway"}"#)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        ::reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[tokio::test]
async fn dev_mode_prints_a_token_and_a_curl_line_that_triggers_one_sync() {
    let dev = Dev::start(30);
    assert!(dev.base.starts_with("http://127.0.0.1:"), "{}", dev.base);
    assert!(dev.curl.contains("Authorization: Bearer $TOKEN"));

    let (status, body) = dev.post_sync().await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "succeeded");
    assert_eq!(body["upstream"]["status"], 204);
    let text = std::fs::read_to_string(&dev.audit).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"kind\":\"run\"") && l.contains("\"event\":\"started\""))
            .count(),
        1
    );
    let logs = std::fs::read_to_string(&dev.stderr).unwrap();
    assert!(
        !logs.contains(&dev.token),
        "dev mode logged the caller token"
    );
}

#[tokio::test]
async fn dev_mode_schedules_a_second_sync_and_its_run_succeeds_after_the_cooldown() {
    let dev = Dev::start(2);
    let (first, _) = dev.post_sync().await;
    assert_eq!(first, 202);
    let (second, body) = dev.post_sync().await;
    assert_eq!(second, 202);
    assert_eq!(body["state"], "scheduled");
    assert!(body["not_before"].is_string());
    let run_path = format!("/sync/runs/{}", body["id"].as_str().unwrap());
    let mut state = String::new();
    for _ in 0..100 {
        state = dev.get(&run_path).await["state"]
            .as_str()
            .unwrap()
            .to_string();
        if state == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "succeeded");
    let status = dev.get("/sync/status").await;
    assert_eq!(status["graph"]["syncStatus"], "completed");
}
