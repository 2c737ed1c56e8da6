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
    let env: Vec<(&str, &str)> = secret
        .map(|s| vec![("SYNC_GATEWAY__ENTRA__CLIENT_SECRET", s)])
        .unwrap_or_default();
    check_config_with(text, &env)
}

/// `check-config` with exactly `env` among the variables the configuration reads.
fn check_config_with(text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["check-config", "--config"]).arg(&path);
    cmd.env_remove("SYNC_GATEWAY__ENTRA__CLIENT_SECRET");
    for v in sync_gateway::config::AZURE_ENV {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
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
fn the_command_in_the_example_header_checks_the_example_and_passes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/gateway.example.toml")).unwrap();
    let line = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find(|l| l.contains("cargo run -- check-config"))
        .expect("the header shows the command");
    // `VAR=value ... cargo run -- ARGS`: the variables, then the binary's arguments.
    let words: Vec<&str> = line.trim_start_matches('#').split_whitespace().collect();
    let run = words.iter().position(|w| *w == "cargo").unwrap();
    assert_eq!(&words[run..run + 3], ["cargo", "run", "--"], "{line}");
    let mut cmd = Command::new(BIN);
    cmd.current_dir(root).args(&words[run + 3..]);
    for v in sync_gateway::config::AZURE_ENV {
        cmd.env_remove(v);
    }
    for w in &words[..run] {
        let (k, v) = w.split_once('=').expect("VAR=value");
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_the_variable_the_file_and_the_line_of_each_bad_value() {
    let text = VALID.replace("base_url =", "base_ur =");
    let (ok, _, stderr) = check_config_with(
        &text,
        &[
            ("SYNC_GATEWAY__ENTRA__CLIENT_SECRET", "s"),
            ("SYNC_GATEWAY__CALLERS__LEEWAY_SECONDS", "abc"),
        ],
    );
    assert!(!ok);
    let line = text.lines().position(|l| l.starts_with("base_ur")).unwrap() + 1;
    assert!(
        stderr.contains(&format!(
            "graph.base_ur: is not a key of [graph]; did you mean graph.base_url? ({}, line {line})",
            path_of(&stderr)
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("callers.leeway_seconds: \"abc\" is not a duration: write whole seconds (30) or a duration (\"30s\", \"5m\", \"1h\") (environment variable SYNC_GATEWAY__CALLERS__LEEWAY_SECONDS)"),
        "{stderr}"
    );
}

#[test]
fn check_config_names_a_missing_audit_directory_to_create_and_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("audit-dir");
    let text = VALID.replace(
        "path = \"/var/lib/sync-gateway/audit.jsonl\"",
        &format!("path = {}", toml_path(&missing.join("audit.jsonl"))),
    );
    let (ok, stdout, stderr) = check_config(&text, Some("s"));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "# note: audit.path's directory {} does not exist here: create it (e.g. `mkdir -p {}`)",
            missing.display(),
            missing.display()
        )),
        "{stdout}"
    );
    std::fs::create_dir(&missing).unwrap();
    let (ok, stdout, _) = check_config(&text, Some("s"));
    assert!(ok && !stdout.contains("# note:"), "{stdout}");
}

/// The configuration file's path as `check-config` printed it (the temporary `gateway.toml`).
fn path_of(stderr: &str) -> &str {
    let end = stderr.find("gateway.toml").expect("the file is named") + "gateway.toml".len();
    let start = stderr[..end].rfind('(').unwrap() + 1;
    &stderr[start..end]
}

