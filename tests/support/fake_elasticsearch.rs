//! A fake Elasticsearch for the test suite and the benchmark.
//!
//! No package registry reachable from these machines carries an Elasticsearch or OpenSearch
//! server (and nothing else can be downloaded), so no real cluster can run here. This server
//! answers the two APIs the publisher uses the way Elastic documents them, and can be told to
//! fail, stall, go down and come back. The live test (`tests/elasticsearch_live.rs`) runs the
//! same publisher against a real cluster when `ELASTICSEARCH_URL` is set.
//!
//! Documented behaviour it follows (Elasticsearch 8 reference, "Bulk API", "Create or update
//! index template API", "Get index template API", "Common options", "Elasticsearch
//! clients / product check"):
//! - `POST /_bulk`: an NDJSON body of action and source lines that must end with a newline
//!   (400 `illegal_argument_exception` otherwise) and be sent as `application/x-ndjson` or
//!   `application/json` (406 otherwise); the answer is 200 with `took`, a top-level `errors`
//!   that is `true` when any item failed, and `items` in request order, one object per action
//!   keyed by the action, with `_index`, `_id`, `status` and, on failure, an `error` object with
//!   `type` and `reason` (and `caused_by`); success items also carry `_version`, `result`,
//!   `_shards`, `_seq_no` and `_primary_term`.
//! - `create` of an `_id` that exists: item `status` 409, `version_conflict_engine_exception`.
//!   `index` overwrites (200 `updated`).
//! - A rejected write: 429 `es_rejected_execution_exception`, per item or for the whole
//!   request (then `{"error":{...},"status":429}`).
//! - A document that does not fit the mapping: item 400 `document_parsing_exception`
//!   ("failed to parse field [f] of type [t] in document with id '…'").
//! - `filter_path` (common option): keeps only the listed paths, `*` matching any key.
//! - `PUT /_index_template/{name}` → `{"acknowledged":true}`; `GET` → `{"index_templates":
//!   [{"name","index_template"}]}` or 404 `resource_not_found_exception`; `HEAD` → 200 or 404.
//! - Every answer carries `X-Elastic-Product: Elasticsearch` (since 7.14); it can be turned
//!   off to look like OpenSearch or a proxy.
//! - Gzip request bodies (`Content-Encoding: gzip`) are accepted; with security on, a request
//!   without the right `Authorization` gets 401 `security_exception`.
//!
//! Mappings come from the installed templates (index patterns with `*`, highest priority
//! wins) and from per-field overrides that stand for an index created earlier with other
//! mappings. Data survives [`FakeElasticsearch::restart`], as a cluster's would.
//!
//! While down ([`FakeElasticsearch::go_down`]) the server keeps its port and resets every
//! connection at once, so no other server of the test binary can take the port and receive
//! what was meant for this one.
//!
//! HTTP/1.1 is handled by a minimal parser on `std::net`: keep-alive, `Content-Length` and
//! chunked bodies, one thread per connection. [`FakeElasticsearch::start_https`] serves the
//! same over TLS (rustls, as a cluster with security on does), with a certificate signed by a
//! CA made for that server at run time: test-only keys, never written anywhere.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// What the next bulk request gets instead of a normal answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The whole request answered with this status and an Elasticsearch error body; nothing
    /// stored.
    Status(u16),
    /// Stored as usual, but answered with this status: the client cannot know it worked.
    StoreThenStatus(u16),
    /// Stored as usual, the answer delayed this long (past the client's timeout).
    StoreThenStall(Duration),
    /// Nothing stored, the answer delayed this long.
    Stall(Duration),
    /// The connection closed without an answer, after storing.
    StoreThenClose,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    /// Body bytes on the wire (compressed if gzip).
    pub wire_bytes: usize,
    pub gzip: bool,
    /// Bulk: action names of the items, in order.
    pub actions: Vec<&'static str>,
    pub status: u16,
}

/// One stored document.
#[derive(Debug, Clone)]
pub struct StoredDoc {
    pub index: String,
    pub id: String,
    pub source: Value,
}

/// Counts over the server's life.
#[derive(Debug, Clone, Default)]
pub struct ServerCounts {
    pub bulk_requests: u64,
    pub items: u64,
    pub created: u64,
    pub conflicts: u64,
    pub rejected_items: u64,
    pub refused_items: u64,
    pub faults_served: u64,
}

