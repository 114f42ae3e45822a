//! Generates the Rust types and gRPC stubs for `arbiter.v1` from the `.proto`
//! files, with `protox` so that no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "arbiter/v1/coordinator.proto",
        "arbiter/v1/participant.proto",
        "arbiter/v1/admin.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