/// `sync-gateway dev` writing into `dir`: the child and what it printed up to "Ctrl-C".
fn start_dev(dir: &std::path::Path) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--audit-path"])
        .arg(dir.join("dev-audit.jsonl"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let lines = read_lines_until(child.stdout.take().unwrap(), "Ctrl-C");
    (child, lines)
}

/// Lines of `out` up to and including the first containing `marker` (60 s at most).
fn read_lines_until(out: impl std::io::Read + Send + 'static, marker: &str) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let done = line.contains(marker);
        lines.push(line);
        if done {
            break;
        }
    }
    lines
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
        let lines = read_lines_until(child.stdout.take().unwrap(), "Ctrl-C");
        let (mut token, mut curl) = (None, None);
        for line in lines {
            if let Some(t) = line.trim().strip_prefix("export TOKEN=") {
                token = Some(t.to_string());
            }
            // The first one is the sync; the webhook's comes later.
            if line.trim().starts_with("curl -i -X POST") && curl.is_none() {
                curl = Some(line.trim().to_string());
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
    assert!(
        logs.lines()
            .any(|l| l.contains("sync request") && l.contains("202")),
        "dev mode shows each request: {logs}"
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

/// `VALID` without the lines setting `keys`.
fn without(keys: &[&str]) -> String {
    VALID
        .lines()
        .filter(|l| !keys.iter().any(|k| l.starts_with(&format!("{k} ="))))
        .collect::<Vec<_>>()
        .join("\n")
}

fn toml_path(p: &std::path::Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

#[test]
fn check_config_says_a_certificate_is_in_use_and_names_its_thumbprint() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::helpers::test_certificate();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let text = VALID.replace(
        "[callers]",
        &format!(
            "certificate_file = {}\nprivate_key_file = {}\n[callers]",
            toml_path(&cert_path),
            toml_path(&key_path)
        ),
    );
    let (ok, stdout, stderr) = check_config_with(&text, &[]);
    assert!(ok, "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("# client authentication: certificate "))
        .expect("the credential in use");
    assert!(
        line.contains("x5t#S256") && line.contains("PS256"),
        "{line}"
    );
}

#[test]
fn check_config_refuses_several_client_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a.b.c").unwrap();
    let (ok, _, stderr) = check_config_with(
        VALID,
        &[
            ("SYNC_GATEWAY__ENTRA__CLIENT_SECRET", "s"),
            ("AZURE_FEDERATED_TOKEN_FILE", token.to_str().unwrap()),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("entra: configure exactly one client credential; found a client secret"),
        "{stderr}"
    );
    assert!(stderr.contains("AZURE_FEDERATED_TOKEN_FILE"), "{stderr}");
}

#[test]
fn check_config_takes_workload_identity_keys_from_the_platform_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a.b.c").unwrap();
    let text = without(&["authority_host", "tenant_id", "client_id"]);
    let (ok, stdout, stderr) = check_config_with(
        &text,
        &[
            ("AZURE_FEDERATED_TOKEN_FILE", token.to_str().unwrap()),
            ("AZURE_CLIENT_ID", "33333333-3333-3333-3333-333333333333"),
            ("AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111"),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("# client authentication: workload identity federation: token file"));
    assert!(
        stdout.contains("# entra.client_id from AZURE_CLIENT_ID"),
        "{stdout}"
    );
    assert!(stdout.contains("client_id = \"33333333-3333-3333-3333-333333333333\""));
}

#[test]
fn check_config_derives_the_hosts_from_entra_cloud() {
    let text = without(&["authority_host", "base_url"])
        .replace("[entra]", "[entra]\ncloud = \"usgov-dod\"");
    let (ok, stdout, stderr) = check_config(&text, Some("s"));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("authority_host = \"https://login.microsoftonline.us/\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("base_url = \"https://dod-graph.microsoft.us/\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("scope_resource = \"https://dod-graph.microsoft.us\""),
        "{stdout}"
    );
}

#[test]
fn check_config_refuses_hosts_of_two_clouds_unless_forced() {
    let text = VALID.replace("[entra]", "[entra]\ncloud = \"usgov\"");
    let (ok, _, stderr) = check_config(&text, Some("s"));
    assert!(!ok);
    assert!(
        stderr.contains("entra.cloud: entra.authority_host https://login.microsoftonline.com/ belongs to global but entra.cloud is usgov"),
        "{stderr}"
    );
    assert!(
        stderr.contains("entra.allow_cloud_mismatch = true"),
        "{stderr}"
    );
    let forced = text.replace("[entra]", "[entra]\nallow_cloud_mismatch = true");
    let (ok, _, stderr) = check_config(&forced, Some("s"));
    assert!(ok, "{stderr}");
}

#[test]
fn login_names_an_unknown_identity_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, VALID).unwrap();
    let out = Command::new(BIN)
        .args(["login", "--identity", "nobody", "--config"])
        .arg(&path)
        .env("SYNC_GATEWAY__ENTRA__CLIENT_SECRET", "s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no identity \"nobody\" is configured: add [identities.nobody]"),
        "{stderr}"
    );
}

/// [`VALID`] with `[identities.app] kind = "application"` in its tenant.
fn with_application_identity() -> String {
    format!(
        "{VALID}\n[identities.app]\nkind = \"application\"\ntenant_id = \"11111111-1111-1111-1111-111111111111\"\n"
    )
}

#[test]
fn check_config_says_an_application_identity_uses_the_client_credentials_grant_and_needs_admin_consent(
) {
    let (ok, stdout, stderr) = check_config(&with_application_identity(), Some("s"));
    assert!(ok, "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("# service identity app (application)"))
        .unwrap_or_else(|| panic!("{stdout}"));
    for says in [
        "client-credentials grant for https://graph.microsoft.com/.default",
        "DeviceManagementServiceConfig.ReadWrite.All",
        "admin consent",
        "no login",
    ] {
        assert!(line.contains(says), "{line}");
    }
    assert!(stdout.contains("kind = \"application\""), "{stdout}");
}

#[test]
fn login_refuses_an_application_identity_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, with_application_identity()).unwrap();
    let out = Command::new(BIN)
        .args(["login", "--identity", "app", "--config"])
        .arg(&path)
        .env("SYNC_GATEWAY__ENTRA__CLIENT_SECRET", "s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("identity \"app\" is kind = \"application\""),
        "{stderr}"
    );
    assert!(stderr.contains("admin consent"), "{stderr}");
    // Refused before anything was asked of Entra: nothing was printed to sign in with.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("enter the code"));
}

