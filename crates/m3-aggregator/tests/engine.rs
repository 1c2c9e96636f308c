//! Engine behaviour through the public API: windows, add paths, naming, flush modes, expiry.

use std::sync::Arc;
use std::time::Duration;

use m3_aggregator::metadata::build;
use m3_aggregator::metrics::WindowDiscard;
use m3_aggregator::{
    AddError, AggregatedOutput, Aggregator, AggregatorOptions, FlushMode, KnownShard, Metadatas,
    RejectReason, ShardAssignment, TimedSample,
};
use m3_metric::id::{decode_tags, encode_tags};
use m3_metric::{AggregationId, AggregationType, MetricType, StoragePolicy};
use m3_proto::metricpb;

const S: i64 = 1_000_000_000;
/// A time aligned to 10s and 1m windows.
const T0: i64 = 1_700_000_040 * S;

fn policy(s: &str) -> StoragePolicy {
    s.parse().unwrap()
}

fn engine(options: AggregatorOptions) -> Aggregator {
    let agg = Aggregator::new(
        options,
        Arc::new(|id: &[u8]| id.iter().map(|b| u32::from(*b)).sum::<u32>() % 4),
    );
    agg.set_shards((0..4).map(ShardAssignment::unbounded).collect(), 0);
    agg
}

fn flush_leader(agg: &Aggregator, now: i64) -> Vec<AggregatedOutput> {
    let mut out = Vec::new();
    agg.flush(now, FlushMode::Leader, &mut out);
    out.sort_by(|a, b| (a.time_nanos, &a.id).cmp(&(b.time_nanos, &b.id)));
    out
}

fn ids(out: &[AggregatedOutput]) -> Vec<String> {
    out.iter()
        .map(|o| String::from_utf8_lossy(&o.id).into_owned())
        .collect()
}

/// A batch's known shard is taken instead of hashing its IDs only when it was computed with
/// the engine's own shard count; otherwise each ID is hashed as for any batch.
#[test]
fn a_known_shard_is_taken_only_under_the_engines_shard_count() {
    const NUM_SHARDS: u32 = 8;
    let count = Arc::new(std::sync::atomic::AtomicU32::new(NUM_SHARDS));
    // As the server builds it: murmur3 under the placement's count.
    let shard_count = Arc::clone(&count);
    let agg = Aggregator::new(
        AggregatorOptions::default(),
        Arc::new(move |id: &[u8]| {
            m3_cluster::shard_for(id, shard_count.load(std::sync::atomic::Ordering::Relaxed))
        }),
    )
    .with_murmur3_shard_count(Arc::clone(&count));
    let id = b"some.series".as_slice();
    let real = m3_cluster::shard_for(id, NUM_SHARDS);
    let other = (real + 1) % NUM_SHARDS;
    // Only `other` is owned: a value lands only if the engine took the known shard.
    agg.set_shards(vec![ShardAssignment::unbounded(other)], 0);
    let now = 1_700_000_000 * 1_000_000_000;
    let sample = TimedSample {
        metric_type: MetricType::Gauge,
        id,
        time_nanos: now,
        value: 1.0,
        metadatas: Metadatas::Default,
    };
    let add = |known: Option<KnownShard>| {
        let mut errors = Vec::new();
        agg.add_timed_batch_of_shard(known, &[sample], now, &mut |_, e| errors.push(e));
        errors
    };
    let same_count = KnownShard {
        shard: other,
        num_shards: NUM_SHARDS,
    };
    assert_eq!(add(Some(same_count)), vec![]);
    assert_eq!(agg.metrics().added(MetricType::Gauge), 1);
    let unowned = vec![AddError::ShardNotOwned { shard: real }];
    let other_count = KnownShard {
        num_shards: NUM_SHARDS * 2,
        ..same_count
    };
    assert_eq!(add(Some(other_count)), unowned);
    let out_of_range = KnownShard {
        shard: NUM_SHARDS,
        ..same_count
    };
    assert_eq!(add(Some(out_of_range)), unowned);
    assert_eq!(add(None), unowned);
    // The count follows the placement: after it changes, a known shard of the old count is
    // not taken, and the ID is hashed under the new count.
    count.store(NUM_SHARDS * 2, std::sync::atomic::Ordering::Relaxed);
    let unowned_now = vec![AddError::ShardNotOwned {
        shard: m3_cluster::shard_for(id, NUM_SHARDS * 2),
    }];
    assert_eq!(add(Some(same_count)), unowned_now);
    assert_eq!(agg.metrics().added(MetricType::Gauge), 1);
}

/// An engine holding counters `s0`..`s39` (as bytes `[b's', i]`), one value each at `T0`.
fn forty_counters() -> Aggregator {
    let agg = engine(AggregatorOptions::default());
    for i in 0..40u8 {
        agg.add_untimed(
            MetricType::Counter,
            &[b's', i],
            &[f64::from(i)],
            Metadatas::Default,
            T0,
        )
        .unwrap();
    }
    agg
}

/// A flush pass finished after some of its shards leaves the others' windows in place: the
/// next flush emits them, and together the two emit what one whole flush does.
#[test]
fn a_flush_pass_finished_early_leaves_the_other_shards_for_the_next_flush() {
    let (partial, whole) = (forty_counters(), forty_counters());
    let mut emitted: Vec<AggregatedOutput> = Vec::new();
    let mut pass = partial.flush_pass(T0 + 10 * S, FlushMode::Leader);
    for _ in 0..2 {
        emitted.extend(pass.next_shard().expect("four shards"));
    }
    let first = pass.finish();
    assert_eq!(first.outputs, emitted.len());
    assert!(
        emitted.len() < 40,
        "two of four shards emit part of the series"
    );
    assert_eq!(
        first.flush_times.by_shard.len(),
        2,
        "times only of the shards flushed"
    );
    emitted.extend(flush_leader(&partial, T0 + 10 * S));
    let mut from_whole = flush_leader(&whole, T0 + 10 * S);
    let key = |o: &AggregatedOutput| (o.id.clone(), o.time_nanos);
    emitted.sort_by_key(key);
    from_whole.sort_by_key(key);
    assert_eq!(from_whole.len(), 40);
    assert_eq!(emitted, from_whole);
}

