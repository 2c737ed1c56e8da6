//! `[state]`: the backend, the Redis URL under the secret rule, the prefix and the bound.

use super::*;

const URL_VAR: &str = "SYNC_GATEWAY__STATE__REDIS_URL";
const KEY_VAR: &str = "SYNC_GATEWAY__STATE__ENCRYPTION_KEY";
/// 32 bytes, base64.
const A_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn load(state: &str, extra: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
    let mut env = secret_env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_toml_and_env(&format!("{}\n[state]\n{state}\n", full_toml()), env).map_err(|e| e.0)
}

fn assert_error(errs: &[ConfigError], key: &str, text: &str) {
    assert!(
        has_error(errs, key, text),
        "no {key}: ...{text}... in {errs:#?}"
    );
}

#[test]
fn without_a_state_table_the_backend_is_memory_with_the_defaults() {
    let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
    assert_eq!(c.state.backend, StateBackendKind::Memory);
    assert!(c.state.redis_url.is_none());
    assert_eq!(c.state.key_prefix, "sync-gateway:");
    assert_eq!(c.state.timeout_ms, 250);
    assert_eq!(c.state.on_unavailable.limits, FailMode::Closed);
}

#[test]
fn the_redis_backend_takes_its_url_from_the_environment_and_names_where_it_came_from() {
    let c = load(
        "backend = \"redis\"\non_unavailable = { limits = \"open\" }",
        &[(URL_VAR, "redis://:pw@127.0.0.1:6379/1"), (KEY_VAR, A_KEY)],
    )
    .unwrap();
    let (key, source) = c.state.encryption_key.as_ref().unwrap();
    assert_eq!(key.bytes()[31], 31);
    assert!(source.contains(KEY_VAR), "{source}");
    let url = c.state.redis_url.unwrap();
    assert_eq!(url.expose(), "redis://:pw@127.0.0.1:6379/1");
    assert!(url.source.contains(URL_VAR), "{}", url.source);
    assert_eq!(c.state.on_unavailable.limits, FailMode::Open);
}

#[test]
fn the_redis_backend_without_a_url_is_refused_naming_the_variable() {
    let errs = load("backend = \"redis\"", &[]).unwrap_err();
    assert_error(&errs, "state.redis_url", URL_VAR);
}

#[test]
fn a_redis_url_with_a_password_written_in_the_file_is_refused() {
    let errs = load(
        "backend = \"redis\"\nredis_url = \"redis://:pw@127.0.0.1:6379\"",
        &[],
    )
    .unwrap_err();
    assert_error(
        &errs,
        "state.redis_url",
        "must not be written in the configuration file",
    );
    assert!(!format!("{errs:?}").contains(":pw@"));
}

#[test]
fn plaintext_redis_to_a_remote_host_is_refused_without_echoing_the_password() {
    let errs = load(
        "backend = \"redis\"",
        &[(URL_VAR, "redis://:hunter2@redis.example.com:6379")],
    )
    .unwrap_err();
    assert_error(&errs, "state.redis_url", "rediss://");
    assert!(!format!("{errs:?}").contains("hunter2"));
}

#[test]
fn a_zero_timeout_and_an_empty_prefix_are_refused_by_key() {
    let errs = load("timeout_ms = 0\nkey_prefix = \"\"", &[]).unwrap_err();
    assert_error(&errs, "state.timeout_ms", "between 1 and");
    assert_error(&errs, "state.key_prefix", "printable");
}

#[test]
fn an_unknown_fail_mode_is_refused_by_key() {
    let errs = load("on_unavailable = { limits = \"maybe\" }", &[]).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.key.starts_with("state.on_unavailable")),
        "{errs:#?}"
    );
}

#[test]
fn the_redis_backend_without_an_encryption_key_is_refused_naming_the_variable() {
    let errs = load(
        "backend = \"redis\"",
        &[(URL_VAR, "redis://127.0.0.1:6379")],
    )
    .unwrap_err();
    assert_error(&errs, "state.encryption_key", KEY_VAR);
}

#[test]
fn an_encryption_key_of_the_wrong_length_is_refused_without_echoing_it() {
    let errs = load(
        "backend = \"redis\"",
        &[
            (URL_VAR, "redis://127.0.0.1:6379"),
            (KEY_VAR, "c2hvcnQta2V5"),
        ],
    )
    .unwrap_err();
    assert_error(&errs, "state.encryption_key", "32 bytes");
    assert!(!format!("{errs:?}").contains("c2hvcnQta2V5"));
}

#[test]
fn an_encryption_key_written_in_the_configuration_file_is_refused() {
    let errs = load(
        &format!("backend = \"redis\"\nencryption_key = \"{A_KEY}\""),
        &[(URL_VAR, "redis://127.0.0.1:6379")],
    )
    .unwrap_err();
    assert_error(
        &errs,
        "state.encryption_key",
        "must not be written in the configuration file",
    );
}
const REPLICA_VAR: &str = "SYNC_GATEWAY__STATE__REPLICA_ID";

#[test]
fn the_replica_id_defaults_to_hostname_the_pod_name() {
    let c = load("", &[("HOSTNAME", "sync-gateway-7d9f8c6b5-x2k4q")]).unwrap();
    assert_eq!(c.state.replica_id.as_str(), "sync-gateway-7d9f8c6b5-x2k4q");
    assert!(
        c.state.replica_id_source.contains("HOSTNAME"),
        "{}",
        c.state.replica_id_source
    );
}

#[test]
fn without_hostname_the_replica_id_is_the_machines_hostname() {
    let c = load("", &[]).unwrap();
    let machine = crate::config::validate::machine_hostname().expect("a Linux hostname");
    assert_eq!(c.state.replica_id.as_str(), machine);
    assert!(c.state.replica_id_source.contains("the machine's hostname"));
}

#[test]
fn a_configured_replica_id_wins_over_hostname_and_the_environment_over_the_file() {
    let c = load("replica_id = \"gw-a\"", &[("HOSTNAME", "pod-1")]).unwrap();
    assert_eq!(c.state.replica_id.as_str(), "gw-a");
    assert_eq!(c.state.replica_id_source, "from the file");
    let c = load(
        "replica_id = \"gw-a\"",
        &[("HOSTNAME", "pod-1"), (REPLICA_VAR, "gw-b")],
    )
    .unwrap();
    assert_eq!(c.state.replica_id.as_str(), "gw-b");
    assert!(c.state.replica_id_source.contains(REPLICA_VAR));
}

#[test]
fn an_invalid_replica_id_is_refused_naming_the_key_and_where_it_came_from() {
    let errs = load("replica_id = \"../etc\"", &[]).unwrap_err();
    assert_error(&errs, "state.replica_id", "A-Z a-z 0-9 . _ -");
    let e = errs.iter().find(|e| e.key == "state.replica_id").unwrap();
    assert!(
        e.origin.as_deref().is_some_and(|o| o.contains("line")),
        "{e:?}"
    );

    let errs = load("", &[(REPLICA_VAR, &"x".repeat(64))]).unwrap_err();
    let e = errs.iter().find(|e| e.key == "state.replica_id").unwrap();
    assert!(
        e.origin.as_deref().is_some_and(|o| o.contains(REPLICA_VAR)),
        "{e:?}"
    );
}

#[test]
fn an_invalid_hostname_default_is_refused_naming_hostname_and_the_key_to_set() {
    let errs = load("", &[("HOSTNAME", "pod 0")]).unwrap_err();
    assert_error(&errs, "state.replica_id", "HOSTNAME environment variable");
    assert_error(&errs, "state.replica_id", "set state.replica_id");
}
