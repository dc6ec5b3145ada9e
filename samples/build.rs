//! Compiles `proto/echo.proto` and `proto/shop.proto` without a system `protoc`: protox parses the
//! proto into a `FileDescriptorSet` and tonic-prost-build generates the code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/echo.proto", "proto/shop.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
