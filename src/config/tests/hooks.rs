//! `[hooks.NAME]`: webhook and chat sources, one test per way a source can be wrong.

use super::*;
use crate::secret::Secret;
use url::Url;

const OTHER_TENANT: &str = "55555555-5555-5555-5555-555555555555";
/// 32 bytes of `*`, base64: a Standard Webhooks key.
const WHSEC: &str = "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
/// RFC 8032 §7.1 test 1's public key.
const DISCORD_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

/// The full configuration with a second allowed tenant, the identity `bot` and `hook` appended
/// (a `[hooks.NAME]` table).
fn hook_toml(dir: &Path, hook: &str) -> String {
    format!(
        "{}\n[identities.bot]\ntenant_id = \"{TENANT}\"\nstore_path = {}\n\n{hook}\n",
        full_toml().replace(
            &format!("allowed_tenants = [\"{TENANT}\"]"),
            &format!("allowed_tenants = [\"{TENANT}\", \"{OTHER_TENANT}\"]"),
        ),
        toml::Value::String(dir.join("bot.session").display().to_string())
    )
}

/// The client secret and the identity's store key, plus `extra`.
fn env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = secret_env();
    env.push((
        "SYNC_GATEWAY__IDENTITIES__BOT__STORE_KEY".into(),
        "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".into(),
    ));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// `[hooks.src]` of `kind` with `rest`, its secrets `secrets` from the environment.
fn src(kind: &str, rest: &str) -> String {
    format!("[hooks.src]\nkind = \"{kind}\"\nrun_as = \"bot\"\n{rest}")
}

const SECRETS_VAR: &str = "SYNC_GATEWAY__HOOKS__SRC__SECRETS";

fn load(hook: &str, extra: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
    let dir = tempfile::tempdir().unwrap();
    Config::from_toml_and_env(&hook_toml(dir.path(), hook), env(extra)).map_err(|e| e.0)
}

fn hook_errors(hook: &str, extra: &[(&str, &str)]) -> Vec<ConfigError> {
    load(hook, extra).unwrap_err()
}

fn assert_error(errs: &[ConfigError], key: &str, text: &str) {
    assert!(
        has_error(errs, key, text),
        "no {key}: ...{text}... in {errs:#?}"
    );
}

#[test]
fn a_slack_source_takes_its_secrets_from_the_environment_and_its_defaults() {
    let c = load(&src("slack", ""), &[(SECRETS_VAR, "one, two")]).unwrap();
    let h = &c.hooks["src"];
    assert_eq!(h.name, "src");
    assert_eq!(h.kind, HookKind::Slack);
    assert_eq!(h.kind.as_str(), "slack");
    assert!(h.kind.is_chat());
    let secrets: Vec<&str> = h.secrets.iter().map(Secret::expose).collect();
    assert_eq!(secrets, ["one", "two"]);
    assert!(
        h.secrets_source.contains(SECRETS_VAR),
        "{}",
        h.secrets_source
    );
    assert_eq!(h.run_as, "bot");
    assert_eq!(h.tenant_id, TENANT);
    assert_eq!(
        h.limits,
        HookLimits {
            per_minute: 30,
            burst: 10
        }
    );
    assert_eq!(h.when, None);
    assert_eq!(h.allow, ChatAllow::default());
    assert_eq!(h.response_url_hosts, ["hooks.slack.com"]);
    assert_eq!(h.api_base_url, None);
    assert_eq!(h.public_key, None);
    assert_eq!(h.tolerance_seconds, 300);
    assert_eq!(h.max_body_bytes, 65_536);
    assert_eq!(h.replay_window_seconds, 172_800);
    let masked = c.to_masked_toml();
    assert!(masked.contains("[hooks.src]"), "{masked}");
    assert!(
        !masked.contains("one") && !masked.contains("two"),
        "{masked}"
    );
}

