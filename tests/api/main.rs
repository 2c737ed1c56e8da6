//! Black-box tests: the gateway and both simulators on free loopback ports, spoken to over HTTP.
//! One binary (several modules) so the suite links once.

mod audit;
mod callers;
mod cli;
mod client_auth;
mod exchange;
mod helpers;
mod identities;
mod limits;
mod runs;
mod sync;
mod tenants;
mod upstream;
