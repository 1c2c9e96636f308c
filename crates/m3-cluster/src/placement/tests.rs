use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::kv::KvStore;
use crate::kv::memory::MemoryKv;
use crate::placement::store::PlacementStoreError;

const MINUTE: i64 = 60_000_000_000;

fn inst(id: &str, group: &str) -> Instance {
    Instance::new(id)
        .with_isolation_group(group)
        .with_endpoint(format!("{id}:6000"))
        .with_zone("embedded")
        .with_weight(100)
}

/// `sets` shard sets of `rf` members, member `m` of each in group `g{m}`.
fn instances(sets: usize, rf: usize) -> Vec<Instance> {
    let mut out = Vec::new();
    for s in 0..sets {
        for m in 0..rf {
            out.push(inst(&format!("agg{s}{m}"), &format!("g{m}")));
        }
    }
    out
}

/// Shard counts per shard set (non-LEAVING shards of one member).
fn shards_per_set(p: &Placement) -> BTreeMap<u32, usize> {
    let mut out = BTreeMap::new();
    for id in p.shard_set_ids() {
        let n = p
            .shard_set_members(id)
            .map(|m| m.owned_shard_ids().count())
            .max()
            .unwrap_or(0);
        out.insert(id, n);
    }
    out
}

fn spread(p: &Placement) -> usize {
    let counts = shards_per_set(p);
    let max = counts.values().max().copied().unwrap_or(0);
    let min = counts.values().min().copied().unwrap_or(0);
    max - min
}

fn all_available(p: &Placement) -> bool {
    p.instances()
        .flat_map(|i| i.shards.iter())
        .all(|s| s.state == ShardState::Available && s.cutover_nanos == 0 && s.cutoff_nanos == 0)
}

#[test]
fn mirrored_build_groups_and_spreads() {
    let p = build_mirrored(instances(2, 2), 8, 2, MINUTE).unwrap();
    p.validate().unwrap();
    assert!(p.is_mirrored && p.is_sharded);
    assert_eq!(p.max_shard_set_id, 2);
    assert_eq!(
        p.shard_set_ids().into_iter().collect::<Vec<_>>(),
        vec![1, 2]
    );
    for set in [1, 2] {
        let members: Vec<&Instance> = p.shard_set_members(set).collect();
        assert_eq!(members.len(), 2);
        assert_ne!(members[0].isolation_group, members[1].isolation_group);
        assert_eq!(members[0].shards, members[1].shards);
        assert_eq!(members[0].shards.len(), 4);
        for s in &members[0].shards {
            assert_eq!(s.state, ShardState::Initializing);
            assert_eq!(s.cutover_nanos, MINUTE);
            assert!(s.source_id.is_empty());
        }
    }
    assert_eq!(p.instances_for_shard(3).count(), 2);
    assert_eq!(p.instances_for_shard(8).count(), 0);
    // Deterministic.
    assert_eq!(p, build_mirrored(instances(2, 2), 8, 2, MINUTE).unwrap());
}

#[test]
fn mirrored_build_uses_explicit_shard_set_ids() {
    let given = vec![
        inst("a", "g0").with_shard_set_id(7),
        inst("b", "g1").with_shard_set_id(7),
        inst("c", "g0").with_shard_set_id(3),
        inst("d", "g1").with_shard_set_id(3),
    ];
    let p = build_mirrored(given, 4, 2, 0).unwrap();
    p.validate().unwrap();
    assert_eq!(p.max_shard_set_id, 7);
    assert_eq!(p.instance("a").unwrap().shard_set_id, 7);
    assert_eq!(p.instance("c").unwrap().shard_set_id, 3);
}

