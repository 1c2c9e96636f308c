//! `m3 bench` against the built `m3 local`: what it reports as accepted must be what it sent,
//! and the coordinator must have stored that many raw samples.

mod support;

use std::process::{Command, Output};

use support::LocalProcess;

/// Runs the built `m3` with `args` and returns what it printed.
async fn m3(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_m3"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("the m3 binary runs")
    })
    .await
    .expect("join")
}

/// The first number on the summary line starting with `label`.
fn figure(summary: &str, label: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{summary}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_what_the_coordinator_accepted_and_stored() {
    let local = LocalProcess::start("bench").await;
    // `LocalProcess` does not expose its pid; this test process stands in to exercise --pid.
    let pid = std::process::id();
    let output = m3(vec![
        "bench".into(),
        "--url".into(),
        local.http().to_string(),
        "--series".into(),
        "200".into(),
        "--rate".into(),
        "2000".into(),
        "--duration".into(),
        "3s".into(),
        "--pid".into(),
        pid.to_string(),
        "--resolutions".into(),
        "10s".into(),
        "--buffer-past".into(),
        "30s".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "m3 bench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{stdout}");

    let sent = figure(&stdout, "sent:");
    assert!(sent > 0, "nothing sent:\n{stdout}");
    // 2000 samples/s for 3 s, in rounds of 200: about 6000, never more than the target allows.
    assert!(
        sent <= 6_200,
        "sent {sent}, over the 2000/s target:\n{stdout}"
    );
    assert_eq!(figure(&stdout, "accepted:"), sent, "{stdout}");
    assert_eq!(figure(&stdout, "rejected:"), 0, "{stdout}");
    assert_eq!(figure(&stdout, "failed:"), 0, "{stdout}");
    assert_eq!(figure(&stdout, "received:"), sent, "{stdout}");
    assert_eq!(figure(&stdout, "stored raw:"), sent, "{stdout}");
    // 200 series for 3 s: every series in one or two 10s windows, none of them due yet
    // (window end + 30s + 10s + 5s to be stored).
    let expected = figure(&stdout, "windows:");
    assert!(
        (200..=400).contains(&expected),
        "expected windows {expected}:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            ", 0 due by the last scrape (window end + 30s past buffer + resolution + 5s to be \
             stored), {expected} not due yet"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("lost:        none"), "{stdout}");
    let cpu_line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("cpu:       pid {pid}: ")))
        .unwrap_or_else(|| panic!("no CPU line for --pid {pid}:\n{stdout}"));
    // Its memory: at the end, and sampled each second over the run.
    let mib_before = |text: &str| -> u64 {
        let head = cpu_line
            .split(text)
            .next()
            .and_then(|h| h.trim_end_matches(" MiB").rsplit(' ').next())
            .and_then(|n| n.parse().ok());
        head.unwrap_or_else(|| panic!("no figure before {text:?} in {cpu_line:?}"))
    };
    let mean = mib_before(" MiB mean over the last third of the run");
    let peak = mib_before(" MiB at most)");
    assert!(
        mean > 0 && mean <= peak,
        "mean {mean} MiB, peak {peak} MiB: {cpu_line}"
    );
    local.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_says_when_the_coordinator_is_unreachable() {
    // Bind and drop a listener for a port that nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = m3(vec![
        "bench".into(),
        "--url".into(),
        url.clone(),
        "--duration".into(),
        "1s".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "m3 bench succeeded without a coordinator"
    );
    assert!(
        stderr.contains(&format!("cannot reach the coordinator at {url}")),
        "{stderr}"
    );
    assert!(stderr.contains("--url"), "{stderr}");
}