#[derive(Default)]
struct State {
    /// index → id → source (`Null` when sources are not kept).
    docs: HashMap<String, HashMap<String, Value>>,
    doc_count: usize,
    templates: HashMap<String, Value>,
    field_overrides: HashMap<String, String>,
    faults: VecDeque<Fault>,
    item_rejections: usize,
    requests: Vec<RequestLog>,
    counts: ServerCounts,
    required_auth: Option<String>,
    template_status: Option<u16>,
    generated_ids: u64,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    keep_sources: bool,
    product_header: AtomicBool,
    /// Serving; when false, connections are reset as they arrive. Changed under the
    /// `connections` lock, so no connection is let in after [`FakeElasticsearch::go_down`].
    up: AtomicBool,
    /// The acceptor is to end (the server is dropped).
    stopped: AtomicBool,
    /// `Some`: HTTPS only.
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Mutex<Vec<(u64, TcpStream)>>,
    next_conn: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server. Dropping it stops it.
pub struct FakeElasticsearch {
    inner: Arc<Inner>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
    /// The PEM of the CA that signed the HTTPS server's certificate.
    ca_pem: Option<String>,
}

impl FakeElasticsearch {
    /// A server on a free loopback port that keeps document sources and checks mappings.
    pub fn start() -> Self {
        Self::start_with(true, None)
    }

    /// A server like [`start`](Self::start) that speaks HTTPS only, with a certificate for
    /// `localhost` and `127.0.0.1` signed by a CA of its own ([`ca_pem`](Self::ca_pem)),
    /// as Elasticsearch's `http_ca.crt` signs its node certificates.
    pub fn start_https() -> Self {
        let (ca_pem, config) = test_certificates();
        Self::start_with(true, Some((ca_pem, config)))
    }

    /// A server that keeps only `_index` and `_id` (for the benchmark: no source parsing, no
    /// mapping checks).
    pub fn start_ids_only() -> Self {
        Self::start_with(false, None)
    }

    fn start_with(keep_sources: bool, tls: Option<(String, rustls::ServerConfig)>) -> Self {
        let (ca_pem, tls) = tls.map(|(pem, config)| (pem, Arc::new(config))).unzip();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            keep_sources,
            product_header: AtomicBool::new(true),
            up: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            tls,
            connections: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
        });
        let acceptor = spawn_acceptor(listener, Arc::clone(&inner));
        FakeElasticsearch {
            inner,
            addr,
            acceptor: Some(acceptor),
            ca_pem,
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://…` for [`start_https`](Self::start_https).
    pub fn url(&self) -> String {
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate (PEM) an HTTPS server's certificate is signed by.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues faults for the next bulk requests, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().faults.extend(faults);
    }

    /// The next `n` bulk items (across requests) are answered 429 alone.
    pub fn reject_items(&self, n: usize) {
        self.inner.lock().item_rejections += n;
    }

    /// Maps `field` as `kind` in every index, as if the indices had been created before the
    /// template with other mappings; overrides the template.
    pub fn override_field(&self, field: &str, kind: &str) {
        self.inner
            .lock()
            .field_overrides
            .insert(field.to_owned(), kind.to_owned());
    }

    /// Requires this exact `Authorization` header value.
    pub fn require_auth(&self, header: &str) {
        self.inner.lock().required_auth = Some(header.to_owned());
    }

    /// Answers the template API with this status (`None`: normally).
    pub fn template_status(&self, status: Option<u16>) {
        self.inner.lock().template_status = status;
    }

    /// Whether answers carry `X-Elastic-Product: Elasticsearch`.
    pub fn product_header(&self, on: bool) {
        self.inner.product_header.store(on, Ordering::Relaxed);
    }

    /// Closes every connection and resets each new one at once, without an answer, until
    /// [`come_back`](Self::come_back): clients get a transport error, as from a node that is
    /// down. The port stays bound, so no other server can take it meanwhile. Data is kept.
    pub fn go_down(&self) {
        let open = {
            let mut connections = self.inner.connections.lock().unwrap();
            self.inner.up.store(false, Ordering::SeqCst);
            std::mem::take(&mut *connections)
        };
        for (_, conn) in open {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Serves again, on the same port.
    pub fn come_back(&self) {
        self.inner.up.store(true, Ordering::SeqCst);
    }

    /// Goes down and comes back at once (a node restart), keeping its data.
    pub fn restart(&self) {
        self.go_down();
        self.come_back();
    }

    pub fn doc_count(&self) -> usize {
        self.inner.lock().doc_count
    }

    pub fn documents(&self) -> Vec<StoredDoc> {
        let st = self.inner.lock();
        let mut out = Vec::with_capacity(st.doc_count);
        for (index, docs) in &st.docs {
            for (id, source) in docs {
                out.push(StoredDoc {
                    index: index.clone(),
                    id: id.clone(),
                    source: source.clone(),
                });
            }
        }
        out
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.inner.lock().requests.clone()
    }

    pub fn counts(&self) -> ServerCounts {
        self.inner.lock().counts.clone()
    }

    pub fn template(&self, name: &str) -> Option<Value> {
        self.inner.lock().templates.get(name).cloned()
    }

    /// Waits (a readiness poll on a condition variable) until `done` holds or `timeout`
    /// passes; returns whether it held.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&FakeView<'_>) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            if done(&FakeView { state: &st }) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// What [`FakeElasticsearch::wait_until`] conditions can read.
pub struct FakeView<'a> {
    state: &'a State,
}

impl FakeView<'_> {
    pub fn doc_count(&self) -> usize {
        self.state.doc_count
    }
    pub fn bulk_requests(&self) -> u64 {
        self.state.counts.bulk_requests
    }
    pub fn faults_left(&self) -> usize {
        self.state.faults.len()
    }
}

impl Drop for FakeElasticsearch {
    fn drop(&mut self) {
        self.go_down();
        self.inner.stopped.store(true, Ordering::SeqCst);
        // Wake the acceptor so it ends and frees the port (if the wake-up cannot connect, the
        // thread is left behind rather than waited for).
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).is_ok() {
            if let Some(handle) = self.acceptor.take() {
                let _ = handle.join();
            }
        }
    }
}

/// Closes `stream` with a reset (`SO_LINGER` 0) rather than an orderly close: the client's
/// next read or write fails at once, as if nothing were listening.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

fn spawn_acceptor(listener: TcpListener, inner: Arc<Inner>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("fake-es-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if inner.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
                {
                    let mut connections = inner.connections.lock().unwrap();
                    if !inner.up.load(Ordering::SeqCst) {
                        reset(stream);
                        continue;
                    }
                    if let Ok(clone) = stream.try_clone() {
                        connections.push((id, clone));
                    }
                }
                let inner = Arc::clone(&inner);
                let _ = std::thread::Builder::new()
                    .name("fake-es-conn".into())
                    .spawn(move || {
                        serve(stream, &inner);
                        inner.connections.lock().unwrap().retain(|(i, _)| *i != id);
                    });
            }
        })
        .expect("spawn the acceptor")
}