#[test]
fn mirrored_build_rejects_bad_input() {
    use PlacementError as E;
    let err = |instances: Vec<Instance>, shards, rf| build_mirrored(instances, shards, rf, 0);
    assert_eq!(err(vec![], 4, 2), Err(E::NoInstances));
    assert_eq!(err(instances(1, 2), 0, 2), Err(E::ZeroShards));
    assert_eq!(
        err(instances(1, 2), 70_000, 2),
        Err(E::TooManyShards {
            num_shards: 70_000,
            max: 65_536
        })
    );
    assert_eq!(err(instances(1, 2), 4, 0), Err(E::ZeroReplicationFactor));
    assert_eq!(
        err(instances(1, 2), 4, 3),
        Err(E::ReplicationFactorTooLarge {
            replication_factor: 3,
            isolation_groups: 2
        })
    );
    let mut three = instances(1, 2);
    three.push(inst("x", "g0"));
    assert!(matches!(
        err(three, 4, 2),
        Err(E::NotDivisible { count: 3, .. })
    ));
    let mut dup = instances(1, 2);
    dup.push(dup[0].clone());
    dup.push(inst("y", "g1"));
    assert_eq!(
        err(dup, 4, 2),
        Err(E::DuplicateInstance { id: "agg00".into() })
    );
    let mut no_id = instances(1, 2);
    no_id[1].id.clear();
    assert!(matches!(
        err(no_id, 4, 2),
        Err(E::MissingField { field: "id", .. })
    ));
    let mut no_endpoint = instances(1, 2);
    no_endpoint[0].endpoint.clear();
    assert!(matches!(
        err(no_endpoint, 4, 2),
        Err(E::MissingField {
            field: "endpoint",
            ..
        })
    ));
    let unequal = vec![
        inst("a", "g0").with_shard_set_id(1),
        inst("b", "g1").with_shard_set_id(1).with_weight(5),
    ];
    assert!(matches!(
        err(unequal, 4, 2),
        Err(E::UnequalWeights {
            shard_set_id: 1,
            ..
        })
    ));
    // Without explicit IDs, unequal weights cannot pair up.
    let unequal = vec![inst("a", "g0"), inst("b", "g1").with_weight(5)];
    assert!(matches!(
        err(unequal, 4, 2),
        Err(E::NotDivisible { count: 1, .. })
    ));
    let lopsided = vec![
        inst("a", "g0"),
        inst("b", "g0"),
        inst("c", "g0"),
        inst("d", "g1"),
    ];
    assert!(matches!(
        err(lopsided, 4, 2),
        Err(E::IsolationGroupsUnbalanced { .. })
    ));
    let mixed = vec![inst("a", "g0").with_shard_set_id(1), inst("b", "g1")];
    assert_eq!(
        err(mixed, 4, 2),
        Err(E::MixedShardSetIds {
            with: 1,
            without: 1
        })
    );
    let short = vec![
        inst("a", "g0").with_shard_set_id(1),
        inst("b", "g1").with_shard_set_id(2),
    ];
    assert!(matches!(
        err(short, 4, 2),
        Err(E::ShardSetSize { actual: 1, .. })
    ));
    let same_group = vec![
        inst("a", "g0").with_shard_set_id(1),
        inst("b", "g0").with_shard_set_id(1),
        inst("c", "g1").with_shard_set_id(2),
        inst("d", "g1").with_shard_set_id(2),
    ];
    assert!(matches!(
        err(same_group, 4, 2),
        Err(E::IsolationGroupConflict { .. })
    ));
    // Messages name the problem.
    let msg = err(instances(1, 2), 4, 3).unwrap_err().to_string();
    assert!(msg.contains("replication factor 3"), "{msg}");
}

#[test]
fn mark_all_available_respects_cutover() {
    let p = build_mirrored(instances(2, 2), 8, 2, MINUTE).unwrap();
    let err = p.mark_all_available(MINUTE - 1, MINUTE).unwrap_err();
    assert!(matches!(err, PlacementError::BeforeCutover { .. }), "{err}");
    assert!(err.to_string().contains("before cutover time"));
    let ready = p.mark_all_available(MINUTE, MINUTE).unwrap();
    assert!(all_available(&ready));
    ready.validate().unwrap();
}

