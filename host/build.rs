//! Generates the `chassis.v1` gRPC code and the file descriptor set served
//! by reflection (so `grpcurl` works without the .proto file).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=../proto/chassis/v1/chassis.proto");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("chassis_v1_descriptor.bin"))
        .compile_protos(&["../proto/chassis/v1/chassis.proto"], &["../proto"])?;
    Ok(())
}
