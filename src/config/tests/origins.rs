//! Every error names its key and where the value came from: the file and line, or the
//! environment variable.

use super::{full_toml, secret_env};
use crate::config::{Config, ConfigErrors};

/// `text` loaded from a file named `gateway.toml`, with `env`: the error text.
fn load_error(text: &str, env: Vec<(String, String)>) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let e: ConfigErrors = Config::load_with_env(&path, env).unwrap_err();
    (e.to_string(), path.display().to_string())
}

/// The 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

#[test]
fn a_bad_environment_value_names_its_variable() {
    let mut env = secret_env();
    env.push(("SYNC_GATEWAY__GRAPH__TIMEOUT_SECONDS".into(), "abc".into()));
    let (e, _) = load_error(&full_toml(), env);
    assert!(
        e.contains("graph.timeout_seconds: \"abc\" is not a duration")
            && e.contains("(environment variable SYNC_GATEWAY__GRAPH__TIMEOUT_SECONDS)"),
        "{e}"
    );
    assert!(!e.contains("src/config"), "{e}");
}

#[test]
fn a_bad_file_value_names_the_file_and_line() {
    let text = full_toml().replace("[graph]\n", "[graph]\ntimeout_seconds = \"soon\"\n");
    let (e, file) = load_error(&text, secret_env());
    let line = line_of(&text, "timeout_seconds");
    assert!(
        e.contains(&format!(
            "graph.timeout_seconds: \"soon\" is not a duration: write whole seconds (30) or a duration (\"30s\", \"5m\", \"1h\") ({file}, line {line})"
        )),
        "{e}"
    );
}

#[test]
fn a_value_that_fails_validation_names_the_file_and_line() {
    let text = full_toml().replace(
        "tenant_id = \"11111111-1111-1111-1111-111111111111\"",
        "tenant_id = \"not-a-guid\"",
    );
    let (e, file) = load_error(&text, secret_env());
    let line = line_of(&text, "tenant_id");
    assert!(
        e.contains(&format!(
            "entra.tenant_id: must be a GUID, got \"not-a-guid\" ({file}, line {line})"
        )),
        "{e}"
    );
}

#[test]
fn a_mistyped_key_names_the_key_the_file_and_the_closest_known_key() {
    let text = full_toml().replace("base_url =", "base_ur =");
    let (e, file) = load_error(&text, secret_env());
    let line = line_of(&text, "base_ur");
    assert!(
        e.contains(&format!(
            "graph.base_ur: is not a key of [graph]; did you mean graph.base_url? ({file}, line {line})"
        )),
        "{e}"
    );
    assert!(!e.contains("``"), "{e}");
}

#[test]
fn a_mistyped_variable_names_the_variable() {
    let mut env = secret_env();
    env.push(("SYNC_GATEWAY__GRAPH__TIMEOUT_SECOND".into(), "3".into()));
    let (e, _) = load_error(&full_toml(), env);
    assert!(
        e.contains("graph.timeout_second: is not a key of [graph]; did you mean graph.timeout_seconds? (environment variable SYNC_GATEWAY__GRAPH__TIMEOUT_SECOND)"),
        "{e}"
    );
}

#[test]
fn a_mistyped_table_is_named_and_the_other_problems_still_reported() {
    let text = full_toml()
        .replace("[limits]", "")
        .replace("[audit]\n", "[limit]\nmax_tracked_callers = 5\n[audit]\n")
        .replace("required_scope = \"Sync.Trigger\"\n", "");
    let (e, file) = load_error(&text, secret_env());
    let line = line_of(&text, "[limit]");
    assert!(
        e.contains(&format!(
            "limit: is not a key of the configuration; did you mean limits? ({file}, line {line})"
        )),
        "{e}"
    );
    assert!(e.contains("callers.required_scope: is required"), "{e}");
}

#[test]
fn broken_toml_names_the_file_and_line() {
    let text = full_toml().replace("[graph]", "[graph");
    let (e, file) = load_error(&text, secret_env());
    let line = line_of(&text, "[graph");
    assert!(
        e.contains(&format!("{file}, line {line}, column 7: not valid TOML: ")),
        "{e}"
    );
    assert_eq!(e.lines().count(), 2, "one line per problem: {e}");
}

