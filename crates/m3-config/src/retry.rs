//! M3's `retry:` block, shared by every config that retries something: the etcd client
//! (`kvClient.etcd.retry`), the coordinator's ingester (`ingest.ingester.retry`) and the m3msg
//! producer (`writer.messageRetry`, `writer.connection.retry`).
//!
//! The block holds what the file says and nothing else: every key is optional, because each
//! user has its own defaults (M3's message retries start at 5s, its reconnects at 1s). The user
//! combines the block with its defaults and documents which keys take effect.

use std::time::Duration;

use serde::Deserialize;

/// `retry:` as M3 keys it. Unknown keys are errors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryConfig {
    /// The first delay (`initialBackoff`).
    #[serde(default, with = "crate::option_duration")]
    pub initial_backoff: Option<Duration>,
    /// How much each delay grows over the previous one (`backoffFactor`).
    #[serde(default)]
    pub backoff_factor: Option<f64>,
    /// The largest delay (`maxBackoff`).
    #[serde(default, with = "crate::option_duration")]
    pub max_backoff: Option<Duration>,
    /// Attempts after the first (`maxRetries`).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Retry without a limit (`forever`).
    #[serde(default)]
    pub forever: Option<bool>,
    /// Randomise each delay (`jitter`).
    #[serde(default)]
    pub jitter: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_m3_key() {
        let retry: RetryConfig = serde_saphyr::from_str(
            "initialBackoff: 1s\nbackoffFactor: 1.5\nmaxBackoff: 1m\nmaxRetries: 3\n\
             forever: false\njitter: true\n",
        )
        .unwrap();
        assert_eq!(
            retry,
            RetryConfig {
                initial_backoff: Some(Duration::from_secs(1)),
                backoff_factor: Some(1.5),
                max_backoff: Some(Duration::from_secs(60)),
                max_retries: Some(3),
                forever: Some(false),
                jitter: Some(true),
            }
        );
        let empty: RetryConfig = serde_saphyr::from_str("{}").unwrap();
        assert_eq!(empty, RetryConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = serde_saphyr::from_str::<RetryConfig>("maxRetry: 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("maxRetry"), "{err}");
        let err = serde_saphyr::from_str::<RetryConfig>("maxBackoff: later\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("later"), "{err}");
        assert!(serde_saphyr::from_str::<RetryConfig>("maxRetries: -1\n").is_err());
    }
}
