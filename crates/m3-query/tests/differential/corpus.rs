//! The queries asked of both engines: hand-written ones for every operator and function,
//! then generated combinations (every range function over every range, every aggregation
//! with every grouping, every arithmetic and comparison operator with each matching mode).

const C: &str = "m3q_requests_total";
const G: &str = "m3q_temperature";
const H: &str = "m3q_latency_seconds_bucket";

/// Queries written by hand, each aimed at one feature.
fn hand_written() -> Vec<String> {
    let q = [
        // Selectors, lookback, staleness, offset and @.
        "m3q_requests_total",
        r#"m3q_requests_total{code="500"}"#,
        r#"m3q_requests_total{code!="200", job=~"a.*"}"#,
        r#"m3q_requests_total{instance!~"b.*"}"#,
        r#"{__name__=~"m3q_temp.*", room="kitchen"}"#,
        "m3q_gappy",
        "m3q_stale",
        "m3q_special",
        "m3q_temperature offset 5m",
        "m3q_temperature offset -2m",
        "m3q_requests_total[2m]",
        "m3q_temperature[1m] offset 3m",
        "m3q_nonexistent",
        // Literals and scalars.
        "1",
        "-2.5",
        "1 + 2 * 3",
        "2 ^ 3 ^ 2",
        "7 % 3",
        "1 / 0",
        "-1 / 0",
        "0 / 0",
        "1 == bool 1",
        "2 > bool 3",
        "\"a string\"",
        "time()",
        "pi()",
        "vector(5)",
        "scalar(sum(m3q_info))",
        "scalar(m3q_info)",
        "vector(time()) - time()",
        "-m3q_temperature",
        // Range functions.
        "rate(m3q_requests_total[5m])",
        "increase(m3q_requests_total[3m])",
        "delta(m3q_temperature[4m])",
        "irate(m3q_requests_total[1m])",
        "idelta(m3q_temperature[2m])",
        "deriv(m3q_temperature[5m])",
        "predict_linear(m3q_temperature[5m], 600)",
        "resets(m3q_requests_total[10m])",
        "changes(m3q_temperature[5m])",
        "avg_over_time(m3q_temperature[5m])",
        "sum_over_time(m3q_temperature[5m])",
        "min_over_time(m3q_temperature[5m])",
        "max_over_time(m3q_temperature[5m])",
        "count_over_time(m3q_temperature[5m])",
        "last_over_time(m3q_temperature[5m])",
        "present_over_time(m3q_gappy[5m])",
        "absent_over_time(m3q_gappy[5m])",
        "absent_over_time(m3q_nonexistent{job=\"x\"}[5m])",
        "stddev_over_time(m3q_temperature[5m])",
        "stdvar_over_time(m3q_temperature[5m])",
        "quantile_over_time(0.9, m3q_temperature[5m])",
        "quantile_over_time(0.5, m3q_temperature[10m])",
        "rate(m3q_special[5m])",
        "avg_over_time(m3q_special[5m])",
        "max_over_time(m3q_special[5m])",
        "min_over_time(m3q_special[5m])",
        "rate(m3q_requests_total[5m] offset 10m)",
        "rate(m3q_stale[5m])",
        // Subqueries.
        "max_over_time(rate(m3q_requests_total[2m])[10m:1m])",
        "avg_over_time(m3q_temperature[10m:30s])",
        "min_over_time(sum by (job) (m3q_temperature)[5m:])",
        "rate(m3q_requests_total[5m:1m])",
        "sum_over_time(m3q_temperature[5m:1m] offset 2m)",
        // Element functions.
        "abs(m3q_temperature)",
        "ceil(m3q_temperature)",
        "floor(m3q_temperature)",
        "round(m3q_temperature)",
        "round(m3q_temperature, 0.5)",
        "exp(m3q_temperature / 10)",
        "sqrt(m3q_temperature)",
        "ln(m3q_temperature)",
        "log2(m3q_temperature)",
        "log10(m3q_temperature)",
        "sgn(m3q_temperature)",
        "clamp(m3q_temperature, 0, 10)",
        "clamp(m3q_temperature, 10, 0)",
        "clamp_min(m3q_temperature, 2)",
        "clamp_max(m3q_temperature, 2)",
        "sin(m3q_temperature)",
        "cos(m3q_temperature)",
        "tan(m3q_temperature)",
        "asin(m3q_temperature / 100)",
        "acos(m3q_temperature / 100)",
        "atan(m3q_temperature)",
        "sinh(m3q_temperature / 10)",
        "cosh(m3q_temperature / 10)",
        "tanh(m3q_temperature)",
        "asinh(m3q_temperature)",
        "acosh(abs(m3q_temperature) + 1)",
        "atanh(m3q_temperature / 100)",
        "deg(m3q_temperature)",
        "rad(m3q_temperature)",
        "timestamp(m3q_temperature)",
        "timestamp(sum(m3q_temperature))",
        "hour()",
        "minute()",
        "month()",
        "year()",
        "day_of_month()",
        "day_of_week()",
        "days_in_month()",
        "hour(timestamp(m3q_temperature))",
        "minute(vector(1700000000))",
        "day_of_week(vector(1700000000))",
        "days_in_month(vector(1709251200))",
        // Label functions.
        r#"label_replace(m3q_temperature, "host", "$1", "instance", "(.*):.*")"#,
        r#"label_replace(m3q_temperature, "room", "", "room", ".*")"#,
        r#"label_replace(m3q_temperature, "x", "${1}-y", "job", "(a)pi")"#,
        r#"label_join(m3q_temperature, "where", "/", "job", "instance", "room")"#,
        r#"label_join(m3q_temperature, "job", "", "room")"#,
        // Absent, sort, histogram_quantile.
        "absent(m3q_nonexistent)",
        r#"absent(m3q_nonexistent{job="api", instance=~"x"})"#,
        "absent(m3q_temperature)",
        "absent(m3q_gappy)",
        "sort(m3q_temperature)",
        "sort_desc(m3q_temperature)",
        "histogram_quantile(0.9, m3q_latency_seconds_bucket)",
        "histogram_quantile(0.5, rate(m3q_latency_seconds_bucket[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(m3q_latency_seconds_bucket[5m])))",
        "histogram_quantile(0, m3q_latency_seconds_bucket)",
        "histogram_quantile(1.5, m3q_latency_seconds_bucket)",
        "histogram_quantile(-1, m3q_latency_seconds_bucket)",
        // Aggregations with parameters.
        "topk(2, m3q_temperature)",
        "bottomk(2, m3q_temperature)",
        "topk by (job) (1, m3q_temperature)",
        "bottomk without (room) (1, m3q_temperature)",
        "quantile(0.5, m3q_temperature)",
        "quantile by (job) (0.9, m3q_temperature)",
        r#"count_values("value", m3q_info)"#,
        r#"count_values by (job) ("v", round(m3q_temperature))"#,
        "topk(1, m3q_special)",
        "sum(m3q_special)",
        "max(m3q_special)",
        "min(m3q_special)",
        "avg(m3q_special)",
        // Vector matching.
        "m3q_requests_total / on (job, instance) group_left (version) m3q_info",
        "m3q_info * on (job, instance) group_right sum by (job, instance) (m3q_requests_total)",
        "sum by (job, instance) (m3q_requests_total) / on (job, instance) m3q_info",
        "m3q_temperature > on (job, instance) group_left m3q_info",
        "m3q_requests_total and m3q_requests_total > 500",
        r#"m3q_requests_total unless on (code) m3q_requests_total{code="500"}"#,
        "m3q_gappy or m3q_stale",
        "m3q_temperature or on (job) m3q_info",
        r#"m3q_requests_total and ignoring (code) m3q_requests_total{code="404"}"#,
        "sum by (job, room) (m3q_temperature) - ignoring (room) group_left sum by (job) (m3q_temperature)",
        "sum by (job) (m3q_temperature) - ignoring (room) sum by (job, room) (m3q_temperature)",
        "m3q_temperature == bool on (job, instance, room) m3q_temperature",
        "atan2(m3q_temperature, 2)",
        "m3q_temperature atan2 on (job, instance, room) m3q_temperature",
        // Edges.
        r#"count_values("v", m3q_special)"#,
        r#"count_values without (instance) ("v", m3q_temperature / 3)"#,
        "quantile(0, m3q_temperature)",
        "quantile(1, m3q_temperature)",
        "stddev(m3q_info)",
        "sum(m3q_info) by (version)",
        "topk(100, m3q_info)",
        "bottomk(0, m3q_info)",
        "m3q_special == m3q_special",
        "m3q_special != bool 3",
        "timestamp(m3q_temperature offset 1m)",
        "timestamp(m3q_stale)",
        r#"absent({__name__="m3q_nonexistent", job="x"})"#,
        r#"label_replace(m3q_info, "major", "$maj", "version", "(?P<maj>\\d+)\\..*")"#,
        r#"m3q_info * on (instance) group_right (version) sum by (instance, job) (m3q_temperature)"#,
        r#"m3q_requests_total or on (code) m3q_info"#,
        r#"m3q_requests_total unless ignoring (code, job) m3q_info"#,
        "m3q_temperature > bool m3q_temperature offset 1m",
        "-sum by (job) (m3q_temperature)",
        "sum by (job) (-m3q_temperature)",
        "(m3q_temperature)",
        "sum(rate(m3q_requests_total[5m])) by (code)",
        "increase(m3q_latency_seconds_bucket[10m])",
        "histogram_quantile(0.5, sum without (instance) (m3q_latency_seconds_bucket))",
        "vector(1) + on () group_left m3q_info",
        "scalar(vector(2)) * m3q_temperature",
        "sort_desc(sum by (job, instance) (m3q_requests_total))",
        // Ranges shorter than the step: windows with gaps between them.
        "count_over_time(m3q_temperature[20s])",
        "max_over_time(m3q_temperature[45s])",
        "rate(m3q_requests_total[30s] offset 1m)",
        "last_over_time(m3q_temperature[10s:5s])",
        // Summation where the method shows.
        "sum_over_time(m3q_cancel[5m])",
        "avg_over_time(m3q_cancel[5m])",
        "stddev_over_time(m3q_cancel[5m])",
        "deriv(m3q_cancel[5m])",
        "predict_linear(m3q_cancel[5m], 60)",
        "sum(m3q_cancel or m3q_temperature)",
        "avg(m3q_cancel or m3q_temperature)",
        // NaN in orders and bounds.
        "sort(m3q_special)",
        "sort_desc(m3q_special)",
        "clamp(m3q_temperature, NaN, 10)",
        "clamp(m3q_temperature, 0, NaN)",
        "quantile(0.5, m3q_special)",
        // Same labels after the metric name is dropped, at steps that do not overlap.
        r#"-(m3q_stale or label_replace(m3q_gappy, "instance", "y", "", ""))"#,
        // A comparison that filters what would otherwise be a many-to-one match.
        r#"m3q_temperature > on (job, instance) (m3q_info * 100)"#,
        r#"(m3q_temperature < 1000) == on (job, instance) group_left m3q_info"#,
        // Errors both should refuse, with the same class.
        "topk(NaN, m3q_temperature)",
        "bottomk(Inf, m3q_temperature)",
        r#"label_replace(m3q_temperature, "x", "$1", "job", "(.*")"#,
        r#"label_join(m3q_temperature, "1bad", "-", "job")"#,
        r#"count_values("1bad", m3q_temperature)"#,
        "m3q_temperature + on (job) m3q_temperature",
        "sum(",
        "rate(m3q_temperature)",
        "label_replace(m3q_temperature, \"1bad\", \"\", \"job\", \".*\")",
    ];
    q.iter().map(|s| (*s).to_owned()).collect()
}

