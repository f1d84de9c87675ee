//! The scrape endpoint: a small HTTP/1.1 server on our own threads, serving `GET /metrics`.
//!
//! One thread accepts connections and hands each to a short-lived thread (at most
//! [`MAX_CONNECTIONS`] at once; more are answered `503` at once). A connection carries one
//! request and is closed after the response, so no thread waits on an idle keep-alive
//! connection and stopping the server leaves nothing behind. Reading the request is bounded in
//! size and time, so a slow or hostile client cannot hold the endpoint.
//!
//! No async runtime is involved, so the server works the same whether or not the program runs
//! tokio. Stopping it wakes the accept thread, waits for it to close the listener (which frees
//! the port) and joins it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::error::PrometheusError;
use super::exposition::{accepts_gzip, ExpositionFormat};

/// Connections served at the same time; more are answered `503 Service Unavailable`.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// The largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The path metrics are served on.
pub(crate) const METRICS_PATH: &str = "/metrics";

/// Renders the metrics in a format.
pub(crate) type Render = Arc<dyn Fn(ExpositionFormat) -> String + Send + Sync>;

/// A running scrape endpoint; stopped by [`Server::stop`] or on drop.
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    exited: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl Server {
    /// Binds `addr` and starts serving.
    pub(crate) fn start(addr: SocketAddr, render: Render) -> Result<Server, PrometheusError> {
        let listener = TcpListener::bind(addr).map_err(|e| PrometheusError::Bind {
            addr,
            kind: e.kind(),
            reason: e.to_string(),
        })?;
        let local = listener.local_addr().map_err(|e| PrometheusError::Bind {
            addr,
            kind: e.kind(),
            reason: e.to_string(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (exited_tx, exited) = crossbeam_channel::bounded(1);
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("prometheus-{}", local.port()))
            .spawn(move || {
                accept_loop(listener, &thread_stop, &render);
                // The listener is closed by now: the port is free.
                let _ = exited_tx.send(());
            })
            .map_err(|e| PrometheusError::ServerSpawn {
                reason: e.to_string(),
            })?;
        Ok(Server {
            addr: local,
            stop,
            exited,
            thread: Some(thread),
        })
    }

    /// The address the server listens on (with the port the system chose for port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes the listener and joins the accept thread, by `deadline`.
    /// Requests being answered finish on their own threads.
    pub(crate) fn stop(&mut self, deadline: Instant) -> Result<(), String> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::Release);
        // Wake the accept call with a connection of our own.
        let wake = SocketAddr::new(reachable(self.addr.ip()), self.addr.port());
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        let _ = TcpStream::connect_timeout(&wake, timeout);
        match self.exited.recv_deadline(deadline) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => {
                // Put it back so a later call (or drop) can try again.
                self.thread = Some(thread);
                Err(format!(
                    "the scrape server on {} did not stop before the deadline",
                    self.addr
                ))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop(Instant::now() + Duration::from_secs(5));
    }
}

/// An address that reaches a listener bound to `ip` (loopback for the unspecified address).
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

fn accept_loop(listener: TcpListener, stop: &AtomicBool, render: &Render) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "prometheus endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            busy(stream);
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let connection = Connection {
            active: Arc::clone(&active),
        };
        let render = Arc::clone(render);
        let spawned = std::thread::Builder::new()
            .name("prometheus-scrape".to_owned())
            .spawn(move || {
                let _connection = connection;
                serve(stream, &render);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "prometheus endpoint: cannot start a connection thread");
        }
    }
}

/// Counts a connection being served; uncounts it when dropped (even if the thread was never
/// started).
struct Connection {
    active: Arc<AtomicUsize>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let response = Response::text(503, "too many scrapes at once; retry shortly\n");
    let _ = response.write(&mut stream, false);
}

/// A parsed request head: what the endpoint needs of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) accept: Option<String>,
    pub(crate) accept_encoding: Option<String>,
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Closed, timed out or failed before a full head arrived: nothing to answer.
    Gone,
    /// Larger than [`MAX_HEAD_BYTES`].
    TooLarge,
    /// Not HTTP.
    Malformed,
}

fn serve(mut stream: TcpStream, render: &Render) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let (response, head_only) = match read_head(&mut stream) {
        Ok(request) => (respond(&request, render), request.method == "HEAD"),
        Err(HeadError::Gone) => return,
        Err(HeadError::TooLarge) => (Response::text(431, "request head too large\n"), false),
        Err(HeadError::Malformed) => (Response::text(400, "malformed HTTP request\n"), false),
    };
    if response.write(&mut stream, head_only).is_ok() {
        linger(&mut stream);
    }
}

/// Closes our side and reads what the client still sends for a moment, so that closing a
/// socket with unread input does not reset the connection before the client read the response.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Reads the request line and headers (up to the blank line).
pub(crate) fn read_head(stream: &mut impl Read) -> Result<Request, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(n) => n,
        };
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf, searched_from) {
            break end;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    };
    if end > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    parse_head(&buf[..end])
}

/// The end of the head (index after the blank line), accepting bare `\n` line ends.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let from = from.min(buf.len());
    (from..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

pub(crate) fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let head = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
    let request_line = lines.next().ok_or(HeadError::Malformed)?;
    let mut parts = request_line.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed);
    }
    // Origin form (`/metrics?x`) or absolute form (`http://host:port/metrics`).
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        ..Request::default()
    };
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HeadError::Malformed);
        };
        let value = value.trim();
        let slot = if name.eq_ignore_ascii_case("accept") {
            &mut request.accept
        } else if name.eq_ignore_ascii_case("accept-encoding") {
            &mut request.accept_encoding
        } else {
            continue;
        };
        // Repeated headers are one comma-separated list.
        match slot {
            Some(existing) => {
                existing.push(',');
                existing.push_str(value);
            }
            None => *slot = Some(value.to_owned()),
        }
    }
    Ok(request)
}

