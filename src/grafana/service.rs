//! The push thread: takes a snapshot every push interval (and on flush and shutdown), keeps
//! the encoded pushes in a bounded backlog, and sends them oldest first with retries.
//!
//! Pushes leave the backlog strictly in order, so every series' samples reach the receiver
//! in time order (a receiver refuses an older sample after a newer one). Each push ends in
//! exactly one of: sent, refused (a 4xx other than 429), or dropped with a reason (backlog
//! full, retry limit, too old, shutdown); the figures are in [`GrafanaStats`].
//!
//! Nothing here runs on the pipeline's threads: the publisher's recording methods only
//! update the series' atomics, and `flush`/`shutdown` wait for this thread only until their
//! deadline.

use std::collections::VecDeque;
use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ureq::http::HeaderValue;

use super::config::{scrub, Settings, USER_AGENT};
use super::remote_write::Encoder;
use super::retry::{decide, Backoff, Decision, Outcome};
use super::GrafanaStats;
use crate::series::PipelineSeries;

/// How often the families' metadata (type and help) goes along with a push.
const METADATA_INTERVAL: Duration = Duration::from_secs(60);

/// How much of an answer's body is read (only 1 KB of it is kept).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// `t + d`, or about a year after `t` if that cannot be represented.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(t)
}

/// How long the thread keeps delivering when the publisher vanished without a shutdown.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// Why a push did not reach Grafana Cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Refused with a status that is not retried.
    Refused(String),
    /// Given up: backlog full, retry limit, too old, shutdown.
    Dropped(String),
}

pub(crate) type Ack = Sender<Result<(), Failure>>;

/// Why a push was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    BacklogFull,
    RetryLimit,
    TooOld,
    NextRetryTooLate,
    Shutdown,
}

impl DropReason {
    fn counter(self, c: &Counters) -> &AtomicU64 {
        match self {
            DropReason::BacklogFull => &c.dropped_backlog_full,
            DropReason::RetryLimit => &c.dropped_retry_limit,
            DropReason::TooOld | DropReason::NextRetryTooLate => &c.dropped_too_old,
            DropReason::Shutdown => &c.dropped_shutdown,
        }
    }

    fn why(self) -> &'static str {
        match self {
            DropReason::BacklogFull => {
                "the backlog was full (the receiver was slow or unreachable for too long)"
            }
            DropReason::RetryLimit => "it failed max_attempts times",
            DropReason::TooOld => "it grew older than max_push_age while the receiver was failing",
            DropReason::NextRetryTooLate => "its next retry would come after max_push_age",
            DropReason::Shutdown => "shutdown's deadline passed before it could be delivered",
        }
    }
}

/// What the publisher asks of the thread.
pub(crate) enum Command {
    /// Push a snapshot now and answer when it has left the backlog.
    Flush(Ack),
    /// Push a last snapshot, deliver what can be delivered by the deadline, answer and end.
    Shutdown(Instant, Ack),
}

/// The counters the thread updates and the publisher reads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) pushes: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) samples_sent: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) dropped_backlog_full: AtomicU64,
    pub(crate) dropped_retry_limit: AtomicU64,
    pub(crate) dropped_too_old: AtomicU64,
    pub(crate) dropped_shutdown: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) failed_requests: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) backlog_pushes: AtomicU64,
    pub(crate) backlog_bytes: AtomicU64,
    pub(crate) last_refusal: Mutex<Option<String>>,
    pub(crate) last_error: Mutex<Option<String>>,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn set(slot: &Mutex<Option<String>>, value: String) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
}

