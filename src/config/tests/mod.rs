//! The configuration as a whole: loading, defaults, and each section's checks.

use super::*;

mod credentials;
mod hooks;
mod identities;
mod origins;
mod state;

const TENANT: &str = "11111111-1111-1111-1111-111111111111";
const CLIENT: &str = "22222222-2222-2222-2222-222222222222";

/// A complete configuration, the client secret left to the environment.
pub(crate) fn full_toml() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[entra]
authority_host = "https://login.microsoftonline.com"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
[callers]
audiences = ["{CLIENT}", "api://sync-gateway"]
allowed_tenants = ["{TENANT}"]
required_scope = "Sync.Trigger"
[graph]
base_url = "https://graph.microsoft.com"
[audit]
path = "/tmp/audit.jsonl"
"#
    )
}

/// The client secret, as the environment gives it.
pub(crate) fn secret_env() -> Vec<(String, String)> {
    vec![(
        "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".into(),
        "s3cret-value".into(),
    )]
}

#[test]
fn a_complete_file_with_the_secret_in_the_environment_loads() {
    let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
    match &c.entra.client_auth {
        ClientAuthConfig::Secret { secret, .. } => assert_eq!(secret.expose(), "s3cret-value"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.callers.leeway_seconds, 60);
    assert_eq!(c.actions.sync.upstream_path, DEFAULT_SYNC_PATH);
    assert_eq!(
        c.graph.scope(SYNC_PERMISSION),
        "https://graph.microsoft.com/DeviceManagementServiceConfig.ReadWrite.All"
    );
}

#[test]
fn environment_overrides_nested_keys() {
    let mut env = secret_env();
    env.push(("SYNC_GATEWAY__CALLERS__LEEWAY_SECONDS".into(), "5".into()));
    env.push((
        "SYNC_GATEWAY__LIMITS__PER_CALLER".into(),
        "{ per_minute = 7, burst = 2 }".into(),
    ));
    env.push((
        "SYNC_GATEWAY__CALLERS__AUDIENCES".into(),
        "[\"api://other\"]".into(),
    ));
    let c = Config::from_toml_and_env(&full_toml(), env).unwrap();
    assert_eq!(c.callers.leeway_seconds, 5);
    assert_eq!(
        c.limits.per_caller,
        Rate {
            per_minute: 7,
            burst: 2
        }
    );
    assert_eq!(c.callers.audiences, vec!["api://other".to_string()]);
}

#[test]
fn the_connection_limits_have_defaults_below_a_1024_file_limit() {
    let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
    assert_eq!(c.server.request_timeout_seconds, 10);
    assert_eq!(c.server.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert!(c.server.max_connections as u64 + RESERVED_FILES <= 1024);
    assert_eq!(c.limits.max_in_flight_per_caller, 32);
}

#[test]
fn an_in_flight_cap_not_below_the_connection_cap_is_refused_saying_where_each_came_from() {
    let text = full_toml().replace(
        "[audit]",
        "[limits]\nmax_in_flight_per_caller = 10\n[audit]",
    );
    let mut env = secret_env();
    env.push(("SYNC_GATEWAY__SERVER__MAX_CONNECTIONS".into(), "10".into()));
    let errs = errors(&text, env);
    assert!(
        has_error(
            &errs,
            "limits.max_in_flight_per_caller",
            "must be below server.max_connections (10, from the environment, SYNC_GATEWAY__SERVER__MAX_CONNECTIONS)"
        ),
        "{errs:?}"
    );
    assert!(
        has_error(
            &errs,
            "limits.max_in_flight_per_caller",
            "(10, from the file)"
        ),
        "{errs:?}"
    );
}

#[test]
fn fewer_connections_than_workers_are_refused() {
    let text = full_toml().replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nworkers = 4\nmax_connections = 3",
    );
    let errs = errors(&text, secret_env());
    assert!(
        has_error(
            &errs,
            "server.max_connections",
            "at least server.workers (4): each worker serves an equal share (3, from the file)"
        ),
        "{errs:?}"
    );
}

#[test]
fn a_zero_request_timeout_is_refused_saying_where_it_came_from() {
    let mut env = secret_env();
    env.push((
        "SYNC_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS".into(),
        "0".into(),
    ));
    let errs = errors(&full_toml(), env);
    assert!(
        has_error(
            &errs,
            "server.request_timeout_seconds",
            "greater than 0 (0, from the environment, SYNC_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS)"
        ),
        "{errs:?}"
    );
}

#[test]
fn a_secret_written_in_the_file_is_refused() {
    let text = full_toml().replace("[callers]", "client_secret = \"x\"\n[callers]");
    let e = Config::from_toml_and_env(&text, vec![]).unwrap_err();
    assert!(e.0.iter().any(|e| e.key == "entra.client_secret"), "{e}");
}

#[test]
fn every_missing_required_key_is_named() {
    let e = Config::from_toml_and_env("", vec![]).unwrap_err();
    let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "server.listen",
        "entra.authority_host",
        "entra.tenant_id",
        "entra.client_id",
        "entra.client_secret",
        "callers.audiences",
        "callers.allowed_tenants",
        "callers.required_scope",
        "graph.base_url",
        "audit.path",
    ] {
        assert!(keys.contains(&k), "{k} not reported in {keys:?}");
    }
}

