//! The live round trip: the publisher against a cluster, read back through the search APIs.
//! Run by `tests/elasticsearch_live.rs` against a real cluster when `ELASTICSEARCH_URL` is
//! set, and by `tests/elasticsearch.rs` against the fake server, so this code is exercised on
//! every run.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pipeline_telemetry::elasticsearch::{ElasticsearchPublisher, TemplateStatus};
use pipeline_telemetry::Telemetry;
use serde_json::Value;

#[path = "basic_auth.rs"]
mod basic_auth;
pub use basic_auth::basic;

struct Cluster {
    url: String,
    agent: ureq::Agent,
    auth: Option<String>,
}

impl Cluster {
    fn request(&self, method: &str, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(auth) = &self.auth {
            builder = builder.header("Authorization", auth);
        }
        let request = builder.body(()).expect("a request");
        let mut response = self.agent.run(request).expect("the cluster answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// How to reach the cluster.
pub struct Target {
    pub url: String,
    /// `ELASTICSEARCH_API_KEY`.
    pub api_key: Option<String>,
    /// `ELASTICSEARCH_USERNAME` and `ELASTICSEARCH_PASSWORD`.
    pub basic: Option<(String, String)>,
    /// `ELASTICSEARCH_CA_CERT`: a PEM file.
    pub ca_cert: Option<String>,
}

impl Target {
    /// From the environment; `None` without `ELASTICSEARCH_URL`.
    pub fn from_env() -> Option<Target> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Target {
            url: var("ELASTICSEARCH_URL")?,
            api_key: var("ELASTICSEARCH_API_KEY"),
            basic: var("ELASTICSEARCH_USERNAME").zip(var("ELASTICSEARCH_PASSWORD")),
            ca_cert: var("ELASTICSEARCH_CA_CERT"),
        })
    }
}

/// Publishes 500 events and one network operation to a fresh prefix, reads them back through
/// the search APIs, and deletes the indices and template it made.
pub fn round_trip(target: &Target) {
    let url = target.url.clone();
    let mut builder = ElasticsearchPublisher::builder([url.as_str()]).expect("a usable URL");
    let mut auth = None;
    if let Some(key) = &target.api_key {
        builder = builder.api_key(key.as_str()).unwrap();
        auth = Some(format!("ApiKey {key}"));
    } else if let Some((user, password)) = &target.basic {
        builder = builder.basic_auth(user, password.as_str()).unwrap();
        auth = Some(basic(user, password));
    }
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = &target.ca_cert {
        builder = builder.ca_certificate_file(path).unwrap();
        let pem = std::fs::read(path).unwrap();
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("pipeline-telemetry-live-{}-{nanos}", std::process::id());
    let publisher = builder
        .index_prefix(&prefix)
        .unwrap()
        .flush_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let stats = publisher.stats_handle();
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(publisher)).unwrap();
    let n = 500;
    for i in 0..n {
        let id = format!("live-{i}");
        telemetry.events.start_event("live", &id, None).unwrap();
        let error = (i % 50 == 0).then_some("injected failure");
        telemetry.events.end_event(&id, error).unwrap();
    }
    telemetry
        .network
        .start_operation("live-net", "example.com", 443, Some("get"))
        .unwrap();
    telemetry
        .network
        .end_operation("live-net", 100, 2000, None)
        .unwrap();
    telemetry.flush(Duration::from_secs(60)).unwrap();
    let s = stats.stats();
    assert_eq!(
        (s.sent, s.refused, s.dropped),
        (n as u64 + 1, 0, 0),
        "{s:?}"
    );
    assert!(
        matches!(
            s.template,
            TemplateStatus::Installed | TemplateStatus::AlreadyPresent
        ),
        "{:?}",
        s.template
    );

    let cluster = Cluster {
        url,
        agent: ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .tls_config(tls.build())
                .build(),
        ),
        auth,
    };
    let (status, _) = cluster.request("POST", &format!("/{prefix}-*/_refresh"));
    assert_eq!(status, 200);
    let (_, count) = cluster.request("GET", &format!("/{prefix}-event-*/_count"));
    assert_eq!(count["count"], n);
    let (_, mapping) = cluster.request("GET", &format!("/{prefix}-*/_mapping"));
    let index = mapping.as_object().unwrap().values().next().unwrap();
    let props = &index["mappings"]["properties"];
    assert_eq!(props["duration"]["type"], "double");
    assert_eq!(props["event_name"]["type"], "keyword");
    let (_, hits) = cluster.request(
        "GET",
        &format!("/{prefix}-network-*/_search?q=task_id:live-net"),
    );
    let source = &hits["hits"]["hits"][0]["_source"];
    assert_eq!(source["bytes_received"], 2000);
    assert_eq!(source["metric_type"], "network");

    telemetry.shutdown(Duration::from_secs(30)).unwrap();
    // Wildcard deletes are refused by default (action.destructive_requires_name): name each.
    for index in mapping.as_object().unwrap().keys() {
        let (status, _) = cluster.request("DELETE", &format!("/{index}"));
        assert_eq!(status, 200, "deleting {index}");
    }
    let (status, _) = cluster.request("DELETE", &format!("/_index_template/{prefix}"));
    assert_eq!(status, 200);
}
