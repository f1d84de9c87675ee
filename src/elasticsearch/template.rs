//! The index template for `{prefix}-*`: explicit mappings, installed once and idempotently.
//!
//! A composable index template (`PUT /_index_template/{name}`, Elasticsearch 7.8 and later)
//! named after the prefix, matching `{prefix}-*`, with `version` [`TEMPLATE_VERSION`]. Before
//! the first bulk request the publisher reads it (`GET /_index_template/{name}`) and puts it
//! only when it is missing or older, so restarts and several publishers do not rewrite it, and
//! a newer template (from a newer version of this crate) is left alone.

use serde_json::{json, Value};

/// Raised whenever the mappings change.
pub(crate) const TEMPLATE_VERSION: u64 = 1;

/// Template priority: above the default 0 and Elastic's built-in templates (100, which match
/// `logs-*-*`, `metrics-*-*`, … and not this prefix unless it starts that way).
pub(crate) const TEMPLATE_PRIORITY: u64 = 200;

/// The template's name: the prefix itself (index prefixes are valid template names).
pub(crate) fn template_name(prefix: &str) -> String {
    prefix.to_owned()
}

/// The request path of the template.
pub(crate) fn template_path(prefix: &str) -> String {
    format!("/_index_template/{}", template_name(prefix))
}

/// The template body: keyword for names, ids, status, host and operation; date for times;
/// double for durations; long for bytes and counts; text with a keyword sub-field for errors.
pub(crate) fn template_body(prefix: &str) -> Value {
    let keyword = json!({"type": "keyword", "ignore_above": 1024});
    let date = json!({"type": "date"});
    let double = json!({"type": "double"});
    let long = json!({"type": "long"});
    json!({
        "index_patterns": [format!("{prefix}-*")],
        "priority": TEMPLATE_PRIORITY,
        "version": TEMPLATE_VERSION,
        "_meta": {
            "description": "pipeline-telemetry event and network metrics",
            "managed_by": "pipeline-telemetry"
        },
        "template": {
            "mappings": {
                "dynamic": true,
                "properties": {
                    "@timestamp": date,
                    "metric_type": keyword,
                    "event_name": keyword,
                    "task_id": keyword,
                    "status": keyword,
                    "start_time": date,
                    "end_time": date,
                    "duration": double,
                    "error": {
                        "type": "text",
                        "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}
                    },
                    "retry_count": long,
                    "process_id": long,
                    "host": keyword,
                    "port": long,
                    "operation": keyword,
                    "latency": double,
                    "bytes_sent": long,
                    "bytes_received": long
                }
            }
        }
    })
}

/// What the answer to `GET /_index_template/{name}` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Missing, or older than ours: put ours.
    Install,
    /// Ours or newer is there.
    Current,
    /// The answer says nothing usable; the status decides (see the caller).
    Unknown,
}

/// Reads the answer to `GET /_index_template/{name}`.
pub(crate) fn existing(status: u16, body: &[u8]) -> Existing {
    match status {
        404 => Existing::Install,
        200..=299 => {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return Existing::Unknown;
            };
            let version = v["index_templates"]
                .as_array()
                .and_then(|a| a.first())
                .map(|t| t["index_template"]["version"].as_u64());
            match version {
                None => Existing::Install,
                Some(Some(v)) if v >= TEMPLATE_VERSION => Existing::Current,
                Some(_) => Existing::Install,
            }
        }
        _ => Existing::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_maps_every_field_explicitly() {
        let t = template_body("event-pipeline-metrics");
        assert_eq!(t["index_patterns"][0], "event-pipeline-metrics-*");
        let p = &t["template"]["mappings"]["properties"];
        for f in [
            "metric_type",
            "event_name",
            "task_id",
            "status",
            "host",
            "operation",
        ] {
            assert_eq!(p[f]["type"], "keyword", "{f}");
        }
        for f in ["@timestamp", "start_time", "end_time"] {
            assert_eq!(p[f]["type"], "date", "{f}");
        }
        for f in ["duration", "latency"] {
            assert_eq!(p[f]["type"], "double", "{f}");
        }
        for f in [
            "bytes_sent",
            "bytes_received",
            "retry_count",
            "process_id",
            "port",
        ] {
            assert_eq!(p[f]["type"], "long", "{f}");
        }
        assert_eq!(p["error"]["type"], "text");
        assert_eq!(p["error"]["fields"]["keyword"]["type"], "keyword");
    }

    #[test]
    fn existing_templates_are_judged_by_version() {
        assert_eq!(existing(404, b""), Existing::Install);
        let ours =
            json!({"index_templates": [{"name": "p", "index_template": template_body("p")}]});
        assert_eq!(
            existing(200, ours.to_string().as_bytes()),
            Existing::Current
        );
        let old = json!({"index_templates": [{"name": "p", "index_template": {"index_patterns": ["p-*"], "version": 0}}]});
        assert_eq!(existing(200, old.to_string().as_bytes()), Existing::Install);
        let unversioned = json!({"index_templates": [{"name": "p", "index_template": {"index_patterns": ["p-*"]}}]});
        assert_eq!(
            existing(200, unversioned.to_string().as_bytes()),
            Existing::Install
        );
        let newer = json!({"index_templates": [{"name": "p", "index_template": {"version": 99}}]});
        assert_eq!(
            existing(200, newer.to_string().as_bytes()),
            Existing::Current
        );
        assert_eq!(
            existing(200, br#"{"index_templates":[]}"#),
            Existing::Install
        );
        assert_eq!(existing(200, b"garbage"), Existing::Unknown);
        assert_eq!(existing(503, b""), Existing::Unknown);
    }
}