#[test]
fn add_moves_shards_through_a_transition() {
    let p = build_mirrored(instances(2, 2), 12, 2, 0)
        .unwrap()
        .mark_all_available(0, MINUTE)
        .unwrap();
    let timing = Timing::new(10 * MINUTE + 5, 0, MINUTE);
    assert_eq!(timing.transition_nanos, 11 * MINUTE);
    let added = p
        .add_instances(vec![inst("new0", "g0"), inst("new1", "g1")], &timing)
        .unwrap();
    added.validate().unwrap();
    assert_eq!(added.max_shard_set_id, 3);
    assert_eq!(spread(&added), 0);
    let new0 = added.instance("new0").unwrap();
    assert_eq!(new0.shard_set_id, 3);
    assert_eq!(new0.shards.len(), 4);
    for s in &new0.shards {
        assert_eq!(s.state, ShardState::Initializing);
        assert_eq!(s.cutover_nanos, timing.transition_nanos);
        let source = added.instance(&s.source_id).unwrap();
        assert_eq!(source.isolation_group, "g0", "paired by isolation group");
        let leaving = source.shard(s.id).unwrap();
        assert_eq!(leaving.state, ShardState::Leaving);
        assert_eq!(leaving.cutoff_nanos, timing.transition_nanos);
    }
    // Writes go to old and new owners during the transition.
    let moved = new0.shards[0].id;
    assert_eq!(added.instances_for_shard(moved).count(), 4);

    // Not before cutoff + one window.
    let early = added.mark_all_available(timing.transition_nanos, MINUTE);
    assert!(matches!(early, Err(PlacementError::BeforeCutoff { .. })));
    // A second change cannot start early either.
    let again = added.add_instances(vec![inst("x0", "g0"), inst("x1", "g1")], &timing);
    assert!(again.is_err());

    let done = added
        .mark_all_available(timing.transition_nanos + MINUTE, MINUTE)
        .unwrap();
    done.validate().unwrap();
    assert!(all_available(&done));
    assert_eq!(done.instances_for_shard(moved).count(), 2);
    assert_eq!(shards_per_set(&done).values().sum::<usize>(), 12);
}

#[test]
fn remove_takes_whole_shard_sets() {
    let p = build_mirrored(instances(3, 2), 9, 2, 0)
        .unwrap()
        .mark_all_available(0, 0)
        .unwrap();
    let timing = Timing::new(MINUTE, 0, MINUTE);
    let set = p.instance("agg10").unwrap().shard_set_id;
    let partial = p.remove_instances(&["agg10"], &timing);
    assert!(matches!(
        partial,
        Err(PlacementError::PartialShardSetRemoval { .. })
    ));
    let members: Vec<String> = p.shard_set_members(set).map(|m| m.id.clone()).collect();
    let removed = p.remove_instances(&members, &timing).unwrap();
    removed.validate().unwrap();
    for m in &members {
        let i = removed.instance(m).unwrap();
        assert!(i.shards.iter().all(|s| s.state == ShardState::Leaving));
    }
    let done = removed.mark_all_available(2 * MINUTE, MINUTE).unwrap();
    done.validate().unwrap();
    for m in &members {
        assert!(done.instance(m).is_none(), "{m} should be gone");
    }
    assert_eq!(done.shard_set_ids().len(), 2);
    assert!(spread(&done) <= 1);

    let all: Vec<String> = p.instances().map(|i| i.id.clone()).collect();
    assert_eq!(
        p.remove_instances(&all, &timing),
        Err(PlacementError::RemovesEverything)
    );
    assert!(matches!(
        p.remove_instances(&["nope"], &timing),
        Err(PlacementError::UnknownInstance { .. })
    ));
}

