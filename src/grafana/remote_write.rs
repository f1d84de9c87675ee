//! The remote-write 1.0 wire format and the encoder that fills it from the series model.
//!
//! The messages are those of Prometheus' `prompb/remote.proto` and `prompb/types.proto`
//! (remote write 1.0), written as `prost` derives so that no `protoc` or build script is
//! needed. Only the fields a 1.0 sender fills are declared: a receiver skips unknown fields
//! and we never send exemplars or native histograms.
//!
//! One push is one [`WriteRequest`] of every series of a [`PipelineSeries`] snapshot at one
//! timestamp: counters and gauges as one series each, histograms as `_bucket{le}` (cumulative,
//! `+Inf` last), `_sum` and `_count`, exactly the names and labels of the scrape endpoint plus
//! `job` and `instance`. Labels are sorted by name (`__name__` first), as receivers require;
//! a label whose value is empty is left out, as a scrape reads it.
//! The protobuf is written straight from the snapshot into a reused buffer (no allocation
//! per series), byte for byte what prost writes for the same messages, and snappy
//! block-compressed.
//!
//! [`PipelineSeries`]: crate::series::PipelineSeries

use std::sync::Arc;

use prost::encoding::encoded_len_varint;

use crate::series::{le_string, FamilySnapshot, Kind, Value};

/// `prometheus.WriteRequest`.
// Written by `Encoder` directly; built as a message only by the tests, as the oracle.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub(crate) timeseries: Vec<TimeSeries>,
    // Tag 2 is reserved in the proto.
    #[prost(message, repeated, tag = "3")]
    pub(crate) metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries` (labels and float samples; exemplars and native histograms are
/// not sent).
// Written by `Encoder` directly; built as a message only by the tests, as the oracle.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub(crate) labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) samples: Vec<Sample>,
}

/// `prometheus.Label`.
// Written by `Encoder` directly; built as a message only by the tests, as the oracle.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct Label {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) value: String,
}

/// `prometheus.Sample`: a value at a time in milliseconds since the Unix epoch.
// Written by `Encoder` directly; built as a message only by the tests, as the oracle.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Sample {
    #[prost(double, tag = "1")]
    pub(crate) value: f64,
    #[prost(int64, tag = "2")]
    pub(crate) timestamp: i64,
}

/// `prometheus.MetricMetadata`: a family's type and help, which Grafana shows in its metrics
/// browser.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MetricMetadata {
    #[prost(enumeration = "MetricType", tag = "1")]
    pub(crate) r#type: i32,
    #[prost(string, tag = "2")]
    pub(crate) metric_family_name: String,
    #[prost(string, tag = "4")]
    pub(crate) help: String,
    #[prost(string, tag = "5")]
    pub(crate) unit: String,
}

/// `prometheus.MetricMetadata.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[allow(dead_code)] // The proto's full list; the series model has no summaries or infos.
pub(crate) enum MetricType {
    Unknown = 0,
    Counter = 1,
    Gauge = 2,
    Histogram = 3,
    GaugeHistogram = 4,
    Summary = 5,
    Info = 6,
    Stateset = 7,
}

/// What one encoded push holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    /// The snappy-compressed `WriteRequest`: the HTTP body.
    pub(crate) body: Vec<u8>,
    /// Series in the request, one sample each.
    pub(crate) samples: usize,
    /// The protobuf's size before compression.
    pub(crate) raw_len: usize,
}

/// The wire keys used (field number << 3 | wire type).
const KEY_TIMESERIES: u8 = 1 << 3 | 2; // WriteRequest.timeseries, length-delimited
const KEY_LABELS: u8 = 1 << 3 | 2; // TimeSeries.labels
const KEY_SAMPLES: u8 = 2 << 3 | 2; // TimeSeries.samples
const KEY_NAME: u8 = 1 << 3 | 2; // Label.name
const KEY_VALUE: u8 = 2 << 3 | 2; // Label.value
const KEY_SAMPLE_VALUE: u8 = 1 << 3 | 1; // Sample.value, 64-bit
const KEY_SAMPLE_TIMESTAMP: u8 = 2 << 3; // Sample.timestamp, varint
const TAG_METADATA: u32 = 3; // WriteRequest.metadata

/// The metric name label.
const NAME: &str = "__name__";
/// The bucket bound label.
const LE: &str = "le";

/// Appends `value` as a protobuf varint.
#[inline]
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Bytes of a string field (omitted when empty, as proto3 and prost do).
#[inline]
fn string_field_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + encoded_len_varint(s.len() as u64) + s.len()
    }
}

