//! Placement algorithms: building placements and changing them one transition at a time.
//!
//! Every function takes a placement by reference and returns a new one, so a failed change leaves
//! the caller's placement untouched and the admin API can answer a dry run with the result.
//! Output is deterministic: instances are processed in ID order and ties are broken by the lower
//! shard set ID or shard ID, so the same request always gives the same placement.
//!
//! Mirrored placements (aggregators) follow M3's approach: group instances into shard sets of RF
//! members, treat each shard set as one virtual instance whose weight is its members' common
//! weight, spread shards across shard sets in proportion to weight, then give every member of a
//! set the same shard list. Moving shards between sets is planned the same way for the initial
//! build, for adds and for removes: compute each set's target count, take the surplus (the
//! highest shard IDs) from sets above target and from sets being removed, and hand each freed
//! shard to the set furthest below its target.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use super::{Instance, Placement, PlacementError, Shard, ShardState};

/// The times a placement change works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The current time, in Unix nanoseconds.
    pub now_nanos: i64,
    /// When shards change hands: the cutover of new copies and the cutoff of leaving copies.
    pub transition_nanos: i64,
    /// The largest aggregation window (M3's `maxAggregationWindowSize`, default 1m): a leaving
    /// copy is dropped only once its cutoff is at least this far in the past.
    pub max_window_nanos: i64,
}

impl Timing {
    /// Timing for a change made at `now_nanos`: the transition is `now + warmup` rounded up to a
    /// multiple of `max_window_nanos` (see [`transition_nanos`]).
    pub fn new(now_nanos: i64, warmup_nanos: i64, max_window_nanos: i64) -> Self {
        Timing {
            now_nanos,
            transition_nanos: transition_nanos(now_nanos, warmup_nanos, max_window_nanos),
            max_window_nanos,
        }
    }
}

/// The cutover/cutoff time M3's coordinator uses: `now + warmup`, rounded up to a multiple of
/// `max_window_nanos` so that a transition never splits an aggregation window. A non-positive
/// window leaves the time unrounded.
pub fn transition_nanos(now_nanos: i64, warmup_nanos: i64, max_window_nanos: i64) -> i64 {
    let t = now_nanos.saturating_add(warmup_nanos);
    if max_window_nanos <= 0 {
        return t;
    }
    match t.rem_euclid(max_window_nanos) {
        0 => t,
        r => t.saturating_add(max_window_nanos - r),
    }
}

/// Builds a non-sharded placement (coordinators): the instances, no shards.
///
/// Shards and shard set IDs given on the instances are cleared; the replication factor is 1.
///
/// # Errors
/// [`PlacementError::NoInstances`], [`PlacementError::MissingField`] (id, endpoint),
/// [`PlacementError::DuplicateInstance`].
pub fn build_non_sharded(instances: Vec<Instance>) -> Result<Placement, PlacementError> {
    check_instances(&instances, false)?;
    let instances = instances
        .into_iter()
        .map(|mut i| {
            i.shards.clear();
            i.shard_set_id = 0;
            (i.id.clone(), i)
        })
        .collect();
    Ok(Placement {
        instances,
        replica_factor: 1,
        ..Placement::default()
    })
}

/// Builds a sharded, non-mirrored placement (m3db style): every shard gets `replication_factor`
/// copies on instances of distinct isolation groups, spread in proportion to weight. All
/// shards start INITIALIZING with `cutover_nanos`.
///
/// # Errors
/// Everything [`build_non_sharded`] reports, plus [`PlacementError::ZeroShards`],
/// [`PlacementError::ZeroReplicationFactor`], [`PlacementError::ReplicationFactorTooLarge`],
/// [`PlacementError::ZeroWeight`].
pub fn build_sharded(
    instances: Vec<Instance>,
    num_shards: u32,
    replication_factor: u32,
    cutover_nanos: i64,
) -> Result<Placement, PlacementError> {
    check_instances(&instances, true)?;
    check_sharding(&instances, num_shards, replication_factor)?;
    let mut instances = instances;
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    for i in &mut instances {
        i.shards.clear();
        i.shard_set_id = 0;
    }
    let mut load = vec![0u64; instances.len()];
    for shard in 0..num_shards {
        let mut used_groups: HashSet<String> = HashSet::new();
        for _ in 0..replication_factor {
            // The least loaded instance relative to its weight, in a group not yet used.
            let mut best: Option<usize> = None;
            for (idx, i) in instances.iter().enumerate() {
                if used_groups.contains(&i.isolation_group) {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some(b) => {
                        // load[idx]/w[idx] < load[b]/w[b], cross-multiplied.
                        u128::from(load[idx]) * u128::from(instances[b].weight)
                            < u128::from(load[b]) * u128::from(i.weight)
                    }
                };
                if better {
                    best = Some(idx);
                }
            }
            let Some(b) = best else {
                // Cannot happen: check_sharding ensured enough isolation groups.
                return Err(PlacementError::invalid(format!(
                    "no isolation group left for replica of shard {shard}"
                )));
            };
            used_groups.insert(instances[b].isolation_group.clone());
            load[b] += 1;
            instances[b].put_shard(initializing(shard, cutover_nanos, ""));
        }
    }
    Ok(Placement {
        instances: instances.into_iter().map(|i| (i.id.clone(), i)).collect(),
        replica_factor: replication_factor,
        num_shards,
        is_sharded: true,
        cutover_time: cutover_nanos,
        ..Placement::default()
    })
}