#[test]
fn replace_hands_shards_to_the_candidate() {
    let p = build_mirrored(instances(2, 2), 8, 2, 0)
        .unwrap()
        .mark_all_available(0, 0)
        .unwrap();
    let timing = Timing::new(MINUTE, 0, MINUTE);
    let old = p.instance("agg01").unwrap().clone();
    // Wrong weight and conflicting group are skipped; the fitting candidate is used.
    let candidates = vec![
        inst("heavy", "g1").with_weight(1),
        inst("conflict", "g0"),
        inst("fit", "g2"),
    ];
    let r = p
        .replace_instances(&["agg01"], candidates, &timing)
        .unwrap();
    r.validate().unwrap();
    assert!(r.instance("heavy").is_none() && r.instance("conflict").is_none());
    let fit = r.instance("fit").unwrap();
    assert_eq!(fit.shard_set_id, old.shard_set_id);
    assert_eq!(
        fit.shard_ids().collect::<Vec<_>>(),
        old.shard_ids().collect::<Vec<_>>()
    );
    assert!(
        fit.shards
            .iter()
            .all(|s| s.state == ShardState::Initializing
                && s.source_id == "agg01"
                && s.cutover_nanos == timing.transition_nanos)
    );
    assert!(
        r.instance("agg01")
            .unwrap()
            .shards
            .iter()
            .all(|s| s.state == ShardState::Leaving)
    );
    let done = r.mark_all_available(2 * MINUTE, MINUTE).unwrap();
    done.validate().unwrap();
    assert!(done.instance("agg01").is_none());
    assert!(all_available(&done));

    let none = p.replace_instances(&["agg01"], vec![inst("c", "g0")], &timing);
    assert!(matches!(
        none,
        Err(PlacementError::NoReplacementCandidate { .. })
    ));
}

#[test]
fn non_sharded_placements() {
    let p = build_non_sharded(vec![inst("c1", "g0"), inst("c2", "g0")]).unwrap();
    p.validate().unwrap();
    assert!(!p.is_sharded);
    assert!(p.instances().all(|i| i.shards.is_empty()));
    let timing = Timing::new(0, 0, 0);
    let p2 = p.add_instances(vec![inst("c3", "g1")], &timing).unwrap();
    assert_eq!(p2.instances.len(), 3);
    assert!(matches!(
        p2.add_instances(vec![inst("c3", "g1")], &timing),
        Err(PlacementError::InstanceExists { .. })
    ));
    let p3 = p2.remove_instances(&["c1"], &timing).unwrap();
    assert_eq!(p3.instances.len(), 2);
    let p4 = p3
        .replace_instances(&["c2"], vec![inst("c9", "g0")], &timing)
        .unwrap();
    assert!(p4.instance("c9").is_some() && p4.instance("c2").is_none());
}

#[test]
fn sharded_build_spreads_replicas_over_groups() {
    let mut given = Vec::new();
    for g in 0..3 {
        for n in 0..2 {
            given.push(inst(&format!("db{g}{n}"), &format!("rack{g}")));
        }
    }
    let p = build_sharded(given, 64, 3, 5).unwrap();
    p.validate().unwrap();
    assert!(!p.is_mirrored);
    let counts: Vec<usize> = p.instances().map(|i| i.shards.len()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 64 * 3);
    assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
    let timing = Timing::new(0, 0, 0);
    assert!(matches!(
        p.add_instances(vec![inst("x", "rack0")], &timing),
        Err(PlacementError::Unsupported { .. })
    ));
}

#[test]
fn proto_round_trip_keeps_every_field() {
    let mut p = build_mirrored(instances(2, 2), 4, 2, 42).unwrap();
    p.is_subclustered = true;
    p.instances_per_subcluster = 3;
    let i = p.instances.get_mut("agg00").unwrap();
    i.hostname = "agg00.local".into();
    i.port = 6000;
    i.subcluster_id = 9;
    i.metadata = Some(InstanceMetadata { debug_port: 6060 });
    i.shards[0].redirect_to_shard_id = Some(3);
    i.shards[0].cutoff_nanos = 77;
    i.shards[0].source_id = "elsewhere".into();
    let back = Placement::decode(&p.encode()).unwrap();
    assert_eq!(back, p);
    assert_eq!(Placement::try_from(p.to_proto()).unwrap(), p);
}

