//! A real Prometheus server (and `promtool`) for integration tests.
//!
//! Include it with `#[path = "support/prometheus_server.rs"] mod prometheus_server;`.
//!
//! [`PrometheusServer::start`] runs the `prometheus` binary as its own process, bound to
//! 127.0.0.1 on a free port, with a temporary storage directory, the given configuration and
//! extra flags (such as `--web.enable-remote-write-receiver`); it polls `/-/ready` until the
//! server answers, queries `/api/v1/query`, and kills the process and removes the directory on
//! drop. [`PrometheusServer::stop`] ends the process with SIGTERM (a clean shutdown, as a
//! service manager does) and [`PrometheusServer::restart`] runs it again with the same flags,
//! on the same port and the same storage directory, so what it stored before (its WAL) is
//! there again.
//!
//! When `prometheus` or `promtool` is missing or does not start, [`require`] and
//! [`PrometheusServer::start`] fail the test under CI (`CI=true`) and otherwise print a loud
//! SKIP message and return `None`; `scripts/test.sh` installs them (Debian package
//! `prometheus`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether missing tools fail the test (CI) instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Fails the test in CI, prints a loud SKIP line elsewhere.
pub fn unavailable(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why} (CI=true, so this is a failure; scripts/test.sh installs the Debian package `prometheus`)");
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIP {test}: {why}");
    eprintln!("!!! Run scripts/test.sh (it installs the Debian package `prometheus`).");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!();
}

/// The path of `tool` (on `PATH`, or in /usr/bin), or `None` after [`unavailable`].
pub fn require(test: &str, tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file());
    if found.is_none() {
        unavailable(test, &format!("`{tool}` is not installed"));
    }
    found
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}

/// Runs `promtool check metrics` on `text`: `Ok` with its output when it accepts it.
pub fn promtool_check_metrics(promtool: &Path, text: &str) -> Result<String, String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let input = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .map_err(|e| format!("promtool failed: {e}"))?;
    let _ = writer.join();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

