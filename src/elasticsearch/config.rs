//! Configuration: the [`ElasticsearchBuilder`], host addresses, index prefix rules and the
//! redacting [`Secret`] type.
//!
//! Everything here is checked when it is set or at [`build`](ElasticsearchBuilder::build), so
//! a publisher that was built never fails for a reason of configuration at its first flush.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::error::ElasticsearchError;
use super::ElasticsearchPublisher;

/// The index prefix of the original: indices are `event-pipeline-metrics-event-YYYY.MM.DD` and
/// `event-pipeline-metrics-network-YYYY.MM.DD`.
pub const DEFAULT_INDEX_PREFIX: &str = "event-pipeline-metrics";
/// How long one HTTP request may take, connecting included, unless configured otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Documents per bulk request unless configured otherwise.
pub const DEFAULT_BATCH_MAX_DOCS: usize = 2_000;
/// Bytes of NDJSON per bulk request (before compression) unless configured otherwise: 5 MiB,
/// within Elastic's advice of a few megabytes per bulk request.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 5 * 1024 * 1024;
/// How long a document may wait for its batch to fill before it is sent anyway, unless
/// configured otherwise.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How many times a document is sent again after a retryable failure before it is given up,
/// unless configured otherwise.
pub const DEFAULT_RETRY_LIMIT: u32 = 10;
/// Documents buffered while Elasticsearch is slow or away, unless configured otherwise.
pub const DEFAULT_BUFFER_MAX_DOCS: usize = 100_000;
/// Bytes of documents buffered while Elasticsearch is slow or away, unless configured
/// otherwise: 64 MiB.
pub const DEFAULT_BUFFER_MAX_BYTES: usize = 64 * 1024 * 1024;
/// The first retry waits up to this long (full jitter), unless configured otherwise.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// No retry waits longer than this, unless configured otherwise.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a host that failed is skipped when there are others, unless configured otherwise
/// (doubling, up to 8 times this, while it keeps failing).
pub const DEFAULT_HOST_COOLDOWN: Duration = Duration::from_secs(5);

/// The longest any duration setting may be (checked by
/// [`build`](ElasticsearchBuilder::build)): 24 hours.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest index prefix: Elasticsearch allows 255 bytes per index name and the publisher adds
/// `-network-YYYY.MM.DD` (19 bytes).
pub const MAX_INDEX_PREFIX_BYTES: usize = 255 - "-network-YYYY.MM.DD".len();

use crate::secret::basic_auth;
pub use crate::secret::Secret;

/// How the publisher authenticates. `Debug` shows the kind and the username, never a secret.
///
/// ```
/// use pipeline_telemetry::elasticsearch::{Credentials, Secret};
///
/// let c = Credentials::ApiKey(Secret::new("top-secret"));
/// assert!(!format!("{c:?}").contains("top-secret"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Credentials {
    /// No `Authorization` header.
    #[default]
    None,
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// `Authorization: ApiKey <key>`, the key being the base64 `encoded` value Elasticsearch
    /// returns when the key is created (or `base64(id:api_key)`).
    ApiKey(Secret),
    /// `Authorization: Bearer <token>` (service account and OAuth tokens).
    Bearer(Secret),
}

impl Credentials {
    /// The `Authorization` header value, if any.
    pub(crate) fn header(&self) -> Option<Secret> {
        match self {
            Credentials::None => None,
            Credentials::Basic { username, password } => Some(basic_auth(username, password)),
            Credentials::ApiKey(key) => Some(Secret::new(format!("ApiKey {}", key.expose()))),
            Credentials::Bearer(token) => Some(Secret::new(format!("Bearer {}", token.expose()))),
        }
    }
}

/// Checks a credential that goes into a header verbatim: visible ASCII only.
fn check_token(kind: &'static str, value: &str) -> Result<(), ElasticsearchError> {
    crate::secret::check_token(value)
        .map_err(|reason| ElasticsearchError::InvalidCredential { kind, reason })
}

/// One Elasticsearch node (or a proxy in front of a cluster): scheme, host, port and an
/// optional path prefix, such as `http://localhost:9200` or `https://proxy.example.com/es`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    /// `scheme://host[:port][/path]`, without a trailing slash.
    pub(crate) base: String,
}