/// Builds a mirrored placement (aggregators).
///
/// Instances are grouped into shard sets of `replication_factor` members with equal weight from
/// distinct isolation groups, numbered from 1. When every instance already carries a
/// `shard_set_id`, that grouping is used (and checked) instead. Shards are spread across shard
/// sets in proportion to weight (for equal weights, counts differ by at most one), every member
/// of a set gets the same shard list, and all shards start INITIALIZING with `cutover_nanos`.
///
/// # Errors
/// Everything [`build_sharded`] reports, plus [`PlacementError::NotDivisible`],
/// [`PlacementError::IsolationGroupsUnbalanced`], and for explicit shard set IDs
/// [`PlacementError::MixedShardSetIds`], [`PlacementError::ShardSetSize`],
/// [`PlacementError::UnequalWeights`], [`PlacementError::IsolationGroupConflict`].
pub fn build_mirrored(
    instances: Vec<Instance>,
    num_shards: u32,
    replication_factor: u32,
    cutover_nanos: i64,
) -> Result<Placement, PlacementError> {
    check_instances(&instances, true)?;
    check_sharding(&instances, num_shards, replication_factor)?;
    let mut instances = instances;
    for i in &mut instances {
        i.shards.clear();
    }
    let max_id = form_shard_sets(&mut instances, replication_factor, &BTreeSet::new(), 0)?;
    let mut p = Placement {
        instances: instances.into_iter().map(|i| (i.id.clone(), i)).collect(),
        replica_factor: replication_factor,
        num_shards,
        is_sharded: true,
        cutover_time: cutover_nanos,
        is_mirrored: true,
        max_shard_set_id: max_id,
        ..Placement::default()
    };
    rebalance_shard_sets(&mut p, &BTreeSet::new(), cutover_nanos)?;
    Ok(p)
}