/// An HTTP response read by [`http_get`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("response body is not UTF-8")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A plain HTTP/1.0 request (so the response is never chunked), read to the end.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let mut request = format!("{method} {target} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// `GET target` with headers.
pub fn http_get(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, String> {
    http_request(addr, "GET", target, headers)
}

/// Percent-encodes a query parameter value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// A running Prometheus server, killed on drop.
pub struct PrometheusServer {
    /// `None` between [`stop`](Self::stop) and [`restart`](Self::restart).
    child: Option<Child>,
    addr: SocketAddr,
    /// Holds the configuration, the storage (`data/`) and the log; removed on drop only, so
    /// it outlives a restart.
    dir: PathBuf,
    binary: PathBuf,
    /// Every command-line argument, for a restart with the same ones.
    args: Vec<String>,
}

static STARTED: AtomicUsize = AtomicUsize::new(0);

/// How long a stopped Prometheus may take to shut down cleanly.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Prometheus may take to become ready (a restart replays its WAL first).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl PrometheusServer {
    /// Starts Prometheus with this configuration file text and extra command-line flags,
    /// and waits until it is ready. `None` (after [`unavailable`]) when it is not installed or
    /// does not start.
    pub fn start(test: &str, config: &str, extra_flags: &[&str]) -> Option<PrometheusServer> {
        let binary = require(test, "prometheus")?;
        let mut last_error = String::new();
        // A port found free can be taken before Prometheus binds it: try a few.
        for _ in 0..3 {
            match Self::try_start(&binary, config, extra_flags) {
                Ok(server) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        unavailable(test, &format!("Prometheus did not start: {last_error}"));
        None
    }

    fn try_start(binary: &Path, config: &str, extra_flags: &[&str]) -> Result<Self, String> {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "pipeline-telemetry-prometheus-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("temp dir: {e}"))?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(|e| format!("config: {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut args = vec![
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_owned(),
        ];
        args.extend(extra_flags.iter().map(|f| (*f).to_owned()));
        let mut server = PrometheusServer {
            child: None,
            addr,
            dir,
            binary: binary.to_owned(),
            args,
        };
        server.child = Some(server.spawn()?);
        server.wait_ready(READY_TIMEOUT)?;
        Ok(server)
    }

    /// Runs the binary with the server's arguments, its standard error appended to the log.
    fn spawn(&self) -> Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("prometheus.log"))
            .map_err(|e| format!("log file: {e}"))?;
        Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().ok_or("prometheus is stopped")?;
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "prometheus exited ({status}):\n{}",
                    self.log_tail()
                ));
            }
            if let Ok(r) = http_get(self.addr, "/-/ready", &[]) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "prometheus not ready after {timeout:?}:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of the running server; `None` while it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server as a service manager does: SIGTERM, then waits (polling, at most
    /// 30 s) for the process to exit. Prometheus shuts down cleanly on SIGTERM and leaves
    /// what it stored in its storage directory (the WAL), which is kept for
    /// [`restart`](Self::restart); connections to its port are refused until then.
    ///
    /// An error if it is already stopped, or did not exit cleanly in time (it is then killed,
    /// and the error shows the end of its log).
    pub fn stop(&mut self) -> Result<(), String> {
        let child = self.child.as_mut().ok_or("prometheus is already stopped")?;
        let pid = child.id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(|e| format!("cannot run kill -TERM {pid}: {e}"))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!(
                        "prometheus (pid {pid}) had not exited {STOP_TIMEOUT:?} after SIGTERM \
                         (kill said {sent}); killed it"
                    ));
                }
                Err(e) => break Err(format!("waiting for prometheus (pid {pid}): {e}")),
            }
        };
        self.child = None;
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!(
                "prometheus (pid {pid}) did not shut down cleanly on SIGTERM ({status}):\n{}",
                self.log_tail()
            )),
            Err(e) => Err(format!("{e}:\n{}", self.log_tail())),
        }
    }

    /// Starts a [stopped](Self::stop) server again with the same arguments: the same port,
    /// configuration and storage directory, so it replays its WAL and serves what it stored
    /// before. Waits (polling `/-/ready`, at most 30 s) until it is ready.
    ///
    /// An error if it is running, if its port was taken by another process while it was
    /// stopped (the message says so), or if it does not become ready.
    pub fn restart(&mut self) -> Result<(), String> {
        if let Some(pid) = self.pid() {
            return Err(format!("prometheus is running (pid {pid}); stop it first"));
        }
        let addr = self.addr;
        let taken = |e: &dyn std::fmt::Display| {
            format!(
                "cannot restart prometheus on {addr}: the port was taken by another process \
                 while it was stopped ({e})"
            )
        };
        // The port is free if we can bind it (std sets SO_REUSEADDR, as Go does for
        // Prometheus, so connections in TIME_WAIT do not count). Someone closing it can take a
        // moment: poll briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match TcpListener::bind(addr) {
                Ok(_probe) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if Instant::now() > deadline {
                        return Err(taken(&e));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("cannot restart prometheus on {addr}: {e}")),
            }
        }
        self.child = Some(self.spawn()?);
        self.wait_ready(READY_TIMEOUT).map_err(|e| {
            // Taken between the probe and Prometheus' own bind.
            if e.contains("address already in use") {
                taken(&e)
            } else {
                format!("prometheus did not come back on {addr}: {e}")
            }
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs a PromQL instant query and returns the vector.
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let target = format!("/api/v1/query?query={}", url_encode(expr));
        let response = http_get(self.addr, &target, &[])?;
        let body: serde_json::Value = serde_json::from_slice(&response.body)
            .map_err(|e| format!("query {expr:?}: bad JSON ({e}): {}", response.text()))?;
        if body["status"] != "success" {
            return Err(format!("query {expr:?} failed: {body}"));
        }
        let result = body["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("query {expr:?}: not a vector: {body}"))?;
        result
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| match v {
                        "+Inf" => Some(f64::INFINITY),
                        "-Inf" => Some(f64::NEG_INFINITY),
                        "NaN" => Some(f64::NAN),
                        v => v.parse().ok(),
                    })
                    .ok_or_else(|| format!("query {expr:?}: bad value in {r}"))?;
                Ok(Sample { labels, value })
            })
            .collect()
    }

    /// The single value of a query that must return exactly one sample.
    pub fn query_one(&self, expr: &str) -> Result<f64, String> {
        let samples = self.query(expr)?;
        match samples.as_slice() {
            [one] => Ok(one.value),
            other => Err(format!(
                "query {expr:?}: expected one sample, got {other:?}"
            )),
        }
    }

    /// Waits until Prometheus has stored a successful scrape of `job` that started after
    /// `after` (so it saw everything recorded before then), polling; no fixed sleep.
    pub fn wait_for_scrape(
        &self,
        job: &str,
        after: SystemTime,
        timeout: Duration,
    ) -> Result<(), String> {
        let after = after
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs_f64();
        let deadline = Instant::now() + timeout;
        // `timestamp` reads the stored sample's time only when given a plain selector.
        let when = format!("timestamp(up{{job=\"{job}\"}})");
        let up = format!("up{{job=\"{job}\"}}");
        loop {
            if let Ok([sample]) = self.query(&when).as_deref() {
                if sample.value > after && self.query_one(&up) == Ok(1.0) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let targets = http_get(self.addr, "/api/v1/targets", &[])
                    .map(|r| r.text())
                    .unwrap_or_default();
                return Err(format!(
                    "no successful scrape of job {job:?} after {after} within {timeout:?}; \
                     targets: {targets}\nlog:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A configuration scraping each `(job, address)` every second over plain HTTP.
pub fn scrape_config(targets: &[(&str, SocketAddr)]) -> String {
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1m\nscrape_configs:\n",
    );
    for (job, addr) in targets {
        config.push_str(&format!(
            "  - job_name: \"{job}\"\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"{addr}\"]\n"
        ));
    }
    config
}
