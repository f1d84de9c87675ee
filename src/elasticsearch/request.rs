//! Requests: the bulk body (NDJSON, optionally gzip) and the HTTP client that sends it.
//!
//! The client is `ureq`: synchronous, so no async runtime is forced on users, and it works
//! the same whether or not the caller runs inside a tokio runtime (it only ever runs on the
//! publisher's own thread). The `Authorization` header is marked sensitive, and transport
//! errors are reported without it.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use ureq::http::HeaderValue;

use super::config::{Host, Secret, Settings};
use super::error::ElasticsearchError;

/// The bulk endpoint. `filter_path` keeps only what the retry decision reads, as Logstash's
/// Elasticsearch output does; a server that ignores it answers in full, which reads the same.
pub(crate) const BULK_PATH: &str = "/_bulk?filter_path=errors,items.*.status,items.*.error";

/// Largest response body read (a bulk response of a huge batch stays far below).
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// An HTTP answer, whatever its status.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// Whether `X-Elastic-Product: Elasticsearch` was present (Elasticsearch 7.14 and later
    /// send it on every answer; OpenSearch and proxies' own errors do not).
    pub(crate) elastic_product: bool,
}

/// No answer: connection refused or reset, DNS, TLS, timeout. Never contains a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransportError {
    pub(crate) message: String,
}

/// Appends the bulk body of `docs` to `out` (cleared first): their lines back to back, gzip
/// compressed if asked. Returns the uncompressed length.
pub(crate) fn bulk_body<'a>(
    docs: impl Iterator<Item = &'a [u8]>,
    gzip: bool,
    out: &mut Vec<u8>,
) -> usize {
    out.clear();
    if !gzip {
        for doc in docs {
            out.extend_from_slice(doc);
        }
        return out.len();
    }
    let mut raw = 0;
    let mut encoder =
        flate2::write::GzEncoder::new(std::mem::take(out), flate2::Compression::fast());
    for doc in docs {
        raw += doc.len();
        // Writing into a Vec cannot fail.
        let _ = encoder.write_all(doc);
    }
    *out = encoder.finish().unwrap_or_default();
    raw
}

/// The HTTP client of one publisher.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    agent: ureq::Agent,
    authorization: Option<Arc<Secret>>,
    timeout: Duration,
}

impl Client {
    pub(crate) fn new(settings: &Settings) -> Result<Client, ElasticsearchError> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(certs) = &settings.ca_certificates {
            let roots: Vec<ureq::tls::Certificate<'static>> = certs
                .iter()
                .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
                .collect();
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(settings.request_timeout))
            .user_agent(format!("pipeline-telemetry/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .max_idle_connections_per_host(4)
            .build();
        Ok(Client {
            agent: ureq::Agent::new_with_config(config),
            authorization: settings.credentials.header().map(Arc::new),
            timeout: settings.request_timeout,
        })
    }

    fn auth_value(&self) -> Result<Option<HeaderValue>, TransportError> {
        let Some(secret) = &self.authorization else {
            return Ok(None);
        };
        let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| TransportError {
            message: "the credentials cannot be sent in a header".into(),
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// `POST {host}/_bulk` with an NDJSON body, within `timeout` (at most the request
    /// timeout).
    pub(crate) fn bulk(
        &self,
        host: &Host,
        body: &[u8],
        gzip: bool,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let url = format!("{}{BULK_PATH}", host.base);
        let mut request = self
            .agent
            .post(&url)
            .config()
            .timeout_global(Some(timeout.min(self.timeout)))
            .build()
            .header("Content-Type", "application/x-ndjson")
            .header("Accept", "application/json");
        if gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        if let Some(auth) = self.auth_value()? {
            request = request.header("Authorization", auth);
        }
        read(request.send(body))
    }

    /// `GET {host}{path}`.
    pub(crate) fn get(
        &self,
        host: &Host,
        path: &str,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let url = format!("{}{path}", host.base);
        let mut request = self
            .agent
            .get(&url)
            .config()
            .timeout_global(Some(timeout.min(self.timeout)))
            .build()
            .header("Accept", "application/json");
        if let Some(auth) = self.auth_value()? {
            request = request.header("Authorization", auth);
        }
        read(request.call())
    }

    /// `PUT {host}{path}` with a JSON body.
    pub(crate) fn put_json(
        &self,
        host: &Host,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let url = format!("{}{path}", host.base);
        let mut request = self
            .agent
            .put(&url)
            .config()
            .timeout_global(Some(timeout.min(self.timeout)))
            .build()
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        if let Some(auth) = self.auth_value()? {
            request = request.header("Authorization", auth);
        }
        read(request.send(body))
    }
}

fn read(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Response, TransportError> {
    let mut response = result.map_err(|e| TransportError {
        message: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let elastic_product = response
        .headers()
        .get("x-elastic-product")
        .is_some_and(|v| v.as_bytes() == b"Elasticsearch");
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| TransportError {
            message: format!("reading the HTTP {status} answer failed: {e}"),
        })?;
    Ok(Response {
        status,
        body,
        elastic_product,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn plain_body_is_the_lines_back_to_back() {
        let docs: [&[u8]; 2] = [b"{\"a\":1}\n{\"b\":1}\n", b"{\"a\":2}\n{\"b\":2}\n"];
        let mut out = vec![9, 9];
        let raw = bulk_body(docs.iter().copied(), false, &mut out);
        assert_eq!(raw, out.len());
        assert_eq!(out, b"{\"a\":1}\n{\"b\":1}\n{\"a\":2}\n{\"b\":2}\n");
    }

    #[test]
    fn gzip_body_decodes_to_the_plain_one() {
        let docs: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("{{\"create\":{{\"_id\":\"{i}\"}}}}\n{{\"n\":{i}}}\n").into_bytes())
            .collect();
        let mut plain = Vec::new();
        bulk_body(docs.iter().map(Vec::as_slice), false, &mut plain);
        let mut gz = Vec::new();
        let raw = bulk_body(docs.iter().map(Vec::as_slice), true, &mut gz);
        assert_eq!(raw, plain.len());
        assert!(gz.len() < plain.len());
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain);
    }
}