/// `flush_into` hands over each shard's outputs on their own, as soon as the shard is
/// flushed: every group is one shard's, no shard comes twice, and together they are what
/// `flush` returns for the same writes.
#[test]
fn flush_into_hands_over_one_shard_at_a_time() {
    let (grouped, whole) = (forty_counters(), forty_counters());
    // The engine's shard function: the ID's byte sum modulo 4.
    let shard_of = |id: &[u8]| id.iter().map(|b| u32::from(*b)).sum::<u32>() % 4;
    let mut groups: Vec<Vec<AggregatedOutput>> = Vec::new();
    let result = grouped.flush_into(T0 + 10 * S, FlushMode::Leader, &mut |outputs| {
        groups.push(outputs.collect());
    });
    let mut shards: Vec<u32> = groups
        .iter()
        .map(|group| {
            let shard = shard_of(&group[0].id);
            assert!(
                group.iter().all(|o| shard_of(&o.id) == shard),
                "one shard per group"
            );
            shard
        })
        .collect();
    shards.sort_unstable();
    assert_eq!(shards, vec![0, 1, 2, 3]);
    let mut from_groups: Vec<AggregatedOutput> = groups.into_iter().flatten().collect();
    assert_eq!(result.outputs, from_groups.len());
    let mut from_flush = flush_leader(&whole, T0 + 10 * S);
    assert_eq!(from_groups.len(), 40);
    let key = |o: &AggregatedOutput| (o.id.clone(), o.time_nanos);
    from_groups.sort_by_key(key);
    from_flush.sort_by_key(key);
    assert_eq!(from_groups, from_flush);
}

#[test]
fn untimed_windows_align_to_epoch_and_emit_at_window_end() {
    let agg = engine(AggregatorOptions::default());
    let c = MetricType::Counter;
    agg.add_untimed(c, b"c", &[1.0], Metadatas::Default, T0 + 3 * S)
        .unwrap();
    agg.add_untimed(c, b"c", &[2.0], Metadatas::Default, T0 + 9 * S)
        .unwrap();
    agg.add_untimed(c, b"c", &[4.0], Metadatas::Default, T0 + 10 * S)
        .unwrap();
    // Nothing is closed before the window end.
    assert!(flush_leader(&agg, T0 + 10 * S - 1).is_empty());
    let out = flush_leader(&agg, T0 + 10 * S);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].time_nanos, T0 + 10 * S);
    assert_eq!(out[0].value, 3.0);
    assert_eq!(out[0].storage_policy, policy("10s:2d"));
    let out = flush_leader(&agg, T0 + 25 * S);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].time_nanos, out[0].value), (T0 + 20 * S, 4.0));
    assert_eq!(agg.metrics().outputs_flushed(), 2);
    assert_eq!(agg.metrics().added(c), 3);
}

#[test]
fn timed_windows_close_after_the_past_buffer() {
    let agg = engine(AggregatorOptions::default());
    let m = build::simple(AggregationId::DEFAULT, &[policy("10s:2d")]);
    agg.add_timed(
        MetricType::Gauge,
        b"g",
        T0 + 5 * S,
        1.5,
        Metadatas::Staged(&m),
        T0 + 6 * S,
    )
    .unwrap();
    // Window [T0, T0+10s) closes at end + bufferPast (1m) + resolution (10s).
    assert!(flush_leader(&agg, T0 + 80 * S - 1).is_empty());
    let out = flush_leader(&agg, T0 + 80 * S);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].time_nanos, out[0].value), (T0 + 10 * S, 1.5));
    assert_eq!(out[0].id, b"g");
}

#[test]
fn final_flush_emits_every_ended_window_and_no_open_one() {
    let agg = engine(AggregatorOptions::default());
    let m = build::simple(AggregationId::DEFAULT, &[policy("10s:2d")]);
    for (t, v) in [(T0 + 5 * S, 1.0), (T0 + 15 * S, 2.0), (T0 + 25 * S, 3.0)] {
        agg.add_timed(
            MetricType::Gauge,
            b"g",
            t,
            v,
            Metadatas::Staged(&m),
            T0 + 26 * S,
        )
        .unwrap();
    }
    agg.add_untimed(
        MetricType::Counter,
        b"c",
        &[4.0],
        Metadatas::Default,
        T0 + 21 * S,
    )
    .unwrap();
    // A regular flush at T0+26s emits nothing timed: the windows are inside the past buffer.
    assert!(flush_leader(&agg, T0 + 26 * S).iter().all(|o| o.id != b"g"));
    // The final flush emits the two timed windows that ended and keeps the open ones.
    let mut out = Vec::new();
    let result = agg.flush(T0 + 26 * S, FlushMode::LeaderFinal, &mut out);
    out.sort_by_key(|o| o.time_nanos);
    let got: Vec<_> = out
        .iter()
        .map(|o| (o.id.clone(), o.time_nanos, o.value))
        .collect();
    assert_eq!(
        got,
        vec![
            (b"g".to_vec(), T0 + 10 * S, 1.0),
            (b"g".to_vec(), T0 + 20 * S, 2.0)
        ]
    );
    assert!(!result.flush_times.by_shard.is_empty());
}

/// A flush with nothing due skips a shard's series without reading them; a window opened
/// after that, ending before a later flush's target, is still emitted by that flush.
#[test]
fn flushes_with_nothing_due_miss_no_window_opened_after_them() {
    let agg = engine(AggregatorOptions::default());
    let m = build::simple(AggregationId::DEFAULT, &[policy("10s:2d")]);
    let add = |t: i64, v: f64, now: i64| {
        agg.add_timed(MetricType::Gauge, b"g", t, v, Metadatas::Staged(&m), now)
            .unwrap();
    };
    add(T0 + 5 * S, 1.0, T0 + 6 * S);
    let emitted = |out: Vec<AggregatedOutput>| -> Vec<(i64, f64)> {
        out.iter().map(|o| (o.time_nanos, o.value)).collect()
    };
    assert_eq!(
        emitted(flush_leader(&agg, T0 + 80 * S)),
        [(T0 + 10 * S, 1.0)]
    );
    // Every second until the next window is due: nothing to take.
    for second in 81..90 {
        assert!(flush_leader(&agg, T0 + second * S).is_empty());
    }
    // A window inside the past buffer, then a final flush, whose target passes its end.
    add(T0 + 79 * S, 2.0, T0 + 89 * S);
    assert!(flush_leader(&agg, T0 + 89 * S).is_empty());
    let mut out = Vec::new();
    agg.flush(T0 + 90 * S, FlushMode::LeaderFinal, &mut out);
    assert_eq!(emitted(out), [(T0 + 80 * S, 2.0)]);
    // And a regular flush at the window's due time still finds the next one.
    add(T0 + 95 * S, 3.0, T0 + 96 * S);
    assert!(flush_leader(&agg, T0 + 169 * S).is_empty());
    assert_eq!(
        emitted(flush_leader(&agg, T0 + 170 * S)),
        [(T0 + 100 * S, 3.0)]
    );
}