// ---- HTTP -----------------------------------------------------------------------------------

struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    wire_bytes: usize,
    gzip: bool,
}

enum Answer {
    Json(u16, Vec<(String, String)>, Vec<u8>),
    Head(u16),
    Close,
}

fn serve(stream: TcpStream, inner: &Inner) {
    let _ = stream.set_nodelay(true);
    let Ok(socket) = stream.try_clone() else {
        return;
    };
    match &inner.tls {
        None => serve_http(stream, &socket, inner),
        Some(config) => {
            let Ok(tls) = rustls::ServerConnection::new(Arc::clone(config)) else {
                return;
            };
            // The handshake happens on the first read; a client that does not trust the
            // certificate aborts it, and the read fails.
            serve_http(rustls::StreamOwned::new(tls, stream), &socket, inner);
        }
    }
}

/// Answers the requests of one connection, plain or TLS; `socket` is its TCP socket.
fn serve_http(stream: impl Read + Write, socket: &TcpStream, inner: &Inner) {
    let mut stream = BufReader::with_capacity(1 << 16, stream);
    loop {
        let request = match read_request(&mut stream) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(message) => {
                let body = error_body(400, "parse_exception", &message);
                let _ = write_answer(stream.get_mut(), inner, 400, &[], &body, false);
                return;
            }
        };
        let close = request
            .headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match handle(inner, request) {
            Answer::Close => {
                let _ = socket.shutdown(Shutdown::Both);
                return;
            }
            Answer::Json(status, headers, body) => {
                if write_answer(stream.get_mut(), inner, status, &headers, &body, false).is_err() {
                    return;
                }
            }
            Answer::Head(status) => {
                if write_answer(stream.get_mut(), inner, status, &[], b"", true).is_err() {
                    return;
                }
            }
        }
        if close || !inner.up.load(Ordering::SeqCst) {
            return;
        }
    }
}