impl Host {
    /// Parses an address: `host`, `host:port`, `http://host[:port][/path]` or `https://...`.
    /// Without a scheme the address is `http` and the port defaults to 9200.
    pub(crate) fn parse(input: &str) -> Result<Host, ElasticsearchError> {
        let s = input.trim();
        let invalid = |reason: &str| ElasticsearchError::InvalidHost {
            host: redact_userinfo(s),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(invalid("it is empty"));
        }
        let (scheme, rest, explicit) = match s.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if scheme != "http" && scheme != "https" {
                    return Err(invalid("the scheme must be http or https"));
                }
                (scheme, rest, true)
            }
            None => ("http".to_owned(), s, false),
        };
        if rest.contains(['?', '#']) {
            return Err(invalid("it must not have a query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(invalid(
                "credentials in the address are not accepted; use basic_auth(), or the \
                 ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD variables of the demo",
            ));
        }
        if path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(invalid("the path must not contain spaces"));
        }
        let (name, port) = if let Some(after) = authority.strip_prefix('[') {
            let Some((v6, tail)) = after.split_once(']') else {
                return Err(invalid("an IPv6 address lacks its closing ']'"));
            };
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid("the IPv6 address is not valid"));
            }
            let port = match tail {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid("unexpected text after the IPv6 address"))?,
                ),
            };
            (format!("[{v6}]"), port)
        } else {
            let mut parts = authority.splitn(3, ':');
            let name = parts.next().unwrap_or_default();
            let port = parts.next();
            if parts.next().is_some() {
                return Err(invalid(
                    "IPv6 addresses must be written in brackets: [::1]:9200",
                ));
            }
            if name.is_empty() {
                return Err(invalid("the host name is empty"));
            }
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            {
                return Err(invalid(
                    "the host name may hold only letters, digits, '-', '.' and '_'",
                ));
            }
            (name.to_ascii_lowercase(), port)
        };
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(invalid("the port must be a number from 1 to 65535")),
            },
            None if explicit => None,
            None => Some(9200),
        };
        let base = match port {
            Some(port) => format!("{scheme}://{name}:{port}{path}"),
            None => format!("{scheme}://{name}{path}"),
        };
        Ok(Host { base })
    }
}

/// The address with anything before an `@` in its authority replaced by `***`.
fn redact_userinfo(s: &str) -> String {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), s),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => s.to_owned(),
    }
}

/// Checks that Elasticsearch would accept index names made from `prefix`: not empty, at most
/// [`MAX_INDEX_PREFIX_BYTES`] bytes, lower case, none of `\ / * ? " < > | , # :` or spaces,
/// and not starting with `-`, `_` or `+`.
///
/// ```
/// use pipeline_telemetry::elasticsearch::validate_index_prefix;
///
/// assert!(validate_index_prefix("event-pipeline-metrics").is_ok());
/// assert!(validate_index_prefix("_private").is_err());
/// assert!(validate_index_prefix("a b").is_err());
/// ```
///
/// # Errors
/// [`ElasticsearchError::InvalidIndexPrefix`] naming the rule broken.
pub fn validate_index_prefix(prefix: &str) -> Result<(), ElasticsearchError> {
    let refuse = |reason: String| {
        Err(ElasticsearchError::InvalidIndexPrefix {
            prefix: prefix.to_owned(),
            reason,
        })
    };
    if prefix.is_empty() {
        return refuse("it is empty".into());
    }
    if prefix.len() > MAX_INDEX_PREFIX_BYTES {
        return refuse(format!(
            "it is {} bytes long and index names may have at most 255 bytes, so the prefix \
             may have at most {MAX_INDEX_PREFIX_BYTES}",
            prefix.len()
        ));
    }
    if prefix.chars().any(char::is_uppercase) {
        return refuse("index names must be lower case".into());
    }
    if let Some(c) = prefix.chars().find(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':'
        )
    }) {
        return refuse(format!("it contains {c:?}"));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("it contains a space or control character".into());
    }
    if let Some(c) = prefix
        .chars()
        .next()
        .filter(|c| matches!(c, '-' | '_' | '+'))
    {
        return refuse(format!("index names must not start with {c:?}"));
    }
    Ok(())
}

/// Everything a publisher runs with, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) hosts: Vec<Host>,
    pub(crate) index_prefix: String,
    pub(crate) credentials: Credentials,
    /// DER-encoded root certificates to trust instead of the built-in roots.
    pub(crate) ca_certificates: Option<Arc<Vec<Vec<u8>>>>,
    pub(crate) request_timeout: Duration,
    pub(crate) batch_max_docs: usize,
    pub(crate) batch_max_bytes: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) retry_limit: u32,
    pub(crate) buffer_max_docs: usize,
    pub(crate) buffer_max_bytes: usize,
    pub(crate) gzip: bool,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) host_cooldown: Duration,
    pub(crate) install_template: bool,
    pub(crate) shutdown_timeout: Duration,
}

