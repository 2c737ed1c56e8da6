//! `[entra]`: the client credential, the platform's variables, the cloud.

use super::*;

#[test]
fn no_client_credential_is_refused_naming_all_three_kinds() {
    let errs = errors(&full_toml(), without_secret_env());
    assert!(
        has_error(
            &errs,
            "entra.client_secret",
            "entra.certificate_file with entra.private_key_file"
        ),
        "{errs:?}"
    );
    assert!(
        has_error(&errs, "entra.client_secret", "AZURE_FEDERATED_TOKEN_FILE"),
        "{errs:?}"
    );
}

#[test]
fn a_certificate_needs_both_files() {
    let text = full_toml().replace(
        "[callers]",
        "certificate_file = \"/nonexistent.crt\"\n[callers]",
    );
    let errs = errors(&text, without_secret_env());
    assert!(
        has_error(&errs, "entra.private_key_file", "is required"),
        "{errs:?}"
    );
}

fn token_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token");
    std::fs::write(&p, "a.b.c").unwrap();
    let s = p.display().to_string();
    (dir, s)
}

#[test]
fn workload_identity_environment_fills_unset_entra_keys_only() {
    let (_dir, token) = token_file();
    let text = full_toml()
        .replace(
            "authority_host = \"https://login.microsoftonline.com\"\n",
            "",
        )
        .replace(&format!("client_id = \"{CLIENT}\"\n"), "");
    let env = vec![
        ("AZURE_FEDERATED_TOKEN_FILE".to_string(), token.clone()),
        (
            "AZURE_CLIENT_ID".to_string(),
            "33333333-3333-3333-3333-333333333333".to_string(),
        ),
        (
            "AZURE_TENANT_ID".to_string(),
            "44444444-4444-4444-4444-444444444444".to_string(),
        ),
        (
            "AZURE_AUTHORITY_HOST".to_string(),
            "https://login.microsoftonline.com/".to_string(),
        ),
    ];
    let c = Config::from_toml_and_env(&text, env).unwrap();
    assert_eq!(c.entra.client_id, "33333333-3333-3333-3333-333333333333");
    // Set in the file: the file wins.
    assert_eq!(c.entra.tenant_id, TENANT);
    assert_eq!(
        c.entra.authority_host.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert!(
        matches!(c.entra.client_auth, ClientAuthConfig::Federated { ref source, .. } if source == "AZURE_FEDERATED_TOKEN_FILE")
    );
    assert_eq!(
        c.entra.filled_from_environment,
        vec![
            "entra.client_id from AZURE_CLIENT_ID",
            "entra.authority_host from AZURE_AUTHORITY_HOST"
        ]
    );
}

#[test]
fn azure_variables_do_not_fill_keys_for_a_secret_credential() {
    let text = full_toml().replace(&format!("client_id = \"{CLIENT}\"\n"), "");
    let mut env = secret_env();
    env.push((
        "AZURE_CLIENT_ID".into(),
        "33333333-3333-3333-3333-333333333333".into(),
    ));
    let errs = errors(&text, env);
    assert!(
        has_error(&errs, "entra.client_id", "is required"),
        "{errs:?}"
    );
}

#[test]
fn the_federated_token_file_key_wins_over_the_environment() {
    let (_dir, token) = token_file();
    let (_dir2, other) = token_file();
    let text = full_toml().replace(
        "[callers]",
        &format!(
            "federated_token_file = {}\n[callers]",
            toml::Value::String(token.clone())
        ),
    );
    let c = Config::from_toml_and_env(&text, vec![("AZURE_FEDERATED_TOKEN_FILE".into(), other)])
        .unwrap();
    match c.entra.client_auth {
        ClientAuthConfig::Federated { token_file, source } => {
            assert_eq!(token_file.display().to_string(), token);
            assert_eq!(source, "entra.federated_token_file");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_cloud_sets_authority_graph_and_scope_together() {
    let text = full_toml()
        .replace(
            "authority_host = \"https://login.microsoftonline.com\"\n",
            "cloud = \"china\"\n",
        )
        .replace("base_url = \"https://graph.microsoft.com\"\n", "");
    let c = Config::from_toml_and_env(&text, secret_env()).unwrap();
    assert_eq!(
        c.entra.authority_host.as_str(),
        "https://login.partner.microsoftonline.cn/"
    );
    assert_eq!(
        c.graph.base_url.as_str(),
        "https://microsoftgraph.chinacloudapi.cn/"
    );
    assert_eq!(
        c.graph.scope(SYNC_PERMISSION),
        "https://microsoftgraph.chinacloudapi.cn/DeviceManagementServiceConfig.ReadWrite.All"
    );
}

#[test]
fn an_explicit_proxy_host_overrides_the_cloud_but_not_the_scope() {
    let text = full_toml()
        .replace(
            "authority_host = \"https://login.microsoftonline.com\"\n",
            "cloud = \"usgov\"\n",
        )
        .replace(
            "https://graph.microsoft.com",
            "https://graph-proxy.internal.example",
        );
    let c = Config::from_toml_and_env(&text, secret_env()).unwrap();
    assert_eq!(
        c.graph.base_url.as_str(),
        "https://graph-proxy.internal.example/"
    );
    assert_eq!(c.graph.resource(), "https://graph.microsoft.us");
}

#[test]
fn hosts_of_two_clouds_are_refused_unless_forced() {
    let text = full_toml().replace("https://graph.microsoft.com", "https://graph.microsoft.us");
    let errs = errors(&text, secret_env());
    assert!(
        has_error(
            &errs,
            "graph.base_url",
            "belongs to global but graph.base_url https://graph.microsoft.us/ to usgov"
        ),
        "{errs:?}"
    );
    let forced = text.replace("[callers]", "allow_cloud_mismatch = true\n[callers]");
    assert!(Config::from_toml_and_env(&forced, secret_env()).is_ok());
    let unknown = full_toml()
        .replace("cloud", "x")
        .replace("[callers]", "cloud = \"mars\"\n[callers]");
    assert!(has_error(
        &errors(&unknown, secret_env()),
        "entra.cloud",
        "must be one of"
    ));
}