#[inline]
fn put_string_field(out: &mut Vec<u8>, key: u8, s: &str) {
    if !s.is_empty() {
        out.push(key);
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
}

/// Appends one `labels` entry of a `TimeSeries`: key, length and the `Label` message.
fn put_label(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(KEY_LABELS);
    put_varint(
        out,
        (string_field_len(name) + string_field_len(value)) as u64,
    );
    put_string_field(out, KEY_NAME, name);
    put_string_field(out, KEY_VALUE, value);
}

/// The encoded `labels` entry of `name="value"`.
fn label_bytes(name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_label(&mut out, name, value);
    out
}

/// The labels one snapshot series shares with every sample written for it (its own plus
/// `job` and `instance`), encoded once, and the byte offsets where `__name__` and `le` go
/// among them to keep every series' labels sorted by name.
#[derive(Default)]
struct SeriesLabels {
    bytes: Vec<u8>,
    name_at: usize,
    le_at: usize,
}

impl SeriesLabels {
    /// Encodes `base` (sorted by name) into the reused buffer.
    fn set(&mut self, base: &[(&str, &str)]) {
        self.bytes.clear();
        self.name_at = usize::MAX;
        self.le_at = usize::MAX;
        for (n, v) in base {
            if self.name_at == usize::MAX && *n > NAME {
                self.name_at = self.bytes.len();
            }
            if self.le_at == usize::MAX && *n > LE {
                self.le_at = self.bytes.len();
            }
            put_label(&mut self.bytes, n, v);
        }
        self.name_at = self.name_at.min(self.bytes.len());
        self.le_at = self.le_at.min(self.bytes.len());
    }

    /// Appends one `TimeSeries` (as field 1 of a `WriteRequest`): the encoded `__name__`
    /// label, these labels, the encoded `le` label if any, and one sample. The bytes are those
    /// prost writes for the same message (checked by the tests).
    #[inline]
    fn put(&self, out: &mut Vec<u8>, name: &[u8], le: &[u8], value: f64, timestamp: &[u8]) {
        // proto3 leaves out fields at their default: a 0.0 value, a 0 timestamp.
        let sample_len = if value != 0.0 { 9 } else { 0 } + timestamp.len();
        let len = self.bytes.len() + name.len() + le.len() + 2 + sample_len;
        out.push(KEY_TIMESERIES);
        put_varint(out, len as u64);
        // "__name__" sorts before "le": at the same offset the name goes first.
        let (before_name, rest) = self.bytes.split_at(self.name_at);
        let (between, after_le) = rest.split_at(self.le_at - self.name_at);
        out.extend_from_slice(before_name);
        out.extend_from_slice(name);
        out.extend_from_slice(between);
        out.extend_from_slice(le);
        out.extend_from_slice(after_le);
        out.push(KEY_SAMPLES);
        out.push(sample_len as u8); // at most 9 + 11: one byte
        if value != 0.0 {
            out.push(KEY_SAMPLE_VALUE);
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(timestamp);
    }
}

/// Encodes and compresses remote-write requests, reusing its buffers from one push to the
/// next.
///
/// The protobuf is written straight from the snapshot rather than through the prost
/// messages above, which would take a `String` per label per series (some 22,000 for a
/// pipeline of 100 event names) and measure every nested message three times: each series'
/// shared labels, each metric name and each `le` label are encoded once and copied. The tests
/// check the bytes are exactly prost's encoding of the same [`WriteRequest`].
pub(crate) struct Encoder {
    job: String,
    instance: String,
    raw: Vec<u8>,
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
    /// The encoded `le` labels of the bounds last seen, `+Inf` last (histograms share one
    /// set of bounds).
    les: Vec<Vec<u8>>,
    les_of: Option<Arc<[f64]>>,
    labels: SeriesLabels,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("job", &self.job)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// The metadata of `families`: type and help under the name Grafana looks them up by.
fn metadata(families: &[FamilySnapshot]) -> impl Iterator<Item = MetricMetadata> + '_ {
    families.iter().map(|family| MetricMetadata {
        r#type: match family.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        } as i32,
        metric_family_name: family.sample_name(),
        help: family.help.to_owned(),
        unit: String::new(),
    })
}

impl Encoder {
    /// An encoder adding `job` and `instance` to every series.
    pub(crate) fn new(job: &str, instance: &str) -> Self {
        Encoder {
            job: job.to_owned(),
            instance: instance.to_owned(),
            raw: Vec::new(),
            compressed: Vec::new(),
            snappy: snap::raw::Encoder::new(),
            les: Vec::new(),
            les_of: None,
            labels: SeriesLabels::default(),
        }
    }

    /// Writes the protobuf `WriteRequest` of every series of `families` at `timestamp`
    /// (milliseconds since the Unix epoch), with the families' metadata if `with_metadata`,
    /// into the reused buffer. Returns the number of samples.
    fn write(&mut self, families: &[FamilySnapshot], timestamp: i64, with_metadata: bool) -> usize {
        let Encoder {
            job,
            instance,
            raw,
            les,
            les_of,
            labels,
            ..
        } = self;
        raw.clear();
        let mut stamp = Vec::with_capacity(11);
        if timestamp != 0 {
            stamp.push(KEY_SAMPLE_TIMESTAMP);
            put_varint(&mut stamp, timestamp as u64);
        }
        let mut samples = 0;
        let mut base: Vec<(&str, &str)> = Vec::with_capacity(8);
        for family in families {
            let (plain, bucket, sum, count) = match family.kind {
                Kind::Counter | Kind::Gauge => (
                    label_bytes(NAME, &family.sample_name()),
                    vec![],
                    vec![],
                    vec![],
                ),
                Kind::Histogram => (
                    vec![],
                    label_bytes(NAME, &format!("{}_bucket", family.name)),
                    label_bytes(NAME, &format!("{}_sum", family.name)),
                    label_bytes(NAME, &format!("{}_count", family.name)),
                ),
            };
            for series in &family.series {
                // The series' labels (sorted) and job and instance, merged in name order. A
                // label with an empty value is no label, as a scrape reads it.
                base.clear();
                base.extend(
                    series
                        .labels
                        .iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(n, v)| (*n, &**v)),
                );
                for extra in [("instance", instance.as_str()), ("job", job.as_str())] {
                    let at = base.partition_point(|(n, _)| *n < extra.0);
                    debug_assert!(base.get(at).is_none_or(|(n, _)| *n != extra.0));
                    base.insert(at, extra);
                }
                labels.set(&base);
                match &series.value {
                    Value::Counter(n) => {
                        labels.put(raw, &plain, &[], *n as f64, &stamp);
                        samples += 1;
                    }
                    Value::Gauge(v) => {
                        labels.put(raw, &plain, &[], *v, &stamp);
                        samples += 1;
                    }
                    Value::Histogram(h) => {
                        if !les_of.as_ref().is_some_and(|b| Arc::ptr_eq(b, &h.bounds)) {
                            *les = h
                                .bounds
                                .iter()
                                .map(|b| le_string(*b))
                                .chain(["+Inf".to_owned()])
                                .map(|le| label_bytes(LE, &le))
                                .collect();
                            *les_of = Some(Arc::clone(&h.bounds));
                        }
                        for (le, cumulative) in les.iter().zip(&h.cumulative) {
                            labels.put(raw, &bucket, le, *cumulative as f64, &stamp);
                        }
                        labels.put(raw, &sum, &[], h.sum, &stamp);
                        labels.put(raw, &count, &[], h.count() as f64, &stamp);
                        samples += h.cumulative.len() + 2;
                    }
                }
            }
        }
        if with_metadata {
            for meta in metadata(families) {
                prost::encoding::message::encode(TAG_METADATA, &meta, raw);
            }
        }
        samples
    }

    /// Encodes and compresses one push.
    ///
    /// # Errors
    /// The compressor's reason, for a request too large to compress (over 4 GiB).
    pub(crate) fn encode(
        &mut self,
        families: &[FamilySnapshot],
        timestamp: i64,
        with_metadata: bool,
    ) -> Result<Encoded, String> {
        let samples = self.write(families, timestamp, with_metadata);
        self.compressed
            .resize(snap::raw::max_compress_len(self.raw.len()), 0);
        let len = self
            .snappy
            .compress(&self.raw, &mut self.compressed)
            .map_err(|e| format!("snappy compression failed: {e}"))?;
        Ok(Encoded {
            body: self.compressed[..len].to_vec(),
            samples,
            raw_len: self.raw.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{NetworkMetrics, Status};
    use crate::series::tests::event;
    use crate::series::{PipelineSeries, SeriesConfig};
    use proptest::prelude::*;
    use prost::Message as _;
    use std::time::{Duration, SystemTime};

    /// The same request built the plain way: a prost message per series, labels sorted.
    fn reference(
        families: &[FamilySnapshot],
        timestamp: i64,
        with_metadata: bool,
        job: &str,
        instance: &str,
    ) -> WriteRequest {
        let mut request = WriteRequest::default();
        let mut add =
            |name: String, labels: &[(&'static str, Arc<str>)], le: Option<String>, value: f64| {
                let mut all: Vec<(String, String)> = labels
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                all.push(("__name__".into(), name));
                all.push(("job".into(), job.into()));
                all.push(("instance".into(), instance.into()));
                if let Some(le) = le {
                    all.push(("le".into(), le));
                }
                all.sort();
                request.timeseries.push(TimeSeries {
                    labels: all
                        .into_iter()
                        .map(|(name, value)| Label { name, value })
                        .collect(),
                    samples: vec![Sample { value, timestamp }],
                });
            };
        for family in families {
            for series in &family.series {
                match &series.value {
                    Value::Counter(n) => add(family.sample_name(), &series.labels, None, *n as f64),
                    Value::Gauge(v) => add(family.sample_name(), &series.labels, None, *v),
                    Value::Histogram(h) => {
                        let les = h
                            .bounds
                            .iter()
                            .map(|b| le_string(*b))
                            .chain(["+Inf".to_owned()]);
                        for (le, c) in les.zip(&h.cumulative) {
                            add(
                                format!("{}_bucket", family.name),
                                &series.labels,
                                Some(le),
                                *c as f64,
                            );
                        }
                        add(format!("{}_sum", family.name), &series.labels, None, h.sum);
                        add(
                            format!("{}_count", family.name),
                            &series.labels,
                            None,
                            h.count() as f64,
                        );
                    }
                }
            }
        }
        if with_metadata {
            request.metadata = metadata(families).collect();
        }
        request
    }

    fn decode(encoded: &Encoded) -> (Vec<u8>, WriteRequest) {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&encoded.body)
            .unwrap();
        assert_eq!(raw.len(), encoded.raw_len);
        let request = WriteRequest::decode(&raw[..]).unwrap();
        (raw, request)
    }

    fn op(operation: &str, millis: u64, failed: bool) -> NetworkMetrics {
        let start = SystemTime::UNIX_EPOCH;
        NetworkMetrics {
            end_time: Some(start + Duration::from_millis(millis)),
            bytes_sent: 1000,
            bytes_received: 500,
            error: failed.then(|| "refused".to_owned()),
            operation: operation.into(),
            ..NetworkMetrics::new("n", "localhost", 8080, start)
        }
    }

    fn series() -> PipelineSeries {
        let s = PipelineSeries::new(SeriesConfig::default());
        s.record_event(event("TestEvent", Status::Completed, 1500, 2).borrowed());
        s.record_event(event("TestEvent", Status::Failed, 10, 0).borrowed());
        s.record_network(op("remote_call", 250, false).borrowed());
        s
    }

    fn labels(ts: &TimeSeries) -> Vec<(&str, &str)> {
        ts.labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    fn find<'a>(req: &'a WriteRequest, want: &[(&str, &str)]) -> Vec<&'a TimeSeries> {
        req.timeseries
            .iter()
            .filter(|ts| want.iter().all(|w| labels(ts).contains(w)))
            .collect()
    }

    #[test]
    fn histograms_become_bucket_sum_and_count_with_sorted_labels() {
        let mut encoder = Encoder::new("etl", "host:1");
        let encoded = encoder
            .encode(&series().snapshot(None), 1_700_000_000_123, false)
            .unwrap();
        let (_, request) = decode(&encoded);
        assert_eq!(request.timeseries.len(), encoded.samples);
        for ts in &request.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(names, sorted, "labels sorted by name and unique");
            assert_eq!(names[0], "__name__");
            assert!(names.contains(&"job") && names.contains(&"instance"));
            assert_eq!(ts.samples.len(), 1);
            assert_eq!(ts.samples[0].timestamp, 1_700_000_000_123);
        }
        let completed = [("event_name", "TestEvent"), ("status", "completed")];
        let buckets: Vec<_> = find(&request, &completed)
            .into_iter()
            .filter(|ts| ts.labels[0].value == "event_duration_seconds_bucket")
            .collect();
        assert_eq!(buckets.len(), 15);
        assert_eq!(
            labels(buckets[9]),
            [
                ("__name__", "event_duration_seconds_bucket"),
                ("event_name", "TestEvent"),
                ("instance", "host:1"),
                ("job", "etl"),
                ("le", "1.0"),
                ("status", "completed"),
            ]
        );
        assert_eq!(buckets[9].samples[0].value, 0.0);
        assert_eq!(labels(buckets[10])[4], ("le", "2.5"));
        assert_eq!(buckets[10].samples[0].value, 1.0);
        assert_eq!(labels(buckets[14])[4], ("le", "+Inf"));
        assert_eq!(buckets[14].samples[0].value, 1.0);
        let value = |name: &str| {
            let mut want = completed.to_vec();
            want.push(("__name__", name));
            let found = find(&request, &want);
            assert_eq!(found.len(), 1, "{name}");
            found[0].samples[0].value
        };
        assert_eq!(value("event_duration_seconds_sum"), 1.5);
        assert_eq!(value("event_duration_seconds_count"), 1.0);
        let retries = find(
            &request,
            &[
                ("__name__", "event_retries_total"),
                ("event_name", "TestEvent"),
            ],
        );
        assert_eq!(retries[0].samples[0].value, 2.0);
        let sent = find(
            &request,
            &[
                ("__name__", "network_bytes_total"),
                ("direction", "sent"),
                ("operation", "remote_call"),
            ],
        );
        assert_eq!(sent[0].samples[0].value, 1000.0);
        assert_eq!(
            find(&request, &[("__name__", "network_latency_seconds_sum")])[0].samples[0].value,
            0.25
        );
        assert!(request.metadata.is_empty());
    }

    #[test]
    fn the_bytes_are_prosts_encoding_of_the_same_request_and_buffers_are_reused_cleanly() {
        let mut encoder = Encoder::new("j", "i");
        let big = series();
        let families = big.snapshot(None);
        let encoded = encoder.encode(&families, 5, true).unwrap();
        let (raw, request) = decode(&encoded);
        let expected = reference(&families, 5, true, "j", "i");
        assert_eq!(request, expected);
        assert_eq!(raw, expected.encode_to_vec());
        let retries = request
            .metadata
            .iter()
            .find(|m| m.metric_family_name == "event_retries_total")
            .unwrap();
        assert_eq!(retries.r#type, MetricType::Counter as i32);
        assert!(!retries.help.is_empty());

        // A smaller snapshot next, at timestamp 0 (left out of the wire, as prost does).
        let small = PipelineSeries::new(SeriesConfig::default()).snapshot(None);
        let encoded = encoder.encode(&small, 0, false).unwrap();
        let (raw, request) = decode(&encoded);
        let expected = reference(&small, 0, false, "j", "i");
        assert_eq!(raw, expected.encode_to_vec());
        assert!(request.metadata.is_empty());
        assert!(request
            .timeseries
            .iter()
            .all(|ts| !ts.labels[0].value.starts_with("event_duration")));
    }

    #[test]
    fn le_strings_match_the_scrape_endpoint() {
        let got: Vec<String> = crate::series::DEFAULT_BUCKETS
            .iter()
            .map(|b| le_string(*b))
            .collect();
        assert_eq!(
            got,
            [
                "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0",
                "2.5", "5.0", "7.5", "10.0"
            ]
        );
    }

    proptest! {
        #[test]
        fn any_records_encode_exactly_as_prost_would(
            events in proptest::collection::vec(("[a-zA-Z0-9 _\\\"\\n é]{0,12}", 0u64..20_000, 0u32..4, any::<bool>()), 0..40),
            ops in proptest::collection::vec(("[a-z_]{0,6}", 0u64..3_000, any::<bool>()), 0..20),
            timestamp in any::<i64>(),
            job in "[a-z]{1,8}",
            instance in "[a-z0-9:.]{1,12}",
            prefix in "(|etl_)",
            with_metadata in any::<bool>(),
        ) {
            let series = PipelineSeries::new(SeriesConfig { prefix, max_label_values: 8, ..SeriesConfig::default() });
            for (name, millis, retries, failed) in &events {
                let status = if *failed { Status::Failed } else { Status::Completed };
                series.record_event(event(name, status, *millis, *retries).borrowed());
            }
            for (operation, millis, failed) in &ops {
                series.record_network(op(operation, *millis, *failed).borrowed());
            }
            let families = series.snapshot(None);
            let mut encoder = Encoder::new(&job, &instance);
            let encoded = encoder.encode(&families, timestamp, with_metadata).unwrap();
            let (raw, _) = decode(&encoded);
            let expected = reference(&families, timestamp, with_metadata, &job, &instance);
            prop_assert_eq!(encoded.samples, expected.timeseries.len());
            prop_assert_eq!(raw, expected.encode_to_vec());
        }
    }
}
