//! Remote-write receivers for the Grafana Cloud publisher's tests: a small HTTP server on
//! 127.0.0.1 that records every request and answers with a handler, which can be a canned
//! answer or a basic-auth-checking proxy in front of a real Prometheus; it can be stopped
//! (connections refused) and started again on the same port.
//!
//! Include it with `#[path = "support/remote_write_receiver.rs"] mod receiver;`. The remote
//! write 1.0 messages are declared here again, from the proto, so that what the publisher
//! sends is decoded by an independent reading of the format.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message as _;

#[path = "basic_auth.rs"]
mod basic_auth;
pub use basic_auth::basic;

/// `prometheus.WriteRequest` (remote write 1.0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

impl TimeSeries {
    /// The value of label `name`, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|l| l.name == name)
            .map_or("", |l| l.value.as_str())
    }

    /// Whether every `(name, value)` of `want` is among the labels.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(n, v)| self.label(n) == *v)
    }
}

impl WriteRequest {
    /// The series having every label of `want`.
    pub fn find(&self, want: &[(&str, &str)]) -> Vec<&TimeSeries> {
        self.timeseries.iter().filter(|ts| ts.has(want)).collect()
    }

    /// The single sample value of the one series having every label of `want`.
    pub fn value(&self, want: &[(&str, &str)]) -> f64 {
        let found = self.find(want);
        assert_eq!(found.len(), 1, "exactly one series with {want:?}");
        assert_eq!(found[0].samples.len(), 1);
        found[0].samples[0].value
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// When it was read (for ordering and Retry-After checks).
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body, snappy-decompressed and decoded.
    pub fn decode(&self) -> WriteRequest {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&self.body)
            .expect("the body is snappy block-compressed");
        WriteRequest::decode(&raw[..]).expect("the body is a protobuf WriteRequest")
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What answers requests; gets the request and how many came before it.
pub type Handler = Arc<dyn Fn(&Request, usize) -> Reply + Send + Sync>;

/// A proxy that demands `Authorization: expected` (answering 401 otherwise, as Grafana Cloud
/// does) and forwards the rest to Prometheus' remote-write receiver at `prometheus`.
pub fn auth_proxy(prometheus: SocketAddr, expected: String) -> Handler {
    Arc::new(move |request, _| {
        if request.header("authorization") != Some(expected.as_str()) {
            return Reply::status(401).with_body("authentication error: invalid credentials");
        }
        match forward(prometheus, request) {
            Ok(reply) => reply,
            Err(e) => Reply::status(502).with_body(e),
        }
    })
}

/// `POST /api/v1/write` to Prometheus with the request's body and remote-write headers.
fn forward(prometheus: SocketAddr, request: &Request) -> Result<Reply, String> {
    let mut stream = TcpStream::connect_timeout(&prometheus, Duration::from_secs(5))
        .map_err(|e| format!("connect {prometheus}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "POST /api/v1/write HTTP/1.0\r\nHost: {prometheus}\r\nContent-Length: {}\r\n",
        request.body.len()
    );
    for name in [
        "content-encoding",
        "content-type",
        "x-prometheus-remote-write-version",
        "user-agent",
    ] {
        if let Some(value) = request.header(name) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&request.body))
        .map_err(|e| format!("send to {prometheus}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {prometheus}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end in Prometheus' answer")?;
    let status = String::from_utf8_lossy(&raw[..split])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status in Prometheus' answer")?;
    Ok(Reply::status(status).with_body(raw[split + 4..].to_vec()))
}

/// Answers every request with `status`.
pub fn always(status: u16) -> Handler {
    Arc::new(move |_, _| Reply::status(status))
}

/// Answers with `replies` in turn, then with the last one for ever.
pub fn sequence(replies: Vec<Reply>) -> Handler {
    Arc::new(move |_, n| replies[n.min(replies.len() - 1)].clone())
}

/// A small HTTP server on 127.0.0.1 recording every request.
pub struct Receiver {
    addr: SocketAddr,
    handler: Handler,
    requests: Arc<Mutex<Vec<Request>>>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1.
    pub fn start(handler: Handler) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let mut receiver = Receiver {
            addr,
            handler,
            requests: Arc::new(Mutex::new(Vec::new())),
            running: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, handler, requests) = (
            Arc::clone(&stop),
            Arc::clone(&self.handler),
            Arc::clone(&self.requests),
        );
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    return;
                }
                if let Ok(stream) = stream {
                    handle(stream, &handler, &requests);
                }
            }
        });
        self.running = Some((stop, thread));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (polling) until at least `n` requests came, and returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "{} requests after {timeout:?}, expected {n}",
                requests.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops listening: connections are refused until [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            stop.store(true, Ordering::Release);
            // Wake the accept call.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = thread.join();
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "the receiver is running");
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}; trying again", self.addr);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn handle(stream: TcpStream, handler: &Handler, requests: &Mutex<Vec<Request>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // The wake-up connection, or a client that gave up.
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = Request {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    };
    let n = {
        let mut all = requests.lock().unwrap();
        all.push(request.clone());
        all.len() - 1
    };
    let reply = handler(&request, n);
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut stream = stream;
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(&reply.body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}
