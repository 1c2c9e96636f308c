//! The data both stores receive: a deterministic mix of what PromQL meets in practice.
//!
//! | metric | series | shape |
//! |---|---|---|
//! | `m3q_requests_total` | job × instance × code (12) | counters, every 15 s with jitter, one reset each |
//! | `m3q_temperature` | job × instance × room (8) | gauges, random walk with negatives |
//! | `m3q_latency_seconds_bucket` | job × instance × le (20) | cumulative histogram buckets |
//! | `m3q_info` | job × instance (4) | constant 1 with a `version` label, for joins |
//! | `m3q_gappy` | 1 | samples only in the first and last quarter (gaps longer than the lookback) |
//! | `m3q_stale` | 1 | ends with a staleness marker halfway |
//! | `m3q_special` | 2 | NaN and ±Inf among ordinary values |
//! | `m3q_cancel` | 1 | huge values that cancel, around small ones (summation order shows) |

/// Prometheus' staleness marker.
pub(crate) const STALE_NAN: f64 = f64::from_bits(0x7ff0_0000_0000_0002);

/// One generated series.
pub(crate) struct GeneratedSeries {
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) samples: Vec<(i64, f64)>,
}

/// A small deterministic generator (xorshift64*), so every run writes the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, n)`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[0, 1)`, two decimals.
    fn cents(&mut self) -> f64 {
        self.below(100) as f64 / 100.0
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// Scrape times every 15 s from `start` (shifted by `phase` ms) up to `end`, each with up to
/// ±500 ms of jitter.
fn scrape_times(rng: &mut Rng, start: i64, end: i64, phase: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut t = start + phase;
    while t <= end {
        let jitter = rng.below(1001) as i64 - 500;
        out.push((t + jitter).clamp(start, end));
        t += 15_000;
    }
    out.dedup();
    out
}

/// All series over `[start, end]` (Unix ms).
pub(crate) fn generate(start: i64, end: i64) -> Vec<GeneratedSeries> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    let jobs = ["api", "web"];
    let instances = ["a:9100", "b:9100"];
    let mut phase = 0;
    for job in jobs {
        for instance in instances {
            phase = (phase + 3_700) % 15_000;
            for code in ["200", "404", "500"] {
                if code == "404" && job == "web" && instance == "b:9100" {
                    continue; // not every combination exists
                }
                let times = scrape_times(&mut rng, start, end, phase);
                let reset_at = times.len() / 3 + rng.below(times.len() as u64 / 3) as usize;
                let mut value = (rng.below(1000)) as f64;
                let samples = times
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| {
                        if i == reset_at {
                            value = rng.below(5) as f64;
                        } else {
                            value +=
                                rng.below(20) as f64 + if rng.below(4) == 0 { 0.5 } else { 0.0 };
                        }
                        (t, value)
                    })
                    .collect();
                out.push(GeneratedSeries {
                    labels: labels(&[
                        ("__name__", "m3q_requests_total"),
                        ("job", job),
                        ("instance", instance),
                        ("code", code),
                    ]),
                    samples,
                });
            }
            for room in ["kitchen", "cellar"] {
                let times = scrape_times(&mut rng, start, end, phase + 1_000);
                let mut value = rng.below(30) as f64 - 5.0;
                let samples = times
                    .iter()
                    .map(|&t| {
                        value += (rng.below(201) as f64 - 100.0) / 100.0;
                        value = (value * 100.0).round() / 100.0;
                        (t, value)
                    })
                    .collect();
                out.push(GeneratedSeries {
                    labels: labels(&[
                        ("__name__", "m3q_temperature"),
                        ("job", job),
                        ("instance", instance),
                        ("room", room),
                    ]),
                    samples,
                });
            }
            // A histogram: one counter per bucket, cumulative.
            let times = scrape_times(&mut rng, start, end, phase + 2_000);
            let bounds = ["0.1", "0.5", "1", "5", "+Inf"];
            let mut counts = [0.0f64; 5];
            let mut per_bucket: Vec<Vec<(i64, f64)>> = vec![Vec::new(); bounds.len()];
            for &t in &times {
                let observations = rng.below(10);
                for _ in 0..observations {
                    let bucket = rng.below(5) as usize;
                    for c in counts.iter_mut().skip(bucket) {
                        *c += 1.0;
                    }
                }
                for (b, c) in counts.iter().enumerate() {
                    per_bucket[b].push((t, *c));
                }
            }
            for (b, samples) in per_bucket.into_iter().enumerate() {
                out.push(GeneratedSeries {
                    labels: labels(&[
                        ("__name__", "m3q_latency_seconds_bucket"),
                        ("job", job),
                        ("instance", instance),
                        ("le", bounds[b]),
                    ]),
                    samples,
                });
            }
            let version = if instance == "a:9100" {
                "1.2.0"
            } else {
                "1.3.1"
            };
            let times = scrape_times(&mut rng, start, end, phase + 4_000);
            out.push(GeneratedSeries {
                labels: labels(&[
                    ("__name__", "m3q_info"),
                    ("job", job),
                    ("instance", instance),
                    ("version", version),
                ]),
                samples: times.iter().map(|&t| (t, 1.0)).collect(),
            });
        }
    }
    // Gaps longer than the lookback.
    let quarter = (end - start) / 4;
    let times = scrape_times(&mut rng, start, end, 5_000);
    out.push(GeneratedSeries {
        labels: labels(&[("__name__", "m3q_gappy"), ("instance", "x")]),
        samples: times
            .iter()
            .filter(|&&t| t < start + quarter || t > end - quarter)
            .map(|&t| (t, rng.cents() * 10.0))
            .collect(),
    });
    // A series that goes stale halfway.
    let times = scrape_times(&mut rng, start, start + (end - start) / 2, 6_000);
    let mut samples: Vec<(i64, f64)> = times.iter().map(|&t| (t, rng.below(50) as f64)).collect();
    if let Some(&(last, _)) = samples.last() {
        samples.push((last + 15_000, STALE_NAN));
    }
    out.push(GeneratedSeries {
        labels: labels(&[("__name__", "m3q_stale"), ("instance", "y")]),
        samples,
    });
    // NaN and infinities.
    for (instance, specials) in [
        ("p", [f64::NAN, 3.0]),
        ("q", [f64::INFINITY, f64::NEG_INFINITY]),
    ] {
        let times = scrape_times(&mut rng, start, end, 7_000);
        out.push(GeneratedSeries {
            labels: labels(&[("__name__", "m3q_special"), ("instance", instance)]),
            samples: times
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    (
                        t,
                        if i % 7 == 3 {
                            specials[i % 2]
                        } else {
                            i as f64
                        },
                    )
                })
                .collect(),
        });
    }
    // Values where the order and method of summation show in the result.
    let times = scrape_times(&mut rng, start, end, 8_000);
    let cycle = [1e16, 1.0, -1e16, 3.5, 1e-3, 2e15, -2e15, 7.0];
    out.push(GeneratedSeries {
        labels: labels(&[("__name__", "m3q_cancel"), ("instance", "z")]),
        samples: times
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, cycle[i % cycle.len()]))
            .collect(),
    });
    out
}
