//! `m3aggregator -f <config>`: a standalone aggregator process.
//!
//! A standalone aggregator needs a KV shared with the coordinators (etcd), which is not built
//! yet; until then this binary says so and exits, and `m3 local` runs aggregators in-process.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "error: m3aggregator needs the etcd KV backend (kvClient.etcd), which this version does not have yet.\n\
         Run the whole pipeline in one process with `m3 local` instead."
    );
    ExitCode::from(2)
}