#[test]
fn last_is_latest_timestamp_regardless_of_arrival() {
    let agg = engine(AggregatorOptions::default());
    let now = T0 + 9 * S;
    for (t, v) in [(T0 + 7 * S, 7.0), (T0 + 2 * S, 2.0), (T0 + 5 * S, 5.0)] {
        agg.add_timed(MetricType::Gauge, b"g", t, v, Metadatas::Default, now)
            .unwrap();
    }
    // Same timestamp: the later arrival wins.
    for v in [1.0, 8.0] {
        agg.add_timed(MetricType::Gauge, b"h", T0, v, Metadatas::Default, now)
            .unwrap();
    }
    let out = flush_leader(&agg, T0 + 3600 * S);
    assert_eq!(ids(&out), vec!["g", "h"]);
    assert_eq!(out[0].value, 7.0);
    assert_eq!(out[1].value, 8.0);
}

#[test]
fn past_and_future_limits_reject_with_reasons() {
    let agg = engine(AggregatorOptions::default());
    let now = T0;
    let g = MetricType::Gauge;
    // 10s resolution: past limit is 1m + 10s.
    let ok_past = now - 70 * S;
    agg.add_timed(g, b"a", ok_past, 1.0, Metadatas::Default, now)
        .unwrap();
    let err = agg
        .add_timed(g, b"a", ok_past - 1, 1.0, Metadatas::Default, now)
        .unwrap_err();
    assert!(
        matches!(err, AddError::TooFarInThePast { off_by, .. } if off_by == Duration::from_nanos(1))
    );
    assert!(err.to_string().contains("too far in the past"));
    agg.add_timed(g, b"a", now + 60 * S, 1.0, Metadatas::Default, now)
        .unwrap();
    let err = agg
        .add_timed(g, b"a", now + 60 * S + 1, 1.0, Metadatas::Default, now)
        .unwrap_err();
    assert!(matches!(err, AddError::TooFarInTheFuture { .. }));
    assert!(err.to_string().contains("too far in the future"));
    // A coarser resolution widens the past limit: 1m + 1m.
    let single = Metadatas::Single {
        aggregation_id: AggregationId::DEFAULT,
        storage_policy: policy("1m:40d"),
    };
    agg.add_timed(g, b"a", now - 120 * S, 1.0, single, now)
        .unwrap();
    // Extreme timestamps are rejected, not panics.
    for t in [i64::MIN, i64::MAX] {
        assert!(agg.add_timed(g, b"a", t, 1.0, single, now).is_err());
    }
    let m = agg.metrics();
    assert_eq!(m.rejected(RejectReason::TooFarPast), 2);
    assert_eq!(m.rejected(RejectReason::TooFarFuture), 2);
    assert_eq!(m.added(g), 3);
}

#[test]
fn staged_metadata_selection_and_tombstones() {
    let agg = engine(AggregatorOptions::default());
    let max = AggregationId::from_types([AggregationType::Max]);
    let staged = metricpb::StagedMetadatas {
        metadatas: vec![
            build::staged(0, false, vec![build::pipeline(max, &[policy("1m:40d")])]),
            build::staged(T0 + 30 * S, true, vec![]),
        ],
    };
    let g = MetricType::Gauge;
    agg.add_untimed(g, b"g", &[3.0], Metadatas::Staged(&staged), T0 + 10 * S)
        .unwrap();
    agg.add_untimed(g, b"g", &[9.0], Metadatas::Staged(&staged), T0 + 20 * S)
        .unwrap();
    // Tombstoned from T0+30s: accepted call, value dropped and counted.
    agg.add_untimed(g, b"g", &[100.0], Metadatas::Staged(&staged), T0 + 40 * S)
        .unwrap();
    assert_eq!(agg.metrics().rejected(RejectReason::Tombstoned), 1);
    let out = flush_leader(&agg, T0 + 120 * S);
    // One aggregation of a gauge keeps the series' name; the storage policy tells it apart.
    assert_eq!(ids(&out), vec!["g"]);
    assert_eq!(out[0].value, 9.0);
    assert_eq!(out[0].storage_policy, policy("1m:40d"));
    // No version cut over yet.
    let future = metricpb::StagedMetadatas {
        metadatas: vec![build::staged(T0 * 2, false, vec![])],
    };
    let err = agg
        .add_untimed(g, b"g", &[1.0], Metadatas::Staged(&future), T0)
        .unwrap_err();
    assert!(matches!(err, AddError::NoApplicableMetadata { .. }));
}

#[test]
fn default_storage_policies_apply_to_empty_metadata() {
    let options = AggregatorOptions {
        default_storage_policies: vec![policy("10s:2d"), policy("1m:40d")],
        ..AggregatorOptions::default()
    };
    let agg = engine(options);
    let empty = metricpb::StagedMetadatas::default();
    agg.add_untimed(
        MetricType::Counter,
        b"c",
        &[5.0],
        Metadatas::Staged(&empty),
        T0 + S,
    )
    .unwrap();
    let no_policies = build::simple(AggregationId::DEFAULT, &[]);
    agg.add_untimed(
        MetricType::Counter,
        b"c",
        &[1.0],
        Metadatas::Staged(&no_policies),
        T0 + 2 * S,
    )
    .unwrap();
    let out = flush_leader(&agg, T0 + 60 * S);
    let mut got: Vec<(String, f64)> = out
        .iter()
        .map(|o| (o.storage_policy.to_string(), o.value))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![("10s:2d".to_string(), 6.0), ("1m:40d".to_string(), 6.0)]
    );
}