#[test]
fn every_key_of_a_source_is_read() {
    let c = load(
        &src(
            "slack",
            r#"tenant_id = "11111111-1111-1111-1111-111111111111"
limits = { per_minute = 5, burst = 2 }
when = { pointer = "/command", one_of = ["/sync", "/autopilot"] }
allow = { teams = ["T0123"], channels = ["C0456"], users = [] }
response_url_hosts = ["Hooks.Slack.com", "127.0.0.1"]
tolerance_seconds = "2m"
max_body_bytes = 1024
replay_window_seconds = 600
"#,
        ),
        &[(SECRETS_VAR, "s")],
    )
    .unwrap();
    let h = &c.hooks["src"];
    assert_eq!(
        h.limits,
        HookLimits {
            per_minute: 5,
            burst: 2
        }
    );
    assert_eq!(
        h.when,
        Some(HookFilter {
            pointer: "/command".into(),
            test: HookTest::OneOf(vec!["/sync".into(), "/autopilot".into()]),
        })
    );
    assert_eq!(h.allow.teams, ["T0123"]);
    assert_eq!(h.allow.channels, ["C0456"]);
    assert!(h.allow.users.is_empty());
    assert_eq!(h.response_url_hosts, ["hooks.slack.com", "127.0.0.1"]);
    assert_eq!(
        (
            h.tolerance_seconds,
            h.max_body_bytes,
            h.replay_window_seconds
        ),
        (120, 1024, 600)
    );
    // A limit with one key keeps the other's default.
    let c = load(
        &src("github", "limits = { per_minute = 7 }"),
        &[(SECRETS_VAR, "s")],
    )
    .unwrap();
    assert_eq!(
        c.hooks["src"].limits,
        HookLimits {
            per_minute: 7,
            burst: 10
        }
    );
}

#[test]
fn secrets_come_from_a_file_one_a_line_blank_lines_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jira-hook");
    std::fs::write(&path, "\nfirst-secret\n\n  second-secret  \n").unwrap();
    let hook = src(
        "jira",
        &format!(
            "secrets_file = {}",
            toml::Value::String(path.display().to_string())
        ),
    );
    let c = load(&hook, &[]).unwrap();
    let h = &c.hooks["src"];
    let secrets: Vec<&str> = h.secrets.iter().map(Secret::expose).collect();
    assert_eq!(secrets, ["first-secret", "second-secret"]);
    assert_eq!(h.secrets_source, format!("file {}", path.display()));
}

#[test]
fn secrets_written_in_the_file_are_refused_naming_the_key() {
    let errs = hook_errors(&src("github", "secrets = \"hunter2\""), &[]);
    assert_error(&errs, "hooks.src.secrets", "must not be written in the configuration file; set SYNC_GATEWAY__HOOKS__SRC__SECRETS or hooks.src.secrets_file");
    assert!(!format!("{errs:?}").contains("hunter2"));
}

#[test]
fn a_source_without_secrets_is_refused_saying_where_they_may_come_from() {
    let errs = hook_errors(&src("github", ""), &[]);
    assert_error(
        &errs,
        "hooks.src.secrets",
        "is required: set SYNC_GATEWAY__HOOKS__SRC__SECRETS (comma-separated) or hooks.src.secrets_file (one secret a line)",
    );
    let errs = hook_errors(&src("github", ""), &[(SECRETS_VAR, " , ,")]);
    assert_error(&errs, "hooks.src.secrets", "lists no secret");
}

#[test]
fn secrets_from_both_places_or_an_unreadable_or_empty_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n\n").unwrap();
    let file = |p: &Path| {
        format!(
            "secrets_file = {}",
            toml::Value::String(p.display().to_string())
        )
    };
    let errs = hook_errors(&src("github", &file(&empty)), &[(SECRETS_VAR, "s")]);
    assert_error(&errs, "hooks.src.secrets", "not both");
    let errs = hook_errors(&src("github", &file(&empty)), &[]);
    assert_error(&errs, "hooks.src.secrets_file", "is empty");
    let errs = hook_errors(&src("github", &file(&dir.path().join("absent"))), &[]);
    assert_error(&errs, "hooks.src.secrets_file", "cannot read");
}

#[test]
fn more_than_a_handful_of_secrets_is_refused() {
    let errs = hook_errors(&src("github", ""), &[(SECRETS_VAR, "a,b,c,d,e,f")]);
    assert_error(&errs, "hooks.src.secrets", "holds 6 secrets; at most 5");
}