#[test]
fn durations_may_be_written_as_people_write_them() {
    let text = full_toml().replace("[graph]\n", "[graph]\ntimeout_seconds = \"1m\"\n")
        + "[actions.sync]\ncooldown_seconds = \"15m\"\nretry_base_ms = \"1s\"\n";
    let mut env = secret_env();
    env.push(("SYNC_GATEWAY__ENTRA__TIMEOUT_SECONDS".into(), "5s".into()));
    let c = Config::from_toml_and_env(&text, env).unwrap();
    assert_eq!(c.graph.timeout_seconds, 60);
    assert_eq!(c.actions.sync.cooldown_seconds, 900);
    assert_eq!(c.actions.sync.retry_base_ms, 1000);
    assert_eq!(c.entra.timeout_seconds, 5);
}

#[test]
fn a_postgres_password_must_not_be_written_in_the_file_but_a_server_may() {
    let with = |url: &str| {
        full_toml().replace(
            "[audit]\n",
            &format!("[audit]\nsinks = [\"postgres\"]\npostgres_url = \"{url}\"\n"),
        )
    };
    let (e, file) = load_error(&with("postgres://gw:pw@db.internal/gw"), secret_env());
    assert!(
        e.contains("audit.postgres_url: must not be written in the configuration file; set SYNC_GATEWAY__AUDIT__POSTGRES_URL"),
        "{e}"
    );
    assert!(e.contains(&file) && !e.contains("pw@"), "{e}");
    let c = Config::from_toml_and_env(&with("postgres://gw@db.internal/gw"), secret_env()).unwrap();
    assert!(c.audit.postgres_url.is_some());
}

#[test]
fn every_secret_key_follows_one_rule() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
    let text = full_toml().replace(
        "[audit]\n",
        &format!(
            "[audit]\nhmac_key_file = {}\n",
            toml::Value::String(key.display().to_string())
        ),
    );
    let c = Config::from_toml_and_env(&text, secret_env()).unwrap();
    assert_eq!(c.audit.hmac_key.unwrap().expose(), "0123456789abcdef0123");
    // The file and the environment at once: refused, naming both.
    let mut env = secret_env();
    env.push((
        "SYNC_GATEWAY__AUDIT__HMAC_KEY".into(),
        "0123456789abcdef0123".into(),
    ));
    let e = Config::from_toml_and_env(&text, env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("audit.hmac_key: set either SYNC_GATEWAY__AUDIT__HMAC_KEY or audit.hmac_key_file, not both"),
        "{e}"
    );
    // An empty secret file is named by its key.
    std::fs::write(&key, "\n").unwrap();
    let e = Config::from_toml_and_env(&text, secret_env())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("audit.hmac_key_file: {} is empty", key.display())),
        "{e}"
    );
}

#[test]
fn a_mistyped_key_of_a_named_table_names_the_table() {
    let text = full_toml() + "[identities.bot]\ntenant = \"x\"\n";
    let (e, file) = load_error(&text, secret_env());
    let line = line_of(&text, "tenant =");
    assert!(
        e.contains(&format!(
            "identities.bot.tenant: is not a key of [identities.bot]; did you mean identities.bot.tenant_id? ({file}, line {line})"
        )),
        "{e}"
    );
}

#[test]
fn a_secret_from_the_environment_is_taken_as_written_but_for_surrounding_spaces() {
    // Spaces around it are dropped, as around a secret file's contents.
    for (given, secret) in [
        ("ab[c]d", "ab[c]d"),
        ("a,b", "a,b"),
        ("x{y}=", "x{y}="),
        ("p~q.r_s-t", "p~q.r_s-t"),
        ("  padded ", "padded"),
        ("0012345", "0012345"),
        ("true", "true"),
    ] {
        let env = vec![(
            "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".to_string(),
            given.to_string(),
        )];
        let c = Config::from_toml_and_env(&full_toml(), env).unwrap();
        match c.entra.client_auth {
            crate::config::ClientAuthConfig::Secret { secret: s, .. } => {
                assert_eq!(s.expose(), secret)
            }
            other => panic!("{other:?}"),
        }
    }
}
