//! `[server]` and `[limits]`: the listener, the connection cap, and the per-caller caps that
//! must stay below it.

use super::check::Check;
use crate::config::model::{LimitsConfig, ServerConfig, TlsConfig};
use crate::config::raw::{RawLimits, RawServer};
use std::net::SocketAddr;

impl Check {
    pub(super) fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
        let listen = self.required("server.listen", raw.listen).and_then(|l| {
            match l.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.err("server.listen", format!("must be address:port, got {l:?}"));
                    None
                }
            }
        });
        let tls = raw.tls.map(|t| TlsConfig {
            certificate_file: t.certificate_file,
            private_key_file: t.private_key_file,
        });
        // Plain HTTP beyond this machine carries bearer tokens in the clear: only on purpose.
        if let Some(addr) = listen {
            if tls.is_none() && !addr.ip().is_loopback() && !raw.plaintext_behind_proxy {
                self.err(
                    "server.listen",
                    format!(
                        "{addr} is not a loopback address and server.tls is not set, so tokens \
                         would cross the network in clear; set server.tls, or \
                         server.plaintext_behind_proxy = true when a mesh or an ingress \
                         terminates TLS in front of the gateway"
                    ),
                );
            }
        }
        if raw.workers == Some(0) {
            self.err("server.workers", "must be greater than 0");
        }
        let request_timeout = raw.request_timeout_seconds.0;
        if request_timeout == 0 {
            let origin = self.origin("server.request_timeout_seconds");
            self.err_plain(
                "server.request_timeout_seconds",
                format!("must be greater than 0 (0, {origin})"),
            );
        }
        let max_connections = raw.max_connections;
        let origin = self.origin("server.max_connections");
        match raw.workers {
            // Each worker takes an equal share (actix counts connections per worker).
            Some(w) if w > 0 && max_connections < w => self.err_plain(
                "server.max_connections",
                format!(
                    "must be at least server.workers ({w}): each worker serves an equal share \
                     ({max_connections}, {origin})"
                ),
            ),
            _ if max_connections == 0 => self.err_plain(
                "server.max_connections",
                format!("must be greater than 0 (0, {origin})"),
            ),
            _ => {}
        }
        Some(ServerConfig {
            listen: listen?,
            workers: raw.workers,
            shutdown_timeout_seconds: raw.shutdown_timeout_seconds.0,
            shutdown_grace_seconds: raw.shutdown_grace_seconds.0,
            request_timeout_seconds: request_timeout,
            max_connections,
            expose_openapi: raw.expose_openapi,
            tls,
            plaintext_behind_proxy: raw.plaintext_behind_proxy,
        })
    }

    /// `max_connections`: `server.max_connections`, which one caller's in-flight cap must stay
    /// below (`None` when `[server]` is itself wrong).
    pub(super) fn limits(
        &mut self,
        raw: RawLimits,
        max_connections: Option<usize>,
    ) -> Option<LimitsConfig> {
        let max_in_flight = raw.max_in_flight_per_caller;
        let in_flight_origin = self.origin("limits.max_in_flight_per_caller");
        let connections_origin = self.origin("server.max_connections");
        if max_in_flight == 0 {
            self.err_plain(
                "limits.max_in_flight_per_caller",
                format!("must be greater than 0 (0, {in_flight_origin})"),
            );
        } else if let Some(max_connections) = max_connections.filter(|m| max_in_flight >= *m) {
            self.err_plain(
                "limits.max_in_flight_per_caller",
                format!(
                    "must be below server.max_connections ({max_connections}, \
                     {connections_origin}), or one caller could hold every connection \
                     ({max_in_flight}, {in_flight_origin})"
                ),
            );
        }
        for (key, r) in [
            ("limits.per_caller", raw.per_caller),
            ("limits.per_tenant", raw.per_tenant),
        ] {
            if r.per_minute == 0 || r.burst == 0 {
                self.err(key, "per_minute and burst must both be greater than 0");
            }
        }
        if raw.max_tracked_callers == 0 {
            self.err("limits.max_tracked_callers", "must be greater than 0");
        }
        let eviction = self.positive("limits.eviction_seconds", raw.eviction_seconds.0);
        Some(LimitsConfig {
            per_caller: raw.per_caller,
            per_tenant: raw.per_tenant,
            max_tracked_callers: raw.max_tracked_callers,
            eviction_seconds: eviction,
            max_in_flight_per_caller: max_in_flight,
        })
    }
}