/// What the publisher, its recording methods and the push thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) series: Arc<PipelineSeries>,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn new(series: PipelineSeries) -> Self {
        Shared {
            series: Arc::new(series),
            counters: Counters::default(),
        }
    }

    pub(crate) fn stats(&self) -> GrafanaStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let text = |m: &Mutex<Option<String>>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let dropped_backlog_full = load(&c.dropped_backlog_full);
        let dropped_retry_limit = load(&c.dropped_retry_limit);
        let dropped_too_old = load(&c.dropped_too_old);
        let dropped_shutdown = load(&c.dropped_shutdown);
        GrafanaStats {
            pushes: load(&c.pushes),
            sent: load(&c.sent),
            samples_sent: load(&c.samples_sent),
            refused: load(&c.refused),
            dropped: dropped_backlog_full
                + dropped_retry_limit
                + dropped_too_old
                + dropped_shutdown,
            dropped_backlog_full,
            dropped_retry_limit,
            dropped_too_old,
            dropped_shutdown,
            requests: load(&c.requests),
            retried: load(&c.retried),
            failed_requests: load(&c.failed_requests),
            throttled: load(&c.throttled),
            bytes_sent: load(&c.bytes_sent),
            backlog_pushes: load(&c.backlog_pushes),
            backlog_bytes: load(&c.backlog_bytes),
            last_refusal: text(&c.last_refusal),
            last_error: text(&c.last_error),
        }
    }
}

/// An HTTP answer.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

/// The HTTP client: one `ureq` agent, the URL and the sensitive `Authorization` value.
struct Client {
    agent: ureq::Agent,
    url: String,
    authorization: HeaderValue,
}

impl Client {
    fn new(settings: &Settings) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirected POST is not followed: the 3xx is reported with its Location.
            .max_redirects(0)
            .timeout_global(Some(settings.request_timeout))
            .user_agent(USER_AGENT)
            .max_idle_connections_per_host(2)
            .build();
        // Checked at construction: visible ASCII only, so this cannot fail; an empty value
        // would be refused by the server and reported.
        let mut authorization = HeaderValue::from_str(settings.authorization.expose())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        authorization.set_sensitive(true);
        Client {
            agent: ureq::Agent::new_with_config(config),
            url: settings.endpoint.url.clone(),
            authorization,
        }
    }

    fn push(&self, body: &[u8], timeout: Duration) -> Result<Answer, String> {
        let result = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header("Authorization", self.authorization.clone())
            .send(body);
        let mut response = result.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after");
        let location = header("location");
        let mut body = Vec::new();
        // A body that cannot be read still leaves the status to decide on.
        let _ = response
            .body_mut()
            .as_reader()
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut body);
        if let (300..=399, Some(location)) = (status, location) {
            body = format!("redirected to {location}").into_bytes();
        }
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}

/// One encoded snapshot waiting to be sent.
struct Push {
    seq: u64,
    body: Vec<u8>,
    samples: usize,
    created: Instant,
    attempts: u32,
    not_before: Instant,
}

/// A flush waiting for its push to leave the backlog.
struct Waiter {
    seq: u64,
    ack: Ack,
}

/// The push thread's state.
pub(crate) struct Service {
    settings: Settings,
    shared: Arc<Shared>,
    client: Client,
    encoder: Encoder,
    backoff: Backoff,
    backlog: VecDeque<Push>,
    backlog_bytes: usize,
    next_seq: u64,
    last_timestamp: i64,
    last_metadata: Option<Instant>,
    waiters: Vec<Waiter>,
    rng: fastrand::Rng,
}