#[test]
fn plain_http_is_allowed_only_for_loopback() {
    assert!(parse_service_url("http://127.0.0.1:8080").is_ok());
    assert!(parse_service_url("http://[::1]:8080").is_ok());
    assert!(parse_service_url("http://localhost:1").is_ok());
    assert!(parse_service_url("http://graph.microsoft.com").is_err());
    assert!(parse_service_url("https://graph.microsoft.com").is_ok());
    assert!(parse_service_url("ftp://127.0.0.1").is_err());
    let with_password = parse_service_url("https://user:hunter2@collector.example").unwrap_err();
    assert!(
        with_password.contains("user information"),
        "{with_password}"
    );
    assert!(!with_password.contains("hunter2"), "{with_password}");
}

#[test]
fn an_unknown_key_is_refused_with_its_name() {
    let text = full_toml().replace("[graph]", "[graph]\nbase_ur = \"x\"");
    let e = Config::from_toml_and_env(&text, secret_env()).unwrap_err();
    assert!(e.to_string().contains("base_ur"), "{e}");
}

fn with_audit(extra: &str) -> String {
    full_toml().replace("[audit]\n", &format!("[audit]\n{extra}\n"))
}

fn audit_error(extra: &str, env: Vec<(String, String)>) -> String {
    let e = Config::from_toml_and_env(&with_audit(extra), env).unwrap_err();
    e.to_string()
}

#[test]
fn the_audit_defaults_are_one_file_sink_without_hashing_or_signing() {
    let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
    assert_eq!(c.audit.sinks, vec![AuditSinkKind::File]);
    assert_eq!(c.audit.durable_sink(), AuditSinkKind::File);
    assert!(!c.audit.stdout_copy());
    assert!(c.audit.hmac_key.is_none() && c.audit.signing_key_file.is_none());
    assert_eq!(c.audit.rotate_bytes, 64 * 1024 * 1024);
    assert_eq!(c.audit.retain_files, 0);
}

#[test]
fn stdout_alone_is_refused_as_an_audit_sink() {
    let e = audit_error("sinks = [\"stdout\"]", secret_env());
    assert!(
        e.contains("audit.sinks: must name exactly one durable sink"),
        "{e}"
    );
}

#[test]
fn two_durable_audit_sinks_are_refused() {
    let e = audit_error(
        "sinks = [\"file\", \"postgres\"]\npostgres_url = \"postgres://h/d\"",
        secret_env(),
    );
    assert!(e.contains("audit.sinks"), "{e}");
}

#[test]
fn the_postgres_sink_needs_a_url_and_takes_it_from_the_environment() {
    let e = audit_error("sinks = [\"postgres\"]", secret_env());
    assert!(e.contains("audit.postgres_url: is required"), "{e}");
    let mut env = secret_env();
    env.push((
        "SYNC_GATEWAY__AUDIT__POSTGRES_URL".into(),
        "postgres://u:pw@db.internal/gw".into(),
    ));
    let c =
        Config::from_toml_and_env(&with_audit("sinks = [\"postgres\", \"stdout\"]"), env).unwrap();
    assert_eq!(c.audit.durable_sink(), AuditSinkKind::Postgres);
    assert!(c.audit.stdout_copy());
    assert!(!c.to_masked_toml().contains("pw@"));
}

#[test]
fn an_hmac_key_written_in_the_file_is_refused() {
    let e = audit_error("hmac_key = \"0123456789abcdef0123\"", secret_env());
    assert!(e.contains("audit.hmac_key: must not be written"), "{e}");
}

#[test]
fn a_short_hmac_key_is_refused() {
    let mut env = secret_env();
    env.push(("SYNC_GATEWAY__AUDIT__HMAC_KEY".into(), "short".into()));
    let e = Config::from_toml_and_env(&full_toml(), env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 16 bytes"), "{e}");
}

#[test]
fn masked_output_hides_the_secret() {
    let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
    let out = c.to_masked_toml();
    assert!(!out.contains("s3cret-value"));
    assert!(out.contains("********"));
}

fn without_secret_env() -> Vec<(String, String)> {
    Vec::new()
}

fn errors(text: &str, env: Vec<(String, String)>) -> Vec<ConfigError> {
    Config::from_toml_and_env(text, env).unwrap_err().0
}

fn has_error(errs: &[ConfigError], key: &str, text: &str) -> bool {
    errs.iter()
        .any(|e| e.key == key && e.message.contains(text))
}

#[test]
fn telemetry_is_off_unless_an_otlp_endpoint_is_configured() {
    let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
    assert!(c.telemetry.otlp.is_none());
    let text = format!(
        "{}[telemetry]\notlp_endpoint = \"https://collector.example:4318/otlp/\"\n",
        full_toml()
    );
    let c = Config::from_toml_and_env(&text, secret_env()).unwrap();
    let otlp = c.telemetry.otlp.unwrap();
    assert_eq!(
        otlp.traces_url.as_str(),
        "https://collector.example:4318/otlp/v1/traces"
    );
    assert_eq!(otlp.service_name, "sync-gateway");
    assert_eq!(otlp.timeout_seconds, 10);
}

#[test]
fn a_plain_http_collector_off_loopback_is_refused_naming_the_key_and_its_origin() {
    let mut env = secret_env();
    env.push((
        "SYNC_GATEWAY__TELEMETRY__OTLP_ENDPOINT".into(),
        "http://collector.example:4318".into(),
    ));
    env.push((
        "SYNC_GATEWAY__TELEMETRY__OTLP_TIMEOUT_SECONDS".into(),
        "0".into(),
    ));
    let e = Config::from_toml_and_env(&full_toml(), env).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("telemetry.otlp_endpoint"), "{text}");
    assert!(
        text.contains("SYNC_GATEWAY__TELEMETRY__OTLP_ENDPOINT"),
        "{text}"
    );
    assert!(text.contains("telemetry.otlp_timeout_seconds"), "{text}");
}