#[test]
fn standard_webhooks_secrets_must_be_whsec_keys_of_24_to_64_bytes() {
    assert!(load(&src("standard-webhooks", ""), &[(SECRETS_VAR, WHSEC)]).is_ok());
    let errs = hook_errors(
        &src("standard-webhooks", ""),
        &[(SECRETS_VAR, "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=")],
    );
    assert_error(
        &errs,
        "hooks.src.secrets",
        "secret 1 must start with whsec_",
    );
    assert_error(
        &errs,
        "hooks.src.secrets",
        "a bare base64 key is not accepted",
    );
    let errs = hook_errors(
        &src("standard-webhooks", ""),
        &[(SECRETS_VAR, &format!("{WHSEC},whsec_not base64!"))],
    );
    assert_error(
        &errs,
        "hooks.src.secrets",
        "secret 2 must be base64 after whsec_",
    );
    let errs = hook_errors(
        &src("standard-webhooks", ""),
        &[(SECRETS_VAR, "whsec_c2hvcnQ=")],
    );
    assert_error(
        &errs,
        "hooks.src.secrets",
        "24 to 64 bytes after whsec_, found 5",
    );
    // From a file, the error names the file key and the file, never the secret.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svix");
    std::fs::write(&path, format!("{WHSEC}\nwhsec_c2hvcnQ=\n")).unwrap();
    let errs = hook_errors(
        &src(
            "standard-webhooks",
            &format!(
                "secrets_file = {}",
                toml::Value::String(path.display().to_string())
            ),
        ),
        &[],
    );
    assert_error(
        &errs,
        "hooks.src.secrets_file",
        &format!("secret 2 in {} must decode", path.display()),
    );
    assert!(!format!("{errs:?}").contains("c2hvcnQ"));
}

#[test]
fn teams_outgoing_secrets_must_be_base64() {
    assert!(load(&src("teams-outgoing", ""), &[(SECRETS_VAR, "c2VjcmV0")]).is_ok());
    let errs = hook_errors(&src("teams-outgoing", ""), &[(SECRETS_VAR, "not base64!")]);
    assert_error(&errs, "hooks.src.secrets", "secret 1 must be base64");
}

#[test]
fn discord_needs_a_public_key_that_is_a_curve_point_and_no_secrets() {
    let c = load(
        &src("discord", &format!("public_key = \"{DISCORD_KEY}\"")),
        &[],
    )
    .unwrap();
    let h = &c.hooks["src"];
    assert!(h.secrets.is_empty());
    assert_eq!(crate::domain::hex(&h.public_key.unwrap()), DISCORD_KEY);
    assert_eq!(
        h.api_base_url.as_ref().map(Url::as_str),
        Some("https://discord.com/api/v10")
    );
    assert!(c.to_masked_toml().contains(DISCORD_KEY));
    let errs = hook_errors(&src("discord", ""), &[]);
    assert_error(&errs, "hooks.src.public_key", "is required for discord");
    let errs = hook_errors(&src("discord", "public_key = \"abc\""), &[]);
    assert_error(&errs, "hooks.src.public_key", "must be 64 hex characters");
    let errs = hook_errors(
        &src("discord", &format!("public_key = \"{}\"", "f".repeat(64))),
        &[],
    );
    assert_error(&errs, "hooks.src.public_key", "not a point of the curve");
    let errs = hook_errors(
        &src("discord", &format!("public_key = \"{DISCORD_KEY}\"")),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.secrets",
        "set hooks.src.public_key and no secrets",
    );
}

#[test]
fn discord_only_keys_are_refused_on_other_kinds() {
    let errs = hook_errors(
        &src(
            "github",
            &format!(
                "public_key = \"{DISCORD_KEY}\"\napi_base_url = \"https://discord.com/api/v10\""
            ),
        ),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.public_key",
        "applies only to kind discord",
    );
    assert_error(
        &errs,
        "hooks.src.api_base_url",
        "applies only to kind discord",
    );
}

