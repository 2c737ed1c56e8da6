//! Names and fixed values the configuration refers to: the environment prefix, Graph's paths
//! and permissions, the workload identity variables.

/// The prefix of environment overrides; levels are separated by a double underscore.
pub const ENV_PREFIX: &str = "SYNC_GATEWAY__";

/// The default upstream path of the sync action (a beta endpoint, hence configuration).
pub const DEFAULT_SYNC_PATH: &str = "/beta/deviceManagement/windowsAutopilotSettings/sync";

/// The default path of the Autopilot settings, read for the sync status and the last trigger.
pub const DEFAULT_STATUS_PATH: &str = "/beta/deviceManagement/windowsAutopilotSettings";

/// The Graph delegated permission the sync action needs.
pub const SYNC_PERMISSION: &str = "DeviceManagementServiceConfig.ReadWrite.All";

/// Environment variables the Azure Workload Identity webhook injects into a pod
/// (`Azure/azure-workload-identity`, `pkg/webhook/consts.go`).
pub const AZURE_ENV: [&str; 4] = [
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
];

/// Where Discord follow-up messages are posted unless `hooks.NAME.api_base_url` says otherwise
/// (the API version interactions are documented against).
pub const DEFAULT_DISCORD_API_BASE_URL: &str = "https://discord.com/api/v10";

/// The hosts Slack's `response_url`s point at, the default of `hooks.NAME.response_url_hosts`
/// for a slack source: a follow-up goes only where Slack itself said.
pub const DEFAULT_SLACK_RESPONSE_URL_HOSTS: [&str; 1] = ["hooks.slack.com"];

/// The variable whose value is the default `state.replica_id`: the pod name under Kubernetes
/// (stable across restarts of the same pod), the container's hostname under Docker.
pub const HOSTNAME_ENV: &str = "HOSTNAME";
