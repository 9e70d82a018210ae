//! Compiles `proto/ipam.proto` with protox (pure Rust): the build never needs a protoc on the
//! machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ipam.proto");
    let fds = protox::compile(["proto/ipam.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
