//! What a verified delivery asks for, read from its body the way its sender writes it: a
//! ticketing event (JSON, optionally filtered by `when`), a chat command (Slack and Mattermost
//! forms, a Teams activity, a Discord interaction), or Discord's endpoint check.

use crate::config::{ChatAllow, HookFilter, HookKind, HookTest};
use serde_json::Value;

use crate::domain::MAX_REASON_CHARS;
use crate::secret::Secret;

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum HookEvent {
    /// Discord's endpoint check (`{"type": 1}`): answered `{"type": 1}`, nothing else.
    Ping,
    /// A chat command.
    Command(ChatCommand),
    /// A ticketing system's event.
    Delivery(Delivery),
    /// Something this gateway does not act on (a Discord button, a Teams message without a
    /// command): answered 200 and audited, so the sender does not retry.
    Ignored(&'static str),
}

/// A ticketing system's event.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The body, parsed.
    pub json: Value,
    /// The sender's own notion of who caused it (Jira account id, GitHub login, ...).
    pub sender_user: Option<String>,
}

/// A chat command as the chat platform sent it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatCommand {
    /// The workspace (Slack `team_id`, Mattermost `team_id`, Teams team id, Discord guild id).
    pub team: Option<String>,
    /// The channel.
    pub channel: Option<String>,
    /// The platform's user id.
    pub user_id: Option<String>,
    /// The platform's user name (for the acknowledgement's "requested by @...").
    pub user_name: Option<String>,
    /// What the user asked.
    pub verb: Verb,
    /// Slack and Mattermost: where the outcome is posted later. Anyone holding it can post to
    /// the user's channel, so it redacts itself like any credential.
    pub response_url: Option<Secret>,
    /// Discord: the interaction's application id and token, for the follow-up.
    pub discord: Option<DiscordInteraction>,
}

/// The Discord interaction a follow-up edits.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscordInteraction {
    /// `application_id`.
    pub application_id: String,
    /// The interaction `token` (valid 15 minutes): a credential, never logged or recorded.
    pub token: Secret,
}

/// The command's words: `sync [reason]` (or nothing: a sync without a reason), `help`, or a
/// word the gateway does not know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verb {
    /// Trigger a sync, with the rest of the text as its reason.
    Sync {
        /// The reason, at most [`MAX_REASON_CHARS`].
        reason: Option<String>,
    },
    /// Show the usage.
    #[default]
    Help,
    /// A word the gateway does not know, or a reason too long: the usage, saying why.
    Unknown(String),
}

/// A body the sender could not have meant: answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedBody(pub &'static str);

/// Reads a verified body as its kind's sender writes it.
pub fn parse(kind: HookKind, body: &[u8]) -> Result<HookEvent, MalformedBody> {
    match kind {
        HookKind::Slack | HookKind::Mattermost => form_command(body),
        HookKind::TeamsOutgoing => teams_command(&json(body)?),
        HookKind::Discord => discord_interaction(&json(body)?),
        _ => {
            let json = json(body)?;
            let sender_user = sender_user(kind, &json);
            Ok(HookEvent::Delivery(Delivery { json, sender_user }))
        }
    }
}

/// Whether `json` passes the source's `when` filter.
pub fn passes(filter: &HookFilter, json: &Value) -> bool {
    let found = json.pointer(&filter.pointer);
    match &filter.test {
        HookTest::Exists(wanted) => found.is_some() == *wanted,
        HookTest::Equals(v) => found == Some(v),
        HookTest::OneOf(vs) => found.is_some_and(|f| vs.contains(f)),
    }
}

/// Whether the command's team, channel and user are allowed (an empty list allows any).
pub fn allowed(allow: &ChatAllow, command: &ChatCommand) -> bool {
    let fits = |list: &[String], value: &Option<String>| {
        list.is_empty() || value.as_ref().is_some_and(|v| list.iter().any(|l| l == v))
    };
    fits(&allow.teams, &command.team)
        && fits(&allow.channels, &command.channel)
        && fits(&allow.users, &command.user_id)
}

