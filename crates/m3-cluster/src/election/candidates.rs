//! The candidates of an election, in the order in which they may take a free lease.
//!
//! Every campaigning member keeps an entry in one record next to the election key
//! (`<election key>/candidates`), renewed every `ttl / 3` and dropped by the others once it
//! has not been renewed for a TTL. An entry says since when the member has stood (wall-clock
//! milliseconds), whether it is eligible (holds every window the leader has not flushed) and
//! whether it has just resigned. When the lease is free, the first candidate in line takes it
//! at once; the others give it one TTL (see the [election](super) module doc).
//!
//! The order copies what M3 gets from etcd's election queue, where older candidates come
//! first, and puts eligibility before age:
//!
//! 1. candidates that have not just resigned,
//! 2. eligible before not eligible,
//! 3. standing longer before standing shorter,
//! 4. the lower incarnation (a tie-break).
//!
//! A restarted process therefore queues behind the follower that kept running, whether or not
//! that follower can already prove it holds every window.

use bytes::Bytes;
use prost::Message;

use super::Shared;
use crate::kv::KvError;

/// One member standing in the election.
#[derive(Clone, PartialEq, Message)]
pub(super) struct CandidateRecord {
    /// The member's value (instance ID).
    #[prost(string, tag = "1")]
    pub(super) value: String,
    /// The member's incarnation (see `LeaseRecord`).
    #[prost(uint64, tag = "2")]
    pub(super) incarnation: u64,
    /// Wall-clock milliseconds since which the member has stood.
    #[prost(int64, tag = "3")]
    pub(super) since_ms: i64,
    /// Whether the member can lead without a gap.
    #[prost(bool, tag = "4")]
    pub(super) eligible: bool,
    /// Wall-clock milliseconds at which the entry lapses unless renewed.
    #[prost(int64, tag = "5")]
    pub(super) expires_at_ms: i64,
    /// The member resigned and holds back for one TTL.
    #[prost(bool, tag = "6")]
    pub(super) withdrawn: bool,
}

/// The record at `<election key>/candidates`.
#[derive(Clone, PartialEq, Message)]
pub(super) struct CandidateList {
    /// Every entry not yet removed; lapsed ones are dropped by the next writer.
    #[prost(message, repeated, tag = "1")]
    pub(super) candidates: Vec<CandidateRecord>,
}

impl CandidateRecord {
    /// The sort key: lower goes first.
    fn rank(&self) -> (bool, bool, i64, u64) {
        (
            self.withdrawn,
            !self.eligible,
            self.since_ms,
            self.incarnation,
        )
    }

    fn is(&self, value: &str, incarnation: u64) -> bool {
        self.value == value && self.incarnation == incarnation
    }
}

/// This member's entry as of now.
pub(super) fn own_entry(shared: &Shared, eligible: bool) -> CandidateRecord {
    CandidateRecord {
        value: shared.value.clone(),
        incarnation: shared.incarnation,
        since_ms: shared.since_ms,
        eligible,
        expires_at_ms: shared
            .clock
            .now_ms()
            .saturating_add(super::ttl_ms(shared.ttl)),
        withdrawn: shared.is_held_off(),
    }
}

/// Whether no live candidate comes before this member, which is `eligible` now. `lapsed` is
/// the (value, incarnation) of the lease holder that just stopped renewing: it is gone, even
/// if its entry has not lapsed yet.
pub(super) fn first_in_line(
    shared: &Shared,
    list: Option<&[u8]>,
    eligible: bool,
    lapsed: Option<(&str, u64)>,
) -> bool {
    let Some(list) = list.and_then(|bytes| CandidateList::decode(bytes).ok()) else {
        return true;
    };
    let now_ms = shared.clock.now_ms();
    let me = own_entry(shared, eligible);
    list.candidates.iter().all(|c| {
        c.is(&shared.value, shared.incarnation)
            || c.expires_at_ms <= now_ms
            || lapsed.is_some_and(|(value, incarnation)| c.is(value, incarnation))
            || c.rank() >= me.rank()
    })
}

/// Writes this member's entry (replacing its previous one and dropping lapsed entries).
pub(super) async fn register(shared: &Shared, eligible: bool) -> Result<(), KvError> {
    let entry = own_entry(shared, eligible);
    update(shared, Some(entry)).await
}

/// Removes this member's entry.
pub(super) async fn deregister(shared: &Shared) -> Result<(), KvError> {
    update(shared, None).await
}

/// Read, modify, check-and-set; a few attempts under contention, after which the next
/// heartbeat tries again.
async fn update(shared: &Shared, entry: Option<CandidateRecord>) -> Result<(), KvError> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let current = shared.kv.get(&shared.candidates_key).await?;
        let (version, mut list) = match current {
            None => (0, CandidateList::default()),
            Some(v) => (
                v.version,
                CandidateList::decode(v.value.as_ref()).unwrap_or_default(),
            ),
        };
        let now_ms = shared.clock.now_ms();
        list.candidates
            .retain(|c| c.expires_at_ms > now_ms && !c.is(&shared.value, shared.incarnation));
        list.candidates.extend(entry.clone());
        let bytes = Bytes::from(list.encode_to_vec());
        match shared
            .kv
            .check_and_set(&shared.candidates_key, version, bytes)
            .await
        {
            Ok(_) => return Ok(()),
            Err(KvError::VersionMismatch { .. } | KvError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
