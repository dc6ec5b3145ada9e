//! Compiles the control-plane protocol without a system `protoc` (protox parses, then
//! tonic-prost-build generates client and server code).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/weft/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Bytes, not Vec<u8>: the control plane sends one service's snapshot JSON to all of
        // that service's sidecars without a copy each.
        .bytes(".weft.control.v1.Snapshot.policy_json")
        .compile_fds(fds)?;
    Ok(())
}