/// The usage, answered to `help` and to words the gateway does not know.
pub fn usage(command: &str) -> String {
    format!(
        "Usage: `{command}` or `{command} sync <reason>` triggers the Windows Autopilot sync \
         (Intune allows one every 10 minutes; a request inside that window joins the next run); \
         `{command} help` shows this."
    )
}

fn json(body: &[u8]) -> Result<Value, MalformedBody> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| MalformedBody("the body is not valid JSON"))?;
    if !value.is_object() {
        return Err(MalformedBody("the body must be a JSON object"));
    }
    Ok(value)
}

/// Where each ticketing sender names the person behind the event.
fn sender_user(kind: HookKind, json: &Value) -> Option<String> {
    let pointers: &[&str] = match kind {
        HookKind::Jira => &["/user/accountId"],
        HookKind::Github => &["/sender/login"],
        HookKind::Gitlab => &["/user_username", "/user/username"],
        HookKind::Pagerduty => &["/event/agent/summary"],
        HookKind::Zendesk => &["/detail/requester_id", "/current_user/id"],
        _ => &[],
    };
    pointers.iter().find_map(|p| match json.pointer(p)? {
        Value::String(s) => Some(bounded(s, 256)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Slack and Mattermost slash commands: `application/x-www-form-urlencoded`.
fn form_command(body: &[u8]) -> Result<HookEvent, MalformedBody> {
    if body.trim_ascii_start().starts_with(b"{") && serde_json::from_slice::<Value>(body).is_ok() {
        // The Events API (JSON): not a command; 200 so Slack does not retry it.
        return Ok(HookEvent::Ignored("events are not commands"));
    }
    let fields = form_fields(body)?;
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if field("payload").is_some() {
        // Slack interactivity (a button, a shortcut): not a command.
        return Ok(HookEvent::Ignored(
            "interactivity payloads are not commands",
        ));
    }
    let Some(command) = field("command") else {
        return Err(MalformedBody("a slash command must have a `command` field"));
    };
    let _ = command;
    Ok(HookEvent::Command(ChatCommand {
        team: field("team_id"),
        channel: field("channel_id"),
        user_id: field("user_id"),
        user_name: field("user_name"),
        verb: verb(&field("text").unwrap_or_default()),
        response_url: field("response_url").map(Secret::new),
        discord: None,
    }))
}

/// Form fields; a field sent twice is ambiguous (which one did the user type?), so refused.
fn form_fields(body: &[u8]) -> Result<Vec<(String, String)>, MalformedBody> {
    if std::str::from_utf8(body).is_err() {
        return Err(MalformedBody("the form is not UTF-8"));
    }
    let mut fields: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if fields.iter().any(|(seen, _)| *seen == k) {
            return Err(MalformedBody("a form field is sent twice"));
        }
        fields.push((k.into_owned(), v.into_owned()));
    }
    if fields.is_empty() {
        return Err(MalformedBody("the body is not a form"));
    }
    Ok(fields)
}

/// A Teams outgoing webhook's activity: the text is HTML with the bot's `<at>` mention first.
fn teams_command(json: &Value) -> Result<HookEvent, MalformedBody> {
    let text = json
        .get("text")
        .and_then(Value::as_str)
        .ok_or(MalformedBody("a Teams activity must have a `text`"))?;
    let s = |p: &str| json.pointer(p).and_then(Value::as_str).map(str::to_string);
    Ok(HookEvent::Command(ChatCommand {
        team: s("/channelData/team/id"),
        channel: s("/channelData/channel/id"),
        user_id: s("/from/aadObjectId").or_else(|| s("/from/id")),
        user_name: s("/from/name"),
        verb: verb(&teams_text(text)),
        response_url: None,
        discord: None,
    }))
}

/// The plain text of a Teams message after the mention: tags dropped, entities decoded.
fn teams_text(html: &str) -> String {
    // The mention names the bot: everything up to its end is not the user's command.
    let after = match html.find("</at>") {
        Some(i) => &html[i + "</at>".len()..],
        None => html,
    };
    let mut plain = String::with_capacity(after.len());
    let mut in_tag = false;
    for c in after.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    plain
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// A Discord interaction: 1 is the endpoint check, 2 an application command.
fn discord_interaction(json: &Value) -> Result<HookEvent, MalformedBody> {
    let kind = json
        .get("type")
        .and_then(Value::as_u64)
        .ok_or(MalformedBody("an interaction must have a numeric `type`"))?;
    match kind {
        1 => return Ok(HookEvent::Ping),
        2 => {}
        _ => return Ok(HookEvent::Ignored("only application commands are acted on")),
    }
    let s = |p: &str| json.pointer(p).and_then(Value::as_str).map(str::to_string);
    let (Some(application_id), Some(token)) = (s("/application_id"), s("/token")) else {
        return Err(MalformedBody(
            "an application command must have `application_id` and `token`",
        ));
    };
    let option = |name: &str| {
        json.pointer("/data/options")
            .and_then(Value::as_array)
            .and_then(|o| {
                o.iter()
                    .find(|o| o.get("name").and_then(Value::as_str) == Some(name))
            })
            .and_then(|o| o.get("value"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    // `/autopilot-sync reason: ...` is a sync; a free `text` option reads as the chat grammar.
    let verb = match (option("reason"), option("text")) {
        (Some(reason), _) => reason_verb(reason.trim()),
        (None, Some(text)) => verb(&text),
        (None, None) => Verb::Sync { reason: None },
    };
    Ok(HookEvent::Command(ChatCommand {
        team: s("/guild_id"),
        channel: s("/channel_id"),
        user_id: s("/member/user/id").or_else(|| s("/user/id")),
        user_name: s("/member/user/username").or_else(|| s("/user/username")),
        verb,
        response_url: None,
        discord: Some(DiscordInteraction {
            application_id,
            token: Secret::new(token),
        }),
    }))
}

/// The chat grammar: nothing → sync; `sync <reason>`; `help`; anything else → unknown.
pub fn verb(text: &str) -> Verb {
    let text = text.trim();
    let (word, rest) = match text.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (text, ""),
    };
    match word.to_ascii_lowercase().as_str() {
        "" => Verb::Sync { reason: None },
        "sync" => reason_verb(rest),
        "help" => Verb::Help,
        _ => Verb::Unknown(format!("unknown command `{}`", bounded(word, 40))),
    }
}

fn reason_verb(reason: &str) -> Verb {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Verb::Unknown(format!(
            "the reason is longer than {MAX_REASON_CHARS} characters"
        ));
    }
    Verb::Sync {
        reason: (!reason.is_empty()).then(|| reason.to_string()),
    }
}

fn bounded(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_chat_grammar_reads_sync_help_and_unknown_words() {
        assert_eq!(verb(""), Verb::Sync { reason: None });
        assert_eq!(verb("  sync  "), Verb::Sync { reason: None });
        assert_eq!(
            verb("sync new laptops for HR"),
            Verb::Sync {
                reason: Some("new laptops for HR".into())
            }
        );
        assert_eq!(verb("HELP"), Verb::Help);
        assert!(matches!(verb("deploy now"), Verb::Unknown(w) if w.contains("deploy")));
        assert!(
            matches!(verb(&format!("sync {}", "x".repeat(501))), Verb::Unknown(w) if w.contains("500"))
        );
    }

    #[test]
    fn a_slack_slash_command_is_read_from_its_form() {
        let body = b"team_id=T0123&channel_id=C0456&user_id=U1&user_name=ana&command=%2Fautopilot-sync&text=sync+new+hires&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1%2F2&trigger_id=13.45";
        let HookEvent::Command(c) = parse(HookKind::Slack, body).unwrap() else {
            panic!("not a command")
        };
        assert_eq!(c.team.as_deref(), Some("T0123"));
        assert_eq!(c.user_name.as_deref(), Some("ana"));
        assert_eq!(
            c.verb,
            Verb::Sync {
                reason: Some("new hires".into())
            }
        );
        assert_eq!(
            c.response_url.as_ref().map(Secret::expose),
            Some("https://hooks.slack.com/commands/1/2")
        );
    }

    #[test]
    fn a_form_field_sent_twice_is_malformed() {
        assert!(parse(HookKind::Slack, b"command=%2Fa&text=help&text=sync").is_err());
        assert!(parse(HookKind::Mattermost, b"not a form \xff").is_err());
    }

    #[test]
    fn a_teams_activity_reads_the_text_after_the_mention() {
        let body = json!({
            "type": "message", "id": "1",
            "text": "<at>Autopilot</at>&nbsp;sync <b>new</b> laptops",
            "from": {"id": "29:x", "name": "Ana", "aadObjectId": "oid-1"},
            "channelData": {"team": {"id": "19:team"}, "channel": {"id": "19:chan"}}
        });
        let HookEvent::Command(c) =
            parse(HookKind::TeamsOutgoing, body.to_string().as_bytes()).unwrap()
        else {
            panic!("not a command")
        };
        assert_eq!(
            c.verb,
            Verb::Sync {
                reason: Some("new laptops".into())
            }
        );
        assert_eq!(c.user_id.as_deref(), Some("oid-1"));
        assert_eq!(c.team.as_deref(), Some("19:team"));
    }

    #[test]
    fn discord_ping_is_the_endpoint_check_and_a_command_carries_its_interaction() {
        assert_eq!(
            parse(HookKind::Discord, br#"{"type":1}"#).unwrap(),
            HookEvent::Ping
        );
        let body = json!({
            "type": 2, "id": "i1", "application_id": "app", "token": "tok",
            "guild_id": "g", "channel_id": "c",
            "member": {"user": {"id": "u", "username": "ana"}},
            "data": {"name": "autopilot-sync", "options": [{"name": "reason", "value": "new hires"}]}
        });
        let HookEvent::Command(c) = parse(HookKind::Discord, body.to_string().as_bytes()).unwrap()
        else {
            panic!("not a command")
        };
        assert_eq!(c.discord.as_ref().unwrap().application_id, "app");
        assert_eq!(c.user_name.as_deref(), Some("ana"));
        assert_eq!(
            c.verb,
            Verb::Sync {
                reason: Some("new hires".into())
            }
        );
        assert_eq!(
            parse(HookKind::Discord, br#"{"type":3}"#).unwrap(),
            HookEvent::Ignored("only application commands are acted on")
        );
    }

    #[test]
    fn a_ticketing_body_must_be_a_json_object_and_names_its_sender() {
        assert!(parse(HookKind::Github, b"[1,2]").is_err());
        assert!(parse(HookKind::Jira, b"{not json").is_err());
        let HookEvent::Delivery(d) =
            parse(HookKind::Github, br#"{"sender":{"login":"octocat"}}"#).unwrap()
        else {
            panic!("not a delivery")
        };
        assert_eq!(d.sender_user.as_deref(), Some("octocat"));
    }

    #[test]
    fn a_when_filter_tests_equals_one_of_and_exists() {
        let body = json!({"transition": {"to_status": "Ready for Autopilot"}});
        let f = |test| HookFilter {
            pointer: "/transition/to_status".into(),
            test,
        };
        assert!(passes(
            &f(HookTest::Equals(json!("Ready for Autopilot"))),
            &body
        ));
        assert!(!passes(&f(HookTest::Equals(json!("Done"))), &body));
        assert!(passes(
            &f(HookTest::OneOf(vec![
                json!("Done"),
                json!("Ready for Autopilot")
            ])),
            &body
        ));
        assert!(passes(&f(HookTest::Exists(true)), &body));
        assert!(!passes(&f(HookTest::Exists(false)), &body));
        assert!(!passes(&f(HookTest::Equals(json!("x"))), &json!({})));
    }

    #[test]
    fn allow_lists_restrict_only_the_dimensions_they_name() {
        let allow = ChatAllow {
            teams: vec!["T1".into()],
            channels: vec![],
            users: vec![],
        };
        let mut c = ChatCommand {
            team: Some("T1".into()),
            ..Default::default()
        };
        assert!(allowed(&allow, &c));
        c.team = Some("T2".into());
        assert!(!allowed(&allow, &c));
        c.team = None;
        assert!(!allowed(&allow, &c));
    }
}