fn write_answer(
    w: &mut impl Write,
    inner: &Inner,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        406 => "Not Acceptable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    };
    let mut head_text = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if inner.product_header.load(Ordering::Relaxed) {
        head_text.push_str("x-elastic-product: Elasticsearch\r\n");
    }
    for (k, v) in headers {
        head_text.push_str(&format!("{k}: {v}\r\n"));
    }
    head_text.push_str("\r\n");
    // One write: one TLS record, one segment where it fits.
    let mut out = head_text.into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    w.write_all(&out)?;
    w.flush()
}

fn read_request(r: &mut impl BufRead) -> Result<Option<Request>, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) | Err(_) => return Ok(None),
        Ok(_) => {}
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {line:?}"));
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target.to_owned(), String::new()),
    };
    let method = method.to_owned();
    let mut headers = HashMap::new();
    let mut header_bytes = 0;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).map_err(|e| e.to_string())? == 0 {
            return Ok(None);
        }
        header_bytes += h.len();
        if header_bytes > 64 * 1024 {
            return Err("headers too large".into());
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            return Err(format!("bad header {h:?}"));
        };
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let mut body = Vec::new();
    if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().map_err(|_| "bad content-length".to_owned())?;
        body.resize(len, 0);
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| "bad chunk size".to_owned())?;
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .map_err(|e| e.to_string())?;
            let mut crlf = String::new();
            r.read_line(&mut crlf).map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
        }
    }
    let wire_bytes = body.len();
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if gzip {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .map_err(|e| format!("bad gzip body: {e}"))?;
        body = plain;
    }
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        body,
        wire_bytes,
        gzip,
    }))
}

// ---- the APIs -------------------------------------------------------------------------------

fn error_body(status: u16, kind: &str, reason: &str) -> Vec<u8> {
    json!({
        "error": {
            "root_cause": [{"type": kind, "reason": reason}],
            "type": kind,
            "reason": reason
        },
        "status": status
    })
    .to_string()
    .into_bytes()
}

fn handle(inner: &Inner, req: Request) -> Answer {
    let mut log = RequestLog {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req.headers.clone(),
        wire_bytes: req.wire_bytes,
        gzip: req.gzip,
        actions: Vec::new(),
        status: 0,
    };
    let answer = route(inner, &req, &mut log);
    log.status = match &answer {
        Answer::Json(s, _, _) | Answer::Head(s) => *s,
        Answer::Close => 0,
    };
    inner.lock().requests.push(log);
    inner.changed.notify_all();
    answer
}

fn route(inner: &Inner, req: &Request, log: &mut RequestLog) -> Answer {
    let required = inner.lock().required_auth.clone();
    if let Some(required) = required {
        if req.headers.get("authorization") != Some(&required) {
            return Answer::Json(
                401,
                vec![(
                    "www-authenticate".into(),
                    "Basic realm=\"security\" charset=\"UTF-8\", ApiKey".into(),
                )],
                error_body(
                    401,
                    "security_exception",
                    &format!(
                        "missing authentication credentials for REST request [{}]",
                        req.path
                    ),
                ),
            );
        }
    }
    let method = req.method.as_str();
    let path = req.path.as_str();
    if path == "/" && method == "GET" {
        let body = json!({
            "name": "fake-node",
            "cluster_name": "fake",
            "version": {"number": "8.15.0", "build_flavor": "default"},
            "tagline": "You Know, for Search"
        });
        return Answer::Json(200, vec![], body.to_string().into_bytes());
    }
    if path == "/_bulk" && (method == "POST" || method == "PUT") {
        return bulk(inner, req, log);
    }
    if let Some(name) = path.strip_prefix("/_index_template/") {
        return index_template(inner, method, name, &req.body);
    }
    if let Some(answer) = index_api(inner, method, path, &req.query) {
        return answer;
    }
    Answer::Json(
        400,
        vec![],
        json!({"error": format!("no handler found for uri [{path}] and method [{method}]")})
            .to_string()
            .into_bytes(),
    )
}

