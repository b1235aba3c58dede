//! Generates the `flagd.sync.v1` gRPC server (`FlagSyncService`) from the vendored
//! `proto/flagd/sync/v1/sync.proto`.
//!
//! Rule: pure Rust. `protox` parses the proto (and bundles `google/protobuf/struct.proto`,
//! which it imports), and `tonic-prost-build` generates the messages and the server from
//! the parsed file descriptors, so building chaosgate needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["flagd/sync/v1/sync.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}