impl Placement {
    /// Ends the current transition (M3's `MarkAllShardsAvailable`): every INITIALIZING shard
    /// becomes AVAILABLE with cutover, cutoff and source cleared, the LEAVING copies it replaces
    /// are dropped, and instances left without shards by that are removed.
    ///
    /// Non-sharded placements are returned unchanged.
    ///
    /// # Errors
    /// [`PlacementError::BeforeCutover`] while an INITIALIZING shard's cutover is after
    /// `now_nanos`; [`PlacementError::BeforeCutoff`] while a LEAVING shard's cutoff is later than
    /// `now_nanos - max_window_nanos`.
    pub fn mark_all_available(
        &self,
        now_nanos: i64,
        max_window_nanos: i64,
    ) -> Result<Placement, PlacementError> {
        if !self.is_sharded {
            return Ok(self.clone());
        }
        let cutoff_limit = now_nanos.saturating_sub(max_window_nanos);
        let check_cutoff = |instance: &Instance, shard: &Shard| {
            if shard.effective_cutoff_nanos() > cutoff_limit {
                Err(PlacementError::BeforeCutoff {
                    instance: instance.id.clone(),
                    shard: shard.id,
                    cutoff_nanos: shard.cutoff_nanos,
                    max_window_nanos,
                    now_nanos,
                })
            } else {
                Ok(())
            }
        };

        let mut to_available: Vec<(String, u32)> = Vec::new();
        let mut to_drop: BTreeSet<(String, u32)> = BTreeSet::new();
        for i in self.instances.values() {
            for s in &i.shards {
                if s.state != ShardState::Initializing {
                    continue;
                }
                if s.cutover_nanos > now_nanos {
                    return Err(PlacementError::BeforeCutover {
                        instance: i.id.clone(),
                        shard: s.id,
                        cutover_nanos: s.cutover_nanos,
                        now_nanos,
                    });
                }
                if !s.source_id.is_empty()
                    && let Some(src) = self.instances.get(&s.source_id)
                    && let Some(src_shard) = src.shard(s.id)
                    && src_shard.state == ShardState::Leaving
                {
                    check_cutoff(src, src_shard)?;
                    to_drop.insert((src.id.clone(), s.id));
                }
                to_available.push((i.id.clone(), s.id));
            }
        }
        // LEAVING copies nobody takes over from (e.g. an M3 placement without source IDs).
        for i in self.instances.values() {
            for s in &i.shards {
                if s.state == ShardState::Leaving && !to_drop.contains(&(i.id.clone(), s.id)) {
                    check_cutoff(i, s)?;
                    to_drop.insert((i.id.clone(), s.id));
                }
            }
        }

        let mut p = self.clone();
        let mut emptied = BTreeSet::new();
        for (id, shard) in to_drop {
            if let Some(i) = p.instances.get_mut(&id) {
                i.remove_shard(shard);
                if i.shards.is_empty() {
                    emptied.insert(id);
                }
            }
        }
        for id in emptied {
            p.instances.remove(&id);
        }
        for (id, shard) in to_available {
            if let Some(s) = p.instances.get_mut(&id).and_then(|i| i.shard_mut(shard)) {
                s.state = ShardState::Available;
                s.cutover_nanos = 0;
                s.cutoff_nanos = 0;
                s.source_id.clear();
            }
        }
        Ok(p)
    }

    /// Adds instances.
    ///
    /// Mirrored: first ends the previous transition ([`Placement::mark_all_available`]), then
    /// groups the new instances into new shard sets (IDs above `max_shard_set_id`, or the IDs
    /// they carry) and moves shards to them until shard sets are balanced by weight; moved shards
    /// are LEAVING on the old set and INITIALIZING on the new one at `timing.transition_nanos`.
    /// Non-sharded: inserts the instances.
    ///
    /// # Errors
    /// The errors of [`build_mirrored`] for the new instances, [`PlacementError::InstanceExists`],
    /// [`PlacementError::ShardSetExists`], the errors of [`Placement::mark_all_available`], and
    /// [`PlacementError::Unsupported`] for sharded non-mirrored placements.
    pub fn add_instances(
        &self,
        instances: Vec<Instance>,
        timing: &Timing,
    ) -> Result<Placement, PlacementError> {
        if !self.is_sharded {
            check_instances(&instances, false)?;
            let mut p = self.clone();
            for mut i in instances {
                if p.instances.contains_key(&i.id) {
                    return Err(PlacementError::InstanceExists { id: i.id });
                }
                i.shards.clear();
                i.shard_set_id = 0;
                p.instances.insert(i.id.clone(), i);
            }
            return Ok(p);
        }
        self.require_mirrored("adding instances")?;
        check_instances(&instances, true)?;
        check_replication(&instances, self.replica_factor)?;
        let mut p = self.mark_all_available(timing.now_nanos, timing.max_window_nanos)?;
        if let Some(i) = instances.iter().find(|i| p.instances.contains_key(&i.id)) {
            return Err(PlacementError::InstanceExists { id: i.id.clone() });
        }
        let mut instances = instances;
        for i in &mut instances {
            i.shards.clear();
        }
        let existing = p.shard_set_ids();
        let max_id = form_shard_sets(
            &mut instances,
            self.replica_factor,
            &existing,
            p.max_shard_set_id,
        )?;
        p.max_shard_set_id = p.max_shard_set_id.max(max_id);
        for i in instances {
            p.instances.insert(i.id.clone(), i);
        }
        rebalance_shard_sets(&mut p, &BTreeSet::new(), timing.transition_nanos)?;
        p.cutover_time = timing.transition_nanos;
        Ok(p)
    }

