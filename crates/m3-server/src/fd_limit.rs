//! The process's file-descriptor limit.
//!
//! Many distributions start services with a soft `RLIMIT_NOFILE` of 1024 and a much higher
//! hard limit. A server holding one descriptor per connection, plus the store's files, runs
//! out at the soft limit and `accept` starts failing. Raising the soft limit to the hard one at
//! start is what Go's runtime does for every program since Go 1.19, so M3's processes get it
//! for free; we do it explicitly.

/// Raises the soft open-file limit to the hard limit; returns the limit now in effect.
///
/// # Errors
/// When the limit cannot be read or set (e.g. a sandbox forbids it); callers log it and go on.
pub fn raise() -> std::io::Result<u64> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::increase_nofile_limit(hard)
}
