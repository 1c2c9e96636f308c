//! Asking Prometheus, and comparing its answer with ours.

use std::collections::BTreeMap;

use m3_query::{QueryError, QueryValue};
use serde_json::Value as Json;

/// Prometheus' answer: its `data` on success, its error text otherwise.
pub(crate) type Answer = Result<Json, String>;

fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

async fn ask(client: &reqwest::Client, url: &str, params: &[(&str, String)]) -> Answer {
    let response = client
        .post(url)
        .form(params)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let body: Json = response
        .json()
        .await
        .map_err(|e| format!("answer is not JSON: {e}"))?;
    if body["status"] == "success" {
        Ok(body["data"].clone())
    } else {
        Err(format!("{}: {}", body["errorType"], body["error"]))
    }
}

pub(crate) async fn prometheus_instant(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    t: i64,
) -> Answer {
    ask(
        client,
        &format!("{base}/api/v1/query"),
        &[("query", query.to_owned()), ("time", seconds(t))],
    )
    .await
}

pub(crate) async fn prometheus_range(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    start: i64,
    end: i64,
    step: i64,
) -> Answer {
    ask(
        client,
        &format!("{base}/api/v1/query_range"),
        &[
            ("query", query.to_owned()),
            ("start", seconds(start)),
            ("end", seconds(end)),
            ("step", seconds(step)),
        ],
    )
    .await
}

/// The tally of comparisons.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) agreed: usize,
    /// Agreed answers that hold at least one series (or a scalar or string).
    pub(crate) with_data: usize,
    /// Agreed because both refused the query.
    pub(crate) both_refused: usize,
    pub(crate) disagreements: Vec<String>,
}

impl Report {
    pub(crate) fn total(&self) -> usize {
        self.agreed + self.disagreements.len()
    }

    pub(crate) fn record(
        &mut self,
        query: &str,
        how: &str,
        ours: Result<QueryValue, QueryError>,
        theirs: Answer,
    ) {
        let verdict = match (ours, theirs) {
            (Err(ours), Err(theirs)) => {
                println!("both refused {query} [{how}]: we said {ours}; Prometheus said {theirs}");
                // The error class (bad_data, execution, timeout) decides the HTTP status, so
                // it must agree too.
                let class = format!("\"{}\":", ours.error_type());
                if theirs.starts_with(&class) {
                    self.both_refused += 1;
                    Ok(())
                } else {
                    Err(format!(
                        "both refused, we as {} ({ours}), Prometheus as {theirs}",
                        ours.error_type()
                    ))
                }
            }
            (Ok(ours), Err(theirs)) => Err(format!(
                "Prometheus refused ({theirs}), we answered {}",
                serde_json::to_string(&ours).unwrap_or_default()
            )),
            (Err(ours), Ok(_)) => Err(format!("we refused ({ours}), Prometheus answered")),
            (Ok(ours), Ok(theirs)) => {
                let has_data = match &ours {
                    QueryValue::Vector(v) => !v.is_empty(),
                    QueryValue::Matrix(m) => !m.is_empty(),
                    _ => true,
                };
                self.with_data += usize::from(has_data);
                let ours = serde_json::to_value(&ours).unwrap_or(Json::Null);
                let ordered = query.starts_with("sort");
                same(&ours, &theirs, ordered)
            }
        };
        match verdict {
            Ok(()) => self.agreed += 1,
            Err(why) => self.disagreements.push(format!("{query}  [{how}]: {why}")),
        }
    }
}

fn value(v: &Json) -> f64 {
    match v.as_str() {
        Some("NaN") => f64::NAN,
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some(s) => s.parse().unwrap_or(f64::NAN),
        None => f64::NAN,
    }
}

fn values_equal(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    let diff = (a - b).abs();
    diff <= 1e-12 || diff <= 1e-9 * a.abs().max(b.abs())
}

fn point_equal(a: &Json, b: &Json) -> bool {
    a[0].as_f64() == b[0].as_f64() && values_equal(value(&a[1]), value(&b[1]))
}

/// Series keyed by their labels' JSON.
fn by_metric(result: &Json) -> BTreeMap<String, Json> {
    result
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (s["metric"].to_string(), s.clone()))
        .collect()
}

fn same(ours: &Json, theirs: &Json, ordered: bool) -> Result<(), String> {
    let (ot, tt) = (&ours["resultType"], &theirs["resultType"]);
    if ot != tt {
        return Err(format!("result type {ot} vs Prometheus' {tt}"));
    }
    let (or, tr) = (&ours["result"], &theirs["result"]);
    match tt.as_str() {
        Some("scalar") => point_equal(or, tr)
            .then_some(())
            .ok_or_else(|| format!("scalar {or} vs Prometheus' {tr}")),
        Some("string") => (or == tr)
            .then_some(())
            .ok_or_else(|| format!("string {or} vs Prometheus' {tr}")),
        _ => {
            let (om, tm) = (by_metric(or), by_metric(tr));
            let missing: Vec<&String> = tm.keys().filter(|k| !om.contains_key(*k)).collect();
            let extra: Vec<&String> = om.keys().filter(|k| !tm.contains_key(*k)).collect();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(format!(
                    "series differ: missing {missing:?}, extra {extra:?} ({} vs {})",
                    om.len(),
                    tm.len()
                ));
            }
            for (metric, t) in &tm {
                let o = &om[metric];
                if let (Some(ov), Some(tv)) = (o.get("value"), t.get("value")) {
                    if !point_equal(ov, tv) {
                        return Err(format!("{metric}: {ov} vs Prometheus' {tv}"));
                    }
                } else {
                    let ov = o["values"].as_array().cloned().unwrap_or_default();
                    let tv = t["values"].as_array().cloned().unwrap_or_default();
                    if ov.len() != tv.len() || ov.iter().zip(&tv).any(|(a, b)| !point_equal(a, b)) {
                        let first = ov
                            .iter()
                            .zip(&tv)
                            .find(|(a, b)| !point_equal(a, b))
                            .map(|(a, b)| format!("first difference {a} vs {b}"))
                            .unwrap_or_default();
                        return Err(format!(
                            "{metric}: {} points vs Prometheus' {}; {first}",
                            ov.len(),
                            tv.len()
                        ));
                    }
                }
            }
            if ordered {
                let order = |r: &Json| -> Vec<String> {
                    r.as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| s["metric"].to_string())
                        .collect()
                };
                if order(or) != order(tr) {
                    return Err("order differs".into());
                }
            }
            Ok(())
        }
    }
}