    /// Removes instances.
    ///
    /// Mirrored: first ends the previous transition, then requires whole shard sets (every
    /// member named) and hands their shards to the remaining sets, balanced by weight. The
    /// removed instances stay in the placement holding LEAVING shards until the next
    /// [`Placement::mark_all_available`]; instances without shards go at once.
    /// Non-sharded: deletes the instances.
    ///
    /// # Errors
    /// [`PlacementError::UnknownInstance`], [`PlacementError::PartialShardSetRemoval`],
    /// [`PlacementError::RemovesEverything`], the errors of [`Placement::mark_all_available`],
    /// [`PlacementError::Unsupported`] for sharded non-mirrored placements.
    pub fn remove_instances<S: AsRef<str>>(
        &self,
        ids: &[S],
        timing: &Timing,
    ) -> Result<Placement, PlacementError> {
        let ids: BTreeSet<&str> = ids.iter().map(AsRef::as_ref).collect();
        if let Some(id) = ids.iter().find(|id| !self.instances.contains_key(**id)) {
            return Err(PlacementError::UnknownInstance {
                id: (*id).to_owned(),
            });
        }
        if !self.is_sharded {
            let mut p = self.clone();
            for id in ids {
                p.instances.remove(id);
            }
            return Ok(p);
        }
        self.require_mirrored("removing instances")?;
        let mut p = self.mark_all_available(timing.now_nanos, timing.max_window_nanos)?;
        // mark_all_available may have dropped some of the named instances already.
        let ids: BTreeSet<&str> = ids
            .into_iter()
            .filter(|id| p.instances.contains_key(*id))
            .collect();
        let mut removed_sets = BTreeSet::new();
        for id in &ids {
            if let Some(i) = p.instances.get(*id) {
                removed_sets.insert(i.shard_set_id);
            }
        }
        for &set in &removed_sets {
            let remaining: Vec<String> = p
                .shard_set_members(set)
                .filter(|m| !ids.contains(m.id.as_str()))
                .map(|m| m.id.clone())
                .collect();
            if !remaining.is_empty() {
                return Err(PlacementError::PartialShardSetRemoval {
                    shard_set_id: set,
                    remaining,
                });
            }
        }
        if p.shard_set_ids().is_subset(&removed_sets) {
            return Err(PlacementError::RemovesEverything);
        }
        rebalance_shard_sets(&mut p, &removed_sets, timing.transition_nanos)?;
        for id in ids {
            if p.instances.get(id).is_some_and(|i| i.shards.is_empty()) {
                p.instances.remove(id);
            }
        }
        p.cutover_time = timing.transition_nanos;
        Ok(p)
    }

    /// Replaces instances one for one.
    ///
    /// Mirrored: first ends the previous transition; then each leaving instance is matched with
    /// the first unused candidate of the same weight whose isolation group no other member of
    /// its shard set uses. The candidate joins the leaving instance's shard set and takes all its
    /// shards INITIALIZING (source: the leaving instance); the leaving instance keeps them
    /// LEAVING until the next [`Placement::mark_all_available`]. Unused candidates are ignored.
    /// Non-sharded: removes the leaving instances and adds all candidates.
    ///
    /// # Errors
    /// [`PlacementError::UnknownInstance`], [`PlacementError::InstanceExists`],
    /// [`PlacementError::NoReplacementCandidate`], the candidate checks of [`build_mirrored`],
    /// the errors of [`Placement::mark_all_available`], [`PlacementError::Unsupported`] for
    /// sharded non-mirrored placements.
    pub fn replace_instances<S: AsRef<str>>(
        &self,
        leaving: &[S],
        candidates: Vec<Instance>,
        timing: &Timing,
    ) -> Result<Placement, PlacementError> {
        if !self.is_sharded {
            let removed = self.remove_instances(leaving, timing)?;
            return removed.add_instances(candidates, timing);
        }
        self.require_mirrored("replacing instances")?;
        check_instances(&candidates, true)?;
        let mut p = self.mark_all_available(timing.now_nanos, timing.max_window_nanos)?;
        if let Some(c) = candidates.iter().find(|c| p.instances.contains_key(&c.id)) {
            return Err(PlacementError::InstanceExists { id: c.id.clone() });
        }
        let mut leaving_ids: Vec<&str> = Vec::new();
        for l in leaving {
            let l = l.as_ref();
            if !p.instances.contains_key(l) {
                return Err(PlacementError::UnknownInstance { id: l.to_owned() });
            }
            if !leaving_ids.contains(&l) {
                leaving_ids.push(l);
            }
        }
        let mut candidates: Vec<Option<Instance>> = candidates.into_iter().map(Some).collect();
        // Isolation groups taken in each shard set by staying members and chosen candidates.
        let mut taken: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        for i in p.instances.values() {
            if !leaving_ids.contains(&i.id.as_str()) {
                taken
                    .entry(i.shard_set_id)
                    .or_default()
                    .insert(i.isolation_group.clone());
            }
        }
        for l in leaving_ids {
            let Some(old) = p.instances.get(l).cloned() else {
                continue;
            };
            let groups = taken.entry(old.shard_set_id).or_default();
            let pick = candidates.iter().position(|c| {
                c.as_ref()
                    .is_some_and(|c| c.weight == old.weight && !groups.contains(&c.isolation_group))
            });
            let Some(mut new) = pick.and_then(|idx| candidates[idx].take()) else {
                return Err(PlacementError::NoReplacementCandidate {
                    leaving: old.id,
                    shard_set_id: old.shard_set_id,
                    weight: old.weight,
                });
            };
            groups.insert(new.isolation_group.clone());
            new.shard_set_id = old.shard_set_id;
            new.shards = old
                .shards
                .iter()
                .map(|s| initializing(s.id, timing.transition_nanos, &old.id))
                .collect();
            if old.shards.is_empty() {
                p.instances.remove(&old.id);
            } else if let Some(o) = p.instances.get_mut(&old.id) {
                for s in &mut o.shards {
                    s.state = ShardState::Leaving;
                    s.cutoff_nanos = timing.transition_nanos;
                }
            }
            p.instances.insert(new.id.clone(), new);
        }
        p.cutover_time = timing.transition_nanos;
        Ok(p)
    }

