//! When a member may campaign for its shard set's leadership: M3's rules, from the cutover and
//! cutoff times of its shards and the flush times its shard set has persisted.
//!
//! A placement change hands shards over at a transition time `T`: a replaced instance's shards
//! are cut off at `T`, its replacement's (in the same shard set, so in the same election) cut
//! over at `T`. The leaving member emits the windows that start before `T` and no later ones;
//! its replacement emits the windows that end after `T` and no earlier ones. Leadership must
//! therefore pass from one to the other once the windows before `T` are out, and never the
//! other way round:
//!
//! ```text
//!                      T (cutover of the replacement = cutoff of the leaving member)
//! leaving member  ──lead──┼──lead until its flush times reach T──▶ stops campaigning
//! replacement     ── no campaign ──┼── campaigns ────────────────▶ leads, emits windows after T
//! ```
//!
//! - A member with a shard that is active (cut over, not cut off) campaigns.
//! - A member none of whose shards has cut over yet does not: leading before its cutover, it
//!   would drop the windows before `T` as not its own while moving the flush times past them.
//! - A member all of whose shards are cut off campaigns until the persisted flush times of each
//!   shard reach the end of the last window it emits, for every kind of window it holds there
//!   (category, resolution, forwarding hops); then it stops, so the others lead. A window kind
//!   with no persisted time is not flushed yet; flush times of kinds it does not hold (left by
//!   an earlier leader, a removed rule) do not hold it back. (Its own flush times never claim a
//!   window after the cutoff: see `shard.rs`.)
//! - A member with no shards campaigns (M3 does the same: a fresh shard set).
//!
//! Anything else (some shards not cut over, the others cut off) is not a change M3 or this
//! implementation makes; such a member does not campaign.

use m3_proto::flushpb::{ShardFlushTimes, ShardSetFlushTimes};

use crate::ShardAssignment;
use crate::flush::Category;
use crate::shard::{flushed_time, last_window_end_before};

/// A kind of window whose flush time the leader persists: category, resolution (nanoseconds)
/// and forwarding hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlushKey {
    /// How the windows' timestamps were assigned.
    pub category: Category,
    /// The windows' resolution, in nanoseconds.
    pub resolution_nanos: i64,
    /// How many aggregators forwarded the values before (forwarded windows only).
    pub forwarded_times: u32,
}

/// What a member holds of one shard: its assignment and the kinds of windows it aggregates
/// there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldShard {
    /// The shard and its cutover and cutoff.
    pub assignment: ShardAssignment,
    /// The kinds of windows held.
    pub flush_keys: Vec<FlushKey>,
}

/// Why a member does not campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCampaign {
    /// None of its shards has reached its cutover time.
    BeforeCutover,
    /// Every shard is cut off and the shard set's flush times have reached the cutoffs.
    CutOffAndFlushed,
    /// Some shards are not cut over yet, the others are cut off.
    UnexpectedShardTimes,
}

impl NoCampaign {
    /// A sentence for logs and status.
    pub fn reason(self) -> &'static str {
        match self {
            NoCampaign::BeforeCutover => "no shard has reached its cutover time yet",
            NoCampaign::CutOffAndFlushed => {
                "every shard is cut off and flushed up to its cutoff; the others lead"
            }
            NoCampaign::UnexpectedShardTimes => {
                "some shards are not cut over yet and the others are cut off"
            }
        }
    }
}