#[test]
fn decode_rejects_bad_input_without_panicking() {
    assert!(matches!(
        Placement::decode(b"\xff\xff\xff"),
        Err(PlacementError::Decode { .. })
    ));
    let mut pb = build_mirrored(instances(1, 1), 2, 1, 0).unwrap().to_proto();
    let inst = pb.instances.remove("agg00").unwrap();
    pb.instances.insert("other".into(), inst.clone());
    assert!(matches!(
        Placement::from_proto(pb.clone()),
        Err(PlacementError::Decode { .. })
    ));
    pb.instances.clear();
    let mut bad_state = inst;
    bad_state.shards[0].state = 17;
    pb.instances.insert("agg00".into(), bad_state);
    let err = Placement::from_proto(pb).unwrap_err();
    assert!(err.to_string().contains("unknown state 17"), "{err}");
    assert!(!err.is_invalid_input());
    // A shard count no reader could size its tables by is refused before any reader sees it.
    let mut huge = build_mirrored(instances(1, 1), 2, 1, 0).unwrap().to_proto();
    huge.num_shards = 4_000_000_000;
    let err = Placement::from_proto(huge.clone()).unwrap_err();
    assert!(err.to_string().contains("num_shards 4000000000"), "{err}");
    huge.num_shards = crate::placement::MAX_SHARDS;
    assert!(Placement::from_proto(huge).is_ok());
}

#[tokio::test]
async fn store_init_get_update_delete_watch() {
    let kv = Arc::new(MemoryKv::new());
    let store = PlacementStore::new(
        kv.clone(),
        crate::keys::placement_key(&crate::ServiceId::new(
            "m3aggregator",
            "default_env",
            "embedded",
        )),
        PlacementFormat::Snapshots,
    );
    assert_eq!(store.get().await.unwrap(), None);
    let mut watch = store.watch().await.unwrap();
    assert!(watch.borrow().is_none());

    let p = build_mirrored(instances(2, 2), 8, 2, 0).unwrap();
    assert_eq!(store.init(&p).await.unwrap(), 1);
    assert!(matches!(
        store.init(&p).await,
        Err(PlacementStoreError::AlreadyExists { .. })
    ));
    let got = store.get().await.unwrap().unwrap();
    assert_eq!((got.value.clone(), got.version), (p.clone(), 1));
    // What is in KV is M3's aggregator format: snapshots holding the placement.
    let raw = kv.get(store.key()).await.unwrap().unwrap();
    let snapshots = m3_proto::placementpb::PlacementSnapshots::decode(raw.value.as_ref()).unwrap();
    assert_eq!(snapshots.snapshots, vec![p.to_proto()]);
    watch
        .wait_for(|v| v.as_ref().is_some_and(|v| v.version == 1))
        .await
        .unwrap();

    let ready = p.mark_all_available(0, 0).unwrap();
    assert_eq!(store.check_and_set(&ready, 1).await.unwrap(), 2);
    assert!(matches!(
        store.check_and_set(&ready, 1).await,
        Err(PlacementStoreError::VersionMismatch {
            expected: 1,
            actual: 2,
            ..
        })
    ));
    let mut invalid = ready.clone();
    invalid.num_shards = 0;
    assert!(matches!(
        store.check_and_set(&invalid, 2).await,
        Err(PlacementStoreError::Placement(PlacementError::ZeroShards))
    ));
    watch
        .wait_for(|v| {
            v.as_ref()
                .is_some_and(|v| v.version == 2 && v.value == ready)
        })
        .await
        .unwrap();

    assert_eq!(store.delete().await.unwrap().value, ready);
    assert!(matches!(
        store.delete().await,
        Err(PlacementStoreError::NotFound { .. })
    ));
    watch.wait_for(Option::is_none).await.unwrap();
}