#[test]
fn output_naming_follows_m3() {
    let agg = engine(AggregatorOptions::default());
    let now = T0 + S;
    agg.add_untimed(MetricType::Counter, b"c", &[1.0], Metadatas::Default, now)
        .unwrap();
    agg.add_untimed(MetricType::Gauge, b"g", &[1.0], Metadatas::Default, now)
        .unwrap();
    agg.add_untimed(
        MetricType::Timer,
        b"t",
        &[1.0, 2.0, 3.0, 4.0],
        Metadatas::Default,
        now,
    )
    .unwrap();
    // A counter with non-default types gets suffixes on every output.
    let sum_max = build::simple(
        AggregationId::from_types([AggregationType::Sum, AggregationType::Max]),
        &[policy("10s:2d")],
    );
    agg.add_untimed(
        MetricType::Counter,
        b"d",
        &[1.0],
        Metadatas::Staged(&sum_max),
        now,
    )
    .unwrap();
    let out = flush_leader(&agg, T0 + 10 * S);
    let mut names = ids(&out);
    names.sort();
    assert_eq!(
        names,
        vec![
            "c", "d.sum", "d.upper", "g", "t.count", "t.lower", "t.mean", "t.median", "t.p50",
            "t.p95", "t.p99", "t.stdev", "t.sum", "t.sum_sq", "t.upper",
        ]
    );
    let timer: Vec<&AggregatedOutput> = out.iter().filter(|o| o.id.starts_with(b"t.")).collect();
    assert_eq!(timer.len(), 11);
    let value = |name: &str| {
        out.iter()
            .find(|o| o.id == name.as_bytes())
            .map(|o| o.value)
            .unwrap()
    };
    assert_eq!(value("t.sum"), 10.0);
    assert_eq!(value("t.upper"), 4.0);
    assert_eq!(value("t.lower"), 1.0);
    assert_eq!(value("t.count"), 4.0);
    assert_eq!(value("t.sum_sq"), 30.0);
}

#[test]
fn tag_encoded_ids_get_colon_suffix_on_name() {
    let agg = engine(AggregatorOptions::default());
    let mut id = Vec::new();
    encode_tags(
        [
            (&b"__name__"[..], &b"rpc_latency"[..]),
            (&b"job"[..], &b"api"[..]),
        ],
        &mut id,
    )
    .unwrap();
    agg.add_untimed(MetricType::Timer, &id, &[5.0], Metadatas::Default, T0 + S)
        .unwrap();
    let out = flush_leader(&agg, T0 + 10 * S);
    let p99 = out
        .iter()
        .find(|o| o.aggregation == AggregationType::P99)
        .unwrap();
    let tags = decode_tags(&p99.id).unwrap();
    assert!(tags.contains(&("__name__".to_string(), "rpc_latency:p99".to_string())));
    assert!(tags.contains(&("job".to_string(), "api".to_string())));
    assert_eq!(p99.value, 5.0);
}

#[test]
fn invalid_aggregations_and_pipelines_are_counted() {
    let agg = engine(AggregatorOptions::default());
    let p99 = build::simple(
        AggregationId::from_types([AggregationType::P99]),
        &[policy("10s:2d")],
    );
    let err = agg
        .add_untimed(MetricType::Gauge, b"g", &[1.0], Metadatas::Staged(&p99), T0)
        .unwrap_err();
    assert!(matches!(err, AddError::InvalidAggregation { .. }));
    let last_timer = build::simple(
        AggregationId::from_types([AggregationType::Last]),
        &[policy("10s:2d")],
    );
    agg.add_untimed(
        MetricType::Timer,
        b"t",
        &[1.0, 2.0],
        Metadatas::Staged(&last_timer),
        T0,
    )
    .unwrap_err();
    // A pipeline the engine cannot run (a rollup without an ID) is refused and counted; the
    // plain pipeline beside it still applies.
    let mut mixed = build::simple(AggregationId::DEFAULT, &[policy("10s:2d")]);
    if let Some(m) = mixed.metadatas[0].metadata.as_mut() {
        m.pipelines
            .push(build::rollup_pipeline(b"", &[policy("1m:40d")]));
    }
    let err = agg
        .add_untimed(
            MetricType::Counter,
            b"c",
            &[2.0],
            Metadatas::Staged(&mixed),
            T0,
        )
        .unwrap_err();
    assert!(matches!(err, AddError::InvalidPipeline { .. }));
    let m = agg.metrics();
    assert_eq!(m.rejected(RejectReason::InvalidAggregation), 3);
    assert_eq!(m.rejected(RejectReason::InvalidPipeline), 1);
    assert_eq!(m.added(MetricType::Counter), 1);
    assert_eq!(m.added(MetricType::Gauge), 0);
    // Rejected-only series leave no entry behind.
    assert_eq!(agg.stats().entries, 1);
    assert_eq!(m.entries_live(), 1);
}

#[test]
fn unowned_and_unwriteable_shards_are_rejected() {
    let agg = Aggregator::new(
        AggregatorOptions::default(),
        Arc::new(|id: &[u8]| u32::from(id[0] - b'0')),
    );
    let cutover = T0;
    let cutoff = T0 + 3600 * S;
    agg.set_shards(
        vec![
            ShardAssignment::unbounded(0),
            ShardAssignment {
                id: 1,
                cutover_nanos: cutover,
                cutoff_nanos: cutoff,
            },
        ],
        0,
    );
    let c = MetricType::Counter;
    let err = agg
        .add_untimed(c, b"2x", &[1.0], Metadatas::Default, T0)
        .unwrap_err();
    assert_eq!(err, AddError::ShardNotOwned { shard: 2 });
    // Writable in [cutover − 10m, cutoff + 1h).
    agg.add_untimed(c, b"1x", &[1.0], Metadatas::Default, cutover - 600 * S)
        .unwrap();
    assert!(matches!(
        agg.add_untimed(c, b"1x", &[1.0], Metadatas::Default, cutover - 600 * S - 1),
        Err(AddError::ShardNotWriteable { shard: 1, .. })
    ));
    agg.add_untimed(c, b"1x", &[1.0], Metadatas::Default, cutoff + 3600 * S - 1)
        .unwrap();
    let err = agg
        .add_untimed(c, b"1x", &[1.0], Metadatas::Default, cutoff + 3600 * S)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("aggregator shard is not writeable")
    );
    let m = agg.metrics();
    assert_eq!(m.rejected(RejectReason::ShardNotOwned), 1);
    assert_eq!(m.rejected(RejectReason::ShardNotWriteable), 2);
    // The window before cutover is discarded, the one after cutoff too.
    let mut out = Vec::new();
    agg.flush(cutoff + 7200 * S, FlushMode::Leader, &mut out);
    assert!(out.is_empty());
    assert_eq!(m.windows_discarded(WindowDiscard::BeforeCutover), 1);
    assert_eq!(m.windows_discarded(WindowDiscard::AfterCutoff), 1);
    // Dropping a shard drops its series.
    agg.set_shards(vec![ShardAssignment::unbounded(0)], T0);
    assert_eq!(agg.owned_shards(), vec![0]);
}

