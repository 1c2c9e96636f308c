//! `m3coordinator -f <config>`: a standalone coordinator process.
//!
//! A standalone coordinator needs a KV shared with the aggregators (etcd), which is not built
//! yet; until then this binary says so and exits, and `m3 local` runs a coordinator in-process.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "error: m3coordinator needs the etcd KV backend (clusterManagement.etcd), which this version does not have yet.\n\
         Run the whole pipeline in one process with `m3 local` instead."
    );
    ExitCode::from(2)
}
