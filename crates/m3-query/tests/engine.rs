//! The engine over the embedded store: selector semantics at their edges, the answer's shapes
//! and JSON, the limits and their errors. (What every operator and function computes is checked
//! against Prometheus itself in `tests/differential`.)

use std::time::Duration;

use m3_query::{
    Engine, NamespaceSource, QueryError, QueryValue, STALE_NAN_BITS, Sample, SeriesPoints,
};
use m3_storage::{Labels, NamespaceConfig, Store};

const RAW: &str = "default";
const MIN: i64 = 60_000;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().copied()).expect("valid labels")
}

/// A store with `up{job="api"}` every minute from 1m to 10m (value = minute), `up{job="db"}`
/// at 1m only and `other` at 5m.
fn fixture() -> (tempfile::TempDir, NamespaceSource) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(
        dir.path(),
        vec![NamespaceConfig::unaggregated(
            RAW,
            Duration::from_secs(48 * 3600),
        )],
    )
    .expect("open store");
    let api = labels(&[("__name__", "up"), ("job", "api")]);
    let db = labels(&[("__name__", "up"), ("job", "db")]);
    let other = labels(&[("__name__", "other")]);
    let mut batch: Vec<_> = (1..=10).map(|m| (&api, m * MIN, m as f64)).collect();
    batch.push((&db, MIN, 100.0));
    batch.push((&other, 5 * MIN, 5.0));
    store.write_batch(RAW, &batch).expect("write");
    (dir, NamespaceSource::new(store, RAW))
}

fn vector(r: Result<QueryValue, QueryError>) -> Vec<Sample> {
    match r {
        Ok(QueryValue::Vector(v)) => v,
        other => panic!("expected a vector, got {other:?}"),
    }
}

fn matrix(r: Result<QueryValue, QueryError>) -> Vec<SeriesPoints> {
    match r {
        Ok(QueryValue::Matrix(m)) => m,
        other => panic!("expected a matrix, got {other:?}"),
    }
}

#[test]
fn instant_selector_takes_the_latest_sample_within_the_lookback() {
    let (_dir, source) = fixture();
    let engine = Engine::new();
    let v = vector(engine.instant_query(&source, "up", 3 * MIN + 30_000));
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].labels.get("job"), Some("api"));
    assert_eq!((v[0].timestamp_ms, v[0].value), (3 * MIN + 30_000, 3.0));
    assert_eq!(v[1].value, 100.0, "db's 1m sample is within 5m");

    // Prometheus 2.x: the lookback window [t - 5m, t] is closed, so at exactly 6m db's 1m
    // sample still counts, and one millisecond later it does not.
    assert_eq!(
        vector(engine.instant_query(&source, "up", 6 * MIN)).len(),
        2
    );
    assert_eq!(
        vector(engine.instant_query(&source, "up", 6 * MIN + 1)).len(),
        1
    );

    assert!(vector(engine.instant_query(&source, "up", 0)).is_empty());
    assert!(vector(engine.instant_query(&source, "nothing_here", 5 * MIN)).is_empty());

    let short = Engine::new().with_lookback(Duration::from_secs(30));
    assert_eq!(
        vector(short.instant_query(&source, "other", 5 * MIN + 30_000)).len(),
        1
    );
    assert!(vector(short.instant_query(&source, "other", 5 * MIN + 30_001)).is_empty());
}