/// Combinations generated from lists.
fn generated() -> Vec<String> {
    let mut out = Vec::new();
    let range_functions = [
        "rate",
        "increase",
        "irate",
        "delta",
        "idelta",
        "deriv",
        "changes",
        "resets",
        "avg_over_time",
        "sum_over_time",
        "min_over_time",
        "max_over_time",
        "count_over_time",
        "stddev_over_time",
        "last_over_time",
    ];
    for f in range_functions {
        for range in ["1m", "5m", "15m"] {
            let metric = if matches!(f, "rate" | "increase" | "irate" | "resets") {
                C
            } else {
                G
            };
            out.push(format!("{f}({metric}[{range}])"));
        }
    }
    let aggregations = [
        "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
    ];
    let groupings = [
        "",
        " by (job)",
        " by (job, instance)",
        " without (instance)",
        " without (room, job)",
    ];
    for agg in aggregations {
        for grouping in groupings {
            out.push(format!("{agg}{grouping} ({G})"));
        }
        out.push(format!("{agg} by (code) (rate({C}[5m]))"));
    }
    let arithmetic = ["+", "-", "*", "/", "%", "^"];
    for op in arithmetic {
        out.push(format!("{G} {op} 3"));
        out.push(format!("2 {op} {G}"));
        out.push(format!("{G} {op} {G}"));
        out.push(format!(
            "sum by (job, room) ({G}) {op} on (job) group_left sum by (job) ({G})"
        ));
        out.push(format!(
            "sum by (job) ({G}) {op} on (job) group_right sum by (job, room) ({G})"
        ));
    }
    let comparisons = ["==", "!=", ">", "<", ">=", "<="];
    for op in comparisons {
        out.push(format!("{G} {op} 2"));
        out.push(format!("2 {op} {G}"));
        out.push(format!("{G} {op} bool 2"));
        out.push(format!(
            "{G} {op} ignoring (room) group_left avg without (room) ({G})"
        ));
        out.push(format!(
            "{G} {op} bool on (job, instance, room) ({G} offset 1m)"
        ));
    }
    for q in ["0.1", "0.25", "0.5", "0.75", "0.95"] {
        out.push(format!(
            "histogram_quantile({q}, sum by (le, job) (rate({H}[5m])))"
        ));
    }
    // Nested: aggregations over range functions, binary operations of aggregations.
    for agg in ["sum", "max", "avg", "count"] {
        for f in ["rate", "irate", "increase", "resets"] {
            out.push(format!("{agg} by (job) ({f}({C}[5m]))"));
        }
        for f in ["avg_over_time", "deriv", "changes", "quantile_over_time"] {
            let arg = if f == "quantile_over_time" {
                format!("0.3, {G}[10m]")
            } else {
                format!("{G}[10m]")
            };
            out.push(format!("{agg} without (room) ({f}({arg}))"));
        }
    }
    for (a, b) in [("sum", "count"), ("max", "min"), ("avg", "stddev")] {
        out.push(format!("{a} by (job) ({G}) / {b} by (job) ({G})"));
        out.push(format!("{a}({G}) - {b}({G}) > bool 0"));
    }
    // Modifiers inside functions and subqueries.
    for modifier in ["offset 5m", "offset -1m", "@ start()", "@ end()"] {
        out.push(format!("rate({C}[5m] {modifier})"));
        out.push(format!("{G} {modifier}"));
        out.push(format!("max_over_time(rate({C}[2m])[6m:1m] {modifier})"));
        out.push(format!(
            "sum by (job) ({G} {modifier}) - sum by (job) ({G})"
        ));
    }
    for k in ["1", "3"] {
        out.push(format!("topk({k}, rate({C}[5m]))"));
        out.push(format!("bottomk by (code) ({k}, rate({C}[5m]))"));
    }
    out
}

/// The whole corpus.
pub(crate) fn queries() -> Vec<String> {
    let mut q = hand_written();
    q.extend(generated());
    q
}