#[test]
fn nan_results_are_discarded_and_counted() {
    let agg = engine(AggregatorOptions::default());
    agg.add_untimed(
        MetricType::Gauge,
        b"g",
        &[f64::NAN],
        Metadatas::Default,
        T0 + S,
    )
    .unwrap();
    assert!(flush_leader(&agg, T0 + 10 * S).is_empty());
    assert_eq!(
        agg.metrics()
            .outputs_discarded(m3_aggregator::metrics::OutputDiscard::Nan),
        1
    );
    let keep = engine(AggregatorOptions {
        discard_nan_aggregated_values: false,
        ..AggregatorOptions::default()
    });
    keep.add_untimed(
        MetricType::Gauge,
        b"g",
        &[f64::NAN],
        Metadatas::Default,
        T0 + S,
    )
    .unwrap();
    assert!(flush_leader(&keep, T0 + 10 * S)[0].value.is_nan());
}

#[test]
fn timer_batches_are_split_but_aggregate_the_same() {
    let agg = engine(AggregatorOptions {
        max_timer_batch_size_per_write: 3,
        ..AggregatorOptions::default()
    });
    let values: Vec<f64> = (1..=10).map(f64::from).collect();
    let only_sum = build::simple(
        AggregationId::from_types([AggregationType::Sum, AggregationType::Count]),
        &[policy("10s:2d")],
    );
    agg.add_untimed(
        MetricType::Timer,
        b"t",
        &values,
        Metadatas::Staged(&only_sum),
        T0 + S,
    )
    .unwrap();
    let out = flush_leader(&agg, T0 + 10 * S);
    assert_eq!(ids(&out), vec!["t.count", "t.sum"]);
    assert_eq!(out[0].value, 10.0);
    assert_eq!(out[1].value, 55.0);
    assert_eq!(agg.metrics().added(MetricType::Timer), 10);
}

#[test]
fn follower_discards_what_leader_flushed_then_takes_over_without_gap_or_duplicate() {
    let leader = engine(AggregatorOptions::default());
    let follower = engine(AggregatorOptions::default());
    let m = build::simple(AggregationId::DEFAULT, &[policy("10s:2d")]);
    // Both replicas receive the same timed writes, one per 10s window for 2 minutes.
    let write = |agg: &Aggregator, from: i64, to: i64| {
        for i in from..to {
            let t = T0 + i * 10 * S + S;
            agg.add_timed(
                MetricType::Gauge,
                b"g",
                t,
                i as f64,
                Metadatas::Staged(&m),
                t,
            )
            .unwrap();
            agg.add_untimed(MetricType::Counter, b"c", &[1.0], Metadatas::Staged(&m), t)
                .unwrap();
        }
    };
    write(&leader, 0, 6);
    write(&follower, 0, 6);
    assert!(follower.can_lead(&Default::default()));

    // The leader flushes at T0+100s and persists its flush times.
    let mut emitted = Vec::new();
    let r = leader.flush(T0 + 100 * S, FlushMode::Leader, &mut emitted);
    let times = r.flush_times;
    assert!(r.outputs > 0);
    let mut discarded = Vec::new();
    let fr = follower.flush(
        T0 + 100 * S,
        FlushMode::Follower {
            flushed_times: &times,
        },
        &mut discarded,
    );
    assert!(discarded.is_empty());
    assert_eq!(fr.windows_discarded as usize, r.outputs);
    assert!(follower.can_lead(&times));

    // The leader dies; more writes reach the follower only, which then leads.
    write(&follower, 6, 12);
    let mut resumed = Vec::new();
    follower.flush(T0 + 400 * S, FlushMode::Leader, &mut resumed);
    let mut all: Vec<(String, i64)> = emitted
        .iter()
        .chain(resumed.iter())
        .map(|o| (String::from_utf8_lossy(&o.id).into_owned(), o.time_nanos))
        .collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "no duplicate");
    for name in ["c", "g"] {
        let ends: Vec<i64> = all
            .iter()
            .filter(|(id, _)| id == name)
            .map(|(_, t)| *t)
            .collect();
        let expected: Vec<i64> = (1..=12).map(|i| T0 + i * 10 * S).collect();
        assert_eq!(ends, expected, "no gap for {name}");
    }
    assert_eq!(
        follower
            .metrics()
            .windows_discarded(WindowDiscard::Follower),
        fr.windows_discarded
    );
}

/// M3's forced follower flush: windows ending at or before the given time are dropped
/// whatever the leader's flush times say (there are none here), later ones are kept and
/// emitted by the follower once it leads; the dropped ones are counted by reason.
#[test]
fn forced_follower_flush_drops_only_windows_ended_before_the_bound() {
    let follower = engine(AggregatorOptions::default());
    let m = build::simple(
        AggregationId::DEFAULT,
        &[policy("10s:2d"), policy("1m:40d")],
    );
    for i in 0..12 {
        let t = T0 + i * 10 * S + S;
        follower
            .add_timed(
                MetricType::Gauge,
                b"g",
                t,
                i as f64,
                Metadatas::Staged(&m),
                t,
            )
            .unwrap();
    }
    // Windows of 10s ending at T0+10s … T0+120s; of 1m ending at T0+60s and T0+120s.
    let mut none = Vec::new();
    let forced = follower.flush(
        T0 + 130 * S,
        FlushMode::FollowerForced {
            before_nanos: T0 + 65 * S,
        },
        &mut none,
    );
    assert!(none.is_empty(), "a follower emits nothing");
    // 10s windows ending at 10..=60 (six) and the 1m window ending at 60.
    assert_eq!(forced.windows_discarded, 7);
    assert_eq!(
        follower
            .metrics()
            .windows_discarded(WindowDiscard::FollowerForced),
        7
    );
    assert_eq!(
        follower
            .metrics()
            .windows_discarded(WindowDiscard::Follower),
        0
    );
    // What it dropped, it no longer holds: it can lead only once the leader has flushed that
    // far.
    let flushed_until = |t: i64| {
        let mut times = m3_proto::flushpb::ShardFlushTimes::default();
        times.timed_by_resolution.insert(10 * S, t);
        let mut set = m3_proto::flushpb::ShardSetFlushTimes::default();
        for shard in 0..4 {
            set.by_shard.insert(shard, times.clone());
        }
        set
    };
    assert!(!follower.can_lead(&flushed_until(T0 + 30 * S)));
    assert!(follower.can_lead(&flushed_until(T0 + 70 * S)));
    let mut kept = Vec::new();
    follower.flush(T0 + 400 * S, FlushMode::Leader, &mut kept);
    let mut ends: Vec<(i64, i64)> = kept
        .iter()
        .map(|o| {
            (
                o.storage_policy.resolution.window.as_secs() as i64,
                (o.time_nanos - T0) / S,
            )
        })
        .collect();
    ends.sort();
    assert_eq!(
        ends,
        vec![
            (10, 70),
            (10, 80),
            (10, 90),
            (10, 100),
            (10, 110),
            (10, 120),
            (60, 120)
        ]
    );
}

