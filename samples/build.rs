//! Compiles `proto/echo.proto` without a system `protoc`: protox parses the
//! proto into a `FileDescriptorSet` and tonic-prost-build generates the code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/echo.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
