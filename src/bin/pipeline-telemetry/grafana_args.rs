//! `demo` options for the Grafana Cloud publisher.

use clap::Args;
use pipeline_telemetry::grafana::{GrafanaCloudPublisher, GrafanaError};

/// Push the demo's metrics to Grafana Cloud.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Grafana Cloud")]
pub struct GrafanaArgs {
    /// Push the metrics with Prometheus remote write to this URL: the stack's "Remote Write
    /// Endpoint" (Grafana Cloud portal, your stack, Prometheus, Details), such as
    /// https://prometheus-prod-10-prod-us-central-0.grafana.net/api/prom/push. The API key (an
    /// access policy token with the metrics:write scope) comes from GRAFANA_CLOUD_API_KEY
    #[arg(long, value_name = "URL", requires = "grafana_user")]
    pub grafana_endpoint: Option<String>,
    /// The basic-auth user name for --grafana-endpoint: the stack's Prometheus "Username /
    /// Instance ID"
    #[arg(long, value_name = "ORG", requires = "grafana_endpoint")]
    pub grafana_user: Option<String>,
}

impl GrafanaArgs {
    /// The publisher the flags ask for; `None` without `--grafana-endpoint`.
    ///
    /// # Errors
    /// An endpoint, user name or API key that cannot be used (the key is never shown); a
    /// missing GRAFANA_CLOUD_API_KEY is an empty key.
    pub fn publisher(&self) -> Result<Option<GrafanaCloudPublisher>, GrafanaError> {
        let (Some(endpoint), Some(user)) = (&self.grafana_endpoint, &self.grafana_user) else {
            return Ok(None);
        };
        let key = std::env::var("GRAFANA_CLOUD_API_KEY").unwrap_or_default();
        GrafanaCloudPublisher::new(key, user.as_str(), endpoint.as_str()).map(Some)
    }
}