/// Builds an [`ElasticsearchPublisher`] with client options; made by
/// [`ElasticsearchPublisher::builder`].
///
/// Setters that can fail return a `Result` at once; ranges that depend on each other are
/// checked by [`build`](Self::build). Every setter's doc names its default. `Debug` output
/// never shows a secret.
///
/// ```no_run
/// use std::time::Duration;
/// use pipeline_telemetry::elasticsearch::ElasticsearchPublisher;
///
/// let publisher = ElasticsearchPublisher::builder(["https://es-1:9200", "https://es-2:9200"])?
///     .index_prefix("pipeline")?
///     .api_key(std::env::var("ELASTICSEARCH_API_KEY").unwrap_or_default())?
///     .ca_certificate_file("/etc/elasticsearch/certs/http_ca.crt")?
///     .request_timeout(Duration::from_secs(10))
///     .batch_max_docs(5_000)
///     .flush_interval(Duration::from_millis(500))
///     .gzip(true)
///     .build()?;
/// # Ok::<(), pipeline_telemetry::elasticsearch::ElasticsearchError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ElasticsearchBuilder {
    settings: Settings,
}

impl ElasticsearchBuilder {
    pub(crate) fn new<I, S>(hosts: I) -> Result<Self, ElasticsearchError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let hosts = hosts
            .into_iter()
            .map(|h| Host::parse(h.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if hosts.is_empty() {
            return Err(ElasticsearchError::NoHosts);
        }
        Ok(ElasticsearchBuilder {
            settings: Settings {
                hosts,
                index_prefix: DEFAULT_INDEX_PREFIX.to_owned(),
                credentials: Credentials::None,
                ca_certificates: None,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                batch_max_docs: DEFAULT_BATCH_MAX_DOCS,
                batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
                flush_interval: DEFAULT_FLUSH_INTERVAL,
                retry_limit: DEFAULT_RETRY_LIMIT,
                buffer_max_docs: DEFAULT_BUFFER_MAX_DOCS,
                buffer_max_bytes: DEFAULT_BUFFER_MAX_BYTES,
                gzip: false,
                backoff_initial: DEFAULT_BACKOFF_INITIAL,
                backoff_max: DEFAULT_BACKOFF_MAX,
                host_cooldown: DEFAULT_HOST_COOLDOWN,
                install_template: true,
                shutdown_timeout: crate::config::DEFAULT_SHUTDOWN_TIMEOUT,
            },
        })
    }

    /// The start of every index name (default [`DEFAULT_INDEX_PREFIX`]): documents go to
    /// `{prefix}-event-YYYY.MM.DD` and `{prefix}-network-YYYY.MM.DD`.
    ///
    /// # Errors
    /// [`ElasticsearchError::InvalidIndexPrefix`] if Elasticsearch would refuse such names
    /// (see [`validate_index_prefix`]).
    pub fn index_prefix(mut self, prefix: &str) -> Result<Self, ElasticsearchError> {
        validate_index_prefix(prefix)?;
        self.settings.index_prefix = prefix.to_owned();
        Ok(self)
    }

    /// Authenticates with a user name and password (HTTP basic auth). Replaces any other
    /// credentials. Default: no credentials.
    ///
    /// # Errors
    /// [`ElasticsearchError::InvalidCredential`] if the user name is empty or contains `:` or
    /// a control character, or the password contains a control character.
    pub fn basic_auth(
        mut self,
        username: &str,
        password: impl Into<Secret>,
    ) -> Result<Self, ElasticsearchError> {
        let password = password.into();
        if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
            return Err(ElasticsearchError::InvalidCredential {
                kind: "username",
                reason: "it is empty or contains ':' or a control character",
            });
        }
        if password.expose().chars().any(char::is_control) {
            return Err(ElasticsearchError::InvalidCredential {
                kind: "password",
                reason: "it contains a control character",
            });
        }
        self.settings.credentials = Credentials::Basic {
            username: username.to_owned(),
            password,
        };
        Ok(self)
    }

    /// Authenticates with an API key, sent as `Authorization: ApiKey <key>`: the base64
    /// `encoded` value Elasticsearch returns when the key is created. Replaces any other
    /// credentials. Default: no credentials.
    ///
    /// # Errors
    /// [`ElasticsearchError::InvalidCredential`] if the key is empty or holds anything but
    /// visible ASCII characters.
    pub fn api_key(mut self, key: impl Into<Secret>) -> Result<Self, ElasticsearchError> {
        let key = key.into();
        check_token("API key", key.expose())?;
        self.settings.credentials = Credentials::ApiKey(key);
        Ok(self)
    }

