//! `demo` options for the Elasticsearch publisher.

use clap::Args;
use pipeline_telemetry::elasticsearch::{
    validate_index_prefix, ElasticsearchError, ElasticsearchPublisher, DEFAULT_INDEX_PREFIX,
};

/// Ship the demo's records to Elasticsearch.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Elasticsearch")]
pub struct ElasticsearchArgs {
    /// Send every record to this Elasticsearch node, such as http://localhost:9200 (repeat
    /// for several: requests go round-robin). Credentials come from ELASTICSEARCH_API_KEY, or
    /// ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD; a private CA from
    /// ELASTICSEARCH_CA_CERT (a PEM file)
    #[arg(long = "elasticsearch", value_name = "URL")]
    pub hosts: Vec<String>,
    /// Start of the index names: PREFIX-event-YYYY.MM.DD and PREFIX-network-YYYY.MM.DD
    #[arg(
        long = "es-index-prefix",
        value_name = "PREFIX",
        default_value = DEFAULT_INDEX_PREFIX,
        value_parser = parse_index_prefix
    )]
    pub index_prefix: String,
}

/// Refuses, at parse time (exit code 2), a prefix Elasticsearch would refuse.
fn parse_index_prefix(prefix: &str) -> Result<String, String> {
    validate_index_prefix(prefix)
        .map(|()| prefix.to_owned())
        .map_err(|e| e.to_string())
}

impl ElasticsearchArgs {
    /// The publisher the flags ask for; `None` without `--elasticsearch`.
    ///
    /// # Errors
    /// A host, prefix, credential or CA certificate that cannot be used, or
    /// ELASTICSEARCH_USERNAME without ELASTICSEARCH_PASSWORD. Secrets never appear in them.
    pub fn publisher(&self) -> Result<Option<ElasticsearchPublisher>, ElasticsearchError> {
        if self.hosts.is_empty() {
            return Ok(None);
        }
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut builder =
            ElasticsearchPublisher::builder(&self.hosts)?.index_prefix(&self.index_prefix)?;
        if let Some(key) = var("ELASTICSEARCH_API_KEY") {
            builder = builder.api_key(key)?;
        } else if let Some(username) = var("ELASTICSEARCH_USERNAME") {
            let password =
                var("ELASTICSEARCH_PASSWORD").ok_or(ElasticsearchError::InvalidCredential {
                    kind: "password",
                    reason: "ELASTICSEARCH_USERNAME is set but ELASTICSEARCH_PASSWORD is not",
                })?;
            builder = builder.basic_auth(&username, password)?;
        }
        if let Some(path) = var("ELASTICSEARCH_CA_CERT") {
            builder = builder.ca_certificate_file(path)?;
        }
        builder.build().map(Some)
    }
}
