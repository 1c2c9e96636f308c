//! Rule matching on the write path.
//!
//! * `rules/cached_series`: a series seen before: one lookup in the match cache, as every
//!   sample of a series Prometheus sends each scrape costs. Target: ≤ 50 ns.
//! * `rules/new_series_100_rules`: matching a series seen for the first time against 100
//!   rules (50 mapping, 50 rollup; two of them match), building its pipelines and rollup IDs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use m3_metric::StoragePolicy;
use m3_rules::config::RulesConfig;
use m3_rules::{MatchCache, Matched, RuleSet};

fn rules(n: usize) -> RuleSet {
    let mut yaml = String::from("mappingRules:\n");
    for i in 0..n / 2 {
        yaml.push_str(&format!(
            "  - name: m{i}\n    filter: \"__name__:svc{i}_* env:prod\"\n    aggregations: [Max]\n    storagePolicies: [{{resolution: 1m, retention: 40d}}]\n"
        ));
    }
    yaml.push_str("rollupRules:\n");
    for i in 0..n / 2 {
        yaml.push_str(&format!(
            "  - name: r{i}\n    filter: \"__name__:svc{i}_requests_total route:*\"\n    transforms:\n      - transform: {{type: Increase}}\n      - rollup: {{metricName: svc{i}_by_route, groupBy: [route], aggregations: [Sum]}}\n      - transform: {{type: Add}}\n    storagePolicies: [{{resolution: 10s, retention: 2d}}]\n"
        ));
    }
    let config: RulesConfig = serde_saphyr::from_str(&yaml).expect("rules YAML");
    let policies: Vec<StoragePolicy> = vec![
        "10s:2d".parse().expect("policy"),
        "1m:40d".parse().expect("policy"),
    ];
    RuleSet::compile(&config, "downsample.rules", &policies).expect("rules compile")
}

/// A series' tags as (name, value) pairs.
type Tags = Vec<(Vec<u8>, Vec<u8>)>;

/// Series `i`'s ID and tags.
fn series(i: usize) -> (Vec<u8>, Tags) {
    let tags: Tags = [
        ("__name__", "svc7_requests_total".to_string()),
        ("env", "prod".to_string()),
        ("instance", format!("10.0.{}.{}:9090", i / 256, i % 256)),
        ("job", "svc7".to_string()),
        ("pod", format!("svc7-{i:08x}")),
        ("route", format!("/api/v{}", i % 8)),
    ]
    .into_iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.into_bytes()))
    .collect();
    let mut id = Vec::new();
    m3_metric::id::encode_tags(
        tags.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
        &mut id,
    )
    .expect("ID");
    (id, tags)
}

fn matching(c: &mut Criterion) {
    let rules = rules(100);
    let mut group = c.benchmark_group("rules");
    let series: Vec<_> = (0..10_000).map(series).collect();
    let cache: MatchCache<Matched> = MatchCache::new(100_000);
    for (id, tags) in &series {
        let borrowed: Vec<(&[u8], &[u8])> = tags
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        let matched = cache.get_or_insert_with(id, || rules.matches(&borrowed, b"unknown"));
        assert_eq!(
            matched.pipelines.len(),
            2,
            "one mapping and one rollup rule match"
        );
    }
    group.throughput(Throughput::Elements(1));
    let mut next = 0;
    group.bench_function("cached_series", |b| {
        b.iter(|| {
            let (id, _) = &series[next];
            next = (next + 1) % series.len();
            cache.get_or_insert_with(id, || unreachable!("every series is cached"))
        });
    });
    let mut next = 0;
    group.bench_function("new_series_100_rules", |b| {
        b.iter(|| {
            let (_, tags) = &series[next];
            next = (next + 1) % series.len();
            let borrowed: Vec<(&[u8], &[u8])> = tags
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .collect();
            rules.matches(&borrowed, b"unknown")
        });
    });
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
