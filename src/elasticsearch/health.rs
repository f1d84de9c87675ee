//! Per-host health: round-robin over the hosts, skipping for a while one that failed.
//!
//! A small circuit breaker in the manner of Vector's `health.rs`: a failure (connection
//! error, timeout, 502, 503, 504) opens a host's breaker for the cooldown, doubled for each
//! further consecutive failure up to 8 times; once that time has passed the host is tried
//! again ("half open") and a success closes it. A 429 is the cluster's load, not the host's
//! fault, and does not count. When every host is open the one due back first is used anyway:
//! the sender's backoff already paces the retries.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
}

/// The health of every host of one publisher; owned by its sender thread.
#[derive(Debug)]
pub(crate) struct HostHealth {
    hosts: Vec<State>,
    next: usize,
    cooldown: Duration,
}

impl HostHealth {
    pub(crate) fn new(hosts: usize, cooldown: Duration) -> Self {
        HostHealth {
            hosts: vec![State::default(); hosts.max(1)],
            next: 0,
            cooldown,
        }
    }

    /// The host for the next request: the next in turn whose breaker is closed or due to be
    /// tried again; if none is, the one due back first.
    pub(crate) fn pick(&mut self, now: Instant) -> usize {
        let n = self.hosts.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            if self.hosts[i].open_until.is_none_or(|until| until <= now) {
                self.next = (i + 1) % n;
                return i;
            }
        }
        let soonest = (0..n)
            .min_by_key(|&i| self.hosts[i].open_until)
            .unwrap_or(0);
        self.next = (soonest + 1) % n;
        soonest
    }

    /// The host answered: close its breaker.
    pub(crate) fn success(&mut self, host: usize) {
        if let Some(state) = self.hosts.get_mut(host) {
            *state = State::default();
        }
    }

    /// The host failed: open its breaker for the cooldown, doubled per consecutive failure
    /// (at most 8 times the cooldown).
    pub(crate) fn failure(&mut self, host: usize, now: Instant) {
        let cooldown = self.cooldown;
        if let Some(state) = self.hosts.get_mut(host) {
            state.failures = state.failures.saturating_add(1);
            let factor = 1u32 << (state.failures - 1).min(3);
            state.open_until = Some(now + cooldown.saturating_mul(factor));
        }
    }

    /// Hosts whose breaker is open now.
    pub(crate) fn open_hosts(&self, now: Instant) -> usize {
        self.hosts
            .iter()
            .filter(|s| s.open_until.is_some_and(|until| until > now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    #[test]
    fn round_robin_over_healthy_hosts() {
        let mut h = HostHealth::new(3, COOL);
        let now = Instant::now();
        let picks: Vec<_> = (0..6).map(|_| h.pick(now)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_failed_host_is_skipped_until_its_cooldown_passes() {
        let mut h = HostHealth::new(3, COOL);
        let t0 = Instant::now();
        assert_eq!(h.pick(t0), 0);
        h.failure(0, t0);
        assert_eq!(h.open_hosts(t0), 1);
        let picks: Vec<_> = (0..4).map(|_| h.pick(t0)).collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        // Due again: tried (half open), and a success closes it.
        let later = t0 + COOL;
        assert_eq!(h.pick(later), 0);
        h.success(0);
        assert_eq!(h.open_hosts(later), 0);
    }

    #[test]
    fn repeated_failures_lengthen_the_cooldown_up_to_8_times() {
        let mut h = HostHealth::new(2, COOL);
        let t0 = Instant::now();
        for _ in 0..10 {
            h.failure(0, t0);
        }
        assert_eq!(h.open_hosts(t0 + COOL * 7), 1);
        assert_eq!(h.open_hosts(t0 + COOL * 8), 0);
        h.failure(1, t0);
        h.success(1);
        h.failure(1, t0);
        // One failure after a success: back to a single cooldown.
        assert_eq!(h.open_hosts(t0 + COOL), 1);
    }

    #[test]
    fn when_all_are_open_the_one_due_first_is_used() {
        let mut h = HostHealth::new(3, COOL);
        let t0 = Instant::now();
        h.failure(0, t0 + Duration::from_secs(2));
        h.failure(1, t0);
        h.failure(2, t0 + Duration::from_secs(1));
        assert_eq!(h.pick(t0), 1);
        let mut single = HostHealth::new(1, COOL);
        single.failure(0, t0);
        assert_eq!(single.pick(t0), 0);
    }
}
