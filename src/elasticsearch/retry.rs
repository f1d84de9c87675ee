//! Retry decisions as data: a pure function from a bulk response to what happens next.
//!
//! The rules (Elastic's bulk API documents per-item `status` and `error` objects, and a
//! top-level `errors` flag that is `true` when any item failed):
//! - the whole request answered 429, 502, 503 or 504 (or not answered at all: connection
//!   error, timeout) is retried whole, with backoff;
//! - any other non-2xx answer refuses the whole request: nothing is retried, every document is
//!   counted as refused with the reason Elasticsearch gave;
//! - in a 2xx answer each item is judged alone: 2xx is stored, 409 (the `create` of an `_id`
//!   that exists: a document stored by an earlier attempt) is stored too, 429 (and the
//!   transient 502, 503, 504) is retried alone, anything else (400 `mapper_parsing_exception`,
//!   …) is refused with its `error.type` and `error.reason`;
//! - a 2xx answer that cannot be read, or whose item count differs from the documents sent, is
//!   retried whole: `create` with a fixed `_id` makes that safe.
//!
//! The `errors` flag is read but not trusted alone: items are always judged one by one.

use serde::Deserialize;

/// How long a reason taken from a response may be, in bytes.
pub(crate) const MAX_REASON_BYTES: usize = 512;

/// What to do after a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Every document has a final outcome.
    Done(Items),
    /// Some documents must be sent again; the rest have a final outcome.
    RetryItems(Items),
    /// Send the whole request again, after a backoff.
    RetryRequest {
        reason: String,
        /// Whether the failure points at the host (connection, 502/503/504) rather than at
        /// the cluster's load (429).
        host_failed: bool,
    },
    /// The whole request was refused; do not send it again.
    Refused { status: u16, reason: String },
}

/// The outcome of each document of a 2xx bulk response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Items {
    /// How many documents are now stored (created, or already there).
    pub(crate) stored: usize,
    /// How many of `stored` were already there (409).
    pub(crate) conflicts: usize,
    /// Positions (in the request) of documents to send again, with the reason.
    pub(crate) retry: Vec<(usize, String)>,
    /// Positions of documents refused for good, with Elasticsearch's reason.
    pub(crate) refused: Vec<(usize, String)>,
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Option<Vec<ItemWrapper>>,
}

/// One entry of `items`: an object with a single key, the action.
#[derive(Deserialize)]
struct ItemWrapper {
    #[serde(alias = "index", alias = "update", alias = "delete")]
    create: Item,
}

#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Whether a whole-request status is worth retrying.
pub(crate) fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Decides what follows an HTTP answer to a bulk request of `sent` documents.
pub(crate) fn decide(status: u16, body: &[u8], sent: usize) -> Decision {
    if retryable_status(status) {
        return Decision::RetryRequest {
            reason: format!("HTTP {status}: {}", response_reason(body)),
            host_failed: status != 429,
        };
    }
    if !(200..300).contains(&status) {
        return Decision::Refused {
            status,
            reason: format!("HTTP {status}: {}", response_reason(body)),
        };
    }
    let parsed: BulkResponse = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(e) => {
            return Decision::RetryRequest {
                reason: format!(
                    "HTTP {status} with a body that is not a bulk response ({e}): {}",
                    snippet(body)
                ),
                host_failed: true,
            }
        }
    };
    let items = parsed.items.unwrap_or_default();
    if items.len() != sent {
        return Decision::RetryRequest {
            reason: format!(
                "the bulk response lists {} items for {sent} documents sent",
                items.len()
            ),
            host_failed: true,
        };
    }
    let mut out = Items::default();
    for (i, ItemWrapper { create: item }) in items.into_iter().enumerate() {
        match item.status {
            200..=299 => out.stored += 1,
            409 => {
                out.stored += 1;
                out.conflicts += 1;
            }
            s @ (429 | 502 | 503 | 504) => out.retry.push((i, item_reason(s, &item.error))),
            s => out.refused.push((i, item_reason(s, &item.error))),
        }
    }
    if out.retry.is_empty() {
        Decision::Done(out)
    } else {
        Decision::RetryItems(out)
    }
}

/// `"400 mapper_parsing_exception: failed to parse … (caused by …)"`.
fn item_reason(status: u16, error: &Option<serde_json::Value>) -> String {
    let mut text = format!("{status} ");
    match error {
        Some(e) => describe_error(e, &mut text),
        None => text.push_str("(no error object)"),
    }
    cut(text)
}

