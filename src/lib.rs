//! drover: a load balancer for fleets of Ollama servers, built on Pingora.
//!
//! The data path, one file per stage: `api` (which API and endpoint) -> `body` (bounded
//! read, model rewrite) -> `select` (tiers, weights, eligibility) -> `proxy` (the Pingora
//! `ProxyHttp`: wait, upstream, relay, account). `fleet` holds the snapshot they read;
//! `health` keeps it current; `view` answers fleet-wide calls; `serve` starts it all.

pub mod accesslog;
pub mod admin;
pub mod api;
pub mod body;
pub mod client;
pub mod config;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod queue;
pub mod reload;
pub mod resources;
pub mod select;
pub mod serve;
pub mod store;
pub mod usage;
pub mod view;

/// A database URL fit for logs and errors: the password replaced by `***`.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_hidden() {
        assert_eq!(super::redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact_url("sqlite://drover.db"), "sqlite://drover.db");
    }
}
