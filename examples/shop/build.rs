//! Compiles `proto/shop/v1/tcc.proto` into the TCC participant's tonic
//! server and client, with a protobuf compiler written in Rust (protox):
//! no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/shop/v1/tcc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
