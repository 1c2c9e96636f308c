//! Errors returned to callers of the producer.
//!
//! A refused message is handed back inside the error ([`ProduceError::into_value`]), so the
//! caller decides whether to retry, spill or count it; nothing is dropped behind its back.
//! Everything the producer drops *after* accepting a message is counted in
//! [`ProducerMetrics`](crate::ProducerMetrics) instead, since no caller is waiting by then.

use bytes::Bytes;

/// Why [`Producer::produce`](crate::Producer::produce) refused a message.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The buffer is full and the strategy is `returnError`.
    #[error(
        "producer buffer is full: a {needed} byte message does not fit in maxBufferSize {max}; \
         retry later or use onFullStrategy dropOldest"
    )]
    BufferFull {
        /// The refused value.
        value: Bytes,
        /// Its size in bytes.
        needed: usize,
        /// The buffer's `maxBufferSize`.
        max: usize,
    },
    /// The value is larger than `maxMessageSize` or than the whole buffer.
    #[error("message of {size} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// The refused value.
        value: Bytes,
        /// Its size in bytes.
        size: usize,
        /// The smaller of `maxMessageSize` and `maxBufferSize`.
        max: usize,
    },
    /// The shard is not below the topic's shard count.
    #[error("shard {shard} is out of range: the topic has {number_of_shards} shards")]
    InvalidShard {
        /// The refused value.
        value: Bytes,
        /// The shard asked for.
        shard: u32,
        /// The topic's shard count.
        number_of_shards: u32,
    },
    /// [`Producer::close`](crate::Producer::close) has been called.
    #[error("producer is closed")]
    Closed {
        /// The refused value.
        value: Bytes,
    },
}

impl ProduceError {
    /// The refused value, for the caller to retry or count.
    pub fn into_value(self) -> Bytes {
        match self {
            Self::BufferFull { value, .. }
            | Self::TooLarge { value, .. }
            | Self::InvalidShard { value, .. }
            | Self::Closed { value } => value,
        }
    }
}

/// Why a consumer service could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceError {
    /// A service with this name is already being written to.
    #[error("consumer service {0:?} already exists; remove it first to change its spec")]
    AlreadyExists(String),
    /// The producer is closed.
    #[error("producer is closed")]
    Closed,
    /// Called outside a Tokio runtime, so the writer task cannot start.
    #[error("adding consumer service {0:?} needs a Tokio runtime to run its writer")]
    NoRuntime(String),
}
