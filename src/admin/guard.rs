//! Who may use the admin API and dashboard: the admin token (or, with none, loopback
//! clients), and the DNS-rebinding and cross-site guard on the request's Host and Origin.
//! Shared by the admission stage and drover's own answers; it holds only admin.token and
//! admin.allowed_hosts.

use std::net::IpAddr;

use super::fields::{error, Reply};
use crate::config::Settings;

/// The admin API's guard: its token and the host names a browser may reach it under.
pub(crate) struct AdminGuard {
    token: Option<String>,
    allowed_hosts: Vec<String>,
}

impl AdminGuard {
    pub(crate) fn new(settings: &Settings) -> AdminGuard {
        AdminGuard { token: settings.admin_token.clone(), allowed_hosts: settings.admin_allowed_hosts.clone() }
    }

    /// Who may call: the configured bearer token, or with none configured, loopback clients.
    pub(crate) fn authorize(&self, client: Option<IpAddr>, authorization: Option<&str>) -> Result<(), Reply> {
        match &self.token {
            Some(token) => {
                let given = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
                if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
                    Ok(())
                } else {
                    Err(error(401, "admin API: send Authorization: Bearer <admin.token>"))
                }
            }
            None if client.is_some_and(|ip| ip.is_loopback()) => Ok(()),
            None => Err(error(
                403,
                "admin API answers only loopback clients when no admin.token (DROVER_ADMIN_TOKEN) is set",
            )),
        }
    }

    /// The DNS-rebinding and cross-site guard, for everything `authorize` lets in. A page on
    /// any site can make a browser send requests to a loopback address under the site's own
    /// name (DNS rebinding): without a token, where being on loopback is the authority, the
    /// request's Host must be a loopback name, an IP address (a page cannot rebind those), or
    /// one of admin.allowed_hosts. With or without one, a browser's Origin must name such a
    /// host, or (with a token) the Host itself. `None` when the request may go on.
    pub(crate) fn browser_refused(&self, host: Option<&str>, origin: Option<&str>) -> Option<Reply> {
        if self.token.is_none() && !self.host_allowed(host) {
            let shown: String = host.unwrap_or("").chars().take(100).collect();
            return Some(error(
                403,
                format!("admin API: Host {shown:?} is not a loopback name or address nor in admin.allowed_hosts"),
            ));
        }
        let origin = origin?;
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        // The page's own origin (its Host, checked above), or a local or listed one; not any
        // address: a page at http://203.0.113.7 is a foreign site.
        let same_origin = host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host));
        if same_origin || self.local_or_listed(host_of(origin_host)) {
            return None;
        }
        let shown: String = origin.chars().take(100).collect();
        Some(error(403, format!("admin API: requests from the web origin {shown:?} are refused")))
    }

    /// Whether a request's Host (an authority, port and all) names this machine in a way a
    /// web page cannot rebind: an IP address, a loopback name, or one of admin.allowed_hosts.
    pub(crate) fn host_allowed(&self, host: Option<&str>) -> bool {
        host.map(host_of).is_some_and(|h| h.parse::<IpAddr>().is_ok() || self.local_or_listed(h))
    }

    /// localhost and its subdomains, a loopback address, or one of admin.allowed_hosts.
    fn local_or_listed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            || host == "localhost"
            || host.ends_with(".localhost")
            || self.allowed_hosts.iter().any(|a| match a.strip_prefix("*.") {
                Some(suffix) => host.strip_suffix(suffix).is_some_and(|head| head.ends_with('.')),
                None => *a == host,
            })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The host of a Host header or an origin's authority: the port and IPv6 brackets taken off.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(token: Option<&str>) -> AdminGuard {
        let env = crate::config::Env { admin_token: token.map(str::to_string), ..Default::default() };
        AdminGuard::new(&Settings::parse("", None, &env).unwrap())
    }

    #[test]
    fn a_page_under_a_foreign_name_never_reaches_the_loopback_admin() {
        let open = guard(None);
        for host in ["127.0.0.1:11434", "localhost:11434", "[::1]:11434", "a.localhost", "10.0.0.5:11434"] {
            assert!(open.browser_refused(Some(host), None).is_none(), "{host}");
        }
        // DNS rebinding: the attacker's name resolving to 127.0.0.1, Host and Origin its own.
        let (code, _) = open.browser_refused(Some("evil.example:11434"), Some("http://evil.example:11434")).unwrap();
        assert_eq!(code, 403);
        assert!(open.browser_refused(None, None).is_some(), "no Host, no loopback trust");
        assert!(open.browser_refused(Some("localhost.evil.example"), None).is_some());
        assert!(open.browser_refused(Some("127.0.0.1:11434"), Some("https://evil.example")).is_some());
        assert!(open.browser_refused(Some("127.0.0.1:11434"), Some("http://localhost:3000")).is_none());
        assert!(open.browser_refused(Some("127.0.0.1:11434"), Some("http://203.0.113.7")).is_some(), "a foreign site");
        assert!(open.browser_refused(Some("10.0.0.5:8083"), Some("http://10.0.0.5:8083")).is_none(), "its own page");
        // With a token, the token is the authority: any Host, but a foreign Origin is refused.
        let guarded = guard(Some("t"));
        assert!(guarded.browser_refused(Some("drover.corp:11434"), None).is_none());
        assert!(guarded.browser_refused(Some("drover.corp:11434"), Some("http://drover.corp:11434")).is_none());
        assert!(guarded.browser_refused(Some("drover.corp:11434"), Some("http://evil.example")).is_some());
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("a.b:1"), "a.b");
    }

    #[test]
    fn without_a_token_only_loopback_clients_are_answered() {
        let a = guard(None);
        assert!(a.authorize(Some("127.0.0.1".parse().unwrap()), None).is_ok());
        assert!(a.authorize(Some("::1".parse().unwrap()), None).is_ok());
        assert_eq!(a.authorize(Some("192.0.2.7".parse().unwrap()), None).unwrap_err().0, 403);
        assert_eq!(a.authorize(None, None).unwrap_err().0, 403);
    }

    #[test]
    fn with_a_token_every_client_needs_it() {
        let a = guard(Some("s3cret"));
        assert!(a.authorize(Some("192.0.2.7".parse().unwrap()), Some("Bearer s3cret")).is_ok());
        assert_eq!(a.authorize(Some("127.0.0.1".parse().unwrap()), None).unwrap_err().0, 401);
        assert_eq!(a.authorize(Some("127.0.0.1".parse().unwrap()), Some("Bearer s3cre")).unwrap_err().0, 401);
        assert_eq!(a.authorize(Some("127.0.0.1".parse().unwrap()), Some("s3cret")).unwrap_err().0, 401);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
    }
}