/// Instances for `sets` shard sets of `rf` members drawn from `groups` isolation groups, each
/// set's members in distinct groups (so a grouping exists), listed in a scrambled order.
fn mirrored_input() -> impl Strategy<Value = (Vec<Instance>, u32, u32)> {
    (1u32..=3, 0u32..=2, 1usize..=6, 1u32..=64)
        .prop_flat_map(|(rf, extra, sets, shards)| {
            let groups: Vec<u32> = (0..rf + extra).collect();
            let per_set = proptest::collection::vec(Just(groups).prop_shuffle(), sets);
            (Just(rf), Just(shards), per_set)
        })
        .prop_flat_map(|(rf, shards, per_set)| {
            let mut list = Vec::new();
            for (s, groups) in per_set.iter().enumerate() {
                for g in groups.iter().take(rf as usize) {
                    list.push(inst(&format!("i{s}-{g}"), &format!("g{g}")));
                }
            }
            (Just(list).prop_shuffle(), Just(shards), Just(rf))
        })
}

fn new_sets(count: usize, rf: u32, tag: &str) -> Vec<Instance> {
    let mut out = Vec::new();
    for s in 0..count {
        for m in 0..rf {
            out.push(inst(&format!("{tag}{s}-{m}"), &format!("g{m}")));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn mirrored_build_invariants((given, shards, rf) in mirrored_input()) {
        let p = build_mirrored(given, shards, rf, 1).unwrap();
        // Exactly RF owners per shard, distinct groups, identical shard sets.
        p.validate().unwrap();
        for set in p.shard_set_ids() {
            prop_assert_eq!(p.shard_set_members(set).count(), rf as usize);
        }
        prop_assert!(spread(&p) <= 1);
        prop_assert_eq!(Placement::decode(&p.encode()).unwrap(), p.clone());
        prop_assert_eq!(Placement::from_proto(p.to_proto()).unwrap(), p);
    }

    #[test]
    fn add_then_mark_available_keeps_invariants(
        (given, shards, rf) in mirrored_input(),
        add in 1usize..=3,
    ) {
        let p = build_mirrored(given, shards, rf, 0).unwrap();
        let timing = Timing::new(MINUTE, 0, MINUTE);
        let added = p.add_instances(new_sets(add, rf, "new"), &timing).unwrap();
        added.validate().unwrap();
        let done = added.mark_all_available(3 * MINUTE, MINUTE).unwrap();
        done.validate().unwrap();
        prop_assert!(all_available(&done));
        prop_assert!(spread(&done) <= 1);
        prop_assert_eq!(Placement::decode(&done.encode()).unwrap(), done);
    }

    #[test]
    fn remove_then_mark_available_keeps_invariants(
        (given, shards, rf) in mirrored_input(),
        pick in any::<prop::sample::Index>(),
    ) {
        let p = build_mirrored(given, shards, rf, 0).unwrap();
        let sets: Vec<u32> = p.shard_set_ids().into_iter().collect();
        prop_assume!(sets.len() >= 2);
        let victim = sets[pick.index(sets.len())];
        let ids: Vec<String> = p.shard_set_members(victim).map(|m| m.id.clone()).collect();
        let timing = Timing::new(MINUTE, 0, MINUTE);
        let removed = p.remove_instances(&ids, &timing).unwrap();
        removed.validate().unwrap();
        let done = removed.mark_all_available(3 * MINUTE, MINUTE).unwrap();
        done.validate().unwrap();
        prop_assert!(all_available(&done));
        prop_assert!(!done.shard_set_ids().contains(&victim));
        prop_assert!(spread(&done) <= 1);
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Placement::decode(&bytes);
    }
}