    /// Authenticates with a bearer token (`Authorization: Bearer <token>`), such as a service
    /// account token. Replaces any other credentials. Default: no credentials.
    ///
    /// # Errors
    /// [`ElasticsearchError::InvalidCredential`] as for [`api_key`](Self::api_key).
    pub fn bearer_token(mut self, token: impl Into<Secret>) -> Result<Self, ElasticsearchError> {
        let token = token.into();
        check_token("bearer token", token.expose())?;
        self.settings.credentials = Credentials::Bearer(token);
        Ok(self)
    }

    /// Trusts the certificates in this PEM data (and only them) for `https` hosts, such as
    /// the `http_ca.crt` Elasticsearch generates. Default: the Mozilla root certificates.
    ///
    /// The data is checked here, as rustls will use it, so that a wrong file fails now rather
    /// than every TLS handshake later: every PEM block must be a `CERTIFICATE` (a private key,
    /// say, is refused) holding a valid X.509 certificate, and there must be at least one.
    /// Whether the CA signed the cluster's certificate can only be seen at the handshake: if
    /// not, deliveries fail and [`last_error`](super::ElasticsearchStats::last_error) says so.
    ///
    /// ```
    /// use pipeline_telemetry::elasticsearch::{ElasticsearchError, ElasticsearchPublisher};
    ///
    /// let builder = ElasticsearchPublisher::builder(["https://localhost:9200"])?;
    /// // Well-formed PEM, but the block holds the text "not a certificate".
    /// let pem = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    /// let err = builder.ca_certificate_pem(pem.as_bytes()).unwrap_err();
    /// assert!(matches!(err, ElasticsearchError::InvalidCaCertificate { .. }));
    /// assert!(err.to_string().contains("block 1 is not a valid X.509 certificate"));
    /// # Ok::<(), ElasticsearchError>(())
    /// ```
    ///
    /// # Errors
    /// [`ElasticsearchError::InvalidCaCertificate`] if the data holds no PEM block, a block
    /// other than a `CERTIFICATE`, malformed PEM, or a certificate that does not parse as
    /// X.509; the message names the block (counted from 1).
    pub fn ca_certificate_pem(mut self, pem: &[u8]) -> Result<Self, ElasticsearchError> {
        self.settings.ca_certificates =
            Some(Arc::new(parse_certificates(pem, "ca_certificate_pem")?));
        Ok(self)
    }

    /// Reads [`ca_certificate_pem`](Self::ca_certificate_pem) data from a file, checked the
    /// same way: an empty file, a key file or a damaged certificate is refused here.
    ///
    /// # Errors
    /// [`ElasticsearchError::InvalidCaCertificate`] naming the file, if it cannot be read or
    /// its contents would be refused by [`ca_certificate_pem`](Self::ca_certificate_pem).
    pub fn ca_certificate_file(self, path: impl AsRef<Path>) -> Result<Self, ElasticsearchError> {
        let path = path.as_ref();
        let source = format!("file {}", path.display());
        let pem = std::fs::read(path).map_err(|e| ElasticsearchError::InvalidCaCertificate {
            source: source.clone(),
            reason: format!("it cannot be read: {e}"),
        })?;
        let mut this = self;
        this.settings.ca_certificates = Some(Arc::new(parse_certificates(&pem, &source)?));
        Ok(this)
    }

    /// How long one HTTP request may take, from connecting to the last byte of the answer
    /// (default [`DEFAULT_REQUEST_TIMEOUT`]). A request that times out is retried; documents
    /// it did store are recognised by their `_id` and not duplicated. Checked by
    /// [`build`](Self::build): 1 ms to [`MAX_DURATION`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// Most documents per bulk request (default [`DEFAULT_BATCH_MAX_DOCS`]); a full batch is
    /// sent at once. Checked by [`build`](Self::build): at least 1.
    pub fn batch_max_docs(mut self, docs: usize) -> Self {
        self.settings.batch_max_docs = docs;
        self
    }

    /// Most NDJSON bytes per bulk request before compression (default
    /// [`DEFAULT_BATCH_MAX_BYTES`]). A single larger document still goes alone. Checked by
    /// [`build`](Self::build): at least 1 KiB.
    pub fn batch_max_bytes(mut self, bytes: usize) -> Self {
        self.settings.batch_max_bytes = bytes;
        self
    }