    fn require_mirrored(&self, operation: &'static str) -> Result<(), PlacementError> {
        if self.is_mirrored {
            Ok(())
        } else {
            Err(PlacementError::Unsupported {
                operation,
                kind: "sharded non-mirrored",
            })
        }
    }
}

fn initializing(id: u32, cutover_nanos: i64, source_id: &str) -> Shard {
    Shard {
        cutover_nanos,
        source_id: source_id.to_owned(),
        ..Shard::new(id, ShardState::Initializing)
    }
}

/// Checks IDs, endpoints, duplicates and (for sharded placements) weights.
fn check_instances(instances: &[Instance], sharded: bool) -> Result<(), PlacementError> {
    if instances.is_empty() {
        return Err(PlacementError::NoInstances);
    }
    let mut seen = HashSet::new();
    for (pos, i) in instances.iter().enumerate() {
        if i.id.is_empty() {
            return Err(PlacementError::MissingField {
                instance: format!("at position {pos}"),
                field: "id",
            });
        }
        if i.endpoint.is_empty() {
            return Err(PlacementError::MissingField {
                instance: format!("{:?}", i.id),
                field: "endpoint",
            });
        }
        if !seen.insert(i.id.as_str()) {
            return Err(PlacementError::DuplicateInstance { id: i.id.clone() });
        }
        if sharded && i.weight == 0 {
            return Err(PlacementError::ZeroWeight { id: i.id.clone() });
        }
    }
    Ok(())
}

fn check_sharding(
    instances: &[Instance],
    num_shards: u32,
    replication_factor: u32,
) -> Result<(), PlacementError> {
    if num_shards == 0 {
        return Err(PlacementError::ZeroShards);
    }
    if num_shards > super::MAX_SHARDS {
        return Err(PlacementError::TooManyShards {
            num_shards,
            max: super::MAX_SHARDS,
        });
    }
    check_replication(instances, replication_factor)
}

fn check_replication(
    instances: &[Instance],
    replication_factor: u32,
) -> Result<(), PlacementError> {
    if replication_factor == 0 {
        return Err(PlacementError::ZeroReplicationFactor);
    }
    let groups: BTreeSet<&str> = instances
        .iter()
        .map(|i| i.isolation_group.as_str())
        .collect();
    if groups.len() < replication_factor as usize {
        return Err(PlacementError::ReplicationFactorTooLarge {
            replication_factor,
            isolation_groups: groups.len(),
        });
    }
    Ok(())
}

