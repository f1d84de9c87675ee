//! Configuration: the redacting [`Secret`], the remote-write endpoint and its checks, and the
//! settings a [`GrafanaCloudBuilder`](super::GrafanaCloudBuilder) hands the push thread.
//!
//! Everything is checked at construction, so a publisher that was built never fails for a
//! reason of configuration at its first push.

use std::sync::Arc;
use std::time::Duration;

use super::error::GrafanaError;

/// How often the aggregates are pushed unless configured otherwise: Grafana Cloud's own
/// default scrape interval and the original's.
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_secs(15);
/// The `job` label unless configured otherwise.
pub const DEFAULT_JOB: &str = "pipeline-telemetry";
/// How long one HTTP request may take, connecting included, unless configured otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry waits up to this long (full jitter), unless configured otherwise.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// No retry waits longer than this (unless the server's `Retry-After` asks for longer),
/// unless configured otherwise.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How many requests one push may take before it is dropped, unless configured otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// How old a push may grow while it is retried before it is dropped, unless configured
/// otherwise. Its samples are then also close to what Grafana Cloud still accepts as
/// in-order.
pub const DEFAULT_MAX_PUSH_AGE: Duration = Duration::from_secs(5 * 60);
/// Pushes kept while Grafana Cloud is slow or away, unless configured otherwise (oldest
/// dropped first: the newest push carries the cumulative totals).
pub const DEFAULT_MAX_BACKLOG_PUSHES: usize = 100;
/// Compressed bytes of pushes kept while Grafana Cloud is slow or away, unless configured
/// otherwise: 32 MiB.
pub const DEFAULT_MAX_BACKLOG_BYTES: usize = 32 * 1024 * 1024;
/// The shortest push interval accepted.
pub const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(10);

/// The project's `User-Agent`.
pub(crate) const USER_AGENT: &str = concat!(
    "pipeline-telemetry/",
    env!("CARGO_PKG_VERSION"),
    " (grafana-cloud remote-write)"
);

pub(crate) use crate::secret::basic_auth;
use crate::secret::check_token;
pub use crate::secret::Secret;

/// The checked remote-write URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) url: String,
    /// Whether it is plain HTTP to a host other than this machine (credentials in clear).
    pub(crate) plain_remote: bool,
}

/// `https://***@host/…` for a URL with credentials in it; the URL itself otherwise.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end + 3], &rest[at..]),
        None => url.to_owned(),
    }
}

/// Checks a remote-write URL: `http` or `https`, a host, a path, no credentials in it, and
/// for a Grafana Cloud host the `/api/prom/push` path.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<Endpoint, GrafanaError> {
    let invalid = |reason: &str| GrafanaError::InvalidEndpoint {
        endpoint: redact_url(endpoint),
        reason: reason.to_owned(),
    };
    let trimmed = endpoint.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    if trimmed.len() != endpoint.len() {
        return Err(invalid("it has spaces or line breaks around it"));
    }
    if !endpoint.contains("://") {
        return Err(invalid("it has no scheme; it must start with https://"));
    }
    let uri: ureq::http::Uri = endpoint
        .parse()
        .map_err(|e| invalid(&format!("it is not a URL ({e})")))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("http") => s,
        Some(other) => {
            return Err(invalid(&format!(
                "its scheme is {other:?}; it must start with https://"
            )))
        }
        None => return Err(invalid("it has no scheme; it must start with https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| invalid("it has no host name"))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            "it has credentials in it; pass the user name and API key as arguments instead",
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(invalid("it has no host name"));
    }
    let path = uri.path();
    if path.is_empty() || path == "/" {
        return Err(invalid(
            "it has no path; the remote-write URL ends in /api/prom/push",
        ));
    }
    let host_lower = host.to_ascii_lowercase();
    if host_lower.ends_with(".grafana.net") && path.trim_end_matches('/') != "/api/prom/push" {
        return Err(invalid(if host_lower.starts_with("prometheus-") {
            "this is a Grafana Cloud metrics host but not its remote-write path; the path is \
             /api/prom/push"
        } else {
            "this looks like the address of a Grafana instance, not of the stack's metrics \
             remote-write endpoint"
        }));
    }
    let loopback = host_lower == "localhost"
        || host_lower
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Ok(Endpoint {
        url: endpoint.to_owned(),
        plain_remote: scheme.eq_ignore_ascii_case("http") && !loopback,
    })
}