    /// How long the first document of a batch waits for the batch to fill before the batch
    /// is sent anyway (default [`DEFAULT_FLUSH_INTERVAL`]). Checked by [`build`](Self::build):
    /// 1 ms to [`MAX_DURATION`].
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.settings.flush_interval = interval;
        self
    }

    /// How many times a document is sent again after a retryable failure (a whole request
    /// answered 429, 502, 503 or 504, a connection error or timeout, or the document's own
    /// 429) before it is given up and counted as dropped (default [`DEFAULT_RETRY_LIMIT`]).
    /// `u32::MAX` retries until shutdown.
    pub fn retry_limit(mut self, retries: u32) -> Self {
        self.settings.retry_limit = retries;
        self
    }

    /// Most documents waiting while Elasticsearch is slow or away, not counting the batch
    /// being sent (default [`DEFAULT_BUFFER_MAX_DOCS`]). Past it the oldest are dropped and
    /// counted.
    /// Checked by [`build`](Self::build): at least [`batch_max_docs`](Self::batch_max_docs).
    pub fn buffer_max_docs(mut self, docs: usize) -> Self {
        self.settings.buffer_max_docs = docs;
        self
    }

    /// Most bytes of documents waiting, not counting the batch being sent (default
    /// [`DEFAULT_BUFFER_MAX_BYTES`]). Past it the oldest are dropped and counted. Checked by [`build`](Self::build): at least
    /// [`batch_max_bytes`](Self::batch_max_bytes).
    pub fn buffer_max_bytes(mut self, bytes: usize) -> Self {
        self.settings.buffer_max_bytes = bytes;
        self
    }

    /// Compresses request bodies with gzip (`Content-Encoding: gzip`); default off, which
    /// suits a cluster on the same host or network. Worth turning on over a WAN.
    pub fn gzip(mut self, on: bool) -> Self {
        self.settings.gzip = on;
        self
    }

    /// The exponential backoff between retries: the n-th retry waits a random time between
    /// zero and `min(max, initial × 2ⁿ⁻¹)` ("full jitter"). Defaults
    /// [`DEFAULT_BACKOFF_INITIAL`] and [`DEFAULT_BACKOFF_MAX`]. Checked by
    /// [`build`](Self::build): `initial` at least 1 ms and at most `max`, `max` at most
    /// [`MAX_DURATION`].
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.backoff_initial = initial;
        self.settings.backoff_max = max;
        self
    }

    /// How long a host that failed (connection error, timeout, 502, 503 or 504) is skipped
    /// while other hosts are up (default [`DEFAULT_HOST_COOLDOWN`]); it doubles with each
    /// further failure, up to 8 times this. When every host is failing the one due back
    /// first is tried, paced by the backoff. Checked by [`build`](Self::build): at most
    /// [`MAX_DURATION`].
    pub fn host_cooldown(mut self, cooldown: Duration) -> Self {
        self.settings.host_cooldown = cooldown;
        self
    }

    /// Whether to install the index template for `{prefix}-*` before the first document
    /// (default `true`). Turn off when templates are managed elsewhere or the user lacks the
    /// `manage_index_templates` privilege.
    pub fn install_template(mut self, install: bool) -> Self {
        self.settings.install_template = install;
        self
    }

    /// How long dropping the publisher without calling
    /// [`shutdown`](crate::MetricsPublisher::shutdown) waits for buffered documents to be
    /// sent (default [`DEFAULT_SHUTDOWN_TIMEOUT`](crate::config::DEFAULT_SHUTDOWN_TIMEOUT)).
    /// Checked by [`build`](Self::build): at most [`MAX_DURATION`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    #[cfg(test)]
    pub(crate) fn settings_for_test(self) -> Settings {
        self.settings
    }

    /// Checks the settings that depend on each other, sets up the HTTP client and starts
    /// the sender thread. Nothing is sent until the first record arrives.
    ///
    /// # Errors
    /// [`ElasticsearchError::InvalidSetting`] for a value out of range (named in each
    /// setter's doc), [`ElasticsearchError::Client`] if TLS cannot be set up,
    /// [`ElasticsearchError::WorkerSpawn`] if the thread cannot be started.
    pub fn build(self) -> Result<ElasticsearchPublisher, ElasticsearchError> {
        let s = &self.settings;
        let setting = |setting: &'static str, value: String, reason: String| {
            Err(ElasticsearchError::InvalidSetting {
                setting,
                value,
                reason,
            })
        };
        let ms = Duration::from_millis(1);
        if s.batch_max_docs == 0 {
            return setting("batch_max_docs", "0".into(), "use at least 1".into());
        }
        if s.batch_max_bytes < 1024 {
            return setting(
                "batch_max_bytes",
                s.batch_max_bytes.to_string(),
                "use at least 1024".into(),
            );
        }
        if s.buffer_max_docs < s.batch_max_docs {
            return setting(
                "buffer_max_docs",
                s.buffer_max_docs.to_string(),
                format!("use at least batch_max_docs ({})", s.batch_max_docs),
            );
        }
        if s.buffer_max_bytes < s.batch_max_bytes {
            return setting(
                "buffer_max_bytes",
                s.buffer_max_bytes.to_string(),
                format!("use at least batch_max_bytes ({})", s.batch_max_bytes),
            );
        }
        for (name, value) in [
            ("request_timeout", s.request_timeout),
            ("flush_interval", s.flush_interval),
            ("backoff", s.backoff_initial),
        ] {
            if value < ms {
                return setting(name, format!("{value:?}"), "use at least 1 ms".into());
            }
        }
        for (name, value) in [
            ("request_timeout", s.request_timeout),
            ("flush_interval", s.flush_interval),
            ("backoff", s.backoff_max),
            ("host_cooldown", s.host_cooldown),
            ("shutdown_timeout", s.shutdown_timeout),
        ] {
            if value > MAX_DURATION {
                return setting(name, format!("{value:?}"), "use at most 24 hours".into());
            }
        }
        if s.backoff_initial > s.backoff_max {
            return setting(
                "backoff",
                format!("{:?}..{:?}", s.backoff_initial, s.backoff_max),
                "the initial wait must not exceed the maximum".into(),
            );
        }
        ElasticsearchPublisher::start(self.settings)
    }
}

