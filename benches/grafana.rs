//! The Grafana Cloud publisher: the cost of preparing one push, and its size on the wire.
//!
//! * `grafana_push/encode_compress`: one push as the push thread prepares it: a snapshot of
//!   every series (100 event names x 2 statuses and 10 operations, the default 14 buckets),
//!   filled into the reused remote-write `WriteRequest`, protobuf-encoded and snappy
//!   block-compressed: 3,714 series, one sample each.
//! * `grafana_push/encode_compress_4_buckets`: the same push with 4 buckets instead of 14
//!   (`GrafanaCloudBuilder::buckets`), the lever for a smaller push.
//!
//! The goal of issue 5 is under 2 ms and under 20 KB for that push; the summary at the end
//! prints the bytes (wire and raw protobuf) and the median times against those goals.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-grafana cargo bench --bench grafana`.

use std::time::{Duration, Instant, SystemTime};

use criterion::{black_box, Criterion};
use pipeline_telemetry::grafana::{GrafanaCloudBuilder, GrafanaCloudPublisher};
use pipeline_telemetry::{EventMetrics, MetricsPublisher, NetworkMetrics, Status};

const EVENT_NAMES: usize = 100;
const OPERATIONS: usize = 10;

/// A publisher that never pushes during the run (the endpoint is a closed local port, the
/// interval long) and gives up its last push at once when dropped.
fn publisher(buckets: Option<&[f64]>) -> GrafanaCloudPublisher {
    let mut builder = GrafanaCloudBuilder::new("bench-key", "123456", "http://127.0.0.1:9/push")
        .push_interval(Duration::from_secs(3600))
        .and_then(|b| b.max_attempts(1))
        .and_then(|b| b.instance("bench-host:4242"))
        .expect("valid settings");
    if let Some(buckets) = buckets {
        builder = builder.buckets(buckets).expect("valid buckets");
    }
    let publisher = builder.build().expect("publisher");
    let start = SystemTime::now();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..EVENT_NAMES * 2 * 8 {
        publisher
            .publish_event_metrics(&EventMetrics {
                event_name: format!("event-{:03}", i % EVENT_NAMES),
                task_id: format!("task-{i}"),
                start_time: start,
                end_time: Some(start + Duration::from_micros(rng.u64(100..3_000_000))),
                status: if (i / EVENT_NAMES) % 2 == 0 {
                    Status::Completed
                } else {
                    Status::Failed
                },
                error: None,
                retry_count: rng.u32(0..3),
                process_id: 1,
            })
            .expect("recording never fails");
    }
    for i in 0..OPERATIONS * 20 {
        publisher
            .publish_network_metrics(&NetworkMetrics {
                end_time: Some(start + Duration::from_micros(rng.u64(100..500_000))),
                bytes_sent: rng.u64(0..100_000),
                bytes_received: rng.u64(0..1_000_000),
                error: (i % 7 == 0).then(|| "refused".to_owned()),
                operation: format!("op-{:02}", i % OPERATIONS),
                ..NetworkMetrics::new(format!("net-{i}"), "storage.local", 9000, start)
            })
            .expect("recording never fails");
    }
    publisher
}

/// The number of `TimeSeries` in a raw `WriteRequest`: its top-level field-1 entries.
fn series_count(mut raw: &[u8]) -> usize {
    let varint = |raw: &mut &[u8]| {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (byte, rest) = raw.split_first().expect("truncated varint");
            *raw = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    };
    let mut count = 0;
    while !raw.is_empty() {
        let key = varint(&mut raw);
        assert_eq!(key & 7, 2, "length-delimited fields only");
        let len = varint(&mut raw) as usize;
        raw = &raw[len..];
        count += usize::from(key >> 3 == 1);
    }
    count
}

/// The median of `runs` timings of `f`, for the summary.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[runs / 2]
}

fn main() {
    let full = publisher(None);
    let small = publisher(Some(&[0.01, 0.1, 1.0, 10.0]));
    // Warm the reused buffers, as the push thread's are after its first push.
    let body = full.write_request_body();
    let small_body = small.write_request_body();
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .expect("snappy");
    let small_raw = snap::raw::Decoder::new()
        .decompress_vec(&small_body)
        .expect("snappy");

    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    {
        let mut group = c.benchmark_group("grafana_push");
        group.bench_function("encode_compress", |b| {
            b.iter(|| black_box(full.write_request_body()))
        });
        group.bench_function("encode_compress_4_buckets", |b| {
            b.iter(|| black_box(small.write_request_body()))
        });
        group.finish();
    }
    c.final_summary();

    let time = median(201, || {
        black_box(full.write_request_body());
    });
    let small_time = median(201, || {
        black_box(small.write_request_body());
    });
    println!();
    println!("grafana push, 100 event names x 2 statuses + 10 operations:");
    println!(
        "  14 buckets: {} series, {} bytes on the wire ({} protobuf, {:.1}x), median {:.3} ms  \
         (goals: < 20480 bytes, < 2 ms)",
        series_count(&raw),
        body.len(),
        raw.len(),
        raw.len() as f64 / body.len() as f64,
        time.as_secs_f64() * 1e3
    );
    println!(
        "   4 buckets: {} series, {} bytes on the wire ({} protobuf, {:.1}x), median {:.3} ms",
        series_count(&small_raw),
        small_body.len(),
        small_raw.len(),
        small_raw.len() as f64 / small_body.len() as f64,
        small_time.as_secs_f64() * 1e3
    );
}