/// Checks the basic-auth user name (Grafana Cloud's instance ID, called `org_slug` in the
/// original's API).
pub(crate) fn check_user(user: &str) -> Result<(), GrafanaError> {
    let invalid = |reason| GrafanaError::InvalidCredential {
        kind: "user name (org_slug)",
        reason,
    };
    if user.is_empty() {
        return Err(invalid("it is empty"));
    }
    if user.contains(':') {
        return Err(invalid(
            "it contains ':', which basic auth cannot carry in a user name",
        ));
    }
    if !user.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "it contains spaces, control characters or non-ASCII characters",
        ));
    }
    Ok(())
}

/// Checks the API key.
pub(crate) fn check_key(key: &Secret) -> Result<(), GrafanaError> {
    check_token(key.expose()).map_err(|reason| GrafanaError::InvalidCredential {
        kind: "API key",
        reason,
    })
}

/// The `instance` label unless configured otherwise: `HOSTNAME:PID`, so that two processes on
/// one machine never write the same series (which Grafana Cloud would refuse as out of order).
pub(crate) fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .or_else(|| std::env::var("COMPUTERNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// Everything the push thread needs, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) endpoint: Endpoint,
    pub(crate) authorization: Arc<Secret>,
    /// The values to scrub from anything logged or reported: the key and the header.
    pub(crate) secrets: Arc<[Secret]>,
    pub(crate) push_interval: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) max_push_age: Duration,
    pub(crate) max_backlog_pushes: usize,
    pub(crate) max_backlog_bytes: usize,
}

/// Replaces every occurrence of a secret (and its base64 form in a header) in `text` with
/// `***`, for bodies and messages that are logged or reported.
pub(crate) fn scrub(text: &str, secrets: &[Secret]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        let value = secret.expose();
        if !value.is_empty() && out.contains(value) {
            out = out.replace(value, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_the_reason_is_specific() {
        let ok = [
            "https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom/push",
            "https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom/push/",
            "http://127.0.0.1:9090/api/v1/write",
            "http://localhost:9090/api/v1/write",
            "http://[::1]:9090/api/v1/write",
            "https://mimir.internal.example/api/v1/push",
        ];
        for url in ok {
            assert!(parse_endpoint(url).is_ok(), "{url}");
        }
        assert!(!parse_endpoint(ok[2]).unwrap().plain_remote);
        assert!(!parse_endpoint(ok[4]).unwrap().plain_remote);
        assert!(
            parse_endpoint("http://10.0.0.5/api/v1/push")
                .unwrap()
                .plain_remote
        );
        let bad = [
            ("", "empty"),
            (" https://a.example/push", "spaces"),
            ("prometheus-prod-10.grafana.net/api/prom/push", "scheme"),
            ("ftp://a.example/push", "scheme"),
            ("https://a.example", "no path"),
            ("https://a.example/", "no path"),
            (
                "https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom",
                "/api/prom/push",
            ),
            (
                "https://myorg.grafana.net/api/prom/query",
                "Grafana instance",
            ),
            ("https://123:glc_secret@a.example/push", "credentials"),
            ("https://exa mple/push", "not a URL"),
        ];
        for (url, why) in bad {
            let e = parse_endpoint(url).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(why), "{url}: {text}");
            assert!(text.contains("Remote Write Endpoint"), "{text}");
            assert!(!text.contains("glc_secret"), "{text}");
        }
    }

    #[test]
    fn urls_are_redacted_before_they_are_shown() {
        assert_eq!(
            redact_url("https://u:p@h.example/x@y"),
            "https://***@h.example/x@y"
        );
        assert_eq!(redact_url("https://h.example/x"), "https://h.example/x");
        assert_eq!(redact_url("no scheme"), "no scheme");
    }

    #[test]
    fn credentials_are_checked_without_showing_the_key() {
        assert!(check_user("123456").is_ok());
        assert!(check_user("").is_err());
        assert!(check_user("a:b").is_err());
        assert!(check_user("a b").is_err());
        assert!(check_key(&Secret::new("glc_abc=")).is_ok());
        for bad in ["", "glc abc", "glc\n", "clé"] {
            let e = check_key(&Secret::new(bad)).unwrap_err().to_string();
            assert!(!bad.is_empty() || e.contains("empty"));
            if bad.len() > 3 {
                assert!(!e.contains(bad), "{e}");
            }
        }
    }

    #[test]
    fn scrub_removes_every_secret() {
        let key = Secret::new("k3y");
        let header = basic_auth("u", &key);
        let text = format!("denied for k3y with {}", header.expose());
        let clean = scrub(&text, &[header.clone(), key]);
        assert_eq!(clean, "denied for *** with ***");
    }

    #[test]
    fn the_default_instance_names_host_and_process() {
        let instance = default_instance();
        assert!(instance.ends_with(&format!(":{}", std::process::id())));
        assert!(instance.len() > 2);
    }
}