fn index_template(inner: &Inner, method: &str, name: &str, body: &[u8]) -> Answer {
    let mut st = inner.lock();
    if let Some(status) = st.template_status {
        let kind = if status == 403 {
            "security_exception"
        } else {
            "exception"
        };
        drop(st);
        let body = error_body(
            status,
            kind,
            "action [indices:admin/index_template/put] is unauthorized for user [writer] with \
             effective roles [writer], this action is granted by the cluster privileges \
             [manage_index_templates,manage,all]",
        );
        return Answer::Json(status, vec![], body);
    }
    let missing = || {
        error_body(
            404,
            "resource_not_found_exception",
            &format!("index template matching [{name}] not found"),
        )
    };
    match method {
        "PUT" | "POST" => {
            let Ok(template) = serde_json::from_slice::<Value>(body) else {
                return Answer::Json(
                    400,
                    vec![],
                    error_body(400, "x_content_parse_exception", "failed to parse the body"),
                );
            };
            if !template["index_patterns"].is_array() && !template["index_patterns"].is_string() {
                return Answer::Json(
                    400,
                    vec![],
                    error_body(
                        400,
                        "action_request_validation_exception",
                        "Validation Failed: 1: index patterns are missing;",
                    ),
                );
            }
            st.templates.insert(name.to_owned(), template);
            Answer::Json(200, vec![], br#"{"acknowledged":true}"#.to_vec())
        }
        "GET" => match st.templates.get(name) {
            Some(t) => Answer::Json(
                200,
                vec![],
                json!({"index_templates": [{"name": name, "index_template": t}]})
                    .to_string()
                    .into_bytes(),
            ),
            None => Answer::Json(404, vec![], missing()),
        },
        "HEAD" => Answer::Head(if st.templates.contains_key(name) {
            200
        } else {
            404
        }),
        "DELETE" => {
            st.templates.remove(name);
            Answer::Json(200, vec![], br#"{"acknowledged":true}"#.to_vec())
        }
        _ => Answer::Json(
            405,
            vec![],
            error_body(405, "exception", "method not allowed"),
        ),
    }
}

/// The type of `field` in `index`: override, else the highest-priority matching template.
fn field_type(st: &State, index: &str, field: &str) -> Option<String> {
    if let Some(t) = st.field_overrides.get(field) {
        return Some(t.clone());
    }
    let mut best: Option<(u64, &Value)> = None;
    for t in st.templates.values() {
        let patterns: Vec<&str> = match &t["index_patterns"] {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            Value::String(s) => vec![s.as_str()],
            _ => vec![],
        };
        if patterns.iter().any(|p| glob(p, index)) {
            let priority = t["priority"].as_u64().unwrap_or(0);
            if best.is_none_or(|(b, _)| priority > b) {
                best = Some((priority, t));
            }
        }
    }
    best.and_then(|(_, t)| {
        t["template"]["mappings"]["properties"][field]["type"]
            .as_str()
            .map(str::to_owned)
    })
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.len() >= head.len() + tail.len()
                && text.starts_with(head)
                && glob_rest(tail, &text[head.len()..])
        }
    }
}

fn glob_rest(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => text.ends_with(pattern),
        Some((mid, tail)) => (0..=text.len())
            .filter(|&i| text.is_char_boundary(i) && text[i..].starts_with(mid))
            .any(|i| glob_rest(tail, &text[i + mid.len()..])),
    }
}

/// Whether `value` fits a field of type `kind`, as Elasticsearch parses it (with coercion).
fn fits(kind: &str, value: &Value) -> bool {
    match (kind, value) {
        (_, Value::Null) => true,
        ("long" | "integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        ("long" | "integer", Value::String(s)) => s.parse::<i64>().is_ok(),
        ("double" | "float", Value::Number(_)) => true,
        ("double" | "float", Value::String(s)) => s.parse::<f64>().is_ok(),
        ("date", Value::String(s)) => humantime::parse_rfc3339(s).is_ok(),
        ("date", Value::Number(n)) => n.is_u64(),
        ("keyword" | "text", Value::String(_) | Value::Number(_) | Value::Bool(_)) => true,
        _ => false,
    }
}

fn preview(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An action line: `{"create":{"_index":"…","_id":"…"}}` (or index, update, delete).
#[derive(serde::Deserialize)]
struct ActionLine<'a> {
    #[serde(borrow, default)]
    create: Option<ActionMeta<'a>>,
    #[serde(borrow, default)]
    index: Option<ActionMeta<'a>>,
    #[serde(borrow, default)]
    update: Option<ActionMeta<'a>>,
    #[serde(borrow, default)]
    delete: Option<ActionMeta<'a>>,
}

#[derive(serde::Deserialize)]
struct ActionMeta<'a> {
    #[serde(borrow, rename = "_index", default)]
    index: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, rename = "_id", default)]
    id: Option<std::borrow::Cow<'a, str>>,
}

/// One answered item.
struct ItemOut {
    action: &'static str,
    index: String,
    id: String,
    status: u16,
    seq: u64,
    error: Option<Value>,
}