/// Whether a member holding `shards` may campaign at `now_nanos`, given the shard set's
/// persisted flush times (see the module doc).
///
/// # Errors
/// Why it may not.
pub fn may_campaign(
    shards: &[HeldShard],
    now_nanos: i64,
    flushed: &ShardSetFlushTimes,
) -> Result<(), NoCampaign> {
    if shards.is_empty() {
        return Ok(());
    }
    let cut_over = |s: &HeldShard| s.assignment.cutover_nanos <= now_nanos;
    let cut_off =
        |s: &HeldShard| s.assignment.cutoff_nanos != 0 && now_nanos >= s.assignment.cutoff_nanos;
    if shards.iter().any(|s| cut_over(s) && !cut_off(s)) {
        return Ok(());
    }
    if shards.iter().all(|s| !cut_over(s)) {
        return Err(NoCampaign::BeforeCutover);
    }
    if !shards.iter().all(cut_off) {
        return Err(NoCampaign::UnexpectedShardTimes);
    }
    let all_flushed = shards.iter().all(|s| {
        flushed_through_cutoff(
            flushed.by_shard.get(&s.assignment.id),
            &s.flush_keys,
            s.assignment.cutoff_nanos,
        )
    });
    if all_flushed {
        Err(NoCampaign::CutOffAndFlushed)
    } else {
        Ok(())
    }
}