/// Assigns shard set IDs to `instances` (all new). Returns the highest ID assigned.
///
/// Explicit IDs (all instances carry one) are checked: not in `existing`, RF members each, equal
/// weights, distinct isolation groups. Otherwise instances are grouped by weight, and within a
/// weight into sets from distinct isolation groups, always drawing from the RF groups with the
/// most instances left (which succeeds whenever any grouping exists); IDs follow `after`.
fn form_shard_sets(
    instances: &mut [Instance],
    rf: u32,
    existing: &BTreeSet<u32>,
    after: u32,
) -> Result<u32, PlacementError> {
    let with = instances.iter().filter(|i| i.shard_set_id != 0).count();
    if with == instances.len() {
        let mut sets: BTreeMap<u32, Vec<&Instance>> = BTreeMap::new();
        for i in instances.iter() {
            sets.entry(i.shard_set_id).or_default().push(i);
        }
        for (&id, members) in &sets {
            if existing.contains(&id) {
                return Err(PlacementError::ShardSetExists { shard_set_id: id });
            }
            if members.len() != rf as usize {
                return Err(PlacementError::ShardSetSize {
                    shard_set_id: id,
                    expected: rf,
                    actual: members.len(),
                });
            }
            let weights: BTreeSet<u32> = members.iter().map(|i| i.weight).collect();
            if weights.len() > 1 {
                return Err(PlacementError::UnequalWeights {
                    shard_set_id: id,
                    weights: weights.into_iter().collect(),
                });
            }
            let mut groups = BTreeSet::new();
            for m in members {
                if !groups.insert(m.isolation_group.as_str()) {
                    return Err(PlacementError::IsolationGroupConflict {
                        shard_set_id: id,
                        isolation_group: m.isolation_group.clone(),
                    });
                }
            }
        }
        return Ok(sets.keys().next_back().copied().unwrap_or(after).max(after));
    }
    if with != 0 {
        return Err(PlacementError::MixedShardSetIds {
            with,
            without: instances.len() - with,
        });
    }

    instances.sort_by(|a, b| a.id.cmp(&b.id));
    let mut by_weight: BTreeMap<u32, BTreeMap<String, VecDeque<usize>>> = BTreeMap::new();
    for (idx, i) in instances.iter().enumerate() {
        by_weight
            .entry(i.weight)
            .or_default()
            .entry(i.isolation_group.clone())
            .or_default()
            .push_back(idx);
    }
    let mut next = after;
    let mut assignments: Vec<(usize, u32)> = Vec::with_capacity(instances.len());
    for (weight, mut groups) in by_weight {
        let count: usize = groups.values().map(VecDeque::len).sum();
        if !count.is_multiple_of(rf as usize) {
            return Err(PlacementError::NotDivisible {
                count,
                weight,
                replication_factor: rf,
            });
        }
        for _ in 0..count / rf as usize {
            let mut order: Vec<(usize, String)> = groups
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(g, q)| (q.len(), g.clone()))
                .collect();
            if order.len() < rf as usize {
                let detail = groups
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(g, q)| format!("{g:?}: {}", q.len()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(PlacementError::IsolationGroupsUnbalanced {
                    weight,
                    replication_factor: rf,
                    detail: format!("left without a set: {detail}"),
                });
            }
            order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            next = next.saturating_add(1);
            for (_, g) in order.into_iter().take(rf as usize) {
                if let Some(idx) = groups.get_mut(&g).and_then(VecDeque::pop_front) {
                    assignments.push((idx, next));
                }
            }
        }
    }
    for (idx, id) in assignments {
        if let Some(i) = instances.get_mut(idx) {
            i.shard_set_id = id;
        }
    }
    Ok(next)
}