/// A leader whose shard is cut off emits no window starting at or after the cutoff, and its
/// flush times claim none either, however far time moves on: the member that leads next in
/// the shard set (the replacement) must still emit them.
#[test]
fn flush_times_of_a_cut_off_shard_stop_at_its_last_window() {
    let agg = engine(AggregatorOptions::default());
    let cutoff = T0 + 60 * S;
    // "g" hashes to shard 3 in `engine`'s shard function.
    agg.set_shards(
        vec![ShardAssignment {
            id: 3,
            cutover_nanos: 0,
            cutoff_nanos: cutoff,
        }],
        T0,
    );
    let m = build::simple(
        AggregationId::DEFAULT,
        &[policy("10s:2d"), policy("1m:40d")],
    );
    for i in 0..12 {
        let t = T0 + i * 10 * S + S;
        agg.add_timed(
            MetricType::Gauge,
            b"g",
            t,
            i as f64,
            Metadatas::Staged(&m),
            T0 + 55 * S,
        )
        .unwrap();
    }
    let mut out = Vec::new();
    let result = agg.flush(T0 + 600 * S, FlushMode::Leader, &mut out);
    assert!(out.iter().all(|o| o.time_nanos <= cutoff), "{out:?}");
    assert_eq!(
        out.len(),
        6 + 1,
        "six 10s windows and one 1m window before the cutoff"
    );
    let times = result
        .flush_times
        .by_shard
        .get(&3)
        .expect("shard 3 flushed");
    assert_eq!(
        times
            .timed_by_resolution
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![cutoff, cutoff],
        "{times:?}"
    );
    // A shard without cutoff moves on with time.
    agg.set_shards(vec![ShardAssignment::unbounded(3)], T0);
    let later = agg.flush(T0 + 600 * S, FlushMode::Leader, &mut out);
    let times = later.flush_times.by_shard.get(&3).expect("shard 3 flushed");
    assert!(
        times.timed_by_resolution.values().all(|t| *t > cutoff),
        "{times:?}"
    );
}

#[test]
fn a_late_starting_follower_cannot_lead() {
    let agg = engine(AggregatorOptions::default());
    agg.set_shards(
        (0..4).map(ShardAssignment::unbounded).collect(),
        T0, // already owned: keeps its start time 0
    );
    let mut times = m3_proto::flushpb::ShardSetFlushTimes::default();
    let mut shard_times = m3_proto::flushpb::ShardFlushTimes::default();
    shard_times.standard_by_resolution.insert(10 * S, T0);
    times.by_shard.insert(5, shard_times.clone());
    assert!(agg.can_lead(&times));
    let late = Aggregator::new(AggregatorOptions::default(), Arc::new(|_: &[u8]| 5));
    late.set_shards(vec![ShardAssignment::unbounded(5)], T0 + S);
    assert!(!late.can_lead(&times));
    late.set_shards(vec![ShardAssignment::unbounded(5)], T0);
    assert!(
        !late.can_lead(&times),
        "start time is kept from the first assignment"
    );
    let early = Aggregator::new(AggregatorOptions::default(), Arc::new(|_: &[u8]| 5));
    early.set_shards(vec![ShardAssignment::unbounded(5)], T0);
    assert!(early.can_lead(&times));
    // Timed windows count the same way.
    let mut timed = m3_proto::flushpb::ShardFlushTimes::default();
    timed.timed_by_resolution.insert(10 * S, T0 - 10 * S);
    times.by_shard.insert(5, timed);
    assert!(!early.can_lead(&times));
}

#[test]
fn idle_entries_expire_after_ttl_once_flushed() {
    let agg = engine(AggregatorOptions::default());
    agg.add_untimed(MetricType::Counter, b"a", &[1.0], Metadatas::Default, T0)
        .unwrap();
    agg.add_untimed(
        MetricType::Counter,
        b"b",
        &[1.0],
        Metadatas::Default,
        T0 + 1800 * S,
    )
    .unwrap();
    assert_eq!(agg.metrics().entries_live(), 2);
    // Open windows keep an entry alive even past the TTL.
    assert_eq!(agg.expire_entries(T0 + 3601 * S), 0);
    flush_leader(&agg, T0 + 3601 * S);
    assert_eq!(
        agg.expire_entries(T0 + 3600 * S),
        0,
        "exactly TTL is not expired"
    );
    assert_eq!(agg.expire_entries(T0 + 3601 * S), 1);
    assert_eq!(agg.stats().entries, 1);
    assert_eq!(agg.metrics().entries_expired(), 1);
    assert_eq!(agg.metrics().entries_live(), 1);
    // A new write recreates the series.
    agg.add_untimed(
        MetricType::Counter,
        b"a",
        &[1.0],
        Metadatas::Default,
        T0 + 4000 * S,
    )
    .unwrap();
    assert_eq!(agg.metrics().entries_live(), 2);
}