#[test]
fn offset_and_at_move_the_window() {
    let (_dir, source) = fixture();
    let engine = Engine::new();
    let v = vector(engine.instant_query(&source, r#"up{job="api"} offset 3m"#, 8 * MIN));
    assert_eq!((v[0].timestamp_ms, v[0].value), (8 * MIN, 5.0));
    let v = vector(engine.instant_query(&source, r#"up{job="api"} @ 120"#, 8 * MIN));
    assert_eq!(v[0].value, 2.0);
    let v = vector(engine.instant_query(&source, r#"up{job="api"} offset -2m"#, 3 * MIN));
    assert_eq!(v[0].value, 5.0);
    // @ end() pins every step of a range query to its end.
    let m = matrix(engine.range_query(&source, r#"up{job="api"} @ end()"#, 3 * MIN, 5 * MIN, MIN));
    assert_eq!(
        m[0].points,
        vec![(3 * MIN, 5.0), (4 * MIN, 5.0), (5 * MIN, 5.0)]
    );
}

#[test]
fn range_selector_returns_raw_points_and_range_queries_one_per_step() {
    let (_dir, source) = fixture();
    let engine = Engine::new();
    let m = matrix(engine.instant_query(&source, r#"up{job="api"}[3m]"#, 5 * MIN));
    // [2m, 5m]: closed in Prometheus 2.x.
    assert_eq!(
        m[0].points,
        vec![
            (2 * MIN, 2.0),
            (3 * MIN, 3.0),
            (4 * MIN, 4.0),
            (5 * MIN, 5.0)
        ]
    );

    let m = matrix(engine.range_query(&source, "up", 0, 8 * MIN, 2 * MIN));
    assert_eq!(m.len(), 2);
    assert_eq!(
        m[0].points,
        vec![
            (2 * MIN, 2.0),
            (4 * MIN, 4.0),
            (6 * MIN, 6.0),
            (8 * MIN, 8.0)
        ]
    );
    assert_eq!(
        m[1].points,
        vec![(2 * MIN, 100.0), (4 * MIN, 100.0), (6 * MIN, 100.0)]
    );
    // A scalar answers as a matrix with one series without labels.
    let m = matrix(engine.range_query(&source, "time()", 0, 2 * MIN, MIN));
    assert!(m[0].labels.is_empty());
    assert_eq!(m[0].points, vec![(0, 0.0), (MIN, 60.0), (2 * MIN, 120.0)]);
}

#[test]
fn staleness_markers_end_a_series() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(
        dir.path(),
        vec![NamespaceConfig::unaggregated(
            RAW,
            Duration::from_secs(48 * 3600),
        )],
    )
    .expect("open store");
    let s = labels(&[("__name__", "s")]);
    let stale = f64::from_bits(STALE_NAN_BITS);
    store
        .write_batch(
            RAW,
            &[
                (&s, MIN, 1.0),
                (&s, 2 * MIN, stale),
                (&s, 3 * MIN, f64::NAN),
            ],
        )
        .expect("write");
    let source_s = NamespaceSource::new(store, RAW);
    let engine = Engine::new();
    assert_eq!(
        vector(engine.instant_query(&source_s, "s", MIN + 1)).len(),
        1
    );
    assert!(vector(engine.instant_query(&source_s, "s", 2 * MIN + 1)).is_empty());
    assert!(
        vector(engine.instant_query(&source_s, "s", 3 * MIN))[0]
            .value
            .is_nan(),
        "NaN is a value"
    );
    let m = matrix(engine.instant_query(&source_s, "s[5m]", 3 * MIN));
    assert_eq!(
        m[0].points.len(),
        2,
        "the marker is left out of range vectors"
    );
    let m = matrix(engine.range_query(&source_s, "s", MIN, 3 * MIN, MIN));
    let times: Vec<i64> = m[0].points.iter().map(|p| p.0).collect();
    assert_eq!(times, vec![MIN, 3 * MIN]);
}

#[test]
fn answers_serialise_as_prometheus_writes_them() {
    let (_dir, source) = fixture();
    let engine = Engine::new();
    let json = |r: Result<QueryValue, QueryError>| {
        serde_json::to_string(&r.expect("answer")).unwrap_or_default()
    };
    assert_eq!(
        json(engine.instant_query(&source, r#"sum by (job) (up{job="api"})"#, 90_500)),
        r#"{"resultType":"vector","result":[{"metric":{"job":"api"},"value":[90.5,"1"]}]}"#
    );
    assert_eq!(
        json(engine.instant_query(&source, "1 / 0", 0)),
        r#"{"resultType":"scalar","result":[0,"+Inf"]}"#
    );
    assert_eq!(
        json(engine.instant_query(&source, r#""hi""#, 1_000)),
        r#"{"resultType":"string","result":[1,"hi"]}"#
    );
    assert_eq!(
        json(engine.range_query(&source, "other", 5 * MIN, 6 * MIN, MIN)),
        r#"{"resultType":"matrix","result":[{"metric":{"__name__":"other"},"values":[[300,"5"],[360,"5"]]}]}"#
    );
}

#[test]
fn bad_queries_are_bad_data() {
    let (_dir, source) = fixture();
    let engine = Engine::new();
    for query in ["up{", "rate(up)", "sum(", r#"up{a=~"("}"#] {
        let e = engine.instant_query(&source, query, MIN).expect_err(query);
        assert_eq!(
            (e.error_type(), e.http_status()),
            ("bad_data", 400),
            "{query}: {e}"
        );
    }
    for (start, end, step) in [
        (10, 0, 1),
        (0, 10, 0),
        (0, 10, -1),
        (0, 11_000, 1),
        (i64::MIN, i64::MAX, 1),
    ] {
        let e = engine
            .range_query(&source, "up", start, end, step)
            .expect_err("refused");
        assert_eq!(e.error_type(), "bad_data", "{start} {end} {step}: {e}");
    }
    assert!(engine.range_query(&source, "up", 0, 10_999, 1).is_ok());
    let e = engine
        .range_query(&source, "up[5m]", 0, MIN, MIN)
        .expect_err("range vector");
    assert!(
        e.to_string()
            .contains("invalid expression type \"range vector\""),
        "{e}"
    );
    // Colliding series after a function drops their names: Prometheus' execution error.
    let e = engine
        .instant_query(&source, r#"label_replace(up, "job", "x", "", "")"#, 2 * MIN)
        .expect_err("collision");
    assert_eq!((e.error_type(), e.http_status()), ("execution", 422), "{e}");
    assert_eq!(
        e.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
    // Extreme evaluation times do not overflow.
    for t in [i64::MIN, i64::MAX] {
        engine
            .instant_query(&source, "up offset 1h", t)
            .expect("far time");
        engine
            .instant_query(&source, "rate(up[1h] offset -1h)", t)
            .expect("far time");
        engine
            .instant_query(&source, "max_over_time(up[1h:1m])", t)
            .expect("far time");
    }
}

#[test]
fn limits_refuse_with_prometheus_messages() {
    let (_dir, source) = fixture();
    let few_samples = Engine::new().with_max_samples(5);
    let e = few_samples
        .instant_query(&source, "up[10m]", 10 * MIN)
        .expect_err("too many samples");
    assert_eq!((e.error_type(), e.http_status()), ("execution", 422));
    assert!(
        e.to_string().starts_with(
            "query processing would load too many samples into memory in query execution"
        ),
        "{e}"
    );
    assert!(
        Engine::new()
            .with_max_samples(20)
            .instant_query(&source, "up[10m]", 10 * MIN)
            .is_ok()
    );

    let one_series = Engine::new().with_max_series(1);
    let e = one_series
        .instant_query(&source, "up", 2 * MIN)
        .expect_err("too many series");
    assert_eq!(e.error_type(), "execution");
    assert!(one_series.instant_query(&source, "other", 5 * MIN).is_ok());

    let no_time = Engine::new().with_timeout(Some(Duration::ZERO));
    let e = no_time
        .instant_query(&source, "up", 2 * MIN)
        .expect_err("timeout");
    assert_eq!((e.error_type(), e.http_status()), ("timeout", 503), "{e}");

    // A subquery whose steps alone exceed the budget is refused before they are allocated,
    // and so is a range query at 1 ms over ten years.
    let e = Engine::new()
        .with_max_samples(1_000_000)
        .instant_query(&source, "max_over_time(up[3650d:1ms])", 10 * MIN)
        .expect_err("ten years at 1 ms");
    assert_eq!(e.error_type(), "execution", "{e}");
    let e = Engine::new()
        .range_query(&source, "up", 0, 3650 * 86_400_000, 1)
        .expect_err("too many steps");
    assert_eq!(e.error_type(), "bad_data", "{e}");
}

#[test]
fn deep_or_huge_queries_are_refused_not_crashed() {
    let (_dir, source) = fixture();
    let engine = Engine::new();
    // Nine hundred levels evaluate.
    let chain = format!("1{}", "+1".repeat(899));
    match engine.instant_query(&source, &chain, MIN) {
        Ok(QueryValue::Scalar { value, .. }) => assert_eq!(value, 900.0),
        other => panic!("{other:?}"),
    }
    // Deeper chains, nested parentheses and calls are refused with the reason, at once (the
    // parser's time grows with the square of the depth).
    for query in [
        format!("1{}", "+1".repeat(50_000)),
        format!("{}up{}", "(".repeat(20_000), ")".repeat(20_000)),
        format!("{}up{}", "sum(".repeat(5_000), ")".repeat(5_000)),
        format!("{}up", "- ".repeat(30_000)),
        format!("{}up", "-".repeat(30_000)),
        format!("1{}1", "+-".repeat(30_000)),
        format!("up{}", " or up".repeat(2_000)),
    ] {
        let e = engine
            .instant_query(&source, &query, MIN)
            .expect_err("too deep");
        assert_eq!(e.error_type(), "bad_data", "{e}");
        let e = engine
            .range_query(&source, &query, 0, MIN, MIN)
            .expect_err("too deep");
        assert_eq!(e.error_type(), "bad_data", "{e}");
    }
    // Bare numbers where a duration goes that no duration holds.
    for query in [
        "rate(up[572222222222222222222])",
        "up[Inf]",
        "up[NaN]",
        "up[1e400]",
        "max_over_time(up[5m:1e300])",
        "max_over_time(up[100370315260315261212:1])",
        "up[1e+400]",
        "up offset 1e+400",
        "max_over_time(up[5m:1e+400])",
        "up[1.5E+300]",
        "max_over_time(up[1m:100370315260315261212])",
        "up offset 1e30",
        "up offset -Inf",
        "up[0x1ffffffffffffffffffff]",
    ] {
        let e = engine.instant_query(&source, query, MIN).expect_err(query);
        assert_eq!(e.error_type(), "bad_data", "{query}: {e}");
        // Refused by the check, before the parser (which would panic) sees it.
        assert!(e.to_string().contains("is not a duration"), "{query}: {e}");
    }
    // Ordinary ones still work.
    for query in [
        "rate(up[300])",
        "up offset 60",
        "max_over_time(up[5m:30])",
        "up[0x3c]",
        "up[6e+1]",
        "up offset 3e+1",
        "up + 1e+3",
        "0x1e+1",
    ] {
        assert!(
            engine.instant_query(&source, query, 10 * MIN).is_ok(),
            "{query}"
        );
    }
    let huge = format!("up{{job=~\"{}\"}}", "a|".repeat(200_000));
    let e = engine
        .instant_query(&source, &huge, MIN)
        .expect_err("too long");
    assert!(
        e.to_string()
            .contains("more than the 262144 a query may have"),
        "{e}"
    );
}

#[test]
fn hostile_match_selectors_are_refused_not_crashed() {
    use m3_query::parse_series_selector;
    // Run on a small stack, as an async worker's: a refusal must come before any deep tree.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let hostile = [
                format!("{}up{}", "(".repeat(100_000), ")".repeat(100_000)),
                format!("{}up{}", "sum(".repeat(50_000), ")".repeat(50_000)),
                format!("up{}", " or up".repeat(50_000)),
                format!("{}up", "-".repeat(100_000)),
                "up[1e400]".to_string(),
                "up offset -Inf".to_string(),
                format!("up{{job=~\"{}\"}}", "a|".repeat(200_000)),
            ];
            hostile
                .iter()
                .map(|text| match parse_series_selector(text) {
                    Ok(m) => Err(format!("{:.40}… accepted as {m:?}", text)),
                    Err(e) if e.error_type() == "bad_data" => Ok(e.to_string()),
                    Err(e) => Err(format!("{:.40}…: {e}", text)),
                })
                .collect::<Vec<_>>()
        })
        .expect("spawn");
    for outcome in handle.join().expect("no panic or overflow") {
        let message = outcome.expect("refused as bad_data");
        assert!(
            message.starts_with("match[] must be a series selector"),
            "{message}"
        );
    }
    // Selectors with brackets one deep, however many matchers, are still read.
    let many = (0..300)
        .map(|i| format!("l{i}!=\"x\""))
        .collect::<Vec<_>>()
        .join(",");
    let matchers = parse_series_selector(&format!("up{{{many}}}")).expect("wide selector");
    assert_eq!(matchers.len(), 301);
}

#[test]
fn the_sample_budget_counts_every_step_a_result_holds() {
    let (_dir, source) = fixture();
    // `up` over ten minutes at a 1 s step: two series of 601 steps each, though the store
    // holds only 11 samples of them. The budget counts the slots the answer holds.
    let second = 1_000;
    let run = |max: usize, query: &str| {
        Engine::new()
            .with_max_samples(max)
            .range_query(&source, query, 0, 10 * MIN, second)
    };
    for query in [
        "up",
        "rate(up[2m])",
        "up * 2",
        "up + on (job) up",
        "sum by (job) (up)",
        r#"count_values("v", up)"#,
        "histogram_quantile(0.5, label_replace(up, \"le\", \"+Inf\", \"\", \"\"))",
    ] {
        let e = run(600, query).expect_err(query);
        assert!(
            matches!(e, QueryError::TooManySamples { limit: 600 }),
            "{query}: {e}"
        );
        assert!(run(10_000, query).is_ok(), "{query}");
    }
    // What a node's arguments held is given back once it is done: a chain of additions holds
    // two operands and a result at a time, not every intermediate one.
    assert!(run(5 * 601, "1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1").is_ok());
}

#[test]
fn label_function_errors_are_execution_errors() {
    let (_dir, source) = fixture();
    for query in [
        r#"label_replace(up, "x", "$1", "job", "(.*")"#,
        r#"label_replace(up, "1x", "$1", "job", "(.*)")"#,
        r#"label_join(up, "x", "-", "1bad")"#,
        r#"count_values("1bad", up)"#,
        "topk(NaN, up)",
        "topk(9223372036854775808, up)",
        "-(up{job=\"db\"} or label_replace(other, \"job\", \"db\", \"\", \"\"))",
    ] {
        let e = Engine::new()
            .range_query(&source, query, 0, 10 * MIN, MIN)
            .expect_err(query);
        assert_eq!(
            (e.error_type(), e.http_status()),
            ("execution", 422),
            "{query}: {e}"
        );
    }
    // label_replace's regex is anchored and `.` does not match a newline, as in Go.
    let r = vector(Engine::new().instant_query(
        &source,
        r#"label_replace(up{job="api"}, "x", "[$1]", "job", "a(.)i")"#,
        2 * MIN,
    ));
    assert_eq!(r[0].labels.get("x"), Some("[p]"));
}

#[test]
fn earliest_read_counts_lookback_ranges_offsets_subqueries_and_at() {
    let engine = Engine::new();
    let t = 10 * 86_400_000;
    let (hour, day) = (60 * MIN, 24 * 60 * MIN);
    let reach = |query: &str| {
        let expr = m3_query::parse(query).expect(query);
        engine.earliest_read(&expr, t, t + hour)
    };
    assert_eq!(reach("up"), t - 5 * MIN);
    assert_eq!(reach("rate(up[7d])"), t - 7 * day);
    assert_eq!(reach("up offset 1d"), t - day - 5 * MIN);
    assert_eq!(reach("up offset -1h"), t + hour - 5 * MIN);
    assert_eq!(
        reach("max_over_time(rate(up[5m])[1h:1m] offset 1d)"),
        t - day - hour - 5 * MIN
    );
    assert_eq!(reach("up + on () group_left rate(other[2d])"), t - 2 * day);
    assert_eq!(reach("up @ 100"), 100_000 - 5 * MIN);
    assert_eq!(reach("up[1h] @ end()"), t);
    assert_eq!(reach("max_over_time(up[10m:] @ start())"), t - 15 * MIN);
    // Nothing read: the query's start.
    assert_eq!(reach("vector(1) + time()"), t);
}

#[test]
fn aggregations_of_range_functions_hold_one_fold_per_group_not_every_series() {
    let (_dir, source) = fixture();
    // 601 steps, two `up` series, one group: folding series by series holds the group's 601
    // slots; evaluating the whole vector first holds both series' 601 too.
    let run = |query: &str| {
        Engine::new()
            .with_max_samples(700)
            .range_query(&source, query, 0, 10 * MIN, 1_000)
    };
    let streamed = matrix(run("sum(rate(up[2m]))"));
    assert_eq!(streamed.len(), 1);
    let e = run(r#"sum(rate({__name__="up"}[2m]))"#).expect_err("whole vector");
    assert!(matches!(e, QueryError::TooManySamples { .. }), "{e}");
    // Both ways give the same answer.
    let whole = matrix(Engine::new().range_query(
        &source,
        r#"sum(rate({__name__="up"}[2m]))"#,
        0,
        10 * MIN,
        1_000,
    ));
    assert_eq!(streamed, whole);
}

#[test]
fn the_deepest_accepted_queries_parse_and_format_on_an_async_workers_stack() {
    // `format_query` and the exemplars endpoint's check run from the request's task: a tokio
    // worker thread, 2 MiB of stack by default. The deepest trees the guards let through must
    // parse, print and drop from there.
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let depth = m3_query::engine::MAX_NESTING - 2;
            let deepest = [
                format!("1{}", "+1".repeat(depth)),
                format!("{}up{}", "(".repeat(depth), ")".repeat(depth)),
                format!("{}up{}", "abs(".repeat(depth), ")".repeat(depth)),
                format!("{}up", "-".repeat(depth)),
            ];
            deepest
                .iter()
                .map(|q| {
                    let checked = m3_query::validate_query(q);
                    let formatted = m3_query::format_query(q).map(|text| text.len());
                    (checked.is_ok(), formatted.is_ok())
                })
                .collect::<Vec<_>>()
        })
        .expect("spawn");
    let outcomes = handle.join().expect("no stack overflow or panic");
    // Every one of them is within the guards, so each parses and prints.
    assert_eq!(outcomes, vec![(true, true); 4]);
}