#[test]
fn dev_mode_signs_its_service_identity_in_at_start_and_both_of_its_callers_trigger_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, lines) = start_dev(dir.path());
    let find = |prefix: &str| {
        lines
            .iter()
            .map(|l| l.trim())
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}"))
            .to_string()
    };
    assert!(
        lines.iter().any(|l| l.contains("'dev-bot' is signed in")),
        "{lines:#?}"
    );
    let app_token = find("export APP_TOKEN=")["export APP_TOKEN=".len()..].to_string();
    let url = find("curl -i -H \"Authorization: Bearer $APP_TOKEN\" -X POST")
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let (status, body) = reqwest::blocking_free_post(&url, &app_token);
    assert_eq!(status, 202, "{body}");

    // The signed GitHub-style delivery, exactly as printed; sent again, a duplicate.
    let hook = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("curl -i -X POST") && l.contains("/hooks/dev-github"))
        .expect("dev printed a webhook curl line")
        .to_string();
    let (first, first_body) = reqwest::blocking_curl(&hook);
    let (again, again_body) = reqwest::blocking_curl(&hook);
    dev.kill().ok();
    dev.wait().ok();
    assert_eq!(first, 202, "{first_body}");
    assert_eq!(again, 200, "{again_body}");
    assert!(again_body.contains("duplicate"), "{again_body}");
    // No error about the identity's session before the banner (it was signed in first).
    let stderr = strip_ansi(&std::fs::read_to_string(dir.path().join("stderr.log")).unwrap());
    assert!(!stderr.contains("has no usable session"), "{stderr}");
}

/// A tiny synchronous POST for the tests above (the test is not async: it drives a child).
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

    /// Sends what a printed `curl -i -X POST URL -H '..' ... --data '..'` line sends.
    pub fn blocking_curl(line: &str) -> (u16, String) {
        let url = line.split_whitespace().nth(4).unwrap().to_string();
        let quoted = |after: &str| -> Vec<String> {
            line.split(after)
                .skip(1)
                .map(|rest| rest.split('\'').next().unwrap().to_string())
                .collect()
        };
        let headers = quoted(" -H '");
        let body = quoted(" --data '").pop().expect("a --data body");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut r = ::reqwest::Client::new().post(&url).body(body);
            for h in &headers {
                let (k, v) = h.split_once(": ").unwrap();
                r = r.header(k, v);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        })
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn dev_mode_raises_the_soft_open_file_limit_to_the_hard_one_and_logs_both() {
    use std::os::unix::process::CommandExt;
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    let low = hard.min(256);
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["dev", "--listen", "127.0.0.1:0", "--audit-path"])
        .arg(dir.path().join("dev-audit.jsonl"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap());
    // SAFETY: between fork and exec only setrlimit(2) runs, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || rlimit::Resource::NOFILE.set(low, hard));
    }
    let mut child = cmd.spawn().unwrap();
    read_lines_until(child.stdout.take().unwrap(), "Ctrl-C");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id()));
    child.kill().ok();
    child.wait().ok();
    // "Max open files            <soft>               <hard>               files"
    let limits = limits.unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("the open-file line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft limit not raised: {line}");
    let logs = strip_ansi(&std::fs::read_to_string(&stderr).unwrap());
    assert!(
        logs.lines().any(|l| l.contains("open-file limit")
            && l.contains(&format!("soft_before={low}"))
            && l.contains(&format!("hard={hard}"))),
        "{logs}"
    );
}