impl Service {
    pub(crate) fn new(settings: Settings, shared: Arc<Shared>, job: &str, instance: &str) -> Self {
        Service {
            client: Client::new(&settings),
            encoder: Encoder::new(job, instance),
            backoff: Backoff {
                initial: settings.backoff_initial,
                max: settings.backoff_max,
            },
            settings,
            shared,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            next_seq: 0,
            last_timestamp: i64::MIN,
            last_metadata: None,
            waiters: Vec::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// The thread's loop: until shutdown, or until the publisher is gone.
    pub(crate) fn run(mut self, commands: Receiver<Command>) {
        let interval = self.settings.push_interval;
        let mut next_tick = later(Instant::now(), interval);
        loop {
            let wake = self
                .backlog
                .front()
                .map_or(next_tick, |p| p.not_before.min(next_tick));
            match commands.recv_deadline(wake) {
                Ok(Command::Flush(ack)) => match self.snapshot() {
                    Ok(seq) => self.waiters.push(Waiter { seq, ack }),
                    Err(failure) => {
                        let _ = ack.send(Err(failure));
                    }
                },
                Ok(Command::Shutdown(deadline, ack)) => {
                    let _ = ack.send(self.finish(crate::publish::settle_by(deadline)));
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.finish(Instant::now() + ORPHAN_GRACE);
                    return;
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                let _ = self.snapshot();
                next_tick = later(next_tick, interval);
                if next_tick <= now {
                    // Missed ticks (a long request) are skipped, not caught up on.
                    next_tick = later(now, interval);
                }
            }
            self.send_head(None);
        }
    }

    /// A timestamp in milliseconds, later than every one before it.
    fn timestamp(&mut self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.last_timestamp = now.max(self.last_timestamp.saturating_add(1));
        self.last_timestamp
    }

    /// Takes a snapshot, encodes it and queues it; returns its sequence number.
    fn snapshot(&mut self) -> Result<u64, Failure> {
        let seq = self.next_seq;
        self.next_seq += 1;
        bump(&self.shared.counters.pushes, 1);
        let families = self.shared.series.snapshot_attached();
        let timestamp = self.timestamp();
        let now = Instant::now();
        let metadata = self
            .last_metadata
            .is_none_or(|t| now.duration_since(t) >= METADATA_INTERVAL);
        match self.encoder.encode(&families, timestamp, metadata) {
            Ok(encoded) => {
                if metadata {
                    self.last_metadata = Some(now);
                }
                self.enqueue(Push {
                    seq,
                    body: encoded.body,
                    samples: encoded.samples,
                    created: now,
                    attempts: 0,
                    not_before: now,
                });
                Ok(seq)
            }
            Err(reason) => {
                // Cannot happen below 4 GiB of protobuf; reported like a refusal.
                bump(&self.shared.counters.refused, 1);
                set(&self.shared.counters.last_refusal, reason.clone());
                tracing::error!(reason = %reason, "grafana cloud: a push could not be encoded");
                Err(Failure::Refused(reason))
            }
        }
    }

    /// Queues a push, dropping the oldest while the backlog is over a bound (the newest push
    /// is always kept: it carries the latest totals).
    fn enqueue(&mut self, push: Push) {
        while !self.backlog.is_empty()
            && (self.backlog.len() + 1 > self.settings.max_backlog_pushes
                || self.backlog_bytes + push.body.len() > self.settings.max_backlog_bytes)
        {
            self.drop_front(DropReason::BacklogFull);
        }
        self.backlog_bytes += push.body.len();
        self.backlog.push_back(push);
        self.publish_backlog();
    }

    fn publish_backlog(&self) {
        let c = &self.shared.counters;
        c.backlog_pushes
            .store(self.backlog.len() as u64, Ordering::Relaxed);
        c.backlog_bytes
            .store(self.backlog_bytes as u64, Ordering::Relaxed);
    }

    fn pop_front(&mut self) -> Option<Push> {
        let push = self.backlog.pop_front()?;
        self.backlog_bytes -= push.body.len();
        self.publish_backlog();
        Some(push)
    }

    fn drop_front(&mut self, reason: DropReason) {
        let Some(push) = self.pop_front() else { return };
        bump(reason.counter(&self.shared.counters), 1);
        tracing::warn!(
            push = push.seq,
            attempts = push.attempts,
            reason = reason.why(),
            "grafana cloud: dropped a push"
        );
        self.resolve(push.seq, Err(Failure::Dropped(reason.why().to_owned())));
    }

    /// Answers the flushes waiting for `seq`.
    fn resolve(&mut self, seq: u64, result: Result<(), Failure>) {
        self.waiters.retain(|w| {
            if w.seq == seq {
                // The flush may have given up waiting; then nobody listens.
                let _ = w.ack.send(result.clone());
                false
            } else {
                true
            }
        });
    }

    /// Sends the oldest push if it is due, and decides what follows. `deadline` caps the
    /// request's timeout (during shutdown).
    fn send_head(&mut self, deadline: Option<Instant>) {
        let now = Instant::now();
        let max_age = self.settings.max_push_age;
        while self
            .backlog
            .front()
            .is_some_and(|p| now.duration_since(p.created) >= max_age)
        {
            self.drop_front(DropReason::TooOld);
        }
        let Some(head) = self.backlog.front_mut() else {
            return;
        };
        if head.not_before > now {
            return;
        }
        let timeout = deadline.map_or(self.settings.request_timeout, |d| {
            d.saturating_duration_since(now)
                .min(self.settings.request_timeout)
        });
        if timeout.is_zero() {
            return;
        }
        head.attempts += 1;
        let (seq, attempts, created, samples) =
            (head.seq, head.attempts, head.created, head.samples);
        let shared = Arc::clone(&self.shared);
        let c = &shared.counters;
        bump(&c.requests, 1);
        if attempts > 1 {
            bump(&c.retried, 1);
        }
        bump(&c.bytes_sent, head.body.len() as u64);
        let answer = self.client.push(&head.body, timeout);
        let outcome = match &answer {
            Ok(a) => Outcome::Answer {
                status: a.status,
                retry_after: a.retry_after.as_deref(),
                body: &a.body,
            },
            Err(e) => Outcome::NoAnswer(e),
        };
        match decide(outcome, SystemTime::now()) {
            Decision::Done => {
                self.pop_front();
                bump(&c.sent, 1);
                bump(&c.samples_sent, samples as u64);
                tracing::trace!(push = seq, samples, "grafana cloud: push stored");
                self.resolve(seq, Ok(()));
            }
            Decision::Refuse { status, reason } => {
                let reason = scrub(&reason, &self.settings.secrets);
                self.pop_front();
                bump(&c.refused, 1);
                set(&c.last_refusal, reason.clone());
                tracing::warn!(
                    push = seq,
                    status,
                    reason = %reason,
                    "grafana cloud refused a push; it is not retried"
                );
                self.resolve(seq, Err(Failure::Refused(reason)));
            }
            Decision::Retry {
                reason,
                at_least,
                throttled,
            } => {
                let reason = scrub(&reason, &self.settings.secrets);
                bump(&c.failed_requests, 1);
                if throttled {
                    bump(&c.throttled, 1);
                }
                set(&c.last_error, reason.clone());
                if attempts == 1 {
                    tracing::warn!(push = seq, reason = %reason, "grafana cloud push failed; retrying");
                } else {
                    tracing::debug!(push = seq, attempts, reason = %reason, "grafana cloud push failed again");
                }
                if attempts >= self.settings.max_attempts {
                    self.drop_front(DropReason::RetryLimit);
                    return;
                }
                let wait = self.backoff.wait(attempts - 1, self.rng.f64(), at_least);
                let not_before = Instant::now().checked_add(wait);
                let limit = created.checked_add(max_age);
                let Some(not_before) = not_before.filter(|t| limit.is_none_or(|l| *t < l)) else {
                    self.drop_front(DropReason::NextRetryTooLate);
                    return;
                };
                if let Some(head) = self.backlog.front_mut() {
                    head.not_before = not_before;
                }
            }
        }
    }

    /// Pushes a last snapshot and delivers what it can by `deadline`; what is left is dropped
    /// and counted. The result is that of the last snapshot.
    fn finish(&mut self, deadline: Instant) -> Result<(), Failure> {
        let (ack, done) = crossbeam_channel::bounded(1);
        match self.snapshot() {
            Ok(seq) => self.waiters.push(Waiter { seq, ack }),
            Err(failure) => {
                let _ = ack.send(Err(failure));
            }
        }
        while let Some(head) = self.backlog.front() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if head.not_before > now {
                if head.not_before >= deadline {
                    break;
                }
                std::thread::sleep(head.not_before - now);
                continue;
            }
            self.send_head(Some(deadline));
        }
        while !self.backlog.is_empty() {
            self.drop_front(DropReason::Shutdown);
        }
        done.try_recv()
            .unwrap_or_else(|_| Err(Failure::Dropped(DropReason::Shutdown.why().to_owned())))
    }
}