#[test]
fn a_discord_api_base_url_must_be_https_unless_loopback() {
    let key = format!("public_key = \"{DISCORD_KEY}\"\n");
    let errs = hook_errors(
        &src(
            "discord",
            &format!("{key}api_base_url = \"http://discord.example.com/api\""),
        ),
        &[],
    );
    assert_error(&errs, "hooks.src.api_base_url", "must use https://");
    let c = load(
        &src(
            "discord",
            &format!("{key}api_base_url = \"http://127.0.0.1:9/api/v10\""),
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.hooks["src"].api_base_url.as_ref().map(Url::as_str),
        Some("http://127.0.0.1:9/api/v10")
    );
}

#[test]
fn the_kind_is_required_and_must_be_known() {
    let errs = hook_errors("[hooks.src]\nrun_as = \"bot\"", &[(SECRETS_VAR, "s")]);
    assert_error(&errs, "hooks.src.kind", "is required: one of standard-webhooks, github, gitlab, jira, zendesk, pagerduty, slack, teams-outgoing, discord, mattermost");
    let errs = hook_errors(&src("bitbucket", ""), &[(SECRETS_VAR, "s")]);
    assert_error(
        &errs,
        "hooks.src.kind",
        "\"bitbucket\" is not one of standard-webhooks",
    );
}

#[test]
fn a_source_name_follows_the_identity_name_rules() {
    let errs = hook_errors(
        &src("github", "").replace("[hooks.src]", "[hooks.Src]"),
        &[("SYNC_GATEWAY__HOOKS__SRC__SECRETS", "s")],
    );
    assert_error(&errs, "hooks.Src", "part of the URL path /hooks/NAME");
}

#[test]
fn run_as_must_name_an_identity() {
    let errs = hook_errors("[hooks.src]\nkind = \"github\"", &[(SECRETS_VAR, "s")]);
    assert_error(&errs, "hooks.src.run_as", "is required");
    let errs = hook_errors(
        &src("github", "").replace("run_as = \"bot\"", "run_as = \"nobody\""),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(&errs, "hooks.src.run_as", "add [identities.nobody]");
}

#[test]
fn a_tenant_id_must_be_allowed_and_the_identitys() {
    let errs = hook_errors(
        &src("github", "tenant_id = \"nope\""),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(&errs, "hooks.src.tenant_id", "must be a GUID");
    let errs = hook_errors(
        &src(
            "github",
            "tenant_id = \"66666666-6666-6666-6666-666666666666\"",
        ),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.tenant_id",
        "must be one of callers.allowed_tenants",
    );
    let errs = hook_errors(
        &src("github", &format!("tenant_id = \"{OTHER_TENANT}\"")),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.tenant_id",
        &format!(
            "must be the tenant of identities.bot ({TENANT}): a run acts in its identity's tenant"
        ),
    );
}

#[test]
fn limits_must_be_at_least_one() {
    let errs = hook_errors(
        &src("github", "limits = { per_minute = 0, burst = 0 }"),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(&errs, "hooks.src.limits.per_minute", "must be at least 1");
    assert_error(&errs, "hooks.src.limits.burst", "must be at least 1");
}

#[test]
fn a_filter_needs_a_json_pointer_and_exactly_one_test() {
    let ok = |when: &str| {
        load(
            &src("jira", &format!("when = {when}")),
            &[(SECRETS_VAR, "s")],
        )
    };
    let c =
        ok("{ pointer = \"/transition/to_status\", equals = \"Ready for Autopilot\" }").unwrap();
    assert_eq!(
        c.hooks["src"].when,
        Some(HookFilter {
            pointer: "/transition/to_status".into(),
            test: HookTest::Equals("Ready for Autopilot".into()),
        })
    );
    let c = ok("{ pointer = \"\", exists = true }").unwrap();
    assert_eq!(
        c.hooks["src"].when.as_ref().unwrap().test,
        HookTest::Exists(true)
    );
    let bad = |when: &str| {
        hook_errors(
            &src("jira", &format!("when = {when}")),
            &[(SECRETS_VAR, "s")],
        )
    };
    assert_error(
        &bad("{ pointer = \"transition\", exists = true }"),
        "hooks.src.when.pointer",
        "is not a JSON pointer (RFC 6901)",
    );
    assert_error(
        &bad("{ pointer = \"/a~2\", exists = true }"),
        "hooks.src.when.pointer",
        "is not a JSON pointer",
    );
    assert_error(
        &bad("{ exists = true }"),
        "hooks.src.when.pointer",
        "is required",
    );
    assert_error(
        &bad("{ pointer = \"/a\" }"),
        "hooks.src.when",
        "exactly one of equals, one_of, exists; found 0",
    );
    assert_error(
        &bad("{ pointer = \"/a\", equals = 1, exists = true }"),
        "hooks.src.when",
        "found 2",
    );
    assert_error(
        &bad("{ pointer = \"/a\", one_of = [] }"),
        "hooks.src.when.one_of",
        "must list at least one value",
    );
}

#[test]
fn allow_applies_to_chat_kinds_only_and_lists_ids() {
    let errs = hook_errors(
        &src("github", "allow = { teams = [\"T1\"] }"),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.allow",
        "applies only to chat kinds (slack, teams-outgoing, discord, mattermost)",
    );
    let errs = hook_errors(
        &src("slack", "allow = { channels = [\"C 1\"], users = [\"\"] }"),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(&errs, "hooks.src.allow.channels", "\"C 1\" is not an id");
    assert_error(&errs, "hooks.src.allow.users", "\"\" is not an id");
}

#[test]
fn response_url_hosts_are_host_names_of_slack_and_mattermost() {
    let errs = hook_errors(&src("mattermost", ""), &[(SECRETS_VAR, "s")]);
    assert_error(
        &errs,
        "hooks.src.response_url_hosts",
        "is required for mattermost",
    );
    let c = load(
        &src("mattermost", "response_url_hosts = [\"chat.example.com\"]"),
        &[(SECRETS_VAR, "s")],
    )
    .unwrap();
    assert_eq!(c.hooks["src"].response_url_hosts, ["chat.example.com"]);
    let errs = hook_errors(
        &src(
            "slack",
            "response_url_hosts = [\"https://hooks.slack.com/commands\"]",
        ),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.response_url_hosts",
        "without scheme, port or path",
    );
    let errs = hook_errors(
        &src("slack", "response_url_hosts = []"),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(&errs, "hooks.src.response_url_hosts", "at least one host");
    let errs = hook_errors(
        &src(
            "discord",
            &format!("public_key = \"{DISCORD_KEY}\"\nresponse_url_hosts = [\"a.com\"]"),
        ),
        &[],
    );
    assert_error(
        &errs,
        "hooks.src.response_url_hosts",
        "applies only to kinds slack and mattermost",
    );
}

#[test]
fn tolerance_applies_only_where_a_timestamp_is_signed_and_the_replay_window_covers_it() {
    let errs = hook_errors(
        &src("github", "tolerance_seconds = 60"),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.tolerance_seconds",
        "applies only to kinds whose sender signs a timestamp (standard-webhooks, zendesk, slack, discord)",
    );
    let errs = hook_errors(
        &src("slack", "tolerance_seconds = 0"),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.tolerance_seconds",
        "must be greater than 0",
    );
    let errs = hook_errors(
        &src("slack", "replay_window_seconds = 599"),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.replay_window_seconds",
        "must be at least twice tolerance_seconds (300, the default)",
    );
    let errs = hook_errors(
        &src("github", "replay_window_seconds = 0"),
        &[(SECRETS_VAR, "s")],
    );
    assert_error(
        &errs,
        "hooks.src.replay_window_seconds",
        "must be greater than 0",
    );
    // Unsigned kinds have no tolerance to cover.
    assert!(load(
        &src("github", "replay_window_seconds = 60"),
        &[(SECRETS_VAR, "s")]
    )
    .is_ok());
}

#[test]
fn the_body_limit_is_bounded() {
    for v in ["0", "4194305"] {
        let errs = hook_errors(
            &src("github", &format!("max_body_bytes = {v}")),
            &[(SECRETS_VAR, "s")],
        );
        assert_error(
            &errs,
            "hooks.src.max_body_bytes",
            "must be between 1 and 4194304",
        );
    }
}

#[test]
fn a_source_may_come_wholly_from_the_environment() {
    let c = load(
        "",
        &[
            ("SYNC_GATEWAY__HOOKS__PD__KIND", "pagerduty"),
            ("SYNC_GATEWAY__HOOKS__PD__RUN_AS", "bot"),
            ("SYNC_GATEWAY__HOOKS__PD__SECRETS", "0012345"),
        ],
    )
    .unwrap();
    let h = &c.hooks["pd"];
    assert_eq!(h.kind, HookKind::Pagerduty);
    // A secret is text whatever it looks like.
    assert_eq!(h.secrets[0].expose(), "0012345");
}

#[test]
fn hook_errors_name_the_file_line_or_the_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let text = hook_toml(
        dir.path(),
        &src(
            "slack",
            "allow = { teams = [\"T 1\"] }\nresponse_url_hosts = [\"a.com\"]",
        ),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    let mut e = env(&[(SECRETS_VAR, "s")]);
    e.push((
        "SYNC_GATEWAY__HOOKS__SRC__MAX_BODY_BYTES".into(),
        "0".into(),
    ));
    let err = Config::load_with_env(&path, e).unwrap_err().to_string();
    let line = text
        .lines()
        .position(|l| l.starts_with("allow = "))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "hooks.src.allow.teams: \"T 1\" is not an id: ids are not empty and have no spaces ({}, line {line})",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("hooks.src.max_body_bytes: must be between 1 and 4194304 (4 MiB): a delivery is held in memory while it is verified (environment variable SYNC_GATEWAY__HOOKS__SRC__MAX_BODY_BYTES)"),
        "{err}"
    );
}

#[test]
fn an_unknown_key_of_a_source_is_refused_with_a_suggestion() {
    let errs = hook_errors(
        &src("github", "secret_file = \"/x\""),
        &[(SECRETS_VAR, "s")],
    );
    assert!(
        errs.iter().any(|e| e.key == "hooks.src.secret_file"
            && e.message.contains("did you mean hooks.src.secrets_file?")),
        "{errs:#?}"
    );
}
