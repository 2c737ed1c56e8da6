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
    assert_eq!(id.kind_name(), "delegated");
    let session = id.delegated().expect("a delegated identity by default");
    assert_eq!(session.scopes, vec![c.graph.scope(SYNC_PERMISSION)]);
    assert!(session
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

/// `[identities.app]` of kind application in the allowed tenant, plus `extra` lines.
fn application_toml(extra: &str) -> String {
    format!(
        "{}\n[identities.app]\nkind = \"application\"\ntenant_id = \"{TENANT}\"\n{extra}",
        full_toml()
    )
}

#[test]
fn an_application_identity_needs_only_its_tenant() {
    let c = Config::from_toml_and_env(&application_toml(""), secret_env()).unwrap();
    let id = &c.identities["app"];
    assert_eq!(id.kind_name(), "application");
    assert!(id.delegated().is_none());
    assert_eq!(id.tenant_id.as_str(), TENANT);
    assert!(
        c.to_masked_toml().contains("kind = \"application\""),
        "{}",
        c.to_masked_toml()
    );
}

#[test]
fn an_application_identity_with_a_store_path_or_scopes_in_the_file_is_refused_naming_the_key_and_line(
) {
    let text = application_toml(
        "store_path = \"/tmp/app.session\"\nscopes = [\"https://graph.microsoft.com/.default\"]",
    );
    let errs = errors(&text, secret_env());
    for key in ["identities.app.store_path", "identities.app.scopes"] {
        let e = errs
            .iter()
            .find(|e| e.key == key)
            .unwrap_or_else(|| panic!("no error for {key}: {errs:?}"));
        assert!(e.message.contains("kind = \"delegated\" only"), "{e}");
        assert!(
            e.origin.as_deref().is_some_and(|o| o.contains("line")),
            "{e}"
        );
    }
}

#[test]
fn an_application_identity_with_a_store_key_in_the_environment_is_refused_naming_the_variable() {
    let mut env = secret_env();
    env.push((
        "SYNC_GATEWAY__IDENTITIES__APP__STORE_KEY".into(),
        "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".into(),
    ));
    let errs = errors(&application_toml(""), env);
    let e = errs
        .iter()
        .find(|e| e.key == "identities.app.store_key")
        .unwrap_or_else(|| panic!("{errs:?}"));
    assert!(e.message.contains("kind = \"delegated\" only"), "{e}");
    assert!(
        e.origin
            .as_deref()
            .is_some_and(|o| o.contains("SYNC_GATEWAY__IDENTITIES__APP__STORE_KEY")),
        "{e}"
    );
    // The key itself never appears in the error.
    assert!(!e.to_string().contains("KioqKioq"));
}

#[test]
fn an_application_identity_with_a_store_key_file_is_refused_naming_the_key() {
    let errs = errors(
        &application_toml("store_key_file = \"/run/secrets/key\""),
        secret_env(),
    );
    assert!(
        has_error(
            &errs,
            "identities.app.store_key_file",
            "kind = \"delegated\" only"
        ),
        "{errs:?}"
    );
}

#[test]
fn an_unknown_identity_kind_is_refused_naming_the_key_and_the_choices() {
    let text = application_toml("").replace("kind = \"application\"", "kind = \"app\"");
    let errs = errors(&text, secret_env());
    let e = errs
        .iter()
        .find(|e| e.key == "identities.app.kind")
        .unwrap_or_else(|| panic!("{errs:?}"));
    assert!(
        e.message
            .contains("must be one of delegated, application; got \"app\""),
        "{e}"
    );
    assert!(
        e.origin.as_deref().is_some_and(|o| o.contains("line")),
        "{e}"
    );
}

#[test]
fn an_application_identity_outside_the_allowed_tenants_is_refused() {
    let text = application_toml("").replace(
        &format!("[identities.app]\nkind = \"application\"\ntenant_id = \"{TENANT}\""),
        "[identities.app]\nkind = \"application\"\ntenant_id = \"55555555-5555-5555-5555-555555555555\"",
    );
    assert!(has_error(
        &errors(&text, secret_env()),
        "identities.app.tenant_id",
        "callers.allowed_tenants"
    ));
}

#[test]
fn an_app_mapping_may_run_as_an_application_identity() {
    let text = application_toml("").replace(
        "required_scope = \"Sync.Trigger\"",
        "required_scope = \"Sync.Trigger\"\nrequired_app_role = \"Sync.Trigger.All\"\n[callers.apps.\"66666666-6666-6666-6666-666666666666\"]\nrun_as = \"app\"",
    );
    let c = Config::from_toml_and_env(&text, secret_env()).unwrap();
    assert_eq!(
        c.callers.apps["66666666-6666-6666-6666-666666666666"].run_as,
        "app"
    );
}

#[test]
fn on_the_memory_backend_a_delegated_identity_without_store_path_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = identity_toml(dir.path(), "").replace("store_path = ", "# store_path = ");
    let errs = errors(&text, store_key_env());
    assert!(
        has_error(&errs, "identities.bot.store_path", "required"),
        "{errs:?}"
    );
}

#[test]
fn on_the_redis_backend_a_delegated_identity_needs_no_store_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[state]\nbackend = \"redis\"\n",
        identity_toml(dir.path(), "").replace("store_path = ", "# store_path = ")
    );
    let mut env = store_key_env();
    env.push((
        "SYNC_GATEWAY__STATE__REDIS_URL".into(),
        "redis://127.0.0.1:6379".into(),
    ));
    env.push((
        "SYNC_GATEWAY__STATE__ENCRYPTION_KEY".into(),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
    ));
    let c = Config::from_toml_and_env(&text, env).unwrap();
    let session = c.identities["bot"].delegated().unwrap();
    // The session lives in Redis: no file.
    assert!(session.store_path.is_none());
}
