//! `dashboards/grafana-pipeline-telemetry.json`: its shape is what Grafana imports, and every
//! query in it answers, with the same series, over a scraped pipeline and a pushed one.
//!
//! The second test runs one real Prometheus that both scrapes a `PrometheusPublisher` (job
//! `scraped`) and receives a `GrafanaCloudPublisher`'s remote writes (job `pushed`), both
//! attached to one pipeline, and runs every panel and variable query of the dashboard for
//! each job.
#![cfg(feature = "grafana")]

use std::collections::BTreeSet;

const DASHBOARD: &str = include_str!("../dashboards/grafana-pipeline-telemetry.json");

fn dashboard() -> serde_json::Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is valid JSON")
}

/// Every query of every panel.
fn panel_queries(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
fn the_dashboard_has_the_shape_grafana_imports() {
    let d = dashboard();
    let input = &d["__inputs"][0];
    assert_eq!(input["name"], "DS_PROMETHEUS");
    assert_eq!(input["type"], "datasource");
    assert_eq!(input["pluginId"], "prometheus");
    assert!(d["uid"].is_string() && d["title"].is_string());
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(d["id"].is_null(), "an importable dashboard has no id");

    let vars = d["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "DS_PROMETHEUS",
            "job",
            "instance",
            "event_name",
            "operation"
        ]
    );
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");

    let panels = d["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels {
        let pos = &panel["gridPos"];
        assert!(pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}");
            let expr = target["expr"].as_str().unwrap();
            assert!(expr.contains("job=~\"$job\""), "{expr}");
        }
    }
    // Every figure the issue names has a panel.
    let queries = panel_queries(&d);
    let has = |needle: &str| queries.iter().any(|(_, e)| e.contains(needle));
    assert!(has(
        "histogram_quantile(0.99, sum by (le, event_name) (rate(event_duration_seconds_bucket"
    ));
    assert!(has("sum by (status) (rate(event_duration_seconds_count"));
    assert!(has("rate(event_retries_total"));
    assert!(has(
        "histogram_quantile(0.99, sum by (le, operation) (rate(network_latency_seconds_bucket"
    ));
    assert!(has("rate(network_bytes_total"));
    assert!(has("status=\"failed\""));
    assert!(has("telemetry_records_dropped_total"));
}

#[cfg(feature = "prometheus")]
#[path = "support/prometheus_server.rs"]
mod prometheus_server;

#[cfg(feature = "prometheus")]
#[test]
fn every_query_answers_with_the_same_series_scraped_and_pushed() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use pipeline_telemetry::grafana::GrafanaCloudPublisher;
    use pipeline_telemetry::prometheus::PrometheusPublisher;
    use pipeline_telemetry::Telemetry;
    use prometheus_server::{http_get, scrape_config, url_encode, PrometheusServer};

    const TEST: &str = "every_query_answers_with_the_same_series_scraped_and_pushed";
    let scraped = Arc::new(PrometheusPublisher::new(0).unwrap());
    let config = scrape_config(&[("scraped", scraped.local_addr().unwrap())]);
    let Some(server) =
        PrometheusServer::start(TEST, &config, &["--web.enable-remote-write-receiver"])
    else {
        return;
    };
    let pushed = GrafanaCloudPublisher::builder(
        "unused-key",
        "unused-user",
        format!("http://{}/api/v1/write", server.addr()),
    )
    .job("pushed")
    .and_then(|b| b.instance("pushed-1"))
    .and_then(|b| b.push_interval(Duration::from_secs(3600)))
    .unwrap()
    .build()
    .unwrap();
    let telemetry = Telemetry::new();
    telemetry.add_publisher(Box::new(scraped.clone())).unwrap();
    telemetry.add_publisher(Box::new(pushed)).unwrap();

    let mut n = 0;
    let mut workload = |telemetry: &Telemetry| {
        for _ in 0..30 {
            n += 1;
            let event = telemetry
                .events
                .track(["ingest", "index"][n % 2], &format!("t{n}"))
                .unwrap();
            if n % 3 == 0 {
                event.retry().unwrap();
            }
            let mut call = telemetry
                .network
                .track(
                    &format!("n{n}"),
                    "db.local",
                    5432,
                    Some(["query", "write"][n % 2]),
                )
                .unwrap();
            call.sent(200);
            call.received(4000);
            if n % 4 == 0 {
                call.fail("timeout").unwrap();
                event.fail("db timeout").unwrap();
            } else {
                call.complete().unwrap();
                event.complete().unwrap();
            }
        }
    };
    // Two rounds, each pushed and scraped, so every rate has two samples to work with.
    for _ in 0..2 {
        workload(&telemetry);
        telemetry.flush(Duration::from_secs(30)).unwrap();
        server
            .wait_for_scrape("scraped", SystemTime::now(), Duration::from_secs(30))
            .unwrap();
    }

    let d = dashboard();
    let fill = |expr: &str, job: &str| {
        expr.replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$job", job)
            .replace("$instance", ".+")
            .replace("$event_name", ".+")
            .replace("$operation", ".+")
    };
    let series = |expr: &str| -> BTreeSet<BTreeMap<String, String>> {
        server
            .query(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .into_iter()
            .map(|s| {
                let mut labels = s.labels;
                labels.remove("job");
                labels.remove("instance");
                labels
            })
            .collect()
    };
    for (title, expr) in panel_queries(&d) {
        let from_scrape = series(&fill(&expr, "scraped"));
        let from_push = series(&fill(&expr, "pushed"));
        assert!(
            !from_push.is_empty(),
            "{title}: no answer over the pushed job: {expr}"
        );
        assert_eq!(from_scrape, from_push, "{title}: {expr}");
    }
    // The variables' queries list both jobs and the same values for each.
    let values = |label: &str, selector: &str| -> BTreeSet<String> {
        let target = format!(
            "/api/v1/label/{label}/values?match[]={}",
            url_encode(selector)
        );
        let body: serde_json::Value =
            serde_json::from_slice(&http_get(server.addr(), &target, &[]).unwrap().body).unwrap();
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        values("job", "events_in_flight"),
        BTreeSet::from(["pushed".to_owned(), "scraped".to_owned()])
    );
    for (label, metric) in [
        ("event_name", "event_duration_seconds_count"),
        ("operation", "network_operations_total"),
    ] {
        let scraped = values(label, &format!("{metric}{{job=\"scraped\"}}"));
        assert_eq!(scraped.len(), 2);
        assert_eq!(
            scraped,
            values(label, &format!("{metric}{{job=\"pushed\"}}"))
        );
    }
    telemetry.shutdown(Duration::from_secs(30)).unwrap();
}
