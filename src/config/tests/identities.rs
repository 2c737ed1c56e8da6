//! `[identities.NAME]` and the applications mapped to them.

use super::*;

fn identity_toml(dir: &Path, extra: &str) -> String {
    format!(
        "{}\n[identities.bot]\ntenant_id = \"{TENANT}\"\nstore_path = {}\n{extra}",
        full_toml(),
        toml::Value::String(dir.join("bot.session").display().to_string())
    )
}

fn store_key_env() -> Vec<(String, String)> {
    let mut env = secret_env();
    env.push((
        "SYNC_GATEWAY__IDENTITIES__BOT__STORE_KEY".into(),
        "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".into(),
    ));
    env
}

#[test]
fn an_identity_defaults_to_the_sync_scope_and_takes_its_key_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config::from_toml_and_env(&identity_toml(dir.path(), ""), store_key_env()).unwrap();
    let id = &c.identities["bot"];
    assert_eq!(id.scopes, vec![c.graph.scope(SYNC_PERMISSION)]);
    assert!(id
        .store_key_source
        .contains("SYNC_GATEWAY__IDENTITIES__BOT__STORE_KEY"));
    assert!(!c.to_masked_toml().contains("KioqKioq"));
}

#[test]
fn an_identity_is_checked_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = identity_toml(
        dir.path(),
        "scopes = [\"https://graph.microsoft.com/User.Read\"]",
    )
    .replace(
        &format!("tenant_id = \"{TENANT}\"\nstore_path"),
        "tenant_id = \"55555555-5555-5555-5555-555555555555\"\nstore_path",
    );
    let errs = errors(&text, secret_env());
    assert!(
        has_error(&errs, "identities.bot.tenant_id", "callers.allowed_tenants"),
        "{errs:?}"
    );
    assert!(
        has_error(
            &errs,
            "identities.bot.scopes",
            "DeviceManagementServiceConfig.ReadWrite.All"
        ),
        "{errs:?}"
    );
    assert!(
        has_error(&errs, "identities.bot.store_key", "is required"),
        "{errs:?}"
    );
    let mut short = secret_env();
    short.push((
        "SYNC_GATEWAY__IDENTITIES__BOT__STORE_KEY".into(),
        "c2hvcnQ=".into(),
    ));
    assert!(has_error(
        &errors(&identity_toml(dir.path(), ""), short),
        "identities.bot.store_key",
        "32 bytes"
    ));
    let bad_name = identity_toml(dir.path(), "").replace("[identities.bot]", "[identities.Bot]");
    assert!(has_error(
        &errors(&bad_name, store_key_env()),
        "identities.Bot",
        "lower-case"
    ));
}

#[test]
fn a_store_key_written_in_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = identity_toml(
        dir.path(),
        "store_key = \"KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=\"",
    );
    assert!(has_error(
        &errors(&text, secret_env()),
        "identities.bot.store_key",
        "must not be written"
    ));
}

#[test]
fn an_app_mapping_names_an_identity_and_needs_the_app_role() {
    let dir = tempfile::tempdir().unwrap();
    let text = identity_toml(dir.path(), "")
        .replace("[identities.bot]", "[callers.apps.\"66666666-6666-6666-6666-666666666666\"]\nrun_as = \"nobody\"\n[identities.bot]");
    let errs = errors(&text, store_key_env());
    assert!(
        has_error(
            &errs,
            "callers.apps.\"66666666-6666-6666-6666-666666666666\".run_as",
            "[identities.nobody]"
        ),
        "{errs:?}"
    );
    assert!(
        has_error(&errs, "callers.required_app_role", "is required"),
        "{errs:?}"
    );
    let good = text
        .replace("run_as = \"nobody\"", "run_as = \"bot\"")
        .replace(
            "required_scope = \"Sync.Trigger\"",
            "required_scope = \"Sync.Trigger\"\nrequired_app_role = \"Sync.Trigger.All\"",
        );
    let c = Config::from_toml_and_env(&good, store_key_env()).unwrap();
    assert_eq!(
        c.callers.apps["66666666-6666-6666-6666-666666666666"].run_as,
        "bot"
    );
}
