//! Generates the SPIFFE Workload API server from `proto/workload.proto`.
//!
//! `protox` parses the proto in pure Rust (and ships `google/protobuf/struct.proto`), so building
//! the agent needs no system `protoc`. Only the server side is generated: the agent never calls a
//! Workload API itself, and tests speak to it through an independent client (the `spiffe` crate).

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("proto");
    let proto = proto_dir.join("workload.proto");

    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-changed=build.rs");

    let descriptors = protox::compile([&proto], [&proto_dir])?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        // `ValidateJWTSVIDResponse.claims` is a `google.protobuf.Struct`. Generating the well-known
        // types locally avoids a dependency on `prost-types` just for that one message.
        .compile_well_known_types(true)
        .compile_fds(descriptors)?;
    Ok(())
}
