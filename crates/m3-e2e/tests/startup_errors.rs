//! Mistakes in a deployment stop the binaries at once, with a message that names what to fix:
//! the key and the file for a config error, the endpoint for an etcd that cannot be reached.
//!
//! Each case copies a shipped config from `config/` into a temporary dir, changes one thing, and
//! runs the real binary on it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use m3_testkit::{Binary, run_to_exit};

const AGGREGATOR_CONFIG: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/m3aggregator.yml");
const COORDINATOR_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../config/m3coordinator.yml"
);

/// Bounds "at once": a config error needs no network; an unreachable etcd is given up on after
/// the client's connect timeout (5s).
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// The shipped config at `shipped`, changed by `edit`, written to `dir/name`.
fn edited_config(
    dir: &Path,
    shipped: &str,
    name: &str,
    edit: impl FnOnce(&str) -> String,
) -> PathBuf {
    let text = std::fs::read_to_string(shipped)
        .unwrap_or_else(|e| panic!("cannot read the shipped config {shipped}: {e}"));
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit of {name} changed nothing");
    let path = dir.join(name);
    std::fs::write(&path, edited)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// `text` with `from` replaced once; panics when `from` is not in it.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the shipped config");
    text.replacen(from, to, 1)
}

/// An etcd endpoint where nothing listens.
fn unreachable_etcd() -> String {
    format!("127.0.0.1:{}", m3_testkit::free_port())
}

/// Runs `binary -f config` and asserts it fails at once; its output.
fn run_failing(binary: &str, config: &Path, etcd: &str) -> String {
    let mut command = Command::new(Binary::path(binary));
    command
        .arg("-f")
        .arg(config)
        .env("ETCD_ENDPOINT", etcd)
        .env("M3AGGREGATOR_HOST_ID", "127.0.0.2")
        .env("M3AGGREGATOR_RAWTCP_ADDRESS", "127.0.0.2:0")
        .env("M3AGGREGATOR_HTTP_ADDRESS", "127.0.0.2:0")
        .env("M3COORDINATOR_LISTEN_ADDRESS", "127.0.0.1:0")
        .env("M3COORDINATOR_INGEST_ADDRESS", "127.0.0.1:0")
        .env("M3COORDINATOR_DATA_DIR", config.with_extension("data"))
        .env("NO_COLOR", "1");
    let (status, output) = run_to_exit(binary, command, EXIT_WITHIN);
    assert!(
        !status.success(),
        "{binary} -f {} succeeded; output:\n{output}",
        config.display()
    );
    output
}

fn assert_names(output: &str, what: &[&str]) {
    for needle in what {
        assert!(
            output.contains(needle),
            "the error does not name {needle:?}:\n{output}"
        );
    }
}

#[test]
fn aggregator_config_with_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = edited_config(dir.path(), AGGREGATOR_CONFIG, "unknown-key.yml", |text| {
        replace_once(
            text,
            "  hashType: murmur32\n",
            "  hashType: murmur32\n  hashTipe: murmur32\n",
        )
    });
    let output = run_failing("m3aggregator", &config, &unreachable_etcd());
    assert_names(
        &output,
        &[&config.display().to_string(), "unknown field `hashTipe`"],
    );
}

#[test]
fn aggregator_config_with_a_bad_duration() {
    let dir = tempfile::tempdir().unwrap();
    let config = edited_config(dir.path(), AGGREGATOR_CONFIG, "bad-duration.yml", |text| {
        replace_once(text, "  resignTimeout: 1m\n", "  resignTimeout: 1 minute\n")
    });
    let output = run_failing("m3aggregator", &config, &unreachable_etcd());
    assert_names(
        &output,
        &[
            &config.display().to_string(),
            "resignTimeout",
            "invalid duration \"1 minute\"",
        ],
    );
}

#[test]
fn aggregator_config_without_kv_client() {
    let dir = tempfile::tempdir().unwrap();
    let config = edited_config(dir.path(), AGGREGATOR_CONFIG, "no-kv-client.yml", |text| {
        // Drop the `kvClient:` block: its line and the indented lines after it.
        let mut out = String::new();
        let mut in_block = false;
        for line in text.lines() {
            if line.starts_with("kvClient:") {
                in_block = true;
                continue;
            }
            if in_block && (line.starts_with(' ') || line.is_empty()) {
                continue;
            }
            in_block = false;
            out.push_str(line);
            out.push('\n');
        }
        out
    });
    let output = run_failing("m3aggregator", &config, &unreachable_etcd());
    assert_names(&output, &[&config.display().to_string(), "kvClient"]);
}

#[test]
fn coordinator_config_with_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = edited_config(dir.path(), COORDINATOR_CONFIG, "unknown-key.yml", |text| {
        replace_once(text, "\nlistenAddress: ", "\nlistenAdress: ")
    });
    let output = run_failing("m3coordinator", &config, &unreachable_etcd());
    assert_names(
        &output,
        &[
            &config.display().to_string(),
            "unknown field `listenAdress`",
        ],
    );
}

/// Every bad value of the file is named in one start, not one per restart.
#[test]
fn coordinator_config_with_several_bad_values_names_each() {
    let dir = tempfile::tempdir().unwrap();
    let config = edited_config(dir.path(), COORDINATOR_CONFIG, "several.yml", |text| {
        let text = replace_once(text, "resolution: 10s", "resolution: 0s");
        let text = replace_once(&text, "retention: 40d", "retention: 0s");
        replace_once(&text, "queueSize: 10000", "queueSize: 0")
    });
    let output = run_failing("m3coordinator", &config, &unreachable_etcd());
    assert_names(
        &output,
        &[
            &config.display().to_string(),
            "3 problems",
            "clusters[0].namespaces[1].resolution`: must be positive",
            "clusters[0].namespaces[2].retention`: must be positive",
            "downsample.remoteAggregator.client.queueSize`: must be positive",
        ],
    );
}

#[test]
fn unreachable_etcd_is_named() {
    for (binary, shipped, section) in [
        ("m3aggregator", AGGREGATOR_CONFIG, "kvClient.etcd"),
        (
            "m3coordinator",
            COORDINATOR_CONFIG,
            "clusterManagement.etcd",
        ),
    ] {
        let etcd = unreachable_etcd();
        let output = run_failing(binary, Path::new(shipped), &etcd);
        assert_names(&output, &[&format!("cannot reach etcd at {etcd}"), section]);
    }
}
