//! The sender: a bounded buffer of encoded documents and the thread that ships them in bulk
//! requests, with retries, backoff and per-host health.
//!
//! - The publisher's delivery thread encodes each record and [`push`](Shared::push)es it. The
//!   buffer is bounded in documents and bytes; past either bound the oldest waiting documents
//!   are dropped and counted. Pushing never waits on the network.
//! - The sender thread takes a batch when it is full (documents or bytes), when its first
//!   document has waited the flush interval, when a flush asks for it, or at shutdown. One
//!   request is in flight at a time.
//! - Failures follow [`retry::decide`]: whole-request retries and per-item retries wait an
//!   exponential backoff with full jitter (a random time between zero and
//!   `min(max, initial × 2ⁿ⁻¹)`); a host that failed is skipped while others are up.
//! - Every document carries a sequence number, so a flush waits exactly for the documents
//!   pushed before it, however many arrive meanwhile.
//! - A document leaves the buffer or the batch being sent in the same critical section (under
//!   the state lock) as its outcome is counted, and [`StatsHandle::stats`] reads under that
//!   lock, so no snapshot counts a document twice (say as `dropped` and `in_flight`) or not
//!   at all: `accepted = sent + refused + dropped + buffered + in_flight` holds in every one.
//!
//! [`StatsHandle::stats`]: super::StatsHandle::stats

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::config::{Host, Settings};
use super::encoder::index_and_id;
use super::health::HostHealth;
use super::request::{bulk_body, Client, Response};
use super::retry::{self, Decision, Items};
use super::stats::{Counters, TemplateStatus};
use super::template;

/// One encoded document: its action and source lines.
#[derive(Debug)]
pub(crate) struct Doc {
    pub(crate) bytes: Vec<u8>,
    pub(crate) seq: u64,
    pub(crate) retries: u32,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    batch_docs: usize,
    batch_bytes: usize,
    buffer_docs: usize,
    buffer_bytes: usize,
    flush_interval: Duration,
}

#[derive(Debug, Default)]
struct State {
    buffer: VecDeque<Doc>,
    bytes: usize,
    next_seq: u64,
    /// When the oldest waiting document arrived (approximately, after a batch is taken).
    oldest_since: Option<Instant>,
    /// Documents with a lower sequence number must be sent without waiting for the interval.
    flush_upto: u64,
    /// The lowest sequence number of the batch being sent, and its size.
    in_flight: Option<u64>,
    in_flight_docs: usize,
    /// Set by shutdown: send everything, give up what is left at this instant.
    closing: Option<Instant>,
    /// The sender thread has ended.
    finished: bool,
    last_drop_warning: Option<Instant>,
}

impl State {
    /// Whether every document pushed before `target` has an outcome.
    fn resolved(&self, target: u64) -> bool {
        self.in_flight.is_none_or(|seq| seq >= target)
            && self.buffer.front().is_none_or(|d| d.seq >= target)
    }

    fn pending(&self) -> usize {
        self.buffer.len() + self.in_flight_docs
    }
}

/// What the publisher and the sender thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the sender: a batch may be ready, a flush or shutdown was asked.
    work: Condvar,
    /// Wakes flush and shutdown callers: documents got an outcome, or the sender ended.
    progress: Condvar,
    limits: Limits,
    pub(crate) counters: Counters,
}

/// Why a document could not be accepted.
#[derive(Debug)]
pub(crate) struct Closed;