/// Which parts of the answer `filter_path` keeps.
struct Keep {
    took: bool,
    errors: bool,
    /// `None`: every item field; `Some(fields)`: only these (from `items.*.field`).
    item_fields: Option<Vec<String>>,
    items: bool,
}

impl Keep {
    fn from_query(query: &str) -> Keep {
        let Some(filter) = query_param(query, "filter_path") else {
            return Keep {
                took: true,
                errors: true,
                item_fields: None,
                items: true,
            };
        };
        let paths: Vec<&str> = filter.split(',').collect();
        let mut fields = Vec::new();
        let mut all_items = false;
        for p in &paths {
            match p.split('.').collect::<Vec<_>>().as_slice() {
                ["items"] | ["items", "*"] => all_items = true,
                ["items", "*", field] => fields.push((*field).to_owned()),
                _ => {}
            }
        }
        Keep {
            took: paths.contains(&"took"),
            errors: paths.contains(&"errors"),
            items: all_items || !fields.is_empty(),
            item_fields: (!all_items).then_some(fields),
        }
    }

    fn field(&self, name: &str) -> bool {
        self.item_fields
            .as_ref()
            .is_none_or(|fields| fields.iter().any(|f| f == name))
    }
}

/// The bulk answer, written directly (the server must not be the benchmark's bottleneck),
/// with only what `keep` allows, as `filter_path` does: items left empty are omitted.
fn bulk_answer(items: &[ItemOut], errors: bool, took: u64, keep: &Keep) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + items.len() * 48);
    let mut first_key = true;
    let mut key = |out: &mut Vec<u8>, name: &str| {
        if !first_key {
            out.push(b',');
        }
        first_key = false;
        out.extend_from_slice(format!("\"{name}\":").as_bytes());
    };
    out.push(b'{');
    if keep.took {
        key(&mut out, "took");
        out.extend_from_slice(took.to_string().as_bytes());
    }
    if keep.errors {
        key(&mut out, "errors");
        out.extend_from_slice(if errors { b"true" } else { b"false" });
    }
    if keep.items {
        let mut written = Vec::with_capacity(items.len());
        for item in items {
            let mut fields: Vec<(&str, String)> = Vec::with_capacity(8);
            let mut put = |name: &'static str, json: &dyn Fn() -> String| {
                if keep.field(name) {
                    fields.push((name, json()));
                }
            };
            put("_index", &|| Value::from(item.index.as_str()).to_string());
            put("_id", &|| Value::from(item.id.as_str()).to_string());
            if item.error.is_none() {
                put("_version", &|| "1".into());
                put("result", &|| {
                    if item.status == 201 {
                        "\"created\""
                    } else {
                        "\"updated\""
                    }
                    .into()
                });
                put("_shards", &|| {
                    r#"{"total":2,"successful":1,"failed":0}"#.into()
                });
                put("_seq_no", &|| item.seq.to_string());
                put("_primary_term", &|| "1".into());
            }
            put("status", &|| item.status.to_string());
            if let Some(e) = &item.error {
                put("error", &|| e.to_string());
            }
            if fields.is_empty() {
                continue;
            }
            let mut text = format!("{{\"{}\":{{", item.action);
            for (i, (name, json)) in fields.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push('"');
                text.push_str(name);
                text.push_str("\":");
                text.push_str(json);
            }
            text.push_str("}}");
            written.push(text);
        }
        if !written.is_empty() {
            key(&mut out, "items");
            out.push(b'[');
            out.extend_from_slice(written.join(",").as_bytes());
            out.push(b']');
        }
    }
    out.push(b'}');
    out
}

