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

/// Added to a handshake failure on the server's certificate chain, without a CA setting.
const HINT_NO_CA: &str =
    "set ca_certificate_pem or ca_certificate_file to the CA that signed the cluster's certificate";
/// Added to a handshake failure on the server's certificate chain, with a CA setting.
const HINT_OTHER_CA: &str = "the configured CA did not sign the cluster's certificate";

impl TransportError {
    /// The client library's error, with a hint on the CA setting when the server's
    /// certificate chain does not lead to a trusted CA (its issuer is unknown, or its
    /// signature does not verify with the CA of that name). Other certificate problems
    /// (expired, wrong host name) and other failures are reported as they are.
    fn new(error: &ureq::Error, custom_ca: bool) -> TransportError {
        let mut message = error.to_string();
        if untrusted_issuer(error) {
            message.push_str("; ");
            message.push_str(if custom_ca { HINT_OTHER_CA } else { HINT_NO_CA });
        }
        TransportError { message }
    }
}

/// Whether rustls refused the server's certificate for want of a trusted issuer. ureq passes
/// the handshake's error on as its own or inside an I/O error, as rustls's streams do.
fn untrusted_issuer(error: &ureq::Error) -> bool {
    use rustls::CertificateError::{BadSignature, UnknownIssuer};
    let tls = match error {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(e) => e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(
        tls,
        Some(rustls::Error::InvalidCertificate(
            UnknownIssuer | BadSignature
        ))
    )
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
    /// Whether a CA was configured, for the hint on certificate errors.
    custom_ca: bool,
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
            custom_ca: settings.ca_certificates.is_some(),
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
        read(request.send(body), self.custom_ca)
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
        read(request.call(), self.custom_ca)
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
        read(request.send(body), self.custom_ca)
    }
}

/// The answer to a request, read in full; `custom_ca` tells whether a CA was configured.
fn read(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    custom_ca: bool,
) -> Result<Response, TransportError> {
    let mut response = result.map_err(|e| TransportError::new(&e, custom_ca))?;
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

    /// A handshake failure as ureq reports it: rustls's error inside an I/O error.
    fn handshake_error(e: rustls::CertificateError) -> ureq::Error {
        let e = rustls::Error::InvalidCertificate(e);
        ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    #[test]
    fn an_untrusted_issuer_gets_a_hint_on_the_ca_setting() {
        use rustls::CertificateError::{BadSignature, UnknownIssuer};
        for e in [UnknownIssuer, BadSignature] {
            let error = handshake_error(e.clone());
            let original = error.to_string();
            for (custom_ca, hint) in [(false, HINT_NO_CA), (true, HINT_OTHER_CA)] {
                let message = TransportError::new(&error, custom_ca).message;
                assert_eq!(message, format!("{original}; {hint}"));
            }
            let error = ureq::Error::Rustls(rustls::Error::InvalidCertificate(e));
            assert!(TransportError::new(&error, false)
                .message
                .ends_with(HINT_NO_CA));
        }
        assert_eq!(
            TransportError::new(&handshake_error(UnknownIssuer), false).message,
            "io: invalid peer certificate: UnknownIssuer; set ca_certificate_pem or \
             ca_certificate_file to the CA that signed the cluster's certificate"
        );
    }

    #[test]
    fn other_failures_get_no_hint() {
        use rustls::CertificateError::{Expired, NotValidForName};
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for error in [
            handshake_error(Expired),
            handshake_error(NotValidForName),
            ureq::Error::Io(refused),
            ureq::Error::ConnectionFailed,
            ureq::Error::HostNotFound,
        ] {
            for custom_ca in [false, true] {
                let message = TransportError::new(&error, custom_ca).message;
                assert_eq!(message, error.to_string());
            }
        }
    }

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