impl Shared {
    pub(crate) fn new(settings: &Settings) -> Self {
        Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
            limits: Limits {
                batch_docs: settings.batch_max_docs,
                batch_bytes: settings.batch_max_bytes,
                buffer_docs: settings.buffer_max_docs,
                buffer_bytes: settings.buffer_max_bytes,
                flush_interval: settings.flush_interval,
            },
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Documents waiting, and in the batch being sent.
    pub(crate) fn occupancy(&self) -> (usize, usize) {
        let st = self.lock();
        (st.buffer.len(), st.in_flight_docs)
    }

    /// Runs `read` with the documents waiting and in flight, under the state lock: outcome
    /// counters change under the same lock as the documents leave the buffer or the batch,
    /// so what `read` loads from [`Counters`] is consistent with those two figures.
    pub(crate) fn with_occupancy<T>(&self, read: impl FnOnce(usize, usize) -> T) -> T {
        let st = self.lock();
        read(st.buffer.len(), st.in_flight_docs)
    }

    /// Buffers one encoded document, dropping the oldest waiting ones past the bounds.
    pub(crate) fn push(&self, bytes: Vec<u8>) -> Result<(), Closed> {
        let len = bytes.len();
        let limits = self.limits;
        let mut st = self.lock();
        if st.closing.is_some() {
            return Err(Closed);
        }
        let mut dropped = 0usize;
        while !st.buffer.is_empty()
            && (st.buffer.len() >= limits.buffer_docs || st.bytes + len > limits.buffer_bytes)
        {
            if let Some(old) = st.buffer.pop_front() {
                st.bytes -= old.bytes.len();
                dropped += 1;
            }
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let was_empty = st.buffer.is_empty();
        st.buffer.push_back(Doc {
            bytes,
            seq,
            retries: 0,
        });
        st.bytes += len;
        // Counted under the lock, so a snapshot never shows `accepted` trailing `buffered`,
        // nor the dropped documents gone from `buffered` but not yet in `dropped`.
        Counters::add(&self.counters.accepted, 1);
        Counters::add(&self.counters.dropped_buffer_full, dropped);
        let wake = if was_empty {
            st.oldest_since = Some(Instant::now());
            true
        } else {
            st.buffer.len() == limits.batch_docs
                || (st.bytes >= limits.batch_bytes && st.bytes - len < limits.batch_bytes)
        };
        let warn = dropped > 0
            && st
                .last_drop_warning
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if warn {
            st.last_drop_warning = Some(Instant::now());
        }
        drop(st);
        if dropped > 0 {
            self.progress.notify_all();
            if warn {
                tracing::warn!(
                    publisher = "elasticsearch",
                    dropped,
                    "buffer full ({} documents or {} bytes): dropped the oldest documents; \
                     Elasticsearch is slower than the pipeline or unreachable",
                    limits.buffer_docs,
                    limits.buffer_bytes
                );
            }
        }
        if wake {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Waits until every document pushed before this call has an outcome, or `deadline`.
    /// On timeout returns how many documents are still pending.
    pub(crate) fn flush(&self, deadline: Instant) -> Result<(), usize> {
        let mut st = self.lock();
        let target = st.next_seq;
        if st.flush_upto < target {
            st.flush_upto = target;
            self.work.notify_one();
        }
        loop {
            if st.resolved(target) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline || st.finished {
                return Err(st.pending());
            }
            st = self
                .progress
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Asks the sender to send everything and end, giving up what is left shortly before
    /// `deadline` ([`settle_by`](crate::publish::settle_by)), so that a caller waiting until
    /// `deadline` reads final figures. Returns whether this call was the first to ask.
    pub(crate) fn close(&self, deadline: Instant) -> bool {
        let mut st = self.lock();
        let first = st.closing.is_none();
        if first {
            st.closing = Some(crate::publish::settle_by(deadline));
        }
        drop(st);
        self.work.notify_all();
        first
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.lock().closing.is_some()
    }

    /// Waits for the sender thread to end, until `deadline`; on timeout returns how many
    /// documents are still pending.
    pub(crate) fn wait_finished(&self, deadline: Instant) -> Result<(), usize> {
        let mut st = self.lock();
        loop {
            if st.finished {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(st.pending());
            }
            st = self
                .progress
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Blocks until a batch is due, and takes it; `None` when closing and nothing is left.
    fn next_batch(&self) -> Option<Vec<Doc>> {
        let limits = self.limits;
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            if let Some(deadline) = st.closing {
                if st.buffer.is_empty() {
                    return None;
                }
                if now >= deadline {
                    let left = st.buffer.len();
                    st.buffer.clear();
                    st.bytes = 0;
                    Counters::add(&self.counters.dropped_shutdown, left);
                    warn_shutdown_drop(left);
                    return None;
                }
                break;
            }
            let Some(front) = st.buffer.front() else {
                st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let due = st.oldest_since.map_or(now, |t| t + limits.flush_interval);
            if st.buffer.len() >= limits.batch_docs
                || st.bytes >= limits.batch_bytes
                || front.seq < st.flush_upto
                || due <= now
            {
                break;
            }
            st = self
                .work
                .wait_timeout(st, due - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut batch = Vec::with_capacity(st.buffer.len().min(limits.batch_docs));
        let mut taken = 0usize;
        while let Some(front) = st.buffer.front() {
            let len = front.bytes.len();
            if batch.len() == limits.batch_docs
                || (!batch.is_empty() && taken + len > limits.batch_bytes)
            {
                break;
            }
            taken += len;
            if let Some(doc) = st.buffer.pop_front() {
                batch.push(doc);
            }
        }
        st.bytes -= taken;
        st.in_flight = batch.first().map(|d| d.seq);
        st.in_flight_docs = batch.len();
        st.oldest_since = (!st.buffer.is_empty()).then(Instant::now);
        Some(batch)
    }

    /// The batch being sent has an outcome for each document.
    fn batch_done(&self) {
        let mut st = self.lock();
        st.in_flight = None;
        st.in_flight_docs = 0;
        drop(st);
        self.progress.notify_all();
    }

    /// Some documents of the batch being sent got their outcome: `count` adds them to the
    /// counters, and `left` documents are still in flight. Both happen under the state lock,
    /// so no snapshot sees a document counted and still in flight, or neither.
    fn settle(&self, left: usize, count: impl FnOnce(&Counters)) {
        let mut st = self.lock();
        count(&self.counters);
        st.in_flight_docs = left;
    }

    fn closing_deadline(&self) -> Option<Instant> {
        self.lock().closing
    }

    /// Sleeps `wait`, cut short at the shutdown deadline.
    fn sleep(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            let end = st.closing.map_or(until, |d| d.min(until));
            if now >= end {
                return;
            }
            st = self
                .work
                .wait_timeout(st, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn finish(&self) {
        let mut st = self.lock();
        let left = st.buffer.len();
        if left > 0 {
            st.buffer.clear();
            st.bytes = 0;
            Counters::add(&self.counters.dropped_shutdown, left);
            warn_shutdown_drop(left);
        }
        st.finished = true;
        drop(st);
        self.progress.notify_all();
    }
}

fn warn_shutdown_drop(docs: usize) {
    tracing::warn!(
        publisher = "elasticsearch",
        dropped = docs,
        "shutdown deadline passed before these documents could be sent; give shutdown a \
         longer deadline or check that Elasticsearch is reachable"
    );
}

/// Ends the sender's part however its thread ends: normally, waiters are woken; after a panic
/// (a bug), the publisher is closed too, so records are refused instead of piling up and
/// flushes return at once instead of waiting for their deadline.
struct FinishGuard(Arc<Shared>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                publisher = "elasticsearch",
                "the sender thread panicked; the publisher is closed"
            );
            self.0.close(Instant::now());
            // The batch being sent is given up with the rest: count it, so that the figures
            // still add up to `accepted`.
            let mut st = self.0.lock();
            Counters::add(&self.0.counters.dropped_shutdown, st.in_flight_docs);
            st.in_flight = None;
            st.in_flight_docs = 0;
        }
        self.0.finish();
    }
}

/// The sender thread's own state.
pub(crate) struct Sender {
    shared: Arc<Shared>,
    client: Client,
    hosts: Vec<Host>,
    health: HostHealth,
    prefix: String,
    gzip: bool,
    retry_limit: u32,
    request_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    install_template: bool,
    template_done: bool,
    body: Vec<u8>,
    warned_product: Vec<bool>,
}

impl Sender {
    pub(crate) fn new(shared: Arc<Shared>, client: Client, settings: &Settings) -> Self {
        if !settings.install_template {
            Counters::set(&shared.counters.template, TemplateStatus::Disabled);
        }
        Sender {
            shared,
            client,
            health: HostHealth::new(settings.hosts.len(), settings.host_cooldown),
            warned_product: vec![false; settings.hosts.len()],
            hosts: settings.hosts.clone(),
            prefix: settings.index_prefix.clone(),
            gzip: settings.gzip,
            retry_limit: settings.retry_limit,
            request_timeout: settings.request_timeout,
            backoff_initial: settings.backoff_initial,
            backoff_max: settings.backoff_max,
            install_template: settings.install_template,
            template_done: !settings.install_template,
            body: Vec::new(),
        }
    }

    /// The thread's body: batches until shutdown.
    pub(crate) fn run(mut self) {
        let _guard = FinishGuard(Arc::clone(&self.shared));
        while let Some(batch) = self.shared.next_batch() {
            self.deliver(batch);
            self.shared.batch_done();
        }
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Sends one batch until every document has an outcome.
    ///
    /// Each outcome is counted through [`Shared::settle`], together with the new number of
    /// documents in flight. Once shutdown's deadline has passed, what is left of the batch is
    /// given up (counted in `dropped_shutdown`) before any further call: each HTTP call is cut
    /// short at the deadline, except one already under way when shutdown was asked, which
    /// ends within the request timeout.
    fn deliver(&mut self, mut docs: Vec<Doc>) {
        let mut failures = 0u32;
        while !docs.is_empty() {
            let now = Instant::now();
            if self.shared.closing_deadline().is_some_and(|d| now >= d) {
                let left = docs.len();
                self.shared
                    .settle(0, |c| Counters::add(&c.dropped_shutdown, left));
                warn_shutdown_drop(left);
                return;
            }
            let host = self.health.pick(now);
            let decision = match self.ensure_template(host) {
                Err(reason) => Decision::RetryRequest {
                    reason,
                    host_failed: true,
                },
                Ok(()) => self.send(host, &docs),
            };
            // Outcomes of this attempt, counted below with the new in-flight figure.
            let (mut stored, mut conflicts, mut refused) = (0usize, 0usize, 0usize);
            match decision {
                Decision::Done(items) => {
                    self.health.success(host);
                    self.report_refusals(&docs, &items);
                    self.shared.settle(0, |c| {
                        Counters::add(&c.sent, items.stored);
                        Counters::add(&c.conflicts, items.conflicts);
                        Counters::add(&c.refused, items.refused.len());
                    });
                    return;
                }
                Decision::RetryItems(items) => {
                    self.health.success(host);
                    self.report_refusals(&docs, &items);
                    (stored, conflicts, refused) =
                        (items.stored, items.conflicts, items.refused.len());
                    if let Some((_, reason)) = items.retry.first() {
                        Counters::set(&self.counters().last_error, Some(reason.clone()));
                    }
                    let mut keep = items.retry.iter().map(|&(i, _)| i).peekable();
                    let mut i = 0;
                    docs.retain(|_| {
                        let retained = keep.peek() == Some(&i);
                        if retained {
                            keep.next();
                        }
                        i += 1;
                        retained
                    });
                }
                Decision::RetryRequest {
                    reason,
                    host_failed,
                } => {
                    if host_failed {
                        self.health.failure(host, Instant::now());
                    }
                    Counters::add(&self.counters().failed_requests, 1);
                    let reason = format!("{}: {reason}", self.hosts[host].base);
                    tracing::warn!(
                        publisher = "elasticsearch",
                        documents = docs.len(),
                        "bulk request failed, will retry: {reason}"
                    );
                    Counters::set(&self.counters().last_error, Some(reason));
                }
                Decision::Refused { status, reason } => {
                    let (index, id) = index_and_id(&docs[0].bytes);
                    let text = format!(
                        "{}: whole request of {} documents refused (first {index}/{id}): {reason}",
                        self.hosts[host].base,
                        docs.len()
                    );
                    tracing::error!(
                        publisher = "elasticsearch",
                        status,
                        documents = docs.len(),
                        "{text}"
                    );
                    let n = docs.len();
                    self.shared.settle(0, |c| Counters::add(&c.refused, n));
                    Counters::set(&self.counters().last_refusal, Some(text));
                    return;
                }
            }
            let limit = self.retry_limit;
            let before = docs.len();
            docs.retain_mut(|d| {
                d.retries = d.retries.saturating_add(1);
                d.retries <= limit
            });
            let given_up = before - docs.len();
            self.shared.settle(docs.len(), |c| {
                Counters::add(&c.sent, stored);
                Counters::add(&c.conflicts, conflicts);
                Counters::add(&c.refused, refused);
                Counters::add(&c.dropped_retry_limit, given_up);
            });
            if given_up > 0 {
                tracing::error!(
                    publisher = "elasticsearch",
                    dropped = given_up,
                    "documents dropped after {limit} retries; raise retry_limit or check the \
                     cluster"
                );
            }
            if docs.is_empty() {
                return;
            }
            Counters::add(&self.counters().retried, docs.len());
            failures = failures.saturating_add(1);
            let other_host_up =
                self.hosts.len() > 1 && self.health.open_hosts(Instant::now()) < self.hosts.len();
            if !other_host_up {
                self.shared.sleep(self.backoff(failures));
            }
        }
    }

    /// The timeout of the next HTTP call: the request timeout, cut short at shutdown's
    /// deadline (taken at each call, so a shutdown asked during the template's installation
    /// shortens the calls that follow it).
    fn call_timeout(&self) -> Duration {
        let Some(deadline) = self.shared.closing_deadline() else {
            return self.request_timeout;
        };
        deadline.saturating_duration_since(Instant::now()).clamp(
            Duration::from_millis(1),
            self.request_timeout.max(Duration::from_millis(1)),
        )
    }

    /// A random wait between zero and `min(max, initial × 2^(failures−1))`.
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        let cap = self
            .backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    fn send(&mut self, host: usize, docs: &[Doc]) -> Decision {
        let raw = bulk_body(docs.iter().map(|d| &d.bytes[..]), self.gzip, &mut self.body);
        let timeout = self.call_timeout();
        Counters::add(&self.counters().requests, 1);
        Counters::add(&self.counters().bytes_sent, self.body.len());
        tracing::trace!(
            publisher = "elasticsearch",
            documents = docs.len(),
            bytes = raw,
            "bulk request"
        );
        match self
            .client
            .bulk(&self.hosts[host], &self.body, self.gzip, timeout)
        {
            Err(e) => Decision::RetryRequest {
                reason: e.message,
                host_failed: true,
            },
            Ok(response) => {
                self.check_product(host, &response);
                retry::decide(response.status, &response.body, docs.len())
            }
        }
    }

    /// Warns once per host that answers without `X-Elastic-Product: Elasticsearch`.
    fn check_product(&mut self, host: usize, response: &Response) {
        if (200..300).contains(&response.status)
            && !response.elastic_product
            && !self.warned_product[host]
        {
            self.warned_product[host] = true;
            tracing::warn!(
                publisher = "elasticsearch",
                "{} answered without the X-Elastic-Product: Elasticsearch header (OpenSearch, \
                 an older Elasticsearch or a proxy?); documents are sent all the same",
                self.hosts[host].base
            );
        }
    }

    /// Reports the documents of a bulk response refused for good (they are counted by the
    /// caller, through [`Shared::settle`]).
    fn report_refusals(&self, docs: &[Doc], items: &Items) {
        for (n, (pos, reason)) in items.refused.iter().enumerate() {
            let (index, id) = docs
                .get(*pos)
                .map(|d| index_and_id(&d.bytes))
                .unwrap_or_default();
            let text = format!("{index}/{id}: {reason}");
            // One line per refused document for the first few of a batch, then a summary.
            if n < 5 {
                tracing::error!(publisher = "elasticsearch", "document refused: {text}");
            }
            if n == 0 {
                Counters::set(&self.counters().last_refusal, Some(text));
            }
        }
        if items.refused.len() > 5 {
            tracing::error!(
                publisher = "elasticsearch",
                refused = items.refused.len(),
                "more documents of this batch refused"
            );
        }
    }

    /// Installs the index template once. `Err` carries a retryable reason; a refusal is
    /// recorded and indexing goes on.
    fn ensure_template(&mut self, host: usize) -> Result<(), String> {
        if self.template_done || !self.install_template {
            return Ok(());
        }
        let h = &self.hosts[host];
        let path = template::template_path(&self.prefix);
        let retry = |what: &str, reason: String| Err(format!("{what} index template: {reason}"));
        let existing = match self.client.get(h, &path, self.call_timeout()) {
            Err(e) => return retry("reading the", e.message),
            Ok(r) => match template::existing(r.status, &r.body) {
                template::Existing::Unknown if retry::retryable_status(r.status) => {
                    return retry(
                        "reading the",
                        format!("HTTP {}: {}", r.status, retry::response_reason(&r.body)),
                    )
                }
                template::Existing::Unknown => {
                    self.template_failed(format!(
                        "reading it was refused with HTTP {}: {}",
                        r.status,
                        retry::response_reason(&r.body)
                    ));
                    return Ok(());
                }
                other => other,
            },
        };
        if existing == template::Existing::Current {
            self.template_done = true;
            Counters::set(&self.counters().template, TemplateStatus::AlreadyPresent);
            return Ok(());
        }
        let body = template::template_body(&self.prefix).to_string();
        match self
            .client
            .put_json(h, &path, body.as_bytes(), self.call_timeout())
        {
            Err(e) => retry("installing the", e.message),
            Ok(r) if (200..300).contains(&r.status) => {
                self.template_done = true;
                Counters::set(&self.counters().template, TemplateStatus::Installed);
                tracing::info!(
                    publisher = "elasticsearch",
                    "installed index template {:?} for {}-*",
                    template::template_name(&self.prefix),
                    self.prefix
                );
                Ok(())
            }
            Ok(r) if retry::retryable_status(r.status) => retry(
                "installing the",
                format!("HTTP {}: {}", r.status, retry::response_reason(&r.body)),
            ),
            Ok(r) => {
                self.template_failed(format!(
                    "HTTP {}: {}",
                    r.status,
                    retry::response_reason(&r.body)
                ));
                Ok(())
            }
        }
    }

    fn template_failed(&mut self, reason: String) {
        self.template_done = true;
        tracing::error!(
            publisher = "elasticsearch",
            "index template for {}-* not installed ({reason}); documents are sent all the \
             same with the cluster's default mappings. Give the user the \
             manage_index_templates privilege, or install it yourself and turn \
             install_template off",
            self.prefix
        );
        Counters::set(&self.counters().template, TemplateStatus::Failed(reason));
    }
}

impl Shared {
    /// For tests: how many documents are buffered now.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.lock().buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elasticsearch::config::ElasticsearchBuilder;
    use std::sync::atomic::Ordering;

    fn settings(f: impl FnOnce(ElasticsearchBuilder) -> ElasticsearchBuilder) -> Settings {
        let b = f(ElasticsearchBuilder::new(["localhost:9"]).unwrap());
        b.settings_for_test()
    }

    #[test]
    fn the_buffer_drops_the_oldest_past_its_bounds() {
        let s = settings(|b| {
            b.batch_max_docs(2)
                .buffer_max_docs(3)
                .batch_max_bytes(1024)
                .buffer_max_bytes(4096)
        });
        let shared = Shared::new(&s);
        for i in 0..5u8 {
            shared.push(vec![i; 10]).unwrap();
        }
        assert_eq!(shared.buffered(), 3);
        assert_eq!(
            shared.counters.dropped_buffer_full.load(Ordering::Relaxed),
            2
        );
        let st = shared.lock();
        assert_eq!(st.buffer.front().unwrap().bytes[0], 2);
        drop(st);
        // Bytes: a 2000-byte document leaves room for two 1000-byte ones at most.
        shared.push(vec![9; 2000]).unwrap();
        shared.push(vec![8; 2000]).unwrap();
        let st = shared.lock();
        assert!(st.bytes <= 4096, "{}", st.bytes);
        assert_eq!(st.buffer.back().unwrap().bytes[0], 8);
    }

    #[test]
    fn batches_close_on_count_bytes_interval_and_flush() {
        let s = settings(|b| {
            b.batch_max_docs(3)
                .batch_max_bytes(1024)
                .flush_interval(Duration::from_secs(3600))
        });
        let shared = Shared::new(&s);
        for _ in 0..4 {
            shared.push(vec![b'x'; 10]).unwrap();
        }
        assert_eq!(shared.next_batch().unwrap().len(), 3);
        shared.batch_done();
        // One left, interval far away: only a flush makes it due.
        let flusher = {
            let shared = Arc::new(shared);
            let s2 = Arc::clone(&shared);
            let t = std::thread::spawn(move || s2.flush(Instant::now() + Duration::from_secs(10)));
            let batch = shared.next_batch().unwrap();
            assert_eq!(batch.len(), 1);
            shared.batch_done();
            t
        };
        assert!(flusher.join().unwrap().is_ok());
        // Bytes: two 600-byte documents exceed a 1024-byte batch: one per batch.
        let shared = Shared::new(&s);
        shared.push(vec![b'x'; 600]).unwrap();
        shared.push(vec![b'x'; 600]).unwrap();
        assert_eq!(shared.next_batch().unwrap().len(), 1);
    }

    #[test]
    fn flush_times_out_with_the_pending_count_and_close_refuses_more() {
        let s = settings(|b| b);
        let shared = Shared::new(&s);
        shared.push(vec![1]).unwrap();
        assert_eq!(
            shared.flush(Instant::now() + Duration::from_millis(20)),
            Err(1)
        );
        assert!(shared.close(Instant::now()));
        assert!(!shared.close(Instant::now()));
        assert!(shared.push(vec![2]).is_err());
        // The deadline has passed: the sender gives everything up and ends.
        assert!(shared.next_batch().is_none());
        shared.finish();
        assert_eq!(shared.counters.dropped_shutdown.load(Ordering::Relaxed), 1);
        assert!(shared.wait_finished(Instant::now()).is_ok());
    }

    #[test]
    fn backoff_is_full_jitter_under_a_cap() {
        let s = settings(|b| b.backoff(Duration::from_millis(100), Duration::from_millis(800)));
        let sender = Sender::new(Arc::new(Shared::new(&s)), Client::new(&s).unwrap(), &s);
        for failures in 1..30 {
            let cap = Duration::from_millis(100 * (1 << (failures - 1).min(3)));
            for _ in 0..50 {
                assert!(sender.backoff(failures) <= cap);
            }
        }
        let waits: Vec<_> = (0..200).map(|_| sender.backoff(4)).collect();
        assert!(waits.iter().any(|w| *w < Duration::from_millis(200)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(600)));
    }
}
