//! Black-box tests: the gateway and both simulators on free loopback ports, spoken to over HTTP.
//! One binary (several modules) so the suite links once.

mod applications;
mod audit;
mod audit_cli;
mod audit_path;
mod audit_replicas;
mod callers;
mod cli;
mod client_auth;
mod crash;
mod exchange;
mod helpers;
mod hooks;
mod hostile;
mod identities;
mod limits;
mod metrics;
mod openapi;
mod otlp;
mod postgres;
mod protocol;
mod records;
mod replicas;
mod runs;
mod shutdown;
mod state;
mod status;
mod sync;
mod tenants;
mod tls;
mod trace;
mod trail;
mod upstream;