/// What the endpoint answers to a request.
pub(crate) fn respond(request: &Request, render: &Render) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        let mut response = Response::text(405, "only GET and HEAD are served\n");
        response.extra = Some("Allow: GET, HEAD\r\n");
        return response;
    }
    if request.path != METRICS_PATH {
        return Response::text(404, "not found; metrics are served at /metrics\n");
    }
    let format = ExpositionFormat::negotiate(request.accept.as_deref());
    let body = match catch_unwind(AssertUnwindSafe(|| render(format))) {
        Ok(body) => body.into_bytes(),
        Err(_) => {
            tracing::warn!("prometheus endpoint: rendering the metrics panicked");
            return Response::text(500, "rendering the metrics failed\n");
        }
    };
    let (body, gzip) = if accepts_gzip(request.accept_encoding.as_deref()) {
        match gzip(&body) {
            Ok(compressed) => (compressed, true),
            Err(_) => (body, false),
        }
    } else {
        (body, false)
    };
    Response {
        status: 200,
        content_type: format.content_type(),
        gzip,
        extra: None,
        body,
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

/// A response about to be written.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) gzip: bool,
    pub(crate) extra: Option<&'static str>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            gzip: false,
            extra: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        }
    }

    /// Writes the response; the body is left out for `HEAD`.
    pub(crate) fn write(&self, out: &mut impl Write, head_only: bool) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.reason(),
            self.content_type,
            self.body.len()
        );
        if self.gzip {
            head.push_str("Content-Encoding: gzip\r\n");
        }
        if self.status == 200 {
            head.push_str("Vary: Accept, Accept-Encoding\r\n");
        }
        if let Some(extra) = self.extra {
            head.push_str(extra);
        }
        head.push_str("Connection: close\r\n\r\n");
        out.write_all(head.as_bytes())?;
        if !head_only {
            out.write_all(&self.body)?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render() -> Render {
        Arc::new(|format| match format {
            ExpositionFormat::Prometheus => "classic\n".to_owned(),
            ExpositionFormat::OpenMetrics => "om\n# EOF\n".to_owned(),
        })
    }

    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            ..Request::default()
        }
    }

    #[test]
    fn heads_parse_with_repeated_headers_and_any_line_ends() {
        let r = parse_head(
            b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\naccept: text/plain\r\nAccept: \
              application/openmetrics-text\r\nAccept-Encoding: gzip\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert_eq!(
            r.accept.as_deref(),
            Some("text/plain,application/openmetrics-text")
        );
        assert_eq!(r.accept_encoding.as_deref(), Some("gzip"));
        let r = parse_head(b"GET http://h:9/metrics HTTP/1.0\n\n").unwrap();
        assert_eq!(r.path, "/metrics");
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"\xff\xfe\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Err(HeadError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn heads_are_bounded() {
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            read_head(&mut std::io::Cursor::new(huge)),
            Err(HeadError::TooLarge)
        );
        assert_eq!(
            read_head(&mut std::io::Cursor::new(b"GET /metrics HT".to_vec())),
            Err(HeadError::Gone)
        );
    }

    #[test]
    fn routes_methods_and_formats() {
        let render = render();
        assert_eq!(respond(&request("GET", "/"), &render).status, 404);
        assert_eq!(respond(&request("GET", "/metricsx"), &render).status, 404);
        let post = respond(&request("POST", "/metrics"), &render);
        assert_eq!(post.status, 405);
        assert_eq!(post.extra, Some("Allow: GET, HEAD\r\n"));

        let classic = respond(&request("GET", "/metrics"), &render);
        assert_eq!(classic.status, 200);
        assert_eq!(classic.body, b"classic\n");
        assert!(classic
            .content_type
            .starts_with("text/plain; version=0.0.4"));

        let mut om = request("GET", "/metrics");
        om.accept = Some("application/openmetrics-text; version=1.0.0".into());
        let om = respond(&om, &render);
        assert_eq!(om.body, b"om\n# EOF\n");
        assert!(om.content_type.starts_with("application/openmetrics-text"));
    }

    #[test]
    fn gzip_when_asked_and_head_has_no_body() {
        let mut r = request("GET", "/metrics");
        r.accept_encoding = Some("gzip".into());
        let response = respond(&r, &render());
        assert!(response.gzip);
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&response.body[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, "classic\n");

        let mut out = Vec::new();
        respond(&request("HEAD", "/metrics"), &render())
            .write(&mut out, true)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 8\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_panicking_render_answers_500() {
        let render: Render = Arc::new(|_| panic!("collector bug"));
        assert_eq!(respond(&request("GET", "/metrics"), &render).status, 500);
    }

    #[test]
    fn stopping_frees_the_port_and_a_second_stop_is_a_no_op() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut server = Server::start(addr, render()).unwrap();
        let bound = server.local_addr();
        assert!(matches!(
            Server::start(bound, render()),
            Err(PrometheusError::Bind { .. })
        ));
        server
            .stop(Instant::now() + Duration::from_secs(5))
            .unwrap();
        server
            .stop(Instant::now() + Duration::from_secs(5))
            .unwrap();
        let mut again = Server::start(bound, render()).unwrap();
        again.stop(Instant::now() + Duration::from_secs(5)).unwrap();
    }
}
