//! CORS with Ollama's `OLLAMA_ORIGINS` semantics.
//!
//! Local origins (localhost, 127.0.0.1, 0.0.0.0 on any port, http or https) and the app
//! schemes desktop clients use are always allowed, as in Ollama; `cors.allowed_origins`
//! adds patterns where `*` matches any run of characters (`https://*.example.com`, or `*`
//! for every origin). A request from an origin on neither list gets 403 (Ollama does the
//! same), which keeps a web page the user happens to visit from driving the fleet. A request
//! whose Origin is the address it was sent to is same-origin and always allowed.

/// Ollama's built-in origins (envconfig.AllowedOrigins).
fn ollama_defaults() -> Vec<String> {
    let mut out = Vec::new();
    for host in ["localhost", "127.0.0.1", "0.0.0.0", "[::1]"] {
        for scheme in ["http", "https"] {
            out.push(format!("{scheme}://{host}"));
            out.push(format!("{scheme}://{host}:*"));
        }
    }
    for scheme in ["app", "file", "tauri", "vscode-webview", "vscode-file"] {
        out.push(format!("{scheme}://*"));
    }
    out
}

/// Methods a preflight may ask for.
pub(crate) const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS";
/// Headers a page may read from an answer.
pub(crate) const EXPOSE_HEADERS: &str = "x-request-id, x-drover-server, x-drover-attempts, retry-after";
/// How long a browser may cache a preflight answer, in seconds.
pub(crate) const MAX_AGE: &str = "86400";

/// What to do with a request, given its Origin header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No Origin: not a cross-origin browser request.
    NotCors,
    /// Allowed: echo this origin in Access-Control-Allow-Origin.
    Allow(String),
    /// Not allowed: 403.
    Deny(String),
}

pub(crate) struct Cors {
    patterns: Vec<String>,
}

impl Cors {
    /// Ollama's defaults plus `extra` patterns.
    pub(crate) fn new(extra: &[String]) -> Cors {
        let mut patterns = ollama_defaults();
        patterns.extend(extra.iter().map(|p| p.trim().to_ascii_lowercase()).filter(|p| !p.is_empty()));
        Cors { patterns }
    }

    pub(crate) fn judge(&self, origin: Option<&str>, host: Option<&str>) -> Verdict {
        let Some(origin) = origin else { return Verdict::NotCors };
        let lower = origin.to_ascii_lowercase();
        let same_origin = host
            .is_some_and(|h| lower.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(h)));
        if same_origin || self.patterns.iter().any(|p| glob(p.as_bytes(), lower.as_bytes())) {
            Verdict::Allow(origin.to_string())
        } else {
            Verdict::Deny(origin.to_string())
        }
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_defaults_and_patterns() {
        let c = Cors::new(&["https://*.example.com".into(), "http://app.test:3000".into()]);
        let allow = |o: &str| matches!(c.judge(Some(o), Some("drover:8083")), Verdict::Allow(_));
        assert!(allow("http://localhost:5173"));
        assert!(allow("https://127.0.0.1"));
        assert!(allow("tauri://localhost"));
        assert!(allow("https://chat.example.com"));
        assert!(allow("HTTP://APP.TEST:3000"));
        assert!(allow("http://drover:8083"), "same origin");
        assert!(!allow("https://example.com.evil.net"));
        assert!(!allow("http://app.test:3001"));
        assert!(!allow("https://localhost.evil.net"));
        assert!(!allow("null"));
        assert_eq!(c.judge(None, None), Verdict::NotCors);
        assert!(matches!(Cors::new(&["*".into()]).judge(Some("https://x.y"), None), Verdict::Allow(_)));
    }

    #[test]
    fn glob_matches_runs() {
        assert!(glob(b"a*c", b"abbbc"));
        assert!(glob(b"a*", b"a"));
        assert!(!glob(b"a*c", b"abcd"));
        assert!(glob(b"*b*", b"xbx"));
    }
}
