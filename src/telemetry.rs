//! Logging. Lines never carry a token or a secret: the types that hold them redact
//! themselves, and the pipeline logs ids, statuses and error kinds only.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers (`serve`).
    Json,
    /// Human-readable lines (`dev`).
    Text,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default level: `info`, and for the
/// human-readable format also a line per request and per Graph answer (someone trying the
/// gateway out wants to see them; in production the audit trail has them).
pub fn init(format: LogFormat) {
    let default = match format {
        LogFormat::Json => "info",
        LogFormat::Text => "info,sync_gateway::pipeline=debug,sync_gateway::runs=debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
