//! Compiles the project's protobuf schemas with `protox` (pure Rust, so no `protoc` is needed for
//! them) and generates the Rust types with `prost-build`.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "aggregation.proto",
    "policy.proto",
    "transformation.proto",
    "pipeline.proto",
    "metric.proto",
    "metadata.proto",
    "composite.proto",
    "msg.proto",
    "topic.proto",
    "placement.proto",
    "flush.proto",
    "remote.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| dir.join(p)).collect();
    let descriptors = protox::compile(&files, [&dir])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