/// Whether the persisted flush time of every kind of window held has reached the last window
/// before `cutoff`.
fn flushed_through_cutoff(times: Option<&ShardFlushTimes>, held: &[FlushKey], cutoff: i64) -> bool {
    held.iter().all(|k| {
        times
            .and_then(|t| flushed_time(t, k.category, k.resolution_nanos, k.forwarded_times))
            .is_some_and(|flushed| {
                flushed >= last_window_end_before(cutoff, k.resolution_nanos.max(1))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_proto::flushpb::ForwardedFlushTimesForResolution;

    const S: i64 = 1_000_000_000;
    const T: i64 = 1_000 * 60 * S;

    const TIMED_10S: FlushKey = FlushKey {
        category: Category::Timed,
        resolution_nanos: 10 * S,
        forwarded_times: 0,
    };
    const UNTIMED_1M: FlushKey = FlushKey {
        category: Category::Untimed,
        resolution_nanos: 60 * S,
        forwarded_times: 0,
    };

    fn shard(id: u32, cutover: i64, cutoff: i64) -> HeldShard {
        HeldShard {
            assignment: ShardAssignment {
                id,
                cutover_nanos: cutover,
                cutoff_nanos: cutoff,
            },
            flush_keys: vec![TIMED_10S, UNTIMED_1M],
        }
    }

    fn flushed(shard: u32, timed_10s: i64, standard_1m: i64) -> ShardSetFlushTimes {
        let mut times = ShardFlushTimes::default();
        times.timed_by_resolution.insert(10 * S, timed_10s);
        times.standard_by_resolution.insert(60 * S, standard_1m);
        let mut set = ShardSetFlushTimes::default();
        set.by_shard.insert(shard, times);
        set
    }

    #[test]
    fn an_active_shard_or_no_shard_campaigns() {
        let none = ShardSetFlushTimes::default();
        assert_eq!(may_campaign(&[], T, &none), Ok(()));
        assert_eq!(may_campaign(&[shard(0, 0, 0)], T, &none), Ok(()));
        // One active shard is enough, whatever the others.
        let mixed = [shard(0, T + S, 0), shard(1, 0, T - S), shard(2, 0, 0)];
        assert_eq!(may_campaign(&mixed, T, &none), Ok(()));
    }

    #[test]
    fn a_replacement_waits_for_its_cutover() {
        let none = ShardSetFlushTimes::default();
        let replacement = [shard(0, T, 0), shard(1, T, 0)];
        assert_eq!(
            may_campaign(&replacement, T - 1, &none),
            Err(NoCampaign::BeforeCutover)
        );
        assert_eq!(may_campaign(&replacement, T, &none), Ok(()));
    }

    #[test]
    fn a_leaving_member_leads_until_flushed_through_its_cutoff() {
        let leaving = [shard(3, 0, T)];
        // Before the cutoff it is an ordinary member.
        assert_eq!(may_campaign(&leaving, T - 1, &flushed(3, 0, 0)), Ok(()));
        // Cut off, but the window ending at T is not flushed in every kind it holds yet.
        assert_eq!(
            may_campaign(&leaving, T + 30 * S, &flushed(3, T, T - 60 * S)),
            Ok(())
        );
        assert_eq!(
            may_campaign(&leaving, T + 30 * S, &flushed(3, T - 10 * S, T)),
            Ok(())
        );
        assert_eq!(
            may_campaign(&leaving, T + 90 * S, &flushed(3, T, T)),
            Err(NoCampaign::CutOffAndFlushed)
        );
        // Nothing persisted yet (the leader's output not acked): not flushed.
        assert_eq!(
            may_campaign(&leaving, T + 90 * S, &ShardSetFlushTimes::default()),
            Ok(())
        );
        // Holding nothing there: nothing to flush.
        let empty = [HeldShard {
            flush_keys: Vec::new(),
            ..shard(3, 0, T)
        }];
        assert_eq!(
            may_campaign(&empty, T, &ShardSetFlushTimes::default()),
            Err(NoCampaign::CutOffAndFlushed)
        );
    }

    #[test]
    fn only_the_kinds_of_windows_held_count() {
        let leaving = [shard(3, 0, T)];
        // A stale 5m entry from an earlier leader never moves; it does not hold this back.
        let mut with_stale = flushed(3, T, T);
        if let Some(times) = with_stale.by_shard.get_mut(&3) {
            times.standard_by_resolution.insert(300 * S, T - 3_600 * S);
        }
        assert_eq!(
            may_campaign(&leaving, T + 90 * S, &with_stale),
            Err(NoCampaign::CutOffAndFlushed)
        );
        // Forwarded windows held count too.
        let forwarded = FlushKey {
            category: Category::Forwarded,
            resolution_nanos: 60 * S,
            forwarded_times: 1,
        };
        let mut holding_forwarded = shard(3, 0, T);
        holding_forwarded.flush_keys.push(forwarded);
        let mut times = flushed(3, T, T);
        assert_eq!(
            may_campaign(&[holding_forwarded.clone()], T + 90 * S, &times),
            Ok(()),
            "no forwarded flush time persisted yet"
        );
        let mut hops = ForwardedFlushTimesForResolution::default();
        hops.by_num_forwarded_times.insert(1, T);
        if let Some(t) = times.by_shard.get_mut(&3) {
            t.forwarded_by_resolution.insert(60 * S, hops);
        }
        assert_eq!(
            may_campaign(&[holding_forwarded], T + 90 * S, &times),
            Err(NoCampaign::CutOffAndFlushed)
        );
    }

    #[test]
    fn a_cutoff_off_the_window_grid_waits_for_the_window_it_straddles() {
        // Cut off 5s into a 10s window: that window starts before the cutoff, so the leaving
        // member emits it and must have flushed it.
        let leaving = [HeldShard {
            flush_keys: vec![TIMED_10S],
            ..shard(0, 0, T + 5 * S)
        }];
        let mut times = ShardFlushTimes::default();
        times.timed_by_resolution.insert(10 * S, T);
        let mut set = ShardSetFlushTimes::default();
        set.by_shard.insert(0, times);
        assert_eq!(may_campaign(&leaving, T + 20 * S, &set), Ok(()));
        if let Some(t) = set.by_shard.get_mut(&0) {
            t.timed_by_resolution.insert(10 * S, T + 10 * S);
        }
        assert_eq!(
            may_campaign(&leaving, T + 20 * S, &set),
            Err(NoCampaign::CutOffAndFlushed)
        );
    }

    #[test]
    fn shards_both_before_cutover_and_cut_off_do_not_campaign() {
        let odd = [shard(0, T + S, 0), shard(1, 0, T - S)];
        assert_eq!(
            may_campaign(&odd, T, &ShardSetFlushTimes::default()),
            Err(NoCampaign::UnexpectedShardTimes)
        );
    }
}
