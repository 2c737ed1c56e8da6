//! sync-gateway: a gateway in front of Microsoft Graph's Windows Autopilot sync action.
//!
//! See `ARCHITECTURE.md` for the map. The request lifecycle reads top to bottom in
//! [`pipeline`]; each step is one module with one job. The simulators (`sim`) and the `dev`
//! command exist only with the default `sim` feature; a production build leaves them out.

// Every public item says what it is (the project's style); CI's `-D warnings` holds it.
#![warn(missing_docs)]

pub mod admit;
pub mod audit;
pub mod background;
pub mod caller;
pub mod clock;
pub mod config;
pub mod credentials;
#[cfg(feature = "sim")]
pub mod dev;
pub mod domain;
pub mod error;
pub mod hook_answer;
pub mod hooks;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod otel;
pub mod pipeline;
pub mod policy;
pub mod preflight;
pub mod problem;
pub mod retry;
pub mod runs;
pub mod secret;
pub mod server;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use config::Config;
pub use server::Application;