/// The DER bytes of every certificate in `pem`, each checked as a trust anchor the way rustls
/// will use it: every PEM block must be a `CERTIFICATE` holding an X.509 certificate, and there
/// must be at least one. `source` names where the data came from, for the error.
fn parse_certificates(pem: &[u8], source: &str) -> Result<Vec<Vec<u8>>, ElasticsearchError> {
    use rustls::pki_types::pem::{self, PemObject as _};
    use rustls::pki_types::CertificateDer;

    let invalid = |reason: String| ElasticsearchError::InvalidCaCertificate {
        source: source.to_owned(),
        reason,
    };
    // The PEM parser skips blocks of a type it does not know, so types are checked on the
    // BEGIN lines first; with every block a CERTIFICATE, the parser's n-th is block n.
    let labels = pem
        .split(|&b| b == b'\n' || b == b'\r')
        .filter_map(|line| line.strip_prefix(b"-----BEGIN "))
        .map(|rest| rest.trim_ascii_end().strip_suffix(b"-----").unwrap_or(rest));
    for (n, label) in (1..).zip(labels) {
        if label != b"CERTIFICATE" {
            let label = String::from_utf8_lossy(&label[..label.len().min(40)]);
            return Err(invalid(format!(
                "block {n} is a {label:?} block, not a CERTIFICATE"
            )));
        }
    }
    let mut certs = Vec::new();
    let mut roots = rustls::RootCertStore::empty();
    for (n, block) in (1..).zip(CertificateDer::pem_slice_iter(pem)) {
        let der = block.map_err(|e| {
            invalid(match e {
                pem::Error::Base64Decode(_) => format!("block {n} is not valid base64"),
                pem::Error::MissingSectionEnd { .. } => {
                    format!("block {n} has no \"-----END CERTIFICATE-----\" line")
                }
                pem::Error::IllegalSectionStart { .. } => {
                    format!("the BEGIN line of block {n} is malformed")
                }
                e => format!("block {n}: {e}"),
            })
        })?;
        if let Err(e) = roots.add(der.clone()) {
            let detail = match e {
                rustls::Error::InvalidCertificate(e) => format!("{e:?}"),
                e => e.to_string(),
            };
            return Err(invalid(format!(
                "block {n} is not a valid X.509 certificate ({detail})"
            )));
        }
        certs.push(der.to_vec());
    }
    if certs.is_empty() {
        return Err(invalid(
            "it holds no \"-----BEGIN CERTIFICATE-----\" block".into(),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_with_defaults() {
        let base = |s: &str| Host::parse(s).map(|h| h.base);
        assert_eq!(base("localhost:9200").unwrap(), "http://localhost:9200");
        assert_eq!(base("localhost").unwrap(), "http://localhost:9200");
        assert_eq!(
            base("HTTPS://ES.example.com").unwrap(),
            "https://es.example.com"
        );
        assert_eq!(
            base("http://10.0.0.5:9201/").unwrap(),
            "http://10.0.0.5:9201"
        );
        assert_eq!(base("https://proxy/es/").unwrap(), "https://proxy/es");
        assert_eq!(base("[::1]:9200").unwrap(), "http://[::1]:9200");
        assert_eq!(base("http://[::1]").unwrap(), "http://[::1]");
        for bad in [
            "",
            "ftp://x",
            "::1",
            "host:0",
            "host:70000",
            "host:port",
            "ho st",
            "http://x?y",
            "[::1",
            "http://[zz]:1",
            "http://:9200",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn credentials_in_a_host_are_refused_without_showing_them() {
        let err = Host::parse("https://elastic:hunter2@es:9200/x").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("https://***@es:9200/x"), "{text}");
    }

    #[test]
    fn index_prefix_rules() {
        for good in [
            "event-pipeline-metrics",
            "a",
            "metrics.v2",
            "x_1",
            "é-lower",
        ] {
            assert!(validate_index_prefix(good).is_ok(), "{good:?} refused");
        }
        let long = "a".repeat(MAX_INDEX_PREFIX_BYTES + 1);
        for bad in [
            "", "Upper", "a b", "a\\b", "a/b", "a*", "a?", "a\"", "a<", "a>", "a|", "a,b", "a#",
            "a:b", "-a", "_a", "+a", &long,
        ] {
            let err = validate_index_prefix(bad).unwrap_err();
            assert!(
                matches!(err, ElasticsearchError::InvalidIndexPrefix { .. }),
                "{bad:?}"
            );
        }
        assert!(validate_index_prefix(&"a".repeat(MAX_INDEX_PREFIX_BYTES)).is_ok());
    }

    #[test]
    fn auth_headers_and_no_secret_in_debug() {
        let b = ElasticsearchBuilder::new(["localhost"]).unwrap();
        let b = b.basic_auth("elastic", "changeme").unwrap();
        assert_eq!(
            b.settings.credentials.header().unwrap().expose(),
            "Basic ZWxhc3RpYzpjaGFuZ2VtZQ=="
        );
        assert!(!format!("{b:?}").contains("changeme"));
        let b = b.api_key("VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==");
        let b = b.unwrap();
        assert!(b
            .settings
            .credentials
            .header()
            .unwrap()
            .expose()
            .starts_with("ApiKey VnVhQ2"));
        assert!(!format!("{b:?}").contains("VnVhQ2"));
        let err = b.clone().api_key("two words").unwrap_err();
        assert!(!err.to_string().contains("two words"));
        assert!(b.clone().bearer_token("line\nbreak").is_err());
        assert!(b.clone().basic_auth("a:b", "x").is_err());
    }

    #[test]
    fn build_checks_ranges() {
        let b = || ElasticsearchBuilder::new(["localhost"]).unwrap();
        let setting = |r: Result<ElasticsearchPublisher, ElasticsearchError>| match r {
            Err(ElasticsearchError::InvalidSetting { setting, .. }) => setting,
            other => panic!("expected InvalidSetting, got {other:?}"),
        };
        assert_eq!(setting(b().batch_max_docs(0).build()), "batch_max_docs");
        assert_eq!(setting(b().batch_max_bytes(10).build()), "batch_max_bytes");
        assert_eq!(
            setting(b().batch_max_docs(10).buffer_max_docs(5).build()),
            "buffer_max_docs"
        );
        assert_eq!(
            setting(b().batch_max_bytes(4096).buffer_max_bytes(2048).build()),
            "buffer_max_bytes"
        );
        assert_eq!(
            setting(b().request_timeout(Duration::ZERO).build()),
            "request_timeout"
        );
        assert_eq!(
            setting(
                b().backoff(Duration::from_secs(2), Duration::from_secs(1))
                    .build()
            ),
            "backoff"
        );
        assert_eq!(
            setting(b().flush_interval(Duration::MAX).build()),
            "flush_interval"
        );
        assert_eq!(
            setting(b().host_cooldown(Duration::from_secs(200_000)).build()),
            "host_cooldown"
        );
        assert!(matches!(
            ElasticsearchBuilder::new(Vec::<String>::new()),
            Err(ElasticsearchError::NoHosts)
        ));
    }

    /// A self-signed CA certificate, without its key, as Elasticsearch's http_ca.crt.
    const TEST_CA: &str = include_str!("../../tests/support/test_ca.pem");

    /// A PEM block of `label` around `base64`.
    fn block(label: &str, base64: &str) -> String {
        format!("-----BEGIN {label}-----\n{base64}\n-----END {label}-----\n")
    }

    /// The reason a CA given as PEM data is refused.
    fn refusal(pem: &str) -> String {
        let b = ElasticsearchBuilder::new(["https://localhost"]).unwrap();
        match b.ca_certificate_pem(pem.as_bytes()) {
            Err(ElasticsearchError::InvalidCaCertificate { source, reason }) => {
                assert_eq!(source, "ca_certificate_pem");
                reason
            }
            Err(other) => panic!("expected InvalidCaCertificate, got {other:?}"),
            Ok(_) => panic!("accepted: {pem}"),
        }
    }

    #[test]
    fn ca_certificate_errors_name_the_source() {
        let b = ElasticsearchBuilder::new(["https://localhost"]).unwrap();
        let err = b.clone().ca_certificate_pem(b"not pem").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("the CA certificate in ca_certificate_pem"),
            "{text}"
        );
        assert!(
            text.contains("the CA that signed the cluster's certificate"),
            "{text}"
        );
        let err = b
            .ca_certificate_file("/nonexistent/http_ca.crt")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("file /nonexistent/http_ca.crt is not usable: it cannot be read"),
            "{err}"
        );
    }

    #[test]
    fn a_valid_ca_certificate_is_kept() {
        let b = ElasticsearchBuilder::new(["https://localhost"]).unwrap();
        let two = format!("{TEST_CA}\n{TEST_CA}");
        for (pem, count) in [(TEST_CA, 1), (two.as_str(), 2)] {
            let settings = b
                .clone()
                .ca_certificate_pem(pem.as_bytes())
                .unwrap()
                .settings_for_test();
            let certs = settings.ca_certificates.unwrap();
            assert_eq!(certs.len(), count);
            assert_eq!(certs[0][0], 0x30, "DER starts with a SEQUENCE");
        }
        // Windows line ends read the same.
        let crlf = TEST_CA.replace('\n', "\r\n");
        assert!(b.ca_certificate_pem(crlf.as_bytes()).is_ok());
    }

    #[test]
    fn no_certificate_is_refused() {
        for pem in ["", "\n\n", "not pem", "# comments only\n"] {
            assert_eq!(
                refusal(pem),
                "it holds no \"-----BEGIN CERTIFICATE-----\" block",
                "{pem:?}"
            );
        }
    }

    #[test]
    fn garbage_in_a_certificate_block_is_refused() {
        // Base64 of "not a certificate": well-formed PEM, but no X.509 inside.
        let garbage = block("CERTIFICATE", "bm90IGEgY2VydGlmaWNhdGU=");
        let reason = refusal(&garbage);
        assert_eq!(
            reason, "block 1 is not a valid X.509 certificate (BadEncoding)",
            "{reason}"
        );
        // After a good one, the bad block is named by its number.
        let reason = refusal(&format!("{TEST_CA}{garbage}"));
        assert!(
            reason.starts_with("block 2 is not a valid X.509"),
            "{reason}"
        );
        // A certificate cut short.
        let body: Vec<&str> = TEST_CA
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let reason = refusal(&block("CERTIFICATE", &body[..body.len() - 2].join("\n")));
        assert_eq!(
            reason,
            "block 1 is not a valid X.509 certificate (BadEncoding)"
        );
        // Not base64 at all.
        let reason = refusal(&block("CERTIFICATE", "%%% not base64 %%%"));
        assert_eq!(reason, "block 1 is not valid base64");
        // No END line.
        let reason = refusal(
            TEST_CA
                .trim_end()
                .trim_end_matches("-----END CERTIFICATE-----"),
        );
        assert_eq!(reason, "block 1 has no \"-----END CERTIFICATE-----\" line");
    }

    #[test]
    fn blocks_other_than_certificates_are_refused_without_their_contents() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let body = key.lines().nth(1).unwrap().to_owned();
        for (pem, expected) in [
            (
                key.clone(),
                "block 1 is a \"PRIVATE KEY\" block, not a CERTIFICATE",
            ),
            // A certificate and its key in one file: the key is not taken for a CA.
            (
                format!("{TEST_CA}{key}"),
                "block 2 is a \"PRIVATE KEY\" block, not a CERTIFICATE",
            ),
            // A type the PEM parser would skip silently.
            (
                block("TRUSTED CERTIFICATE", "AAAA"),
                "block 1 is a \"TRUSTED CERTIFICATE\" block, not a CERTIFICATE",
            ),
        ] {
            let reason = refusal(&pem);
            assert_eq!(reason, expected);
            let b = ElasticsearchBuilder::new(["https://localhost"]).unwrap();
            let err = b.ca_certificate_pem(pem.as_bytes()).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains(&body), "key material in {text}");
        }
    }
}
