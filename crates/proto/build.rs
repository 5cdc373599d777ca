//! Compiles `proto/*.proto` with the pure-Rust `protox` compiler into `OUT_DIR`
//! (no system `protoc`), then generates prost messages and tonic server stubs.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/grpc_service.proto",
        "proto/model_config.proto",
        "proto/feast/types/Value.proto",
        "proto/feast/serving/ServingService.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("inference_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Tensor payloads stay `bytes::Bytes`: slices of the request buffer, no copy.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .bytes(".inference.InferTensorContents.bytes_contents")
        .compile_fds(fds)?;
    Ok(())
}