/// An error object as `type: reason (caused by type: reason)`; a string as itself.
fn describe_error(e: &serde_json::Value, out: &mut String) {
    match e {
        serde_json::Value::String(s) => out.push_str(s),
        serde_json::Value::Object(o) => {
            let kind = o.get("type").and_then(|v| v.as_str()).unwrap_or("error");
            out.push_str(kind);
            if let Some(reason) = o.get("reason").and_then(|v| v.as_str()) {
                out.push_str(": ");
                out.push_str(reason);
            }
            if let Some(cause) = o.get("caused_by") {
                out.push_str(" (caused by ");
                describe_error(cause, out);
                out.push(')');
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The reason in an error response (`{"error":{"type","reason"},"status"}` or
/// `{"error":"…"}`), or the start of the body when it is not one.
pub(crate) fn response_reason(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(e) = o.get("error") {
            let mut text = String::new();
            describe_error(e, &mut text);
            return cut(text);
        }
    }
    snippet(body)
}

/// The start of a body for a log line: lossy UTF-8, control characters as spaces, cut.
pub(crate) fn snippet(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    let head = &body[..body.len().min(MAX_REASON_BYTES)];
    let text: String = String::from_utf8_lossy(head)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cut(text.trim().to_owned())
}

fn cut(mut text: String) -> String {
    if text.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successful `create` item as Elasticsearch 8 writes it.
    const CREATED: &str = r#"{"create":{"_index":"p-event-2025.11.25","_id":"a","_version":1,"result":"created","_shards":{"total":2,"successful":1,"failed":0},"_seq_no":0,"_primary_term":1,"status":201}}"#;
    const CONFLICT: &str = r#"{"create":{"_index":"p-event-2025.11.25","_id":"b","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[b]: version conflict, document already exists (current version [1])","index_uuid":"x","shard":"0","index":"p-event-2025.11.25"}}}"#;
    const REJECTED: &str = r#"{"create":{"_index":"p-event-2025.11.25","_id":"c","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation [shard_detail=[p-event-2025.11.25][0][C], shard_coordinating_and_primary_bytes=0, shard_operation_bytes=1024, max_coordinating_and_primary_bytes=0]"}}}"#;
    const MAPPING: &str = r#"{"create":{"_index":"p-event-2025.11.25","_id":"d","status":400,"error":{"type":"document_parsing_exception","reason":"[1:180] failed to parse field [error] of type [long] in document with id 'd'. Preview of field's value: 'disk full'","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"disk full\""}}}}"#;

    fn body(errors: bool, items: &[&str]) -> Vec<u8> {
        format!(
            r#"{{"errors":{errors},"took":3,"items":[{}]}}"#,
            items.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn all_created_is_done() {
        let d = decide(200, &body(false, &[CREATED, CREATED]), 2);
        assert_eq!(
            d,
            Decision::Done(Items {
                stored: 2,
                ..Items::default()
            })
        );
    }

    #[test]
    fn conflicts_count_as_stored() {
        match decide(200, &body(true, &[CREATED, CONFLICT]), 2) {
            Decision::Done(items) => {
                assert_eq!(items.stored, 2);
                assert_eq!(items.conflicts, 1);
                assert!(items.refused.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn item_429_is_retried_alone_and_mapping_errors_are_refused_with_reason() {
        match decide(200, &body(true, &[CREATED, REJECTED, MAPPING, REJECTED]), 4) {
            Decision::RetryItems(items) => {
                assert_eq!(items.stored, 1);
                assert_eq!(items.retry.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 3]);
                assert!(items.retry[0]
                    .1
                    .starts_with("429 es_rejected_execution_exception"));
                assert_eq!(items.refused.len(), 1);
                let (pos, reason) = &items.refused[0];
                assert_eq!(*pos, 2);
                assert!(reason.starts_with("400 document_parsing_exception: [1:180] failed to parse field [error] of type [long]"), "{reason}");
                assert!(
                    reason.contains("caused by illegal_argument_exception"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_errors_flag_alone_is_not_trusted() {
        // `errors: false` but an item refused: the item decides.
        match decide(200, &body(false, &[MAPPING]), 1) {
            Decision::Done(items) => assert_eq!(items.refused.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn filtered_responses_are_read() {
        // filter_path=errors,items.*.status,items.*.error
        let body = br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"busy"}}}]}"#;
        match decide(200, body, 2) {
            Decision::RetryItems(items) => {
                assert_eq!(items.stored, 1);
                assert_eq!(
                    items.retry,
                    [(1, "429 es_rejected_execution_exception: busy".to_owned())]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_level_statuses() {
        let busy = br#"{"error":{"root_cause":[{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}],"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"},"status":429}"#;
        match decide(429, busy, 3) {
            Decision::RetryRequest {
                reason,
                host_failed,
            } => {
                assert!(!host_failed);
                assert_eq!(
                    reason,
                    "HTTP 429: es_rejected_execution_exception: rejected execution of coordinating operation"
                );
            }
            other => panic!("{other:?}"),
        }
        for status in [502, 503, 504] {
            assert!(matches!(
                decide(status, b"<html>Bad Gateway</html>", 3),
                Decision::RetryRequest {
                    host_failed: true,
                    ..
                }
            ));
        }
        let auth = br#"{"error":{"root_cause":[{"type":"security_exception","reason":"missing authentication credentials for REST request [/_bulk]"}],"type":"security_exception","reason":"missing authentication credentials for REST request [/_bulk]"},"status":401}"#;
        assert_eq!(
            decide(401, auth, 3),
            Decision::Refused {
                status: 401,
                reason: "HTTP 401: security_exception: missing authentication credentials for REST request [/_bulk]".into()
            }
        );
        assert!(matches!(
            decide(400, b"", 1),
            Decision::Refused { status: 400, .. }
        ));
        assert!(matches!(
            decide(500, b"oops", 1),
            Decision::Refused { status: 500, .. }
        ));
    }

    #[test]
    fn unreadable_or_mismatched_success_is_retried_whole() {
        assert!(matches!(
            decide(200, b"<html>proxy</html>", 1),
            Decision::RetryRequest { .. }
        ));
        assert!(matches!(
            decide(200, &body(false, &[CREATED]), 2),
            Decision::RetryRequest { .. }
        ));
        assert!(matches!(
            decide(200, b"{}", 1),
            Decision::RetryRequest { .. }
        ));
    }

    #[test]
    fn reasons_are_cut_and_cleaned() {
        let long = vec![b'x'; 5000];
        assert!(snippet(&long).len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert_eq!(snippet(b"a\nb\r\nc"), "a b  c");
        assert_eq!(snippet(b""), "(empty body)");
        assert_eq!(response_reason(br#"{"error":"plain"}"#), "plain");
    }
}