/// A shard that held many series gives the room of their index and slots back once they
/// expire: what it holds follows the series it has, not the most it ever had.
#[test]
fn a_shard_gives_back_its_tables_room_once_most_series_expired() {
    let agg = Aggregator::new(AggregatorOptions::default(), Arc::new(|_: &[u8]| 0));
    agg.set_shards(vec![ShardAssignment::unbounded(0)], 0);
    let add = |i: usize, t: i64| {
        let id = format!("series-{i}");
        agg.add_untimed(
            MetricType::Counter,
            id.as_bytes(),
            &[1.0],
            Metadatas::Default,
            t,
        )
        .unwrap();
    };
    for i in 0..1_000 {
        add(i, T0 + 3_000 * S);
    }
    flush_leader(&agg, T0 + 3_020 * S);
    let few = agg.stats().estimated_bytes;
    for i in 1_000..100_000 {
        add(i, T0);
    }
    flush_leader(&agg, T0 + 3_020 * S);
    let many = agg.stats().estimated_bytes;
    assert_eq!(agg.expire_entries(T0 + 3_601 * S), 99_000);
    let after = agg.stats();
    assert_eq!(after.entries, 1_000);
    assert!(
        after.estimated_bytes < few * 3,
        "{} bytes after expiry, {few} with the same 1,000 series before the other 99,000 came ({many} with them)",
        after.estimated_bytes
    );
}

/// Metadatas that roll a series up under `rollup_id` at `10s:2d`.
fn rolled_up_as(rollup_id: &str) -> metricpb::StagedMetadatas {
    let mut metadatas = metricpb::StagedMetadatas {
        metadatas: vec![build::staged(0, false, Vec::new())],
    };
    if let Some(m) = metadatas.metadatas[0].metadata.as_mut() {
        m.pipelines.push(build::rollup_pipeline(
            rollup_id.as_bytes(),
            &[policy("10s:2d")],
        ));
    }
    metadatas
}

/// A rollup whose ID carries a tag of its sources that comes and goes (a pod) is a new
/// pipeline with each value. Once the series using one have expired, its pipeline and spec are
/// freed and their indexes taken by new ones: a shard goes on taking new rollups however many
/// it has seen (the table's limit is 65,535 at once), and each forwards under its own ID.
#[test]
fn rollups_that_come_and_go_free_their_pipelines_for_new_ones() {
    let agg = Aggregator::new(AggregatorOptions::default(), Arc::new(|_: &[u8]| 0));
    agg.set_shards(vec![ShardAssignment::unbounded(0)], 0);
    const PODS: usize = 10_000;
    const ROUNDS: i64 = 7; // 70,000 rollup IDs in all
    for round in 0..ROUNDS {
        let t = T0 + round * 7_200 * S;
        for pod in 0..PODS {
            let metadatas = rolled_up_as(&format!("requests_by_pod{{pod=\"{round}-{pod}\"}}"));
            let id = format!("requests{{pod=\"{round}-{pod}\",path=\"/\"}}");
            agg.add_untimed(
                MetricType::Counter,
                id.as_bytes(),
                &[1.0],
                Metadatas::Staged(&metadatas),
                t,
            )
            .unwrap_or_else(|e| panic!("round {round}, pod {pod}: {e}"));
        }
        let stats = agg.stats();
        assert_eq!(stats.entries, PODS);
        assert_eq!(stats.specs, PODS, "round {round}: the live specs only");
        assert_eq!(stats.pipelines, PODS + 1, "and the empty pipeline");

        flush_leader(&agg, t + 20 * S);
        let mut forwarded: Vec<String> = agg
            .take_forwarded()
            .iter()
            .map(|f| String::from_utf8_lossy(&f.id).into_owned())
            .collect();
        forwarded.sort();
        let mut expected: Vec<String> = (0..PODS)
            .map(|pod| format!("requests_by_pod{{pod=\"{round}-{pod}\"}}"))
            .collect();
        expected.sort();
        assert_eq!(forwarded, expected, "round {round}");

        assert_eq!(agg.expire_entries(t + 3_700 * S), PODS);
        let stats = agg.stats();
        assert_eq!((stats.specs, stats.pipelines), (0, 1), "round {round}");
    }
}

/// A series still written, whose rule changed (its rollup target went from one ID to
/// another): once the old metadata's elem has been idle for the TTL with no open window, it
/// goes, with its spec and pipeline, while the series and its new elem stay.
#[test]
fn a_series_whose_rule_changed_drops_the_old_elem_after_the_ttl() {
    let agg = Aggregator::new(AggregatorOptions::default(), Arc::new(|_: &[u8]| 0));
    agg.set_shards(vec![ShardAssignment::unbounded(0)], 0);
    let id = b"requests{pod=\"a\",path=\"/\"}";
    let before = rolled_up_as("requests_by_path_v1");
    let after = rolled_up_as("requests_by_path_v2");
    // One value at `t` with `metadatas`, flushed once its window is past.
    let write_and_flush = |metadatas: &metricpb::StagedMetadatas, t: i64| {
        agg.add_untimed(
            MetricType::Counter,
            id,
            &[1.0],
            Metadatas::Staged(metadatas),
            t,
        )
        .unwrap();
        flush_leader(&agg, t + 20 * S);
    };
    write_and_flush(&before, T0);
    // From here on the series comes with the new rule only.
    let mut t = T0 + 600 * S;
    while t <= T0 + 4_200 * S {
        write_and_flush(&after, t);
        t += 600 * S;
    }
    let stats = agg.stats();
    assert_eq!((stats.entries, stats.specs, stats.pipelines), (1, 2, 3));
    assert_eq!(agg.expire_entries(T0 + 3_600 * S), 0);
    assert_eq!(
        agg.stats().specs,
        2,
        "the old elem is not idle for longer than the TTL yet"
    );
    assert_eq!(agg.expire_entries(T0 + 4_230 * S), 0, "the series stays");
    let stats = agg.stats();
    assert_eq!(
        (stats.entries, stats.specs, stats.pipelines),
        (1, 1, 2),
        "the old rule's elem, spec and pipeline are gone"
    );
    // The series goes on under the new rule.
    agg.take_forwarded();
    write_and_flush(&after, t);
    let forwarded: Vec<Vec<u8>> = agg
        .take_forwarded()
        .into_iter()
        .map(|f| f.id.to_vec())
        .collect();
    assert_eq!(forwarded, vec![b"requests_by_path_v2".to_vec()]);
}