/// Moves shards between the shard sets of a mirrored placement so that sets not in `removed` are
/// balanced by weight and sets in `removed` give up all their shards. Unowned shards (initial
/// build) are handed out too. Works on non-LEAVING shards; expects no transition in progress.
fn rebalance_shard_sets(
    p: &mut Placement,
    removed: &BTreeSet<u32>,
    transition_nanos: i64,
) -> Result<(), PlacementError> {
    // One unit per shard set: its weight, the shards its members own (identical across members
    // when the placement is valid; the union is used to stay total on odd input).
    struct Unit {
        id: u32,
        weight: u64,
        shards: BTreeSet<u32>,
        keep: bool,
    }
    let mut units: Vec<Unit> = Vec::new();
    for id in p.shard_set_ids() {
        let mut unit = Unit {
            id,
            weight: 0,
            shards: BTreeSet::new(),
            keep: !removed.contains(&id),
        };
        for m in p.shard_set_members(id) {
            unit.weight = unit.weight.max(u64::from(m.weight));
            unit.shards.extend(m.owned_shard_ids());
        }
        units.push(unit);
    }

    // Targets by weight, largest remainder first (ties: lower shard set ID).
    let total: u64 = units.iter().filter(|u| u.keep).map(|u| u.weight).sum();
    if total == 0 {
        return Err(PlacementError::invalid(
            "no shard set with positive weight to own shards",
        ));
    }
    let n = u64::from(p.num_shards);
    let mut targets: Vec<u64> = units
        .iter()
        .map(|u| if u.keep { n * u.weight / total } else { 0 })
        .collect();
    let mut leftover = n - targets.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..units.len()).filter(|&i| units[i].keep).collect();
    by_remainder.sort_by_key(|&i| std::cmp::Reverse((n * units[i].weight) % total));
    for &i in &by_remainder {
        if leftover == 0 {
            break;
        }
        targets[i] += 1;
        leftover -= 1;
    }

    // Free shards: all of removed sets, the highest IDs of sets above target, unowned shards.
    let mut pool: Vec<(u32, Option<usize>)> = Vec::new();
    let mut counts: Vec<u64> = Vec::with_capacity(units.len());
    for (idx, u) in units.iter().enumerate() {
        let give = (u.shards.len() as u64).saturating_sub(targets[idx]);
        pool.extend(
            u.shards
                .iter()
                .rev()
                .take(give as usize)
                .map(|&s| (s, Some(idx))),
        );
        counts.push(u.shards.len() as u64 - give);
    }
    let owned: BTreeSet<u32> = units
        .iter()
        .flat_map(|u| u.shards.iter().copied())
        .collect();
    pool.extend(
        (0..p.num_shards)
            .filter(|s| !owned.contains(s))
            .map(|s| (s, None)),
    );
    pool.sort_unstable();

    for (shard, from) in pool {
        let to = (0..units.len())
            .filter(|&i| units[i].keep && counts[i] < targets[i])
            .max_by_key(|&i| (targets[i] - counts[i], std::cmp::Reverse(units[i].id)));
        let Some(to) = to else {
            return Err(PlacementError::invalid(format!(
                "no shard set below target to take shard {shard}"
            )));
        };
        counts[to] += 1;
        move_shard(
            p,
            shard,
            from.map(|f| units[f].id),
            units[to].id,
            transition_nanos,
        );
    }
    Ok(())
}

/// Moves `shard` to every member of set `to` (INITIALIZING) from every member of set `from`
/// (LEAVING), pairing members by isolation group where possible, else by ID order.
fn move_shard(p: &mut Placement, shard: u32, from: Option<u32>, to: u32, at: i64) {
    let receivers: Vec<(String, String)> = p
        .shard_set_members(to)
        .map(|m| (m.id.clone(), m.isolation_group.clone()))
        .collect();
    let mut sources: Vec<(String, String)> = match from {
        Some(f) => p
            .shard_set_members(f)
            .map(|m| (m.id.clone(), m.isolation_group.clone()))
            .collect(),
        None => Vec::new(),
    };
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(receivers.len());
    let mut unpaired: Vec<String> = Vec::new();
    for (id, group) in &receivers {
        match sources.iter().position(|(_, g)| g == group) {
            Some(pos) => pairs.push((id.clone(), sources.remove(pos).0)),
            None => unpaired.push(id.clone()),
        }
    }
    let mut rest = sources.into_iter();
    for id in unpaired {
        let src = rest.next().map(|(s, _)| s).unwrap_or_default();
        pairs.push((id, src));
    }
    if let Some(f) = from {
        let leaving: Vec<String> = p.shard_set_members(f).map(|m| m.id.clone()).collect();
        for id in leaving {
            if let Some(s) = p.instances.get_mut(&id).and_then(|i| i.shard_mut(shard)) {
                s.state = ShardState::Leaving;
                s.cutoff_nanos = at;
            }
        }
    }
    for (id, src) in pairs {
        if let Some(i) = p.instances.get_mut(&id) {
            i.put_shard(initializing(shard, at, &src));
        }
    }
}
