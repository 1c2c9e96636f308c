//! The base of every config file of `m3aggregator`, `m3coordinator` and `m3 local`: loading,
//! M3's duration strings, and the YAML blocks several owners share.
//!
//! Config files use M3's key names, so a user can bring the blocks of an M3 deployment over as
//! they are. Loading happens in three steps, each reporting errors a user can act on:
//!
//! 1. [`expand_env`] replaces `${VAR}` and `${VAR:default}` with values from the environment
//!    (M3 does the same). Every missing variable is reported at once, not only the first.
//! 2. The text is parsed into the binary's config types. Those types use
//!    `#[serde(deny_unknown_fields)]`, so a misspelt key is an error naming the key and where it
//!    is, instead of a silently ignored setting.
//! 3. The binary validates values that types cannot express and reports them with the key path,
//!    every problem of the file at once, through [`Problems`].
//!
//! The file name is part of every error.
//!
//! Each M3 block is declared once, next to the crate that owns it. The blocks with no single
//! owner live here:
//!
//! * [`duration`]: M3's duration strings (`10s`, `1m30s`, `2d`), with the serde helpers
//!   [`duration`] and [`option_duration`];
//! * [`RetryConfig`]: the `retry:` block;
//! * [`KvScopeConfig`]: the KV namespace/environment/zone block;
//! * [`Ignored`]: a value M3 defines that has no effect here.
//!
//! This crate depends on no other crate of the workspace, so every crate can build on it.

pub mod duration;
mod ignored;
mod kv_scope;
mod load;
mod problems;
mod retry;

pub use duration::option as option_duration;
pub use ignored::Ignored;
pub use kv_scope::KvScopeConfig;
pub use load::{ConfigError, expand_env, load, parse};
pub use problems::Problems;
pub use retry::RetryConfig;