#[test]
fn concurrent_writers_lose_nothing() {
    let agg = Arc::new(engine(AggregatorOptions::default()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let agg = Arc::clone(&agg);
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    let id = format!("series-{}", i % 50);
                    agg.add_untimed(
                        MetricType::Counter,
                        id.as_bytes(),
                        &[1.0],
                        Metadatas::Default,
                        T0 + S,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let out = flush_leader(&agg, T0 + 10 * S);
    assert_eq!(out.len(), 50);
    assert_eq!(out.iter().map(|o| o.value).sum::<f64>(), 8000.0);
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Aggregator>();
    check::<AggregatedOutput>();
    check::<AddError>();
}

mod timed_batch {
    //! `add_timed_batch` against `add_timed` one value at a time: on random batches (values
    //! of several shards, one not owned, one not yet writeable; metadata that is the default,
    //! staged with one or two policies, tombstoned or not yet cut over; timestamps in and out of
    //! the buffers; one series written twice in a batch) both engines reject the same values
    //! for the same reasons, count the same, hold the same series and windows and flush the same
    //! outputs. Each case runs with a shard function the engine does not know and with
    //! murmur3 under the placement's count, where batches after the first find their series'
    //! shards by hint.

    use super::*;
    use m3_aggregator::TimedSample;
    use proptest::prelude::*;

    /// Shard of an ID: its last byte mod 5, or with `murmur3` murmur3_32 mod 5 (as the server
    /// routes, shard hints and all); shard 4 is not owned, shard 3 is owned from `T0 + 1000 s`
    /// on.
    fn engine_with_gaps(murmur3: bool) -> Aggregator {
        let options = AggregatorOptions {
            buffer_past: Duration::from_secs(60),
            buffer_future: Duration::from_secs(60),
            ..AggregatorOptions::default()
        };
        let agg = if murmur3 {
            Aggregator::new(options, Arc::new(|id: &[u8]| m3_cluster::shard_for(id, 5)))
                .with_murmur3_shard_count(Arc::new(std::sync::atomic::AtomicU32::new(5)))
        } else {
            Aggregator::new(
                options,
                Arc::new(|id: &[u8]| u32::from(id.last().copied().unwrap_or(0)) % 5),
            )
        };
        let mut shards: Vec<ShardAssignment> = (0..3).map(ShardAssignment::unbounded).collect();
        shards.push(ShardAssignment {
            id: 3,
            cutover_nanos: T0 + 1000 * S,
            cutoff_nanos: 0,
        });
        agg.set_shards(shards, 0);
        agg
    }

    fn all_metadatas() -> Vec<metricpb::StagedMetadatas> {
        let one = build::simple(AggregationId::DEFAULT, &[policy("10s:2d")]);
        let two = build::simple(
            AggregationId::DEFAULT,
            &[policy("10s:2d"), policy("1m:40d")],
        );
        let sums = build::simple(
            AggregationId::from_types([AggregationType::Sum, AggregationType::Count]),
            &[policy("10s:2d")],
        );
        let tombstoned = metricpb::StagedMetadatas {
            metadatas: vec![build::staged(0, true, Vec::new())],
        };
        let later = metricpb::StagedMetadatas {
            metadatas: vec![build::staged(
                T0 + 10_000 * S,
                false,
                vec![build::pipeline(AggregationId::DEFAULT, &[policy("1m:40d")])],
            )],
        };
        vec![one, two, sums, tombstoned, later]
    }

    /// (series, offset from the batch's time in seconds, value, metadata: None = default, an
    /// index into `all_metadatas`, or past them one (Sum, 1m:40d) pair).
    type Drawn = (u8, i64, f64, Option<usize>);

    fn batch_strategy() -> impl Strategy<Value = Vec<Drawn>> {
        prop::collection::vec(
            (
                0u8..12,
                -90i64..90,
                -1000.0f64..1000.0,
                prop::option::of(0usize..6),
            ),
            0..60,
        )
    }

    /// The metric type of series `i`.
    fn metric_type(i: u8) -> MetricType {
        [MetricType::Gauge, MetricType::Counter, MetricType::Timer][usize::from(i % 3)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        #[test]
        fn a_batch_is_its_values_added_one_by_one(
            batches in prop::collection::vec(batch_strategy(), 1..5),
            murmur3 in any::<bool>(),
        ) {
            let metadatas = all_metadatas();
            let batched = engine_with_gaps(murmur3);
            let single = engine_with_gaps(murmur3);
            for (round, batch) in batches.iter().enumerate() {
                let now = T0 + round as i64 * 20 * S;
                let ids: Vec<Vec<u8>> = batch.iter().map(|d| vec![b's', d.0]).collect();
                let samples: Vec<TimedSample<'_>> = batch
                    .iter()
                    .zip(&ids)
                    .map(|(&(series, offset, value, meta), id)| TimedSample {
                        metric_type: metric_type(series),
                        id,
                        time_nanos: now + offset * S,
                        value: if metric_type(series) == MetricType::Counter {
                            value.trunc()
                        } else {
                            value
                        },
                        metadatas: match meta {
                            None => Metadatas::Default,
                            Some(i) if i < metadatas.len() => Metadatas::Staged(&metadatas[i]),
                            Some(_) => Metadatas::Single {
                                aggregation_id: AggregationId::from_types([AggregationType::Sum]),
                                storage_policy: policy("1m:40d"),
                            },
                        },
                    })
                    .collect();
                let mut batch_errors = vec![None; samples.len()];
                let mut told = 0;
                batched.add_timed_batch(&samples, now, &mut |i, e| {
                    told += 1;
                    batch_errors[i] = Some(e.reason());
                });
                prop_assert_eq!(told, batch_errors.iter().flatten().count(), "a value rejected twice");
                let single_errors: Vec<Option<RejectReason>> = samples
                    .iter()
                    .map(|s| {
                        single
                            .add_timed(s.metric_type, s.id, s.time_nanos, s.value, s.metadatas, now)
                            .err()
                            .map(|e| e.reason())
                    })
                    .collect();
                prop_assert_eq!(&batch_errors, &single_errors);
                // Memory estimates are by capacity, which may grow in other steps.
                let held = |a: &Aggregator| (a.stats().shards, a.stats().entries, a.stats().windows);
                prop_assert_eq!(held(&batched), held(&single));
                let flush_at = now + 15 * S;
                prop_assert_eq!(flush_leader(&batched, flush_at), flush_leader(&single, flush_at));
            }
            for reason in RejectReason::ALL {
                prop_assert_eq!(
                    batched.metrics().rejected(reason),
                    single.metrics().rejected(reason),
                    "rejected {:?}", reason
                );
            }
            for t in MetricType::ALL {
                prop_assert_eq!(batched.metrics().added(t), single.metrics().added(t));
            }
            prop_assert_eq!(batched.metrics().entries_live(), single.metrics().entries_live());
            let end = T0 + 100_000 * S;
            prop_assert_eq!(flush_leader(&batched, end), flush_leader(&single, end));
        }
    }
}
