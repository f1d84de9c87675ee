//! The Elasticsearch publisher against a real cluster, when one is given.
//!
//! ```text
//! ELASTICSEARCH_URL=https://localhost:9200 ELASTICSEARCH_API_KEY=... \
//!   ELASTICSEARCH_CA_CERT=/path/to/http_ca.crt cargo test --test elasticsearch_live -- --nocapture
//! ```
//! Credentials: `ELASTICSEARCH_API_KEY`, or `ELASTICSEARCH_USERNAME` and
//! `ELASTICSEARCH_PASSWORD`. Without `ELASTICSEARCH_URL` the test is skipped with a message
//! (no cluster can be installed on the project's machines: no registry carries one).
//!
//! It writes to a fresh prefix `pipeline-telemetry-live-<pid>-<time>`, checks the template,
//! the document count and shape through the search API, and deletes its indices and
//! template afterwards.
#![cfg(feature = "elasticsearch")]

#[path = "support/live_round_trip.rs"]
mod live_round_trip;

#[test]
fn live_cluster_round_trip() {
    let Some(target) = live_round_trip::Target::from_env() else {
        eprintln!(
            "SKIPPED live_cluster_round_trip: ELASTICSEARCH_URL is not set. Set it (and \
             ELASTICSEARCH_API_KEY, or ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD; \
             ELASTICSEARCH_CA_CERT for a private CA) to run against a real cluster."
        );
        return;
    };
    live_round_trip::round_trip(&target);
}