fn bulk(inner: &Inner, req: &Request, log: &mut RequestLog) -> Answer {
    let content_type = req.headers.get("content-type").cloned().unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime != "application/x-ndjson" && mime != "application/json" {
        return Answer::Json(
            406,
            vec![],
            json!({"error": format!("Content-Type header [{content_type}] is not supported"), "status": 406})
                .to_string()
                .into_bytes(),
        );
    }
    if !req.body.is_empty() && !req.body.ends_with(b"\n") {
        return Answer::Json(
            400,
            vec![],
            error_body(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            ),
        );
    }
    let fault = {
        let mut st = inner.lock();
        st.counts.bulk_requests += 1;
        let fault = st.faults.pop_front();
        if fault.is_some() {
            st.counts.faults_served += 1;
        }
        fault
    };
    match &fault {
        Some(Fault::Status(status)) => {
            let (kind, reason) = if *status == 429 {
                (
                    "es_rejected_execution_exception",
                    "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=52430, max_coordinating_and_primary_bytes=0]",
                )
            } else {
                (
                    "unavailable_shards_exception",
                    "[fake][0] primary shard is not active",
                )
            };
            return Answer::Json(*status, vec![], error_body(*status, kind, reason));
        }
        Some(Fault::Stall(d)) => {
            std::thread::sleep(*d);
            return Answer::Json(
                503,
                vec![],
                error_body(503, "unavailable_shards_exception", "stalled"),
            );
        }
        _ => {}
    }
    let started = Instant::now();
    let mut items: Vec<ItemOut> = Vec::new();
    let mut errors = false;
    let mut lines = req
        .body
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let mut line_no = 0usize;
    {
        let mut st = inner.lock();
        while let Some(action_line) = lines.next() {
            line_no += 1;
            let parsed: ActionLine<'_> = match serde_json::from_slice(action_line) {
                Ok(v) => v,
                Err(e) => {
                    drop(st);
                    return Answer::Json(
                        400,
                        vec![],
                        error_body(
                            400,
                            "x_content_parse_exception",
                            &format!("[{line_no}:1] {e}"),
                        ),
                    );
                }
            };
            let (name, meta) = match parsed {
                ActionLine {
                    create: Some(m), ..
                } => ("create", m),
                ActionLine { index: Some(m), .. } => ("index", m),
                ActionLine {
                    update: Some(m), ..
                } => ("update", m),
                ActionLine {
                    delete: Some(m), ..
                } => ("delete", m),
                _ => {
                    drop(st);
                    return Answer::Json(
                        400,
                        vec![],
                        error_body(
                            400,
                            "illegal_argument_exception",
                            "Malformed action/metadata line",
                        ),
                    );
                }
            };
            log.actions.push(name);
            let index = meta.index.as_deref().unwrap_or("").to_owned();
            let id = match meta.id {
                Some(id) => id.into_owned(),
                None => {
                    st.generated_ids += 1;
                    format!("generated-{}", st.generated_ids)
                }
            };
            let source_line = if name == "delete" { None } else { lines.next() };
            st.counts.items += 1;
            let seq = st.counts.items;
            let outcome: Result<u16, (u16, Value)> = (|| {
                if st.item_rejections > 0 {
                    st.item_rejections -= 1;
                    st.counts.rejected_items += 1;
                    return Err((
                        429,
                        json!({
                            "type": "es_rejected_execution_exception",
                            "reason": format!("rejected execution of primary operation [shard_detail=[{index}][0][P], shard_coordinating_and_primary_bytes=0, shard_operation_bytes=512, max_coordinating_and_primary_bytes=0]")
                        }),
                    ));
                }
                let source: Value = if inner.keep_sources {
                    match source_line.map(serde_json::from_slice::<Value>) {
                        Some(Ok(v)) => v,
                        Some(Err(e)) => {
                            return Err((
                                400,
                                json!({
                                    "type": "document_parsing_exception",
                                    "reason": format!("[1:1] failed to parse: {e}")
                                }),
                            ))
                        }
                        None => Value::Null,
                    }
                } else {
                    Value::Null
                };
                if let Value::Object(fields) = &source {
                    for (field, value) in fields {
                        if let Some(kind) = field_type(&st, &index, field) {
                            if !fits(&kind, value) {
                                let shown = preview(value);
                                return Err((
                                    400,
                                    json!({
                                        "type": "document_parsing_exception",
                                        "reason": format!("[1:{}] failed to parse field [{field}] of type [{kind}] in document with id '{id}'. Preview of field's value: '{shown}'", source_line.map_or(0, <[u8]>::len)),
                                        "caused_by": {
                                            "type": "illegal_argument_exception",
                                            "reason": format!("For input string: \"{shown}\"")
                                        }
                                    }),
                                ));
                            }
                        }
                    }
                }
                let docs = st.docs.entry(index.clone()).or_default();
                let exists = docs.contains_key(&id);
                if exists && name == "create" {
                    st.counts.conflicts += 1;
                    return Err((
                        409,
                        json!({
                            "type": "version_conflict_engine_exception",
                            "reason": format!("[{id}]: version conflict, document already exists (current version [1])"),
                            "index_uuid": "fakeuuid",
                            "shard": "0",
                            "index": index
                        }),
                    ));
                }
                docs.insert(id.clone(), source);
                if !exists {
                    st.doc_count += 1;
                    st.counts.created += 1;
                }
                Ok(if exists { 200 } else { 201 })
            })();
            let (status, error) = match outcome {
                Ok(status) => (status, None),
                Err((status, error)) => {
                    errors = true;
                    if status != 429 && status != 409 {
                        st.counts.refused_items += 1;
                    }
                    (status, Some(error))
                }
            };
            items.push(ItemOut {
                action: name,
                index,
                id,
                status,
                seq,
                error,
            });
        }
    }
    inner.changed.notify_all();
    let keep = Keep::from_query(&req.query);
    let body = bulk_answer(&items, errors, started.elapsed().as_millis() as u64, &keep);
    match fault {
        Some(Fault::StoreThenStatus(status)) => Answer::Json(
            status,
            vec![],
            error_body(status, "unavailable_shards_exception", "answer lost"),
        ),
        Some(Fault::StoreThenStall(d)) => {
            std::thread::sleep(d);
            Answer::Json(200, vec![], body)
        }
        Some(Fault::StoreThenClose) => Answer::Close,
        _ => Answer::Json(200, vec![], body),
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%2C", ",").replace("%2c", ","))
    })
}

