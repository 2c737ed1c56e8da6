//! [`Check`]: the problems found so far and where each value came from, with the checks every
//! section uses (required, GUID, URL, positive).

use crate::config::error::ConfigError;
use crate::config::origin::Origins;
use crate::domain::TenantId;
use std::net::IpAddr;
use url::Url;

/// The problems found so far, and where each value came from.
pub(super) struct Check {
    pub(super) errors: Vec<ConfigError>,
    pub(super) origins: Origins,
}

impl Check {
    /// Where `key`'s value came from, inside a message about another key: the environment
    /// variable, the file, or the default.
    pub(super) fn origin(&self, key: &str) -> String {
        match self.origins.env_var(key) {
            Some(var) => format!("from the environment, {var}"),
            None if self.origins.is_set(key) => "from the file".into(),
            None => "the default".into(),
        }
    }

    /// A problem with `key`; the error says where its value came from.
    pub(super) fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::at(key, message, &self.origins));
    }

    /// A problem whose message already says where the value came from.
    pub(super) fn err_plain(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(key, message));
    }

    pub(super) fn required<T>(&mut self, key: &str, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.err_plain(key, "is required");
        }
        v
    }

    /// A GUID, in the lower case Entra writes in tokens (`tid`, `appid`).
    pub(super) fn tenant(&mut self, key: &str, v: Option<String>) -> Option<TenantId> {
        let v = self.required(key, v)?;
        match TenantId::parse(&v) {
            Some(id) => Some(id),
            None => {
                self.err(key, format!("must be a GUID, got {v:?}"));
                None
            }
        }
    }

    /// A GUID, in the lower case Entra writes in tokens (`appid`).
    pub(super) fn guid(&mut self, key: &str, v: Option<String>) -> Option<String> {
        let v = self.required(key, v)?;
        match uuid::Uuid::parse_str(&v) {
            Ok(id) => Some(id.hyphenated().to_string()),
            Err(_) => {
                self.err(key, format!("must be a GUID, got {v:?}"));
                None
            }
        }
    }

    pub(super) fn url(&mut self, key: &str, v: Option<String>) -> Option<Url> {
        let v = self.required(key, v)?;
        match parse_service_url(&v) {
            Ok(u) => Some(u),
            Err(m) => {
                self.err(key, m);
                None
            }
        }
    }

    pub(super) fn positive(&mut self, key: &str, v: u64) -> u64 {
        if v == 0 {
            self.err(key, "must be greater than 0");
        }
        v
    }
}

/// Whether `u`'s host is this machine (`localhost`, 127.0.0.0/8, `::1`): the one place plain
/// `http://` is allowed, in the configuration and for URLs a sender hands the gateway.
pub fn is_loopback_host(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Parses a URL the gateway calls: `https://`, or `http://` only for loopback hosts.
pub fn parse_service_url(v: &str) -> Result<Url, String> {
    let u = Url::parse(v).map_err(|e| format!("not a URL ({e}): {v:?}"))?;
    // A credential in a URL would be printed by check-config and logged; and the value is not
    // echoed here for the same reason.
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry user information (user:password@): credentials come from files or the environment".into());
    }
    if u.host().is_none() {
        return Err(format!("has no host: {v:?}"));
    }
    let loopback = is_loopback_host(&u);
    match u.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "must use https:// (http:// is allowed only for loopback hosts): {v:?}"
            ))
        }
        s => return Err(format!("unsupported scheme {s:?}: {v:?}")),
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!("must not carry a query or fragment: {v:?}"));
    }
    Ok(u)
}