/// The few index APIs the live test reads back with: `_refresh`, `_count`, `_mapping`,
/// `_search?q=field:value` over an index pattern, and `DELETE /{index}`.
fn index_api(inner: &Inner, method: &str, path: &str, query: &str) -> Option<Answer> {
    let trimmed = path.trim_start_matches('/');
    let (pattern, api) = match trimmed.split_once('/') {
        Some((p, a)) => (p, a),
        None => (trimmed, ""),
    };
    if pattern.is_empty() || pattern.starts_with('_') {
        return None;
    }
    let mut st = inner.lock();
    let matching: Vec<String> = {
        let mut names: Vec<String> = st
            .docs
            .keys()
            .filter(|i| pattern.split(',').any(|p| glob(p, i)))
            .cloned()
            .collect();
        names.sort();
        names
    };
    let ok = |body: Value| Some(Answer::Json(200, vec![], body.to_string().into_bytes()));
    match (method, api) {
        ("POST", "_refresh") => ok(json!({"_shards": {"total": 1, "successful": 1, "failed": 0}})),
        ("GET", "_count") => {
            let count: usize = matching.iter().map(|i| st.docs[i].len()).sum();
            ok(
                json!({"count": count, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}),
            )
        }
        ("GET", "_mapping") => {
            let mut out = Map::new();
            for index in &matching {
                let mut props = Map::new();
                let fields: std::collections::BTreeSet<String> = st.docs[index]
                    .values()
                    .filter_map(Value::as_object)
                    .flat_map(|o| o.keys().cloned())
                    .collect();
                for field in fields {
                    if let Some(kind) = field_type(&st, index, &field) {
                        props.insert(field, json!({"type": kind}));
                    }
                }
                out.insert(index.clone(), json!({"mappings": {"properties": props}}));
            }
            ok(Value::Object(out))
        }
        ("GET" | "POST", "_search") => {
            let q = query_param(query, "q").unwrap_or_default();
            let (field, value) = q.split_once(':').unwrap_or(("", ""));
            let hits: Vec<Value> = matching
                .iter()
                .flat_map(|index| {
                    st.docs[index]
                        .iter()
                        .filter(move |(_, source)| {
                            field.is_empty() || source[field] == json!(value)
                        })
                        .map(move |(id, source)| {
                            json!({"_index": index, "_id": id, "_score": 1.0, "_source": source})
                        })
                })
                .collect();
            ok(json!({"hits": {"total": {"value": hits.len(), "relation": "eq"}, "hits": hits}}))
        }
        ("DELETE", "") => {
            if st.docs.remove(pattern).is_none() {
                return Some(Answer::Json(
                    404,
                    vec![],
                    error_body(
                        404,
                        "index_not_found_exception",
                        &format!("no such index [{pattern}]"),
                    ),
                ));
            }
            st.doc_count = st.docs.values().map(HashMap::len).sum();
            ok(json!({"acknowledged": true}))
        }
        _ => None,
    }
}

/// A CA and a server certificate it signed for `localhost` and `127.0.0.1`, made afresh for
/// one server: the CA's PEM for clients to trust, and the server's TLS configuration. Made
/// at run time, so no key is committed and nothing expires; test-only.
fn test_certificates() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    ca.distinguished_name
        .push(DnType::CommonName, "fake-elasticsearch test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server names")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![server.der().clone()],
        rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    )
    .expect("server certificate and key");
    (ca.pem(), config)
}
